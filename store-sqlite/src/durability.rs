//! Durability: when a new path's files reach the disk, and what a power loss can cost.
//!
//! A crash of the process never damages a valid path: the staging protocol publishes a
//! path only when it is complete, and the kernel's page cache outlives the process. A
//! power loss (or a kernel crash) is different: files written but not flushed may come
//! back empty or missing while the registration that made them valid survives. Nix does
//! not guard against it (it flushes nothing), and a store can then hold valid paths
//! with zero-length files. Arca offers two ways to stay safe:
//!
//! - [`Durability::Immediate`]: one `syncfs` before every registration, so a path is on
//!   disk before it is valid. An add costs a flush (a few milliseconds on most disks),
//!   which a client adding small paths one at a time feels.
//! - [`Durability::Deferred`] (the default): registrations record themselves in the
//!   unsynced journal (`registry/unsynced.rs`) in their own transaction, with the current
//!   boot's id, and cost no flush. The handle's flusher thread (started by its first
//!   deferred registration, with a database connection of its own) flushes (`syncfs`,
//!   then deletes the records it covered) one second after the first registration not
//!   flushed yet, so that, busy or idle, a handle's adds reach the disk within about a
//!   second; [`LocalStore::sync`] flushes at once. When the handle is dropped, the thread
//!   still flushes at that time, and then ends: a long-lived program (the daemon's
//!   connections) gets it on disk within the second, a short one (a CLI invocation) that
//!   is gone by then leaves its records, and after a reboot they are checked instead.
//!   (The thread used to flush at once when its handle was dropped; a process cannot
//!   exit while one of its threads is in `syncfs`, so a command that had just written
//!   hundreds of MiB then waited for all of it to reach the disk, as often as that
//!   thread won the race to `syncfs` against the exit: a substitution took 0.5 s or
//!   1-1.5 s at random.) So that the journal cannot grow without end, a handle dropped while the
//!   journal holds records of this boot older than 30 seconds flushes them itself.
//!   When a store is opened after a reboot, the records left from the earlier
//!   boot name exactly the paths that may be damaged: each is checked against its NAR
//!   hash, and the damaged ones are invalidated and deleted, with every path that refers
//!   to them. So adds cost what they cost in Nix, and a valid path is intact all the
//!   same; what a power loss loses is the adds not flushed yet.
//!
//! Two other writers touch files of paths that are valid already, and flush first in
//! deferred mode too: optimise (a file replaced by a hard link must not point to an inode
//! whose bytes are not on disk) and repair (`replace_built`).
//!
//! The boot's id is the kernel's `/proc/sys/kernel/random/boot_id`; without it, deferred
//! mode falls back to immediate.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arca_store_core::{Store, StoreDir, StorePath};

use crate::error::{IoContext, StoreError};
use crate::local_store::{sync_filesystem, LocalStore};
use crate::lock::open_lock_file;
use crate::registry::Registry;
use crate::staging::remove_tree;

/// When a new path's files are flushed to disk. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Flush before every registration: nothing an add returned is lost on power loss.
    Immediate,
    /// Journal each registration; a thread of the handle flushes a second after it (or
    /// at once when the handle is dropped), [`LocalStore::sync`] at once; after a power
    /// loss, paths not yet flushed are checked and invalidated if damaged.
    #[default]
    Deferred,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(text: &str) -> Result<Durability, String> {
        match text {
            "immediate" => Ok(Durability::Immediate),
            "deferred" => Ok(Durability::Deferred),
            other => Err(format!(
                "unknown durability '{other}' (expected 'immediate' or 'deferred')"
            )),
        }
    }
}

/// How long after a deferred registration its handle's thread flushes it.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// A handle dropped while the journal holds records of this boot older than this flushes
/// them itself (the kernel has written most of their data back by then).
const FLUSH_AGE: Duration = Duration::from_secs(30);

