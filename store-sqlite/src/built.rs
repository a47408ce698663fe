//! Paths a build produced: locking its outputs, a scratch place on the store's file
//! system, and registering the outputs in one transaction.
//!
//! The build crate runs the builder with a scratch store directory (from
//! [`LocalStore::build_scratch_for`], or [`LocalStore::build_scratch_outside`] for a
//! builder with network) bind-mounted at the logical store directory, hashes and scans
//! the outputs there (or re-creates them with [`BuildScratch::recreate`] while hashing),
//! and hands them to [`LocalStore::publish_built`] / [`LocalStore::register_built`],
//! which move them into place with the same staging protocol as every other add: a
//! crash leaves no half-registered output. [`StagingDir`] is a guarded private directory
//! in the staging area for other writers (the daemon's spools).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use arca_store_core::{Hash, PathInfo, StorePath};

use crate::error::{IoContext, StoreError};
use crate::local_store::LocalStore;
use crate::lock::PathLocks;
use crate::staging::Staged;

/// One output ready to be registered.
#[derive(Debug, Clone)]
pub struct BuiltPath {
    /// What to register (NAR hash and references computed from `location`).
    pub info: PathInfo,
    /// Where the tree is now: inside a [`BuildScratch`] of the same store.
    pub location: PathBuf,
}

/// A private directory for one build's outputs (and the mount points of its inputs);
/// removed with everything in it on drop. A crash leaves it to the staging cleanup of
/// the next [`LocalStore::open`] (or, outside the store, to the system's temporary
/// directory cleanup).
///
/// From [`LocalStore::build_scratch_for`] it is `<staging>/<nonce>/store`, where `<nonce>`
/// is mode 0700 (0750 with the build group): other users cannot reach it, so a socket a
/// builder makes among its outputs cannot hand a descriptor to one of their processes
/// (Nix's CVE-2025-46416). From [`LocalStore::build_scratch_outside`] it is not on the
/// store's file system at all (for builders that may hand out descriptors), and only
/// [`BuildScratch::recreate`] brings its outputs into the staging area.
#[derive(Debug)]
pub struct BuildScratch {
    staged: Option<Staged>,
    /// The private directory holding `path`, when it is outside the store.
    outside: Option<PathBuf>,
    path: PathBuf,
}

impl BuildScratch {
    /// The directory; it exists and is empty when made.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-creates the tree at `source` (inside this scratch directory, where someone
    /// holding a descriptor may still be changing it) as `name` in a directory of the
    /// staging area that only this process's user can reach, through one NAR stream that is also
    /// written to `sink`: what `sink` saw (the hash checked, the references scanned) is
    /// exactly what the copy holds, and no descriptor opened before can reach the copy's
    /// new inodes. The walk never follows a symlink and reads nothing outside `source`
    /// (`DumpOptions::untrusted_tree`); a hard link to a file not owned by
    /// `hard_link_owner` is refused. Returns the copy's path, canonical but for its
    /// owner (set when it is published).
    ///
    /// This is how a fixed-output build's result is taken in (as Nix does since
    /// CVE-2024-27297): its builder has network (maybe the host's namespace), so it
    /// could have handed out a descriptor of its output.
    pub fn recreate(
        &self,
        source: &Path,
        name: &str,
        sink: &mut dyn std::io::Write,
        hard_link_owner: Option<u32>,
    ) -> Result<PathBuf, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        let staged = self
            .staged
            .as_ref()
            .expect("the staging entry lives as long as the scratch");
        let copies = staged.tree().join("copies");
        match fs::DirBuilder::new().mode(0o700).create(&copies) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error).at(&copies),
        }
        let target = copies.join(name);
        let options = arca_nar::DumpOptions {
            hard_link_owner,
            untrusted_tree: true,
            ..Default::default()
        };
        crate::local_store::copy_via_nar_into(source, &target, &options, sink)?;
        Ok(target)
    }
}

