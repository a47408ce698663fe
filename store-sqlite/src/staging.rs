//! Staging: where a path is written before it becomes visible under its final name.
//!
//! Every path enters the store as `<store>/.arca-staging/<nonce>` (the tree)
//! guarded by `<store>/.arca-staging/<nonce>.lock`, which its writer holds from start to finish and
//! into which it writes the final base name just before the rename. The protocol:
//!
//! 1. write and canonicalise the tree under its staging name, record the final name in
//!    the lock file, and flush both (`syncfs`, once for a whole batch) when the store's
//!    durability is immediate (deferred durability journals the registration instead);
//! 2. (nothing else may happen between flushing and renaming);
//! 3. rename the tree to its final name;
//! 4. register it in one transaction;
//! 5. delete the lock file and release it.
//!
//! A crash anywhere leaves a lock file nobody holds. [`clean_stale`] (run when a store is
//! opened) takes each such lock, deletes the staged tree and, when the final name exists
//! but was never registered (a crash between 3 and 4), the unregistered path too. So a
//! path is either absent or complete and valid, never half there.
//!
//! An import stages each batch of paths as a [`StagedGroup`]: one lock file for the
//! batch, `<nonce>.lock`, into which each final name is appended (a line each), and one
//! directory, `<nonce>/`, holding the trees. The protocol and the cleanup are the same,
//! name by name; what is saved is a lock file created and deleted per path.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arca_store_core::StorePath;

use crate::error::{IoContext, StoreError};
use crate::lock::PathLock;

/// The staging directory, in the physical store directory. It is made by the first
/// writer that needs it and removed, when empty, by a garbage collection, so that a
/// store whose every path was collected holds nothing but Nix's `.links`, as Nix's does.
/// (Not inside `.links`: `nix-store --verify --check-contents` checks every entry there.)
pub const STAGING_DIR: &str = ".arca-staging";

/// The store directory of an entry of the staging directory ([`STAGING_DIR`] levels up).
fn store_of_staging(entry: &Path) -> Option<&Path> {
    let depth = Path::new(STAGING_DIR).components().count();
    entry.ancestors().nth(depth + 1)
}

/// Makes the staging directory. Nobody but the staging area's
/// owner may list it (mode 0711): the names being written
/// are not for others to learn. Search permission stays, because a build's sandbox
/// bind-mounts its scratch directory from inside it with the build user's credentials;
/// each entry guards itself (a build's `<nonce>` is 0750 with the build's own group, an
/// add's tree is what the store will show anyway). A store opened by someone else than
/// the staging area's owner leaves it as it is.
pub(crate) fn create_staging_dir(staging_dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    fs::create_dir_all(staging_dir).at(staging_dir)?;
    let metadata = fs::symlink_metadata(staging_dir).at(staging_dir)?;
    if metadata.uid() == nix::unistd::geteuid().as_raw() && metadata.mode() & 0o7777 != 0o711 {
        fs::set_permissions(staging_dir, fs::Permissions::from_mode(0o711)).at(staging_dir)?;
    }
    Ok(())
}

/// One staged path being written: alone, under a lock of its own, or as a member of a
/// [`StagedGroup`].
#[derive(Debug)]
pub struct Staged {
    tree: PathBuf,
    /// The store directory.
    store: PathBuf,
    guard: Guard,
    /// The final name, once recorded.
    target: OnceLock<StorePath>,
    finished: bool,
}

#[derive(Debug)]
enum Guard {
    /// `<nonce>.lock` beside the tree, holding its final name.
    Own { lock_path: PathBuf, lock: PathLock },
    /// The group's lock, holding the final names of all its members.
    Member(Arc<StagedGroup>),
}

/// Several paths staged under one lock (the batch of an import): `<nonce>.lock` records
/// their final names, a line each, and `<nonce>/` holds their trees (`<nonce>/0`,
/// `<nonce>/1`, …). Recovery after a crash is the same as for a path alone
/// ([`clean_stale`]): every recorded name found unregistered is removed, then
/// `<nonce>`. One lock file for the whole batch instead of one per path: an import of
/// many small paths spends most of its time creating and deleting files.
#[derive(Debug)]
pub struct StagedGroup {
    dir: PathBuf,
    store: PathBuf,
    lock_path: PathBuf,
    lock: PathLock,
    /// How many members were made; and where the next recorded name goes.
    members: AtomicU64,
    recorded: Mutex<u64>,
}

