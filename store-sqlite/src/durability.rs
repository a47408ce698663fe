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
//!   boot's id. A flush (`syncfs`, then deleting the records it covered) happens at the
//!   handle's first registration a second or more after its last flush, and when the
//!   store handle is dropped or [`LocalStore::sync`] is called; there is no timer, so
//!   an idle handle keeps its records until then. When a store is opened after a reboot, the records left from the earlier
//!   boot name exactly the paths that may be damaged: each is checked against its NAR
//!   hash, and the damaged ones are invalidated and deleted, with every path that refers
//!   to them. So adds cost what they cost in Nix, and a valid path is intact all the
//!   same; what a power loss loses is the adds not flushed yet (of a busy handle, at most
//!   the last second's).
//!
//! Two other writers touch files of paths that are valid already, and flush first in
//! deferred mode too: optimise (a file replaced by a hard link must not point to an inode
//! whose bytes are not on disk) and repair (`replace_built`).
//!
//! The boot's id is the kernel's `/proc/sys/kernel/random/boot_id`; without it, deferred
//! mode falls back to immediate.

use std::collections::BTreeSet;
use std::fs;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arca_store_core::{Store, StorePath};

use crate::error::{IoContext, StoreError};
use crate::local_store::{sync_filesystem, LocalStore};
use crate::lock::open_lock_file;
use crate::staging::remove_tree;

/// When a new path's files are flushed to disk. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Flush before every registration: nothing an add returned is lost on power loss.
    Immediate,
    /// Journal each registration; flush at the handle's first registration a second or
    /// more after its last flush, when the store is dropped, or on [`LocalStore::sync`];
    /// after a power loss, paths not yet flushed are checked and invalidated if damaged.
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

/// The longest a deferred registration waits for its flush while the handle is busy.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The current boot's id, if the kernel tells it.
pub fn boot_id() -> Option<String> {
    let text = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = text.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// A store handle's flushing state.
#[derive(Debug)]
pub(crate) struct Flusher {
    /// The boot registrations are recorded under; `None` in immediate mode.
    boot: Option<String>,
    state: Mutex<FlushState>,
}

#[derive(Debug)]
struct FlushState {
    /// Whether this handle registered paths since its last flush.
    dirty: bool,
    last_flush: Instant,
}

impl Flusher {
    /// A flusher for `durability` (deferred only when the boot id is known).
    pub(crate) fn new(durability: Durability) -> Flusher {
        let boot = match durability {
            Durability::Immediate => None,
            Durability::Deferred => boot_id(),
        };
        Flusher {
            boot,
            state: Mutex::new(FlushState {
                dirty: false,
                last_flush: Instant::now(),
            }),
        }
    }

    /// The boot deferred registrations are recorded under (`None`: immediate mode).
    pub(crate) fn boot(&self) -> Option<&str> {
        self.boot.as_deref()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Called after a registration: in deferred mode, flushes if the last flush is more
    /// than a second old.
    pub(crate) fn after_register(&self) -> Result<(), StoreError> {
        if self.flusher().boot().is_none() {
            return Ok(());
        }
        let due = {
            let mut state = self.flusher().state();
            state.dirty = true;
            state.last_flush.elapsed() >= FLUSH_INTERVAL
        };
        if due {
            self.sync()?;
        }
        Ok(())
    }

    /// Flushes every path this handle registered (and whatever else is pending on the
    /// file system) to disk, and forgets their journal records. A no-op in immediate
    /// mode, or when nothing was registered since the last flush.
    pub fn sync(&self) -> Result<(), StoreError> {
        if !self.flusher().state().dirty {
            return Ok(());
        }
        self.sync_now()
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
        {
            let mut state = self.flusher().state();
            state.dirty = false;
            state.last_flush = Instant::now();
        }
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
