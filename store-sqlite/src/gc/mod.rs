//! The garbage collector: roots of every kind Nix has, the live set computed over the
//! whole registry loaded once, deletion that never leaves a valid path with a missing
//! reference, and a locking protocol that keeps paths being added, built or used by
//! other processes (Arca's or Nix's) alive.
//!
//! # Locking protocol
//! 1. The collector takes `<state>/gc.lock` exclusively (one collector at a time; a
//!    second one waits). Writers hold it shared only for the instant of appending a
//!    temporary root to their file, so from here on no root reaches a file unseen.
//! 2. It listens on `<state>/gc-socket/socket` *after* taking the lock (a collector
//!    waiting for the lock must not steal the socket of the one running). A writer that
//!    cannot get the shared lock sends its root there and retries until the socket
//!    answers; see `temp_roots.rs`.
//! 3. It reads the temporary roots files, then loads the registry as one graph
//!    ([`PathGraph`]), and computes the live set from the roots under the state mutex;
//!    roots arriving over the socket from then on are marked live (with their closure)
//!    at once, under the same mutex.
//! 4. It deletes dead paths referrers first, in batches: under the mutex it drops the
//!    ones that became live and marks the rest *pending*; it unregisters them in one
//!    transaction (which refuses any path a valid path still refers to, so a path
//!    registered meanwhile with a reference to a dead path keeps that path alive);
//!    then it takes each out of its store name (unlink, or rename into the trash) and
//!    clears *pending*. A root for a pending path is acknowledged only after that, so
//!    its sender then finds the path invalid and re-creates it instead of using a path
//!    that is disappearing.
//! 5. It sweeps the store directory for entries that are not valid paths: leftovers of
//!    crashed writers, stale lock files. An entry whose hash part is a temporary root,
//!    or whose `.lock` somebody holds (a writer between publishing and registering,
//!    a build in progress), is left alone; the others are deleted under their lock.
//! 6. It removes `.links` entries nothing uses any more, stops the socket and lets go
//!    of the lock.
//!
//! A crash at any point leaves a consistent store: unregistration commits before any
//! file is touched, so the worst case is unregistered files (swept by the next run)
//! and trees in `<store>/.arca-trash` (emptied by the next run).

mod remove;
mod roots;
mod server;
mod temp_roots;

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use arca_store_core::{Store, StorePath};

use crate::error::{IoContext, StoreError};
use crate::lock::{open_lock_file, PathLock};
use crate::registry::PathGraph;
use crate::LocalStore;
pub use arca_store_core::ops::{GcAction, GcOptions, GcProgress, GcReport};
pub(crate) use remove::TRASH_DIR;
use remove::{empty_trash, move_out, remove_tree_counting, MovedOut};
use roots::{find_link_roots, find_runtime_roots, parse_base_name, StoreLocation};
pub use roots::{GcRoot, GcRootKind};
use server::{Collector, Keep};
pub use temp_roots::TempRoots;
use temp_roots::{read_temp_roots, GC_LOCK};

/// Paths unregistered per transaction while deleting.
const BATCH: usize = 2048;

/// A batch of paths just unregistered (or not, where `unregistered` says so), to be
/// taken out of the store.
struct RemoveJob {
    batch: Vec<u32>,
    paths: Vec<StorePath>,
    unregistered: Vec<bool>,
}

/// What removing a batch did.
#[derive(Default)]
struct Removed {
    gone: Vec<u32>,
    bytes: u64,
}

impl LocalStore {
    /// Makes `path` a temporary root of this store handle: no garbage collector deletes
    /// it (or its closure) while the handle is open. See [`TempRoots::add`].
    pub fn add_temp_root(&self, path: &StorePath) -> Result<(), StoreError> {
        self.temp_roots().add([path])
    }

    /// [`LocalStore::add_temp_root`] for several paths at once.
    pub fn add_temp_roots<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<(), StoreError> {
        self.temp_roots().add(paths)
    }

    /// Registers `link` (a symlink outside the store, e.g. a `result` link) as an
    /// indirect root: `gcroots/auto/<base-32 sha1 of the link's path>` points to it, as
    /// Nix names it. The link keeps its target alive for as long as it exists.
    pub fn add_indirect_root(&self, link: &Path) -> Result<(), StoreError> {
        let link = absolute(link)?;
        let text = link.to_string_lossy();
        let name = arca_store_core::Hash::digest(arca_store_core::HashAlgo::Sha1, text.as_bytes())
            .to_base32();
        let auto = self.state_dir().join("gcroots/auto");
        fs::create_dir_all(&auto).at(&auto)?;
        replace_symlink(&link, &auto.join(name))
    }

