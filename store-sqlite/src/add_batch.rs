//! [`LocalAddBatch`]: the local store's [`AddBatch`]. Each NAR is checked and unpacked
//! into a staging tree on the caller's thread, whether or not the paths it refers to are
//! valid yet, holding the path's lock; a path whose closure is complete is *ready*, and
//! ready paths are made valid together (one transaction, one flush), references first,
//! once enough of them wait ([`LocalAddBatch`]'s threshold), when room is needed, before
//! an add waits for another writer's lock, and at [`AddBatch::finish`]. So a chain of
//! paths substituted on eight threads unpacks eight at a time, where adding each path
//! only after its references would unpack one at a time, and a closure of thousands of
//! small paths costs a transaction per few hundred.
//!
//! A staged path waits only for references that are being added. Paths are to be given
//! out references first (as a topological order gives them out); at most
//! [`staged_limit`] paths are staged or being unpacked at once (each holds two open
//! files), and further adds wait for room, except a path that a staged path refers to.
//! Ready paths are committed before an add waits for room or for a lock, and at once
//! while an add of the batch waits (the other writer may wait for them). So the lowest
//! staged path, in this batch or another one racing for the same closure, needs only
//! paths already given out and let in, which are valid, ready, being unpacked or given up
//! ([`AddBatch::abandon`]), and every wait ends.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

use arca_nar::{Limits, NarReader};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use arca_store_core::{AddBatch, Finished, PathInfo, Store, StorePath};

use crate::error::StoreError;
use crate::lock::PathLock;
use crate::staging::{Staged, StagedGroup};
use crate::LocalStore;

/// Ready paths are committed once this many bytes of NAR wait (and at the latest at the
/// end): it bounds what a crash can cost.
const READY_BYTES: u64 = 256 << 20;

/// Many paths being added to a [`LocalStore`] from their NARs
/// ([`arca_store_core::Store::add_batch`]).
pub struct LocalAddBatch<'s> {
    store: &'s LocalStore,
    state: Mutex<State>,
    /// Signalled whenever staged paths leave (made valid or dropped).
    room: Condvar,
    /// Held while committing: one commit at a time.
    committing: Mutex<()>,
    /// Most paths staged (ready or not) or being unpacked at once.
    limit: usize,
    /// Ready paths are committed once this many wait.
    threshold: usize,
    /// Where the batch's paths are staged, under one lock (made by the first add).
    group: std::sync::OnceLock<Arc<StagedGroup>>,
}

/// A path checked and unpacked.
struct Waiting {
    staged: Staged,
    info: PathInfo,
    _lock: PathLock,
    /// How many of its references are neither valid nor ready yet.
    missing: usize,
}

#[derive(Default)]
struct State {
    /// Staged paths waiting for references.
    staged: BTreeMap<StorePath, Waiting>,
    /// Paths whose closure is complete, references first, waiting to be committed.
    ready: Vec<Waiting>,
    ready_paths: BTreeSet<StorePath>,
    ready_bytes: u64,
    /// Adds let in and not yet staged (or failed).
    entering: usize,
    /// Adds waiting for room or for another writer's lock: while there are any, ready
    /// paths are committed at once (what they wait for may be waiting for those).
    blocked: usize,
    /// For each path not valid yet, the staged paths that wait for it.
    waiters: BTreeMap<StorePath, Vec<StorePath>>,
    /// Paths known to be valid: made valid here, or references found valid.
    valid: BTreeSet<StorePath>,
    /// Paths that will not come: abandoned, dropped or failed.
    gone: BTreeSet<StorePath>,
    report: Finished,
}

impl State {
    /// Makes `path` (staged or just unpacked) ready, and with it every staged path that
    /// waited only for it.
    fn make_ready(&mut self, waiting: Waiting) {
        let mut pending = vec![waiting];
        while let Some(waiting) = pending.pop() {
            let path = waiting.info.path.clone();
            self.ready_bytes += waiting.info.nar_size;
            self.ready_paths.insert(path.clone());
            self.ready.push(waiting);
            pending.extend(self.release_waiters(&path));
        }
    }

    /// `path` is valid or ready: the staged paths that now miss nothing.
    fn release_waiters(&mut self, path: &StorePath) -> Vec<Waiting> {
        let mut complete = Vec::new();
        for waiter in self.waiters.remove(path).unwrap_or_default() {
            if let Some(waiting) = self.staged.get_mut(&waiter) {
                waiting.missing -= 1;
                if waiting.missing == 0 {
                    complete.extend(self.staged.remove(&waiter));
                }
            }
        }
        complete
    }