/// A fresh, unique name in the staging directory, and its lock, taken.
fn reserve(staging_dir: &Path) -> Result<(String, PathBuf, PathLock), StoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let nonce = format!(
        "{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let lock_path = staging_dir.join(format!("{nonce}.lock"));
    let lock = match PathLock::acquire_staging(&lock_path) {
        // Not made yet, or a garbage collection removed it when it was empty.
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            create_staging_dir(staging_dir)?;
            PathLock::acquire_staging(&lock_path)?
        }
        other => other?,
    };
    Ok((nonce, lock_path, lock))
}

/// The store directory of the staging directory.
fn store_of(staging_dir: &Path) -> PathBuf {
    store_of_staging(&staging_dir.join("x"))
        .unwrap_or(staging_dir)
        .to_owned()
}

impl StagedGroup {
    /// Reserves a fresh group in `staging_dir`.
    pub fn new(staging_dir: &Path) -> Result<Arc<StagedGroup>, StoreError> {
        let (nonce, lock_path, lock) = reserve(staging_dir)?;
        let dir = staging_dir.join(nonce);
        fs::create_dir(&dir).at(&dir)?;
        Ok(Arc::new(StagedGroup {
            dir,
            store: store_of(staging_dir),
            lock_path,
            lock,
            members: AtomicU64::new(0),
            recorded: Mutex::new(0),
        }))
    }

    /// Appends `path` to the recorded names.
    fn record(&self, path: &StorePath) -> Result<(), StoreError> {
        let line = format!("{}\n", path.as_str());
        let mut offset = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        self.lock
            .file()
            .write_all_at(line.as_bytes(), *offset)
            .at(&self.lock_path)?;
        *offset += line.len() as u64;
        Ok(())
    }
}

impl Drop for StagedGroup {
    fn drop(&mut self) {
        // Every member is finished (its tree moved away) or dropped (its tree removed):
        // what is left goes before the lock file does, which `lock` deletes after this.
        let _ = remove_tree(&self.dir);
    }
}

impl Staged {
    /// Reserves a fresh staging name in `staging_dir`, under a lock of its own.
    pub fn new(staging_dir: &Path) -> Result<Staged, StoreError> {
        let (nonce, lock_path, lock) = reserve(staging_dir)?;
        Ok(Staged {
            tree: staging_dir.join(nonce),
            store: store_of(staging_dir),
            guard: Guard::Own { lock_path, lock },
            target: OnceLock::new(),
            finished: false,
        })
    }

    /// A new member of `group`.
    pub fn member(group: &Arc<StagedGroup>) -> Staged {
        let index = group.members.fetch_add(1, Ordering::Relaxed);
        Staged {
            tree: group.dir.join(index.to_string()),
            store: group.store.clone(),
            guard: Guard::Member(group.clone()),
            target: OnceLock::new(),
            finished: false,
        }
    }

    /// Where to write the tree.
    pub fn tree(&self) -> &Path {
        &self.tree
    }

    /// Records the final name of the staged tree in its lock file, so that a crash after
    /// the rename can be undone. Flushed by the caller's `syncfs` before the rename (immediate durability).
    pub fn record_target(&self, path: &StorePath) -> Result<(), StoreError> {
        match &self.guard {
            // Through the descriptor the lock is held on: no second open.
            Guard::Own { lock_path, lock } => {
                let name = path.as_str().as_bytes();
                lock.file()
                    .write_all_at(name, 0)
                    .and_then(|()| lock.file().set_len(name.len() as u64))
                    .at(lock_path)?;
            }
            Guard::Member(group) => group.record(path)?,
        }
        let _ = self.target.set(path.clone());
        Ok(())
    }