    /// Creates the symlink `link` to `path` and registers it as an indirect root (what
    /// `nix-build -o`/`--add-root` do). An existing symlink into the store is replaced;
    /// anything else at `link` is an error. Returns the absolute link.
    pub fn add_perm_root(&self, path: &StorePath, link: &Path) -> Result<PathBuf, StoreError> {
        let link = absolute(link)?;
        let location = self.store_location();
        if location.store_path_of(&link).is_some() {
            return Err(StoreError::RootInStore(link));
        }
        self.add_temp_root(path)?;
        if let Ok(metadata) = fs::symlink_metadata(&link) {
            let into_store = metadata.file_type().is_symlink()
                && fs::read_link(&link).is_ok_and(|t| location.store_path_of(&t).is_some());
            if !into_store {
                return Err(StoreError::RootExists(link));
            }
        }
        replace_symlink(Path::new(&self.store_dir().display(path)), &link)?;
        self.add_indirect_root(&link)?;
        Ok(link)
    }

    /// Every root that keeps a valid path alive, sorted by link: the `gcroots` and
    /// `profiles` trees, runtime roots (when `runtime`), temporary roots.
    pub fn find_roots(&self, runtime: bool) -> Result<Vec<GcRoot>, StoreError> {
        let roots = self.find_all_roots(runtime, false)?;
        let registry = self.registry();
        let mut valid = Vec::with_capacity(roots.len());
        if roots.len() > 1000 {
            // Build farms keep hundreds of thousands of roots: one read of the valid
            // paths beats a query per root.
            let all = registry.all_valid_paths()?;
            valid.extend(roots.into_iter().filter(|root| all.contains(&root.path)));
        } else {
            for root in roots {
                if registry.is_valid(&root.path)? {
                    valid.push(root);
                }
            }
        }
        valid.sort_unstable();
        // One root can be found twice (a profile generation is a link root and the
        // target of the profile's indirect link): print it once, as Nix does.
        valid.dedup_by(|a, b| a.link == b.link && a.path == b.path);
        Ok(valid)
    }

    /// The roots that keep any of `paths` alive (`nix-store -q --roots`): roots among
    /// the paths' referrers closure, extended as a collection with `options` extends
    /// liveness (with `keep_derivations`, a derivation's outputs keep it; with
    /// `keep_outputs`, a derivation keeps its outputs; runtime roots with
    /// `runtime_roots`).
    pub fn roots_of(
        &self,
        paths: &BTreeSet<StorePath>,
        options: &GcOptions,
    ) -> Result<Vec<GcRoot>, StoreError> {
        let (keep_outputs, keep_derivations) = (options.keep_outputs, options.keep_derivations);
        let mut keepers: BTreeSet<StorePath> = BTreeSet::new();
        let mut pending: Vec<StorePath> = paths.iter().cloned().collect();
        while let Some(path) = pending.pop() {
            if !keepers.insert(path.clone()) {
                continue;
            }
            let registry = self.registry();
            pending.extend(registry.referrers(&path)?);
            if keep_outputs {
                pending.extend(registry.valid_derivers(&path)?);
            }
            if keep_derivations && path.is_derivation() {
                for output in registry.derivation_outputs(&path)?.into_values() {
                    if registry.is_valid(&output)? {
                        pending.push(output);
                    }
                }
            }
        }
        Ok(self
            .find_roots(options.runtime_roots)?
            .into_iter()
            .filter(|root| keepers.contains(&root.path))
            .collect())
    }

    fn find_all_roots(&self, runtime: bool, remove_stale: bool) -> Result<Vec<GcRoot>, StoreError> {
        let location = self.store_location();
        let mut roots = Vec::new();
        find_link_roots(self.state_dir(), &location, remove_stale, &mut roots)?;
        if runtime {
            find_runtime_roots(&location, &mut roots);
        }
        for (owner, path) in read_temp_roots(self.state_dir(), self.store_dir())? {
            roots.push(GcRoot {
                link: format!("{{temp:{owner}}}"),
                path,
                kind: GcRootKind::Temporary,
            });
        }
        Ok(roots)
    }

