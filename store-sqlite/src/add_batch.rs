//! [`LocalAddBatch`]: the local store's [`AddBatch`]. Each NAR is checked and unpacked
//! into a staging tree on the caller's thread, whether or not the paths it refers to are
//! valid yet, holding the path's lock; the staged paths whose closure is complete are
//! then made valid together (one transaction, one flush), references first. So a chain
//! of paths substituted on eight threads unpacks eight at a time, where adding each path
//! only after its references would unpack one at a time.
//!
//! A path waits, staged and locked, only for references that are being added. Paths
//! are to be given out references first (as a topological order gives them out); at
//! most [`staged_limit`] paths wait or are being unpacked at once (each holds two open
//! files), and further adds wait for room, except a path that a waiting path refers to.
//! So the lowest path waiting, in this batch or another one racing for the same
//! closure, needs only paths already given out and let in, which are valid, being
//! unpacked (their locks are held only while unpacking or waiting), or given up
//! ([`AddBatch::abandon`]): every wait ends.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Read};
use std::sync::{Condvar, Mutex, MutexGuard};

use arca_store_core::{AddBatch, Finished, PathInfo, Store, StorePath};

use crate::error::StoreError;
use crate::lock::PathLock;
use crate::staging::Staged;
use crate::LocalStore;

/// Many paths being added to a [`LocalStore`] from their NARs
/// ([`arca_store_core::Store::add_batch`]).
pub struct LocalAddBatch<'s> {
    store: &'s LocalStore,
    state: Mutex<State>,
    /// Signalled whenever staged paths leave (made valid or dropped).
    room: Condvar,
    /// Held while choosing and committing what is ready: one commit at a time.
    committing: Mutex<()>,
    limit: usize,
}

/// A path checked and unpacked, waiting for its references.
struct Waiting {
    staged: Staged,
    info: PathInfo,
    _lock: PathLock,
}

#[derive(Default)]
struct State {
    staged: BTreeMap<StorePath, Waiting>,
    /// Adds let in and not yet staged (or failed).
    entering: usize,
    /// Paths known to be valid: made valid here, or references found valid.
    valid: BTreeSet<StorePath>,
    /// Paths that will not come: abandoned, dropped or failed.
    gone: BTreeSet<StorePath>,
    report: Finished,
}

impl<'s> LocalAddBatch<'s> {
    /// A batch adding to `store` ([`arca_store_core::Store::add_batch`]).
    pub(crate) fn new(store: &'s LocalStore) -> LocalAddBatch<'s> {
        LocalAddBatch {
            store,
            state: Mutex::new(State::default()),
            room: Condvar::new(),
            committing: Mutex::new(()),
            limit: staged_limit(),
        }
    }
}

impl LocalAddBatch<'_> {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes valid what is ready, drops what can never be, until nothing is left to do.
    fn commit_ready(&self) {
        let _one = self.committing.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let ready = self.take_ready();
            if ready.is_empty() {
                return;
            }
            let paths: Vec<StorePath> = ready.iter().map(|w| w.info.path.clone()).collect();
            let (items, locks): (Vec<_>, Vec<_>) = ready
                .into_iter()
                .map(|w| ((w.staged, w.info), w._lock))
                .unzip();
            let committed = self.store.commit_batch(items);
            drop(locks);
            let mut state = self.state();
            match committed {
                Ok(()) => {
                    state.valid.extend(paths.iter().cloned());
                    state.report.valid.extend(paths);
                }
                Err(error) => {
                    // The batch is removed again; say why for each of its paths (the
                    // referrers among them are dropped next time round).
                    let error = std::sync::Arc::new(error);
                    for path in paths {
                        state.gone.insert(path.clone());
                        state
                            .report
                            .failed
                            .push((path, Box::new(SharedError(error.clone()))));
                    }
                }
            }
            self.room.notify_all();
        }
    }

    /// Takes out the staged paths whose closure is complete (references first), and
    /// drops those that need a path that will not come.
    fn take_ready(&self) -> Vec<Waiting> {
        let mut state = self.state();
        let mut ready: Vec<Waiting> = Vec::new();
        let mut ready_paths: BTreeSet<StorePath> = BTreeSet::new();
        loop {
            let mut progress = false;
            let candidates: Vec<StorePath> = state.staged.keys().cloned().collect();
            for path in candidates {
                let decision = self.decide(&mut state, &path, &ready_paths);
                match decision {
                    Decision::Wait => continue,
                    Decision::Ready => {
                        if let Some(waiting) = state.staged.remove(&path) {
                            ready_paths.insert(path);
                            ready.push(waiting);
                        }
                    }
                    Decision::Drop(error) => {
                        state.staged.remove(&path);
                        state.gone.insert(path.clone());
                        match error {
                            Some(error) => state.report.failed.push((path, Box::new(error))),
                            None => state.report.dropped.push(path),
                        }
                        self.room.notify_all();
                    }
                }
                progress = true;
            }
            if !progress {
                return ready;
            }
        }
    }

    /// Whether the staged `path` can be made valid along with `ready`.
    fn decide(&self, state: &mut State, path: &StorePath, ready: &BTreeSet<StorePath>) -> Decision {
        let Some(waiting) = state.staged.get(path) else {
            return Decision::Wait;
        };
        let references: Vec<StorePath> = waiting
            .info
            .references
            .iter()
            .filter(|r| *r != path && !ready.contains(*r) && !state.valid.contains(*r))
            .cloned()
            .collect();
        for reference in references {
            if state.gone.contains(&reference) {
                return Decision::Drop(None);
            }
            if state.staged.contains_key(&reference) {
                return Decision::Wait;
            }
            // Not added here (yet): valid from before? Rooted first, so that it stays
            // valid until its referrer is registered.
            let valid = self
                .store
                .add_temp_root(&reference)
                .and_then(|()| self.store.is_valid_path(&reference));
            match valid {
                Ok(true) => {
                    state.valid.insert(reference);
                }
                Ok(false) => return Decision::Wait,
                Err(error) => return Decision::Drop(Some(error)),
            }
        }
        Decision::Ready
    }
}