    /// Moves the staged tree to `destination`, its final name (recorded before). An
    /// unregistered leftover at that name (a crash of real Nix, or of a writer killed
    /// before staging existed) is garbage: it is replaced. The caller holds the path's
    /// lock and has seen it invalid.
    pub fn publish(&self, destination: &Path) -> Result<(), StoreError> {
        // The common case costs one rename; the others are found by its error.
        let error = match fs::rename(&self.tree, destination) {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        match error.raw_os_error().map(nix::errno::Errno::from_raw) {
            // Something at the final name that a rename cannot replace; or a canonical
            // (0555) directory, which only root may move to another parent (that
            // rewrites its `..` entry).
            Some(
                nix::errno::Errno::EEXIST
                | nix::errno::Errno::ENOTEMPTY
                | nix::errno::Errno::ENOTDIR
                | nix::errno::Errno::EISDIR
                | nix::errno::Errno::EACCES,
            ) => {
                remove_tree(destination).at(destination)?;
                self.publish_read_only(destination)
            }
            _ => Err(error).at(destination),
        }
    }

    /// [`Staged::publish`] for a read-only directory: opened for the move and closed
    /// again right after; registration comes later, so a crash in between leaves an
    /// unregistered path for cleanup.
    fn publish_read_only(&self, destination: &Path) -> Result<(), StoreError> {
        let metadata = fs::symlink_metadata(&self.tree).at(&self.tree)?;
        let reopen = metadata.is_dir() && metadata.permissions().mode() & 0o200 == 0;
        if reopen {
            fs::set_permissions(
                &self.tree,
                fs::Permissions::from_mode(metadata.permissions().mode() | 0o200),
            )
            .at(&self.tree)?;
        }
        fs::rename(&self.tree, destination).at(destination)?;
        if reopen {
            fs::set_permissions(destination, metadata.permissions()).at(destination)?;
        }
        Ok(())
    }

    /// The path is registered: forget it (its lock file goes away with the lock, or
    /// with the group's).
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.finished {
            // Abandoned (an error): remove what was staged, and what was published
            // already under the recorded name. (A crash instead leaves the lock file,
            // and `clean_stale` does the same at the next open.)
            let _ = remove_tree(&self.tree);
            if let Some(target) = self.target.get() {
                let _ = remove_tree(&self.store.join(target.as_str()));
            }
        }
    }
}

/// Cleans up after writers that crashed: see the module documentation. `is_valid` tells
/// whether a base name is registered.
pub fn clean_stale(
    staging_dir: &Path,
    store: &Path,
    is_valid: impl Fn(&StorePath) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let entries = match fs::read_dir(staging_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(StoreError::Io {
                path: staging_dir.to_owned(),
                source: error,
            })
        }
    };
    for entry in entries {
        let entry = entry.at(staging_dir)?;
        let name = entry.file_name();
        let Some(nonce) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        let lock_path = entry.path();
        let Some(lock) = PathLock::try_acquire_staging(&lock_path)? else {
            continue; // its writer is alive
        };
        let mut recorded = String::new();
        if let Ok(mut file) = File::open(&lock_path) {
            let _ = file.seek(SeekFrom::Start(0));
            let _ = file.read_to_string(&mut recorded);
        }
        // One name (a path alone) or a line each (a group).
        for name in recorded.lines() {
            let Ok(path) = StorePath::from_base_name(name.trim()) else {
                continue;
            };
            // Another writer may be publishing the same path right now (it holds the
            // path's lock from before its rename until after it registers): leave it be.
            let path_lock = store.join(format!("{}.lock", path.as_str()));
            if let Some(_held) = PathLock::try_acquire(&path_lock)? {
                let destination = store.join(path.as_str());
                if destination.symlink_metadata().is_ok() && !is_valid(&path)? {
                    remove_tree(&destination).at(&destination)?;
                }
            }
        }
        let tree = staging_dir.join(nonce);
        remove_tree(&tree).at(&tree)?;
        drop(lock);
    }
    // Trees whose lock file is gone (crash between unlinking the lock and... nothing
    // else creates them): anything without a lock file is garbage.
    for entry in fs::read_dir(staging_dir).at(staging_dir)? {
        let entry = entry.at(staging_dir)?;
        let path = entry.path();
        let lock_exists = staging_dir
            .join(format!("{}.lock", entry.file_name().to_string_lossy()))
            .exists();
        if path.extension().is_none_or(|e| e != "lock") && !lock_exists {
            remove_tree(&path).at(&path)?;
        }
    }
    Ok(())
}