    fn store_location(&self) -> StoreLocation {
        StoreLocation::new(self.store_dir(), self.physical_store())
    }

    /// Collects garbage: see the module documentation for what is deleted and how it is
    /// kept safe against concurrent writers. `progress` hears how far it got.
    /// After a collection: Arca's directories go when they are empty (the trash, emptied
    /// now; the link shards and their directory; the staging directory), so that a store
    /// whose every path was collected holds only an empty `.links`, as Nix's does.
    /// Whoever needs one next makes it again (`Staged::new`, the optimiser's shards).
    fn remove_empty_arca_dirs(&self, trash: &Path) -> Result<(), StoreError> {
        empty_trash(trash)?;
        let links = self.physical_store().join(crate::optimise::LINKS_DIR);
        let mut dirs = vec![trash.to_path_buf()];
        if let Ok(shards) = fs::read_dir(&links) {
            dirs.extend(shards.filter_map(|entry| entry.ok().map(|entry| entry.path())));
        }
        dirs.push(links);
        dirs.push(self.physical_store().join(crate::staging::STAGING_DIR));
        for dir in dirs {
            // Not empty (in use, or files still linked), or gone already: it stays.
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }

    pub fn collect_garbage(
        &self,
        options: &GcOptions,
        progress: &dyn Fn(GcProgress),
    ) -> Result<GcReport, StoreError> {
        // A client that finds the lock taken and no socket at all would go on without
        // telling anyone (Nix 2.8 does): make sure a socket file exists before locking.
        server::ensure_socket_file(self.state_dir())?;
        let lock_path = self.state_dir().join(GC_LOCK);
        let gc_lock: File = open_lock_file(&lock_path)?;
        if gc_lock.try_lock().is_err() {
            tracing::warn!("waiting for the big garbage collector lock...");
            gc_lock.lock().at(&lock_path)?;
        }
        let collector = Arc::new(Collector::new(Keep {
            outputs: options.keep_outputs,
            derivations: options.keep_derivations,
        }));
        let server = server::Server::start(self.state_dir(), self.store_dir().clone(), &collector)?;
        let result = self.collect_locked(options, &collector, progress);
        server.stop();
        drop(gc_lock);
        result
    }

    fn collect_locked(
        &self,
        options: &GcOptions,
        collector: &Arc<Collector>,
        progress: &dyn Fn(GcProgress),
    ) -> Result<GcReport, StoreError> {
        progress(GcProgress::FindingRoots);
        let deleting = matches!(
            options.action,
            GcAction::DeleteDead | GcAction::DeleteSpecific(_)
        );
        let ignore_roots =
            options.ignore_liveness && matches!(options.action, GcAction::DeleteSpecific(_));
        let roots = if ignore_roots {
            Vec::new()
        } else {
            self.find_all_roots(options.runtime_roots, deleting)?
        };
        let graph = Arc::new(self.registry().path_graph()?);
        tracing::info!(
            "{} roots ({}), {} valid paths",
            roots.len(),
            if options.runtime_roots {
                "runtime roots included"
            } else {
                "no runtime roots"
            },
            graph.len()
        );
        for root in &roots {
            tracing::debug!(
                "root {} -> {}",
                root.link,
                self.store_dir().display(&root.path)
            );
        }
        collector.install(&graph, &roots);

        let store_dir = self.store_dir();
        let mut report = GcReport::default();
        match &options.action {
            GcAction::ReturnLive => {
                let live = collector.live_indices();
                report.paths = live
                    .into_iter()
                    .map(|i| store_dir.display(&graph.paths[i as usize]))
                    .collect();
            }
            GcAction::ReturnDead => {
                let live = collector.live_indices().into_iter().collect::<HashSet<_>>();
                tracing::info!(
                    "{} live paths (keep-outputs {}, keep-derivations {})",
                    live.len(),
                    options.keep_outputs,
                    options.keep_derivations
                );
                report.paths = (0..graph.len() as u32)
                    .filter(|i| !live.contains(i))
                    .map(|i| store_dir.display(&graph.paths[i as usize]))
                    .collect();
                report
                    .paths
                    .extend(self.sweep_invalid(&graph, collector, false)?.0);
            }
            GcAction::DeleteDead => {
                let targets: Vec<u32> = {
                    let live = collector.live_indices().into_iter().collect::<HashSet<_>>();
                    (0..graph.len() as u32)
                        .filter(|i| !live.contains(i))
                        .collect()
                };
                let trash = self.physical_store().join(TRASH_DIR);
                empty_trash(&trash)?;
                self.delete_in_order(&graph, collector, &targets, options, &mut report, progress)?;
                if options.max_freed.is_none_or(|max| report.bytes_freed < max) {
                    let (swept, freed) = self.sweep_invalid(&graph, collector, true)?;
                    report.paths.extend(swept);
                    report.bytes_freed += freed;
                }
                progress(GcProgress::PruningLinks);
                let pruned = self.prune_links()?;
                report.links_removed = pruned.files;
                report.bytes_freed += pruned.bytes;
                self.remove_empty_arca_dirs(&trash)?;
            }
            GcAction::DeleteSpecific(paths) => {
                let mut targets = Vec::with_capacity(paths.len());
                for path in paths {
                    let index = graph
                        .index_of(path)
                        .ok_or_else(|| StoreError::InvalidPath(store_dir.display(path)))?;
                    if collector.is_live(index) {
                        return Err(StoreError::StillAlive(store_dir.display(path)));
                    }
                    targets.push(index);
                }
                let trash = self.physical_store().join(TRASH_DIR);
                empty_trash(&trash)?;
                self.delete_in_order(&graph, collector, &targets, options, &mut report, progress)?;
                // Whatever could not go is still referenced by a path not deleted.
                for path in paths {
                    if self.registry().is_valid(path)? {
                        let referrer = self
                            .registry()
                            .referrers(path)?
                            .into_iter()
                            .find(|r| r != path)
                            .map(|r| store_dir.display(&r))
                            .unwrap_or_default();
                        return Err(StoreError::StillReferenced {
                            path: store_dir.display(path),
                            referrer,
                        });
                    }
                }
            }
        }
        report.paths.sort();
        Ok(report)
    }

    /// Deletes `targets` (dead at the snapshot), referrers before references, in
    /// batches of one transaction each. Paths that became live, or that a path
    /// registered meanwhile refers to, stay.
    fn delete_in_order(
        &self,
        graph: &PathGraph,
        collector: &Collector,
        targets: &[u32],
        options: &GcOptions,
        report: &mut GcReport,
        progress: &dyn Fn(GcProgress),
    ) -> Result<(), StoreError> {
        let mut is_target = vec![false; graph.len()];
        for &i in targets {
            is_target[i as usize] = true;
        }
        // Referrers among the targets, per target (a self-reference does not count).
        let mut referrers = vec![0u32; graph.len()];
        for &i in targets {
            for &r in graph.references(i) {
                if r != i && is_target[r as usize] {
                    referrers[r as usize] += 1;
                }
            }
        }
        // The whole deletion order up front (Kahn's algorithm: a path comes after every
        // target that refers to it), so that batches are full whatever the depth of the
        // graph: a transaction rewrites most of the registry's pages, so a few large
        // ones beat one per level of a long chain.
        let mut ready: VecDeque<u32> = targets
            .iter()
            .copied()
            .filter(|&i| referrers[i as usize] == 0)
            .collect();
        let mut order = Vec::with_capacity(targets.len());
        while let Some(index) = ready.pop_front() {
            order.push(index);
            for &r in graph.references(index) {
                if r != index && is_target[r as usize] {
                    referrers[r as usize] -= 1;
                    if referrers[r as usize] == 0 {
                        ready.push_back(r);
                    }
                }
            }
        }
        // Left out of `order`: paths on a reference cycle, which only a hand-made
        // registry has; the registry would refuse to unregister them anyway.
        let trash = self.physical_store().join(TRASH_DIR);
        let dead = targets.len() as u64;
        tracing::info!("deleting {dead} dead paths");
        for &index in &order {
            tracing::debug!(
                "dead: '{}'",
                self.store_dir().display(&graph.paths[index as usize])
            );
        }
        let mut deleted = 0u64;
        progress(GcProgress::Deleting {
            deleted,
            dead,
            bytes_freed: 0,
        });
        // Unlinking is half the work and needs no registry: a second thread takes each
        // unregistered batch out of the store while the next batch is unregistered.
        // With --max-freed each batch is removed before the next is chosen.
        let pipelined = options.max_freed.is_none();
        std::thread::scope(|scope| -> Result<(), StoreError> {
            let (to_remover, batches) = mpsc::sync_channel::<RemoveJob>(1);
            let (results, removed_batches) = mpsc::channel::<Result<Removed, StoreError>>();
            let trash = trash.as_path();
            let remover = scope.spawn(move || {
                for job in batches {
                    let result = self.remove_batch(collector, trash, job);
                    let failed = result.is_err();
                    if results.send(result).is_err() || failed {
                        return;
                    }
                }
            });
            let mut account = |result: Result<Removed, StoreError>,
                               report: &mut GcReport|
             -> Result<(), StoreError> {
                let removed = result?;
                report.bytes_freed += removed.bytes;
                for index in removed.gone {
                    deleted += 1;
                    report
                        .paths
                        .push(self.store_dir().display(&graph.paths[index as usize]));
                }
                progress(GcProgress::Deleting {
                    deleted,
                    dead,
                    bytes_freed: report.bytes_freed,
                });
                Ok(())
            };
            let mut next = 0;
            let mut outcome = Ok(());
            while next < order.len() {
                // A full batch, or with --max-freed, as many as the registered sizes
                // say are still to be freed (at least one).
                let mut end = (next + BATCH).min(order.len());
                if let Some(max) = options.max_freed {
                    if report.bytes_freed >= max {
                        break;
                    }
                    let mut budget = max - report.bytes_freed;
                    end = next + 1;
                    while end < order.len() && end - next < BATCH {
                        budget = budget.saturating_sub(graph.nar_sizes[order[end - 1] as usize]);
                        if budget == 0 {
                            break;
                        }
                        end += 1;
                    }
                }
                let candidates = &order[next..end];
                next = end;
                // Paths that became live stay, and with them (their referrers kept) the
                // registry keeps what they refer to.
                let batch = collector.begin_batch(candidates);
                if batch.is_empty() {
                    continue;
                }
                let paths: Vec<StorePath> = batch
                    .iter()
                    .map(|&i| graph.paths[i as usize].clone())
                    .collect();
                let unregistered = match self.registry().unregister_many(&paths) {
                    Ok(unregistered) => unregistered,
                    Err(error) => {
                        collector.end_batch(&batch, &[]);
                        outcome = Err(error);
                        break;
                    }
                };
                let job = RemoveJob {
                    batch,
                    paths,
                    unregistered,
                };
                if pipelined {
                    if to_remover.send(job).is_err() {
                        break; // the remover failed: its error is in `removed_batches`
                    }
                    while let Ok(result) = removed_batches.try_recv() {
                        if let Err(error) = account(result, report) {
                            outcome = Err(error);
                            break;
                        }
                    }
                    if outcome.is_err() {
                        break;
                    }
                } else if let Err(error) = account(self.remove_batch(collector, trash, job), report)
                {
                    outcome = Err(error);
                    break;
                }
            }
            drop(to_remover);
            let _ = remover.join();
            for result in removed_batches.try_iter() {
                if let Err(error) = account(result, report) {
                    outcome = outcome.and(Err(error));
                }
            }
            outcome
        })
    }

    /// Takes an unregistered batch out of the store (see [`move_out`]), ends its
    /// pending state, then removes the trees it moved to the trash.
    fn remove_batch(
        &self,
        collector: &Collector,
        trash: &Path,
        job: RemoveJob,
    ) -> Result<Removed, StoreError> {
        let mut removed = Removed::default();
        let mut trees = Vec::new();
        let mut failure = None;
        for ((&index, path), &unregistered) in
            job.batch.iter().zip(&job.paths).zip(&job.unregistered)
        {
            if !unregistered {
                continue;
            }
            removed.gone.push(index);
            if failure.is_some() {
                continue;
            }
            match move_out(&self.physical_path(path), trash) {
                Ok(MovedOut::Gone(bytes)) => removed.bytes += bytes,
                Ok(MovedOut::Trash(tree)) => trees.push(tree),
                Err(error) => failure = Some(error),
            }
        }
        collector.end_batch(&job.batch, &removed.gone);
        // Unregistered but not moved out: garbage for the next run's sweep.
        if let Some(error) = failure {
            return Err(error);
        }
        removed.bytes += remove_trees(&trees)?;
        Ok(removed)
    }

    /// Entries of the store directory that are not valid paths (leftovers of crashed
    /// writers, stale lock files, junk), except the store's own directories and what
    /// a live process is working on. Deletes them when `delete`. Returns their full
    /// names and the bytes freed.
    fn sweep_invalid(
        &self,
        graph: &PathGraph,
        collector: &Collector,
        delete: bool,
    ) -> Result<(Vec<String>, u64), StoreError> {
        let store = self.physical_store();
        let trash = store.join(TRASH_DIR);
        let mut swept = Vec::new();
        let mut freed = 0;
        let entries = fs::read_dir(store).at(store)?;
        for entry in entries {
            let entry = entry.at(store)?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Nix's `.links`, Arca's staging, trash and link directories.
            if name == ".links" || name.starts_with(".arca-") {
                continue;
            }
            if let Some(path) = parse_base_name(&name) {
                if graph
                    .index_of(&path)
                    .is_some_and(|i| !collector.is_deleted(i))
                {
                    continue; // valid (live, or kept because something refers to it)
                }
            }
            if name
                .get(..32)
                .is_some_and(|hash_part| collector.is_temp_hash_part(hash_part))
            {
                continue;
            }
            let physical = entry.path();
            if name.ends_with(".lock") {
                if !delete {
                    if !is_locked(&physical) {
                        swept.push(format!("{}/{name}", self.store_dir().as_str()));
                    }
                    continue;
                }
                // Taking it and letting go deletes it, as every holder does.
                if let Some(lock) = PathLock::try_acquire(&physical)? {
                    drop(lock);
                    swept.push(format!("{}/{name}", self.store_dir().as_str()));
                }
                continue;
            }
            let lock_path = store.join(format!("{name}.lock"));
            if !delete {
                if !is_locked(&lock_path) {
                    swept.push(format!("{}/{name}", self.store_dir().as_str()));
                }
                continue;
            }
            let Some(_lock) = PathLock::try_acquire(&lock_path)? else {
                continue; // being written or built right now
            };
            if let Some(path) = parse_base_name(&name) {
                if self.registry().is_valid(&path)? {
                    continue; // registered after our snapshot
                }
            }
            match move_out(&physical, &trash)? {
                MovedOut::Gone(bytes) => freed += bytes,
                MovedOut::Trash(tree) => freed += remove_tree_counting(&tree)?,
            }
            swept.push(format!("{}/{name}", self.store_dir().as_str()));
        }
        Ok((swept, freed))
    }
}

/// Removes trees taken out of the store, on two threads when there are many: most of
/// the time goes to the kernel freeing inodes, which runs in parallel.
fn remove_trees(trees: &[PathBuf]) -> Result<u64, StoreError> {
    if trees.len() < 32 {
        return trees.iter().map(|tree| remove_tree_counting(tree)).sum();
    }
    let (first, second) = trees.split_at(trees.len() / 2);
    std::thread::scope(|scope| {
        let helper = scope.spawn(|| second.iter().map(|tree| remove_tree_counting(tree)).sum());
        let mine: Result<u64, StoreError> =
            first.iter().map(|tree| remove_tree_counting(tree)).sum();
        let theirs: Result<u64, StoreError> = helper
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok(mine? + theirs?)
    })
}

/// Whether somebody holds the lock file at `lock_path`, found without creating or
/// deleting anything (for listings).
fn is_locked(lock_path: &Path) -> bool {
    let Ok(file) = File::open(lock_path) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

/// `path` made absolute against the working directory (not resolved: a root is the
/// link itself).
fn absolute(path: &Path) -> Result<PathBuf, StoreError> {
    std::path::absolute(path).at(path)
}

/// Creates or replaces the symlink `link` → `target` atomically (a temporary name, then
/// a rename).
fn replace_symlink(target: &Path, link: &Path) -> Result<(), StoreError> {
    let parent = link.parent().unwrap_or(Path::new("/"));
    let temporary = parent.join(format!(
        ".{}.tmp-{}",
        link.file_name()
            .map_or_else(Default::default, |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = fs::remove_file(&temporary);
    std::os::unix::fs::symlink(target, &temporary).at(&temporary)?;
    fs::rename(&temporary, link).at(link)
}