    /// `path` became valid outside this batch's commits.
    fn became_valid(&mut self, path: &StorePath) {
        self.valid.insert(path.clone());
        for waiting in self.release_waiters(path) {
            self.make_ready(waiting);
        }
    }

    /// `path` will not come: the staged paths that need it are dropped (their trees
    /// removed, their locks released), and so on up.
    fn give_up(&mut self, path: &StorePath) {
        let mut pending = vec![path.clone()];
        while let Some(path) = pending.pop() {
            self.gone.insert(path.clone());
            for waiter in self.waiters.remove(&path).unwrap_or_default() {
                if self.staged.remove(&waiter).is_some() {
                    self.report.dropped.push(waiter.clone());
                    pending.push(waiter);
                }
            }
        }
    }
}

impl<'s> LocalAddBatch<'s> {
    /// A batch adding to `store` ([`arca_store_core::Store::add_batch`]).
    pub(crate) fn new(store: &'s LocalStore) -> LocalAddBatch<'s> {
        let limit = staged_limit();
        LocalAddBatch {
            store,
            state: Mutex::new(State::default()),
            room: Condvar::new(),
            committing: Mutex::new(()),
            limit,
            threshold: (limit / 2).max(1),
            group: std::sync::OnceLock::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits the ready paths: all of them when `force`, else only once enough wait.
    fn commit_ready(&self, force: bool) {
        let _one = self.committing.lock().unwrap_or_else(|e| e.into_inner());
        let ready = {
            let mut state = self.state();
            let enough = state.ready.len() >= self.threshold || state.ready_bytes >= READY_BYTES;
            if state.ready.is_empty() || !(force || enough) {
                return;
            }
            state.ready_bytes = 0;
            std::mem::take(&mut state.ready)
        };
        let paths: Vec<StorePath> = ready.iter().map(|w| w.info.path.clone()).collect();
        let (items, locks): (Vec<_>, Vec<_>) = ready
            .into_iter()
            .map(|w| ((w.staged, w.info), w._lock))
            .unzip();
        let committed = self.store.commit_batch(items);
        drop(locks);
        let mut state = self.state();
        for path in &paths {
            state.ready_paths.remove(path);
        }
        match committed {
            Ok(()) => {
                state.valid.extend(paths.iter().cloned());
                state.report.valid.extend(paths);
            }
            Err(error) => {
                // The batch is removed again: the first path gets the error (which names
                // the path at fault), the others say what happened; what waits for them
                // is dropped.
                let failed = self.store.store_dir().display(&paths[0]);
                let mut error = Some(error);
                for path in paths {
                    state.give_up(&path);
                    let reason = error
                        .take()
                        .unwrap_or_else(|| StoreError::CommittedWithFailure {
                            path: self.store.store_dir().display(&path),
                            failed: failed.clone(),
                        });
                    state.report.failed.push((path, Box::new(reason)));
                }
            }
        }
        self.room.notify_all();
    }

    /// Waits for room to add `path` (see the module documentation).
    fn enter(&self, path: &StorePath) -> Entering<'_> {
        let mut state = self.state();
        loop {
            let used = state.staged.len() + state.ready.len() + state.entering;
            if used < self.limit || state.waiters.contains_key(path) {
                break;
            }
            if state.ready.is_empty() {
                state.blocked += 1;
                state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
                state.blocked -= 1;
            } else {
                drop(state);
                self.commit_ready(true);
                state = self.state();
            }
        }
        state.entering += 1;
        Entering { batch: self }
    }

    /// Takes `path`'s lock; when another writer holds it, commits what is ready first
    /// (that writer may be waiting for one of those paths).
    fn lock(&self, path: &StorePath) -> Result<PathLock, StoreError> {
        match self.store.try_lock_path(path)? {
            Some(lock) => Ok(lock),
            None => {
                self.state().blocked += 1;
                self.commit_ready(true);
                let lock = self.store.lock_path(path);
                self.state().blocked -= 1;
                lock
            }
        }
    }

    /// Takes in the unpacked `info.path`: ready at once if its references are, else
    /// staged until they are.
    fn stage(&self, staged: Staged, info: &PathInfo, lock: PathLock) -> Result<(), StoreError> {
        let path = &info.path;
        // References this batch does not know of: valid from before? Rooted first, so
        // that one seen valid stays valid until its referrer is registered. Asked
        // before taking the state, which a commit's writers need.
        let known: BTreeSet<StorePath> = {
            let state = self.state();
            info.references
                .iter()
                .filter(|r| {
                    state.valid.contains(*r)
                        || state.ready_paths.contains(*r)
                        || state.staged.contains_key(*r)
                        || state.gone.contains(*r)
                })
                .cloned()
                .collect()
        };
        let unknown: Vec<&StorePath> = info
            .references
            .iter()
            .filter(|r| *r != path && !known.contains(*r))
            .collect();
        self.store.add_temp_roots(unknown.iter().copied())?;
        let mut valid_before = BTreeSet::new();
        for reference in unknown {
            if self.store.is_valid_path(reference)? {
                valid_before.insert(reference.clone());
            }
        }

        let mut state = self.state();
        state.valid.extend(valid_before);
        let mut missing = 0;
        for reference in info.references.iter().filter(|r| *r != path) {
            if state.valid.contains(reference) || state.ready_paths.contains(reference) {
                continue;
            }
            if state.gone.contains(reference) {
                state.report.dropped.push(path.clone());
                state.give_up(path);
                return Ok(()); // `staged` and `lock` go: nothing is left
            }
            missing += 1;
        }
        for reference in info.references.iter().filter(|r| *r != path) {
            if !state.valid.contains(reference) && !state.ready_paths.contains(reference) {
                state
                    .waiters
                    .entry(reference.clone())
                    .or_default()
                    .push(path.clone());
            }
        }
        let waiting = Waiting {
            staged,
            info: info.clone(),
            _lock: lock,
            missing,
        };
        if missing == 0 {
            state.make_ready(waiting);
        } else {
            state.staged.insert(path.clone(), waiting);
        }
        Ok(())
    }
}

impl LocalAddBatch<'_> {
    /// The common path of every add: room, the path's lock, a staging tree that
    /// `unpack` fills unless the path is valid already, then staged or ready. Whether
    /// `unpack` ran.
    fn add_with(
        &self,
        info: &PathInfo,
        unpack: impl FnOnce(&Staged) -> Result<(), StoreError>,
    ) -> Result<bool, StoreError> {
        let entering = self.enter(&info.path);
        let lock = self.lock(&info.path)?;
        let valid = self.store.is_valid_path(&info.path)?;
        if valid {
            self.state().became_valid(&info.path);
        } else {
            let group = match self.group.get() {
                Some(group) => group.clone(),
                None => {
                    let made = self.store.stage_group()?;
                    // Another add may have made one meanwhile: the first one set counts.
                    self.group.get_or_init(|| made).clone()
                }
            };
            let staged = Staged::member(&group);
            unpack(&staged)?;
            self.stage(staged, info, lock)?;
        }
        drop(entering);
        // What became ready goes in when enough waits, or at once when an add of this
        // batch is blocked (see the module documentation).
        let blocked = self.state().blocked > 0;
        self.commit_ready(blocked);
        Ok(!valid)
    }
}

/// An add let in: counted until its path is staged, or it fails.
struct Entering<'a> {
    batch: &'a LocalAddBatch<'a>,
}