/// Removes a tree of read-only directories (store paths are 0555) without following
/// symlinks. Missing is fine.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !metadata.is_dir() {
        return fs::remove_file(path);
    }
    // Make every directory writable first, so the removal works when not root.
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    fs::remove_dir_all(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_removes_an_unregistered_path_only_when_nobody_is_publishing_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path();
        let staging = store.join(STAGING_DIR);
        fs::create_dir_all(&staging).unwrap();
        let path = StorePath::from_base_name(&format!("{}-x", "0".repeat(32))).unwrap();
        let destination = store.join(path.as_str());
        let never_valid = |_: &StorePath| Ok(false);

        // A crashed writer renamed `path` into place but never registered it, while a
        // second writer is publishing the same path right now (it holds the path lock).
        fs::create_dir(&destination).unwrap();
        fs::write(staging.join("1-crashed.lock"), path.as_str()).unwrap();
        let publishing = PathLock::acquire(&store.join(format!("{}.lock", path.as_str()))).unwrap();
        clean_stale(&staging, store, never_valid).unwrap();
        assert!(destination.exists(), "a path being published is left alone");
        assert!(!staging.join("1-crashed.lock").exists());
        drop(publishing);

        // Nobody publishes it any more: the unregistered path is garbage.
        fs::write(staging.join("2-crashed.lock"), path.as_str()).unwrap();
        fs::create_dir(staging.join("2-crashed")).unwrap();
        clean_stale(&staging, store, never_valid).unwrap();
        assert!(!destination.exists());
        assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
    }

    #[test]
    fn a_group_records_every_name_and_cleanup_undoes_a_crashed_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path();
        let staging = store.join(STAGING_DIR);
        fs::create_dir_all(&staging).unwrap();
        let path = |c: char| {
            StorePath::from_base_name(&format!("{}-x", c.to_string().repeat(32))).unwrap()
        };
        let (a, b, c) = (path('a'), path('b'), path('c'));

        // Three members: `a` published and finished, `b` published then abandoned (its
        // registration failed), `c` staged only.
        let group = StagedGroup::new(&staging).unwrap();
        let members: Vec<Staged> = (0..3).map(|_| Staged::member(&group)).collect();
        for (member, path) in members.iter().zip([&a, &b, &c]) {
            fs::write(member.tree(), path.as_str()).unwrap();
        }
        let mut members = members.into_iter();
        let (first, second, third) = (
            members.next().unwrap(),
            members.next().unwrap(),
            members.next().unwrap(),
        );
        for (member, path) in [(&first, &a), (&second, &b)] {
            member.record_target(path).unwrap();
            member.publish(&store.join(path.as_str())).unwrap();
        }
        let lock_file = group.lock_path.clone();
        assert_eq!(
            fs::read_to_string(&lock_file).unwrap(),
            format!("{}\n{}\n", a.as_str(), b.as_str())
        );
        first.finish();
        drop(second);
        assert!(
            !store.join(b.as_str()).exists(),
            "an abandoned member's path goes"
        );
        assert!(store.join(a.as_str()).exists());
        drop(third);
        drop(group);
        assert_eq!(
            fs::read_dir(&staging).unwrap().count(),
            0,
            "the group leaves nothing"
        );

        // A crash after publishing: the lock file and the group's directory remain.
        // Cleanup removes each recorded name that is not registered.
        fs::write(
            staging.join("9-crashed.lock"),
            format!("{}\n{}\n", a.as_str(), c.as_str()),
        )
        .unwrap();
        fs::create_dir_all(staging.join("9-crashed")).unwrap();
        fs::write(staging.join("9-crashed/2"), "left").unwrap();
        fs::write(store.join(c.as_str()), "published, never registered").unwrap();
        clean_stale(&staging, store, |path| Ok(*path == a)).unwrap();
        assert!(store.join(a.as_str()).exists(), "a registered path stays");
        assert!(!store.join(c.as_str()).exists());
        assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
    }
}
