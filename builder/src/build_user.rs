//! Host ids for builds run as root: every running build gets a uid and a gid that no
//! other running build has, on this machine, in any Arca process (Nix's build users, in
//! the shape of its `auto-allocate-uids`).
//!
//! Two builds sharing a host uid could reach each other's files: the one with network
//! (a fixed-output build) could open the other's output for writing before it is
//! registered and hand the descriptor to anyone. With distinct ids, a build's scratch
//! directory (group-only), build directory (owner-only) and files are out of reach of
//! every other build.
//!
//! Slot `i` of the range is the uid and gid `first_id + i * IDS_PER_SLOT`; a build holds
//! its slot with an exclusive `flock` on `<lock_dir>/slot-<i>` while it runs and until
//! its leftovers are removed. The lock directory is machine-wide (`/run/arca/build-users`
//! by default) rather than per store, so builds into two stores never share ids either.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// Ids between the slots' first ids, left free so that a later `uid-range` build can own
/// a whole range (as in Nix, 65536 per build).
pub const IDS_PER_SLOT: u32 = 1 << 16;

/// Where the ids of root builds come from ([`crate::BuildOptions::build_users`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildUsers {
    /// The first host id of the range: Nix's `auto-allocate-uids` start, 872415232, used
    /// by no account.
    pub first_id: u32,
    /// How many builds may hold ids at once (256 spans Nix's default 2^24 ids); a build
    /// waits for a free slot beyond that.
    pub slots: u32,
    /// The directory of the slot lock files, shared by every Arca process on the machine.
    pub lock_dir: PathBuf,
}

impl Default for BuildUsers {
    fn default() -> Self {
        BuildUsers {
            first_id: 872_415_232,
            slots: 256,
            lock_dir: PathBuf::from("/run/arca/build-users"),
        }
    }
}

/// The ids one build holds; released when dropped.
#[derive(Debug)]
pub(crate) struct BuildUser {
    pub uid: u32,
    pub gid: u32,
    _lock: Flock<File>,
}

impl BuildUsers {
    /// Takes a free slot, waiting for one when all are held.
    pub(crate) fn acquire(&self) -> io::Result<BuildUser> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.lock_dir)?;
        loop {
            for slot in 0..self.slots {
                if let Some(user) = self.try_slot(slot)? {
                    return Ok(user);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_slot(&self, slot: u32) -> io::Result<Option<BuildUser>> {
        let id = slot
            .checked_mul(IDS_PER_SLOT)
            .and_then(|offset| self.first_id.checked_add(offset))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("build user slot {slot} lies beyond the largest id"),
                )
            })?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(slot_file(&self.lock_dir, slot))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(BuildUser {
                uid: id,
                gid: id,
                _lock: lock,
            })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(errno.into()),
        }
    }
}

/// A member of `build-users-group` held for one unsandboxed build run as root (Nix's
/// `UserLock`): the builder runs as this account, with the group's gid, and nothing else
/// runs as it meanwhile. Held with two exclusive `flock`s: on `<store lock dir>/<uid>`
/// (Nix's `/nix/var/nix/userpool/<uid>`, so that Nix's daemon and Arca's on one store
/// share the pool) and on `<machine lock dir>/pool-<uid>` (so that Arca's daemons on two
/// stores of one machine do not both build as one account, killing each other's
/// processes).
#[derive(Debug)]
pub(crate) struct PoolUser {
    pub uid: u32,
    pub gid: u32,
    _locks: [Flock<File>; 2],
}

/// Takes a member of `group` that no other build holds, waiting while all are held.
/// Fails, with Nix's words, when the group does not exist, has no members, names an
/// account that does not exist, or has the caller among its members.
pub(crate) fn acquire_pool_user(
    group: &str,
    store_lock_dir: &Path,
    machine_lock_dir: &Path,
) -> io::Result<PoolUser> {
    let error = |message: String| io::Error::new(io::ErrorKind::NotFound, message);
    let found = nix::unistd::Group::from_name(group)
        .map_err(io::Error::from)?
        .ok_or_else(|| {
            error(format!(
                "the group '{group}' specified in 'build-users-group' does not exist"
            ))
        })?;
    if found.mem.is_empty() {
        return Err(error(format!(
            "the build users group '{group}' has no members"
        )));
    }
    let mut users = Vec::with_capacity(found.mem.len());
    for name in &found.mem {
        let user = nix::unistd::User::from_name(name)
            .map_err(io::Error::from)?
            .ok_or_else(|| {
                error(format!(
                    "the user '{name}' in the group '{group}' does not exist"
                ))
            })?;
        let uid = user.uid.as_raw();
        if uid == 0
            || uid == nix::unistd::getuid().as_raw()
            || uid == nix::unistd::geteuid().as_raw()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the Nix user should not be a member of '{group}'"),
            ));
        }
        users.push(uid);
    }
    for dir in [store_lock_dir, machine_lock_dir] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    loop {
        for &uid in &users {
            let Some(machine) = try_lock(&machine_lock_dir.join(format!("pool-{uid}")))? else {
                continue;
            };
            let Some(store) = try_lock(&store_lock_dir.join(uid.to_string()))? else {
                continue;
            };
            return Ok(PoolUser {
                uid,
                gid: found.gid.as_raw(),
                _locks: [machine, store],
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An exclusive `flock` on `path` (created if missing), or `None` when another holds it.
fn try_lock(path: &Path) -> io::Result<Option<Flock<File>>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(errno.into()),
    }
}

fn slot_file(dir: &Path, slot: u32) -> PathBuf {
    dir.join(format!("slot-{slot}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_holders_get_distinct_ids_and_a_released_slot_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let users = BuildUsers {
            lock_dir: dir.path().join("locks"),
            ..BuildUsers::default()
        };
        let a = users.acquire().unwrap();
        let b = users.acquire().unwrap();
        assert_eq!((a.uid, a.gid), (872_415_232, 872_415_232));
        assert_eq!(b.uid, 872_415_232 + IDS_PER_SLOT);
        assert_eq!(b.uid, b.gid);
        drop(a);
        let c = users.acquire().unwrap();
        assert_eq!(c.uid, 872_415_232);
        // A second process's locks exclude ours too: flock locks belong to the open
        // file, so a fresh open of a held slot cannot take it.
        assert!(users.try_slot(0).unwrap().is_none());
        assert!(users.try_slot(1).unwrap().is_none());
        assert!(users.try_slot(2).unwrap().is_some());
    }

    #[test]
    fn a_full_pool_waits_for_a_slot() {
        let dir = tempfile::tempdir().unwrap();
        let users = BuildUsers {
            lock_dir: dir.path().join("locks"),
            slots: 1,
            ..BuildUsers::default()
        };
        let held = users.acquire().unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| users.acquire().unwrap().uid);
            std::thread::sleep(Duration::from_millis(200));
            assert!(!waiter.is_finished(), "a second build took the only slot");
            drop(held);
            assert_eq!(waiter.join().unwrap(), 872_415_232);
        });
    }
}