impl Drop for Entering<'_> {
    fn drop(&mut self) {
        self.batch.state().entering -= 1;
        self.batch.room.notify_all();
    }
}

impl AddBatch for LocalAddBatch<'_> {
    type Error = StoreError;

    fn ahead_of_references(&self) -> bool {
        true
    }

    fn add_nar(&self, info: &PathInfo, mut nar: &mut dyn BufRead) -> Result<(), StoreError> {
        let unpacked = self.add_with(info, |staged| {
            self.store.restore_checked(info, &mut nar, staged.tree())
        })?;
        if !unpacked {
            // Valid already: the NAR is read all the same, to leave the stream after it.
            NarReader::new(nar, Limits::default())
                .read_to_end()
                .map_err(|source| StoreError::Nar {
                    path: self.store.store_dir().display(&info.path),
                    source,
                })?;
        }
        Ok(())
    }

    fn abandon(&self, path: &StorePath) {
        self.state().give_up(path);
        self.room.notify_all();
    }

    fn finish(self) -> Result<Finished, StoreError> {
        self.commit_ready(true);
        let mut state = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        // What still waits needs a path that was never added.
        let left = std::mem::take(&mut state.staged);
        state.report.dropped.extend(left.into_keys());
        Ok(state.report)
    }
}

/// How many paths may be staged at once: each holds two open files (its staging lock
/// and its path lock), which must fit the process's descriptor limit with room to spare
/// (the usual soft limit is 1024).
pub(crate) fn staged_limit() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let usable = soft.saturating_sub(256) / 2;
    usize::try_from(usable)
        .unwrap_or(usize::MAX)
        .clamp(16, 1000)
}