impl Drop for BuildScratch {
    fn drop(&mut self) {
        if let Some(outside) = self.outside.take() {
            let _ = make_writable(&outside);
            let _ = fs::remove_dir_all(&outside);
        }
        // Outputs moved out of it are gone already; the rest (mount points, a failed
        // build's partial output) goes with the staging entry.
        if let Some(staged) = self.staged.take() {
            let _ = make_writable(staged.tree());
            drop(staged);
        }
    }
}

/// Builders may leave read-only directories behind, which `remove_dir_all` cannot empty.
fn make_writable(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let metadata = fs::symlink_metadata(&dir)?;
        if metadata.is_dir() {
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
            for entry in fs::read_dir(&dir)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// A private directory in the staging area, for a writer that needs files on the
/// store's file system before it knows what they will become (the daemon's spools of
/// incoming dumps). It is guarded like every staged entry: removed when dropped, and by
/// the next [`LocalStore::open`] after a crash, but never while its holder lives (a bare
/// file in the staging area is garbage to any store handle being opened).
#[derive(Debug)]
pub struct StagingDir {
    staged: Staged,
}

impl StagingDir {
    /// The directory (mode 0700).
    pub fn path(&self) -> &Path {
        self.staged.tree()
    }
}

impl LocalStore {
    /// A fresh [`StagingDir`].
    pub fn staging_dir(&self) -> Result<StagingDir, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        let staged = self.stage()?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(staged.tree())
            .at(staged.tree())?;
        Ok(StagingDir { staged })
    }

    /// Locks the store paths a build is about to produce, in a fixed (sorted) order so
    /// two processes locking overlapping sets cannot deadlock; blocks until all are held.
    /// The locks are Nix's own (`<path>.lock`), so a real Nix building the same output
    /// waits too.
    pub fn lock_paths(&self, paths: &BTreeSet<StorePath>) -> Result<PathLocks, StoreError> {
        paths
            .iter()
            .map(|path| self.lock_path(path))
            .collect::<Result<_, _>>()
            .map(PathLocks::from_locks)
    }

    /// [`LocalStore::lock_paths`] without waiting: all the locks, or `None` (and none
    /// held) when another process holds one of them, so that a builder can go on with
    /// other work meanwhile, as Nix's does.
    pub fn try_lock_paths(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<Option<PathLocks>, StoreError> {
        let mut locks = Vec::with_capacity(paths.len());
        for path in paths {
            match self.try_lock_path(path)? {
                Some(lock) => locks.push(lock),
                None => return Ok(None),
            }
        }
        Ok(Some(PathLocks::from_locks(locks)))
    }

    /// A fresh scratch directory for one build, on the store's file system, reachable by
    /// its owner only.
    pub fn build_scratch(&self) -> Result<BuildScratch, StoreError> {
        self.build_scratch_for(None)
    }

    /// [`LocalStore::build_scratch`], reachable by the group `build_group` too (the build
    /// user's, when root builds as another user).
    pub fn build_scratch_for(&self, build_group: Option<u32>) -> Result<BuildScratch, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let staged = self.stage()?;
        let private = staged.tree();
        fs::DirBuilder::new()
            .mode(0o700)
            .create(private)
            .at(private)?;
        if let Some(group) = build_group {
            std::os::unix::fs::lchown(private, None, Some(group)).at(private)?;
            fs::set_permissions(private, fs::Permissions::from_mode(0o750)).at(private)?;
        }
        let path = private.join("store");
        fs::create_dir(&path).at(&path)?;
        Ok(BuildScratch {
            staged: Some(staged),
            outside: None,
            path,
        })
    }

    /// A scratch directory for one build outside the store, in `parent` (the build
    /// directories' parent): `<parent>/arca-scratch-<n>/store`, the first mode 0700 (0750
    /// with `build_group`). For a builder that shares the host's network and so may pass
    /// a descriptor of its outputs to anyone: that descriptor then leads nowhere near the
    /// store. Its outputs can only be taken in with [`BuildScratch::recreate`], whose
    /// copies go to a staging entry only this process's user can reach.
    pub fn build_scratch_outside(
        &self,
        parent: &Path,
        build_group: Option<u32>,
    ) -> Result<BuildScratch, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let staged = self.stage()?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(staged.tree())
            .at(staged.tree())?;
        let private = loop {
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let candidate = parent.join(format!(
                "arca-scratch-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            match fs::DirBuilder::new().mode(0o700).create(&candidate) {
                Ok(()) => break candidate,
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(error).at(&candidate),
            }
        };
        let scratch = BuildScratch {
            staged: Some(staged),
            path: private.join("store"),
            outside: Some(private.clone()),
        };
        if let Some(group) = build_group {
            std::os::unix::fs::lchown(&private, None, Some(group)).at(&private)?;
            fs::set_permissions(&private, fs::Permissions::from_mode(0o750)).at(&private)?;
        }
        fs::create_dir(&scratch.path).at(&scratch.path)?;
        Ok(scratch)
    }

    /// Makes built outputs valid: each tree is moved (renamed) from its scratch
    /// location to a staging name, canonicalised, flushed and renamed into place, and all
    /// are registered in one transaction. The caller holds every path's lock
    /// ([`LocalStore::lock_paths`]) and computed each `info` from the tree as it is now;
    /// nothing may be running that could still change it.
    pub fn register_built(&self, built: Vec<BuiltPath>) -> Result<(), StoreError> {
        let pending: BTreeSet<StorePath> = built.iter().map(|b| b.info.path.clone()).collect();
        let mut batch = Vec::with_capacity(built.len());
        for BuiltPath { info, location } in built {
            self.check_references_with(&info, &pending)?;
            let staged = self.stage()?;
            fs::rename(&location, staged.tree()).at(&location)?;
            batch.push((staged, info));
        }
        self.commit_batch(batch)
    }

    /// Moves built outputs to their final names without registering them yet, so that a
    /// build that needs them can start at once while [`LocalStore::register_published`]
    /// makes many of them valid with one flush and one transaction (group commit). Each
    /// tree is canonicalised and its final name recorded in its staging lock file first,
    /// so that a crash before registration leaves nothing valid and the next open removes
    /// the unregistered path. `locks` (the outputs' path locks) are held until then.
    pub fn publish_built(
        &self,
        built: Vec<BuiltPath>,
        locks: PathLocks,
    ) -> Result<PublishedPaths, StoreError> {
        let mut entries = Vec::with_capacity(built.len());
        for BuiltPath { info, location } in built {
            let staged = self.stage()?;
            fs::rename(&location, staged.tree()).at(&location)?;
            crate::canonicalise::canonicalise(staged.tree(), self.owner())?;
            staged.record_target(&info.path)?;
            staged.publish(&self.physical_path(&info.path))?;
            entries.push((staged, info));
        }
        Ok(PublishedPaths { entries, locks })
    }

    /// Checks that every reference of `published` is valid, or in `published` itself, or
    /// in `also` (outputs that will be registered in the same transaction).
    pub fn check_published(
        &self,
        published: &PublishedPaths,
        also: &BTreeSet<StorePath>,
    ) -> Result<(), StoreError> {
        let mut pending = also.clone();
        pending.extend(published.infos().map(|info| info.path.clone()));
        for info in published.infos() {
            self.check_references_with(info, &pending)?;
        }
        Ok(())
    }

    /// Makes published outputs valid in one transaction (flushed first or journalled, as
    /// the store's [`crate::Durability`] says).
    /// Every reference must be valid or among `published`. On error nothing is
    /// registered and the published trees are removed.
    pub fn register_published(&self, published: PublishedPaths) -> Result<(), StoreError> {
        let pending: BTreeSet<StorePath> = published
            .entries
            .iter()
            .map(|(_, info)| info.path.clone())
            .collect();
        for (_, info) in &published.entries {
            self.check_references_with(info, &pending)?;
        }
        self.before_register()?;
        let now = crate::local_store::now();
        let infos: Vec<PathInfo> = published
            .entries
            .iter()
            .map(|(_, info)| {
                let mut info = info.clone();
                if info.registration_time == 0 {
                    info.registration_time = now;
                }
                info
            })
            .collect();
        self.registry().register(&infos, &[])?;
        let PublishedPaths { entries, locks } = published;
        for (staged, _) in entries {
            staged.finish();
        }
        drop(locks);
        self.after_register()?;
        self.auto_optimise(infos.iter().map(|info| &info.path));
        Ok(())
    }

    /// Replaces the files of a valid path with a rebuilt tree (`--repair`), recording the
    /// rebuilt tree's NAR hash. The caller holds the path's lock.
    ///
    /// The new tree and the old one trade places in one atomic `renameat2(RENAME_EXCHANGE)`,
    /// so the path is never missing: a failure to record the new hash swaps them back,
    /// and a crash leaves either tree in place (a wrong one shows up in `verify`). The
    /// old tree is deleted last, from its staging name.
    pub fn replace_built(&self, built: BuiltPath) -> Result<(), StoreError> {
        let destination = self.physical_path(&built.info.path);
        // No final name is recorded for this staging entry: dropping it removes only
        // what is under the staging name (after the swap, the old tree).
        let staged = self.stage()?;
        fs::rename(&built.location, staged.tree()).at(&built.location)?;
        crate::canonicalise::canonicalise(staged.tree(), self.owner())?;
        // The path is valid already, so there is no journal to cover it: its new files
        // reach the disk before they replace the old ones, whatever the durability.
        self.sync_now()?;
        if fs::symlink_metadata(&destination).is_err() {
            // Nothing to swap with (a repair of a deleted path): a plain move.
            staged.record_target(&built.info.path)?;
            staged.publish(&destination)?;
        } else {
            exchange(staged.tree(), &destination)?;
        }
        if let Err(error) = self.registry().update_nar_hash(
            &built.info.path,
            &built.info.nar_hash,
            built.info.nar_size,
        ) {
            if fs::symlink_metadata(staged.tree()).is_ok() {
                let _ = exchange(staged.tree(), &destination);
            }
            return Err(error);
        }
        // `staged` now holds the old tree (or nothing): dropping it removes it.
        drop(staged);
        Ok(())
    }
}

/// Swaps two trees atomically. Moving a directory to another parent rewrites its `..`,
/// which needs write permission on it: canonical (0555) directories are opened for the
/// swap and closed again.
fn exchange(a: &Path, b: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let reopen = |path: &Path| -> Result<Option<fs::Permissions>, StoreError> {
        let metadata = fs::symlink_metadata(path).at(path)?;
        if metadata.is_dir() && metadata.permissions().mode() & 0o200 == 0 {
            let mode = metadata.permissions().mode() | 0o200;
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).at(path)?;
            return Ok(Some(metadata.permissions()));
        }
        Ok(None)
    };
    let (mode_a, mode_b) = (reopen(a)?, reopen(b)?);
    nix::fcntl::renameat2(None, a, None, b, nix::fcntl::RenameFlags::RENAME_EXCHANGE)
        .map_err(std::io::Error::from)
        .at(b)?;
    // The trees traded places, and their modes with them.
    if let Some(mode) = mode_a {
        fs::set_permissions(b, mode).at(b)?;
    }
    if let Some(mode) = mode_b {
        fs::set_permissions(a, mode).at(a)?;
    }
    Ok(())
}

/// Built outputs at their final names, not valid yet (see
/// [`LocalStore::publish_built`]). Dropping it without registering removes them.
#[derive(Debug)]
pub struct PublishedPaths {
    entries: Vec<(Staged, PathInfo)>,
    locks: PathLocks,
}

impl PublishedPaths {
    /// What will be registered.
    pub fn infos(&self) -> impl Iterator<Item = &PathInfo> {
        self.entries.iter().map(|(_, info)| info)
    }

    /// Adds another set, to register both at once (it must come later in build order).
    pub fn merge(&mut self, other: PublishedPaths) {
        self.entries.extend(other.entries);
        self.locks.extend(other.locks);
    }
}

/// The NAR hash Nix records for a tree: used by builders to check outputs.
pub fn nar_hash_of(path: &Path) -> Result<(Hash, u64), StoreError> {
    crate::local_store::hash_nar_of(path, &|_| {})
}