/// The current boot's id, if the kernel tells it.
pub fn boot_id() -> Option<String> {
    let text = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = text.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// A store handle's flushing state, and in deferred mode its flusher thread.
#[derive(Debug)]
pub(crate) struct Flusher {
    /// The boot registrations are recorded under; `None` in immediate mode.
    boot: Option<String>,
    /// What the thread needs to open the registry and flush the store's file system.
    db_dir: PathBuf,
    store_dir: StoreDir,
    physical_store: PathBuf,
    shared: Arc<Shared>,
    /// Whether the thread runs (started by the first deferred registration).
    started: Mutex<bool>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<FlushState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct FlushState {
    /// The first registration not flushed yet.
    dirty_since: Option<Instant>,
    /// The handle is gone: flush what is left and end.
    closing: bool,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Flusher {
    /// A flusher for `durability` (deferred only when the boot id is known) of the store
    /// whose registry is in `db_dir` and whose files are in `physical_store`.
    pub(crate) fn new(
        durability: Durability,
        db_dir: &Path,
        store_dir: &StoreDir,
        physical_store: &Path,
    ) -> Flusher {
        let boot = match durability {
            Durability::Immediate => None,
            Durability::Deferred => boot_id(),
        };
        Flusher {
            boot,
            db_dir: db_dir.to_owned(),
            store_dir: store_dir.clone(),
            physical_store: physical_store.to_owned(),
            shared: Arc::default(),
            started: Mutex::new(false),
        }
    }

    /// The boot deferred registrations are recorded under (`None`: immediate mode).
    pub(crate) fn boot(&self) -> Option<&str> {
        self.boot.as_deref()
    }

    /// A deferred registration happened: the thread flushes it within a second.
    fn registered(&self) {
        let Some(boot) = &self.boot else { return };
        {
            let mut state = self.shared.state();
            state.dirty_since.get_or_insert_with(Instant::now);
        }
        self.shared.wake.notify_all();
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if !*started {
            let worker = Worker {
                boot: boot.clone(),
                db_dir: self.db_dir.clone(),
                store_dir: self.store_dir.clone(),
                physical_store: self.physical_store.clone(),
                shared: Arc::clone(&self.shared),
            };
            let spawned = std::thread::Builder::new()
                .name("arca-store-flusher".into())
                .spawn(move || worker.run());
            match spawned {
                Ok(_) => *started = true,
                Err(error) => tracing::warn!("cannot start the store's flusher: {error}"),
            }
        }
    }

    /// The handle is being dropped: the thread flushes what is left when it is due, and
    /// ends.
    fn close(&self) {
        self.shared.state().closing = true;
        self.shared.wake.notify_all();
    }
}

/// The flusher thread of one handle.
struct Worker {
    boot: String,
    db_dir: PathBuf,
    store_dir: StoreDir,
    physical_store: PathBuf,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(self) {
        let mut registry: Option<Registry> = None;
        loop {
            let closing = {
                let mut state = self.shared.state();
                loop {
                    match state.dirty_since {
                        None if state.closing => return,
                        None => {}
                        Some(since) => {
                            let due = since + FLUSH_INTERVAL;
                            let now = Instant::now();
                            if now >= due {
                                break;
                            }
                            state = self
                                .shared
                                .wake
                                .wait_timeout(state, due - now)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                            continue;
                        }
                    }
                    state = self
                        .shared
                        .wake
                        .wait(state)
                        .unwrap_or_else(|p| p.into_inner());
                }
                state.dirty_since = None;
                state.closing
            };
            if let Err(error) = self.flush(&mut registry) {
                tracing::warn!("cannot flush the store to disk: {error}");
            }
            if closing && self.shared.state().dirty_since.is_none() {
                return;
            }
        }
    }

    fn flush(&self, registry: &mut Option<Registry>) -> Result<(), StoreError> {
        if registry.is_none() {
            *registry = Some(Registry::open(&self.db_dir, self.store_dir.clone())?);
        }
        let Some(registry) = registry.as_mut() else {
            unreachable!("opened just above");
        };
        // Read before flushing: every record up to here belongs to a registration
        // committed already, whose files were written before it.
        let covered = registry.max_unsynced_id(&self.boot)?;
        sync_filesystem(&self.physical_store)?;
        if let Some(id) = covered {
            registry.mark_synced(&self.boot, id)?;
        }
        Ok(())
    }
}

impl LocalStore {
    /// How this store flushes new paths.
    pub fn durability(&self) -> Durability {
        if self.flusher().boot().is_some() {
            Durability::Deferred
        } else {
            Durability::Immediate
        }
    }

    /// Called with new paths complete under their staging names, just before they are
    /// published and registered: in immediate mode, flushes them.
    pub(crate) fn before_register(&self) -> Result<(), StoreError> {
        if self.flusher().boot().is_none() {
            sync_filesystem(self.physical_store())?;
        }
        Ok(())
    }

    /// Called after a registration: in deferred mode, has the handle's thread flush it
    /// within a second.
    pub(crate) fn after_register(&self) -> Result<(), StoreError> {
        self.flusher().registered();
        Ok(())
    }

    /// Flushes every path this handle registered (and whatever else is pending on the
    /// file system) to disk, and forgets their journal records. A no-op in immediate
    /// mode, or when nothing was registered since the last flush.
    pub fn sync(&self) -> Result<(), StoreError> {
        if self.flusher().shared.state().dirty_since.is_none() {
            return Ok(());
        }
        self.sync_now()
    }

    /// When the handle is dropped: its thread flushes what is left when due (not waited
    /// for), and records of this boot older than [`FLUSH_AGE`] are flushed here and now.
    pub(crate) fn on_drop(&self) -> Result<(), StoreError> {
        self.flusher().close();
        let Some(boot) = self.flusher().boot() else {
            return Ok(());
        };
        let Some(oldest) = self.registry().oldest_unsynced_time(boot)? else {
            return Ok(());
        };
        let age = crate::local_store::now().saturating_sub(oldest);
        if u64::try_from(age).unwrap_or(0) >= FLUSH_AGE.as_secs() {
            self.sync_now()?;
        }
        Ok(())
    }

    /// Flushes the file system now, whatever this handle did; in deferred mode, forgets
    /// the journal records the flush covered (every process's).
    pub(crate) fn sync_now(&self) -> Result<(), StoreError> {
        let Some(boot) = self.flusher().boot() else {
            return sync_filesystem(self.physical_store());
        };
        // Read before flushing: every record up to here belongs to a registration
        // committed already, whose files were written before it.
        let covered = self.registry().max_unsynced_id(boot)?;
        self.flusher().shared.state().dirty_since = None;
        sync_filesystem(self.physical_store())?;
        if let Some(id) = covered {
            self.registry().mark_synced(boot, id)?;
        }
        Ok(())
    }

    /// After a power loss: checks every path recorded unsynced in an earlier boot against
    /// its NAR hash, and invalidates and deletes the damaged ones together with every
    /// path that refers to them. Run by [`LocalStore::open_with`]; returns the paths
    /// invalidated, in no particular order. Cheap when there is nothing to check (one
    /// query).
    pub fn recover_unsynced(&self) -> Result<Vec<StorePath>, StoreError> {
        // Even an immediate-mode handle recovers what deferred ones left.
        let Some(boot) = boot_id() else {
            return Ok(Vec::new());
        };
        if self.registry().unsynced_before(&boot)?.is_empty() {
            return Ok(Vec::new());
        }
        // One recovery at a time; whoever comes second finds the records gone.
        let lock_path = self.state_dir().join("db/arca-recovery.lock");
        let lock = open_lock_file(&lock_path)?;
        lock.lock().at(&lock_path)?;
        let suspects = self.registry().unsynced_before(&boot)?;
        let mut damaged = BTreeSet::new();
        for suspect in &suspects {
            let physical = self.physical_path(&suspect.path);
            let intact = match crate::nar_hash_of(&physical) {
                Ok((hash, size)) => {
                    hash == suspect.nar_hash && (suspect.nar_size == 0 || size == suspect.nar_size)
                }
                Err(_) => false,
            };
            if !intact {
                tracing::warn!(
                    "'{}' was damaged by a power loss before it reached the disk; invalidating it",
                    self.store_dir().display(&suspect.path)
                );
                damaged.insert(suspect.path.clone());
            }
        }
        let invalid = if damaged.is_empty() {
            Vec::new()
        } else {
            self.invalidate_with_referrers(&damaged)?
        };
        self.registry().forget_unsynced_before(&boot)?;
        drop(lock);
        Ok(invalid)
    }

    /// Unregisters `paths` and every valid path referring to them, referrers first, and
    /// deletes their files.
    fn invalidate_with_referrers(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<Vec<StorePath>, StoreError> {
        let all: Vec<StorePath> = self
            .registry()
            .referrers_closure(paths)?
            .into_iter()
            .collect();
        let _locks = all
            .iter()
            .map(|path| self.lock_path(path))
            .collect::<Result<Vec<_>, _>>()?;
        let mut left = all.clone();
        // Each round removes the paths nothing left refers to.
        while !left.is_empty() {
            let removed = self.registry().unregister_many(&left)?;
            let before = left.len();
            left = left
                .into_iter()
                .zip(removed)
                .filter_map(|(path, gone)| (!gone).then_some(path))
                .collect();
            if left.len() == before {
                // Only a path registered meanwhile, referring to a damaged one, can
                // stop this.
                let referrer = self.registry().referrers(&left[0])?;
                return Err(StoreError::StillReferenced {
                    path: self.store_dir().display(&left[0]),
                    referrer: referrer
                        .iter()
                        .find(|r| !all.contains(r))
                        .map(|r| self.store_dir().display(r))
                        .unwrap_or_default(),
                });
            }
        }
        for path in &all {
            let physical = self.physical_path(path);
            remove_tree(&physical).at(&physical)?;
        }
        Ok(all)
    }
}