impl LocalAddBatch<'_> {
    /// Waits for room to add `path` (see the module documentation).
    fn enter(&self, path: &StorePath) -> Entering<'_> {
        let mut state = self.state();
        while state.staged.len() + state.entering >= self.limit
            && !state
                .staged
                .values()
                .any(|waiting| waiting.info.references.contains(path))
        {
            state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.entering += 1;
        Entering {
            batch: self,
            done: false,
        }
    }
}

/// An add let in: counted until its path is staged, or it fails.
struct Entering<'a> {
    batch: &'a LocalAddBatch<'a>,
    done: bool,
}

impl Entering<'_> {
    /// The path is staged (and counted as such from now on).
    fn staged(mut self, state: &mut State) {
        state.entering -= 1;
        self.done = true;
    }
}

impl Drop for Entering<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.batch.state().entering -= 1;
            self.batch.room.notify_all();
        }
    }
}

enum Decision {
    Wait,
    Ready,
    /// Never: a reference will not come (no error), or checking one failed.
    Drop(Option<StoreError>),
}

/// One commit's error, reported for each path of the batch.
#[derive(Debug)]
struct SharedError(std::sync::Arc<StoreError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl AddBatch for LocalAddBatch<'_> {
    type Error = StoreError;

    fn ahead_of_references(&self) -> bool {
        true
    }

    fn add_nar(&self, info: &PathInfo, nar: &mut dyn Read) -> Result<(), StoreError> {
        let entering = self.enter(&info.path);
        let lock = self.store.lock_path(&info.path)?;
        if self.store.is_valid_path(&info.path)? {
            self.state().valid.insert(info.path.clone());
            return Ok(());
        }
        let staged = self.store.stage()?;
        let mut nar = BufReader::with_capacity(1 << 16, nar);
        self.store.restore_checked(info, &mut nar, staged.tree())?;
        {
            let mut state = self.state();
            state.staged.insert(
                info.path.clone(),
                Waiting {
                    staged,
                    info: info.clone(),
                    _lock: lock,
                },
            );
            entering.staged(&mut state);
        }
        self.commit_ready();
        Ok(())
    }

    fn abandon(&self, path: &StorePath) {
        self.state().gone.insert(path.clone());
        self.commit_ready();
    }

    fn finish(self) -> Result<Finished, StoreError> {
        self.commit_ready();
        let mut state = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        // What still waits needs a path that was never added.
        let left = std::mem::take(&mut state.staged);
        state.report.dropped.extend(left.into_keys());
        Ok(state.report)
    }
}

/// How many paths may wait staged at once: each holds two open files (its staging lock
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
