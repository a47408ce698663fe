//! Retrying transactions that SQLite refused because another connection held a lock.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::ErrorCode;

use crate::error::StoreError;

/// The longest single sleep between attempts (Nix sleeps up to 0.1 s).
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Whether `error` only means "someone else holds the lock, try again": `SQLITE_BUSY`
/// (with any extended code, e.g. `BUSY_SNAPSHOT`, `BUSY_RECOVERY`) or `SQLITE_PROTOCOL`,
/// which Nix saw under heavy load on Hydra when WAL locks race.
pub fn is_contention(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::FileLockingProtocolFailed)
    )
}

/// Runs `op` until it returns something other than contention, sleeping a short random
/// while between attempts. `op` must be a whole transaction (or a single statement), so
/// that a retry starts from scratch: the failed attempt was rolled back.
///
/// Like Nix's `retrySQLite`, this never gives up while the database is merely contended;
/// real errors are returned at once.
pub fn retry<T>(mut op: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let mut attempt: u32 = 0;
    loop {
        match op() {
            Err(e) if is_contention(&e) => {
                thread::sleep(backoff(attempt));
                attempt = attempt.saturating_add(1);
            }
            result => return result,
        }
    }
}

/// A random sleep in `[0, min(2^attempt ms, 100 ms))`. Randomness comes from the clock,
/// the process id and std's per-hasher random keys, mixed by SipHash: enough to keep
/// contending processes from retrying in lock step, without a `rand` dependency.
fn backoff(attempt: u32) -> Duration {
    let cap_ms = 1u64
        .checked_shl(attempt.min(16))
        .unwrap_or(u64::MAX)
        .min(MAX_BACKOFF.as_millis() as u64);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.write_u32(attempt);
    Duration::from_micros(hasher.finish() % (cap_ms * 1000).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_below_the_cap() {
        for attempt in [0, 1, 5, 10, 40, u32::MAX] {
            assert!(backoff(attempt) < MAX_BACKOFF);
        }
        assert!(backoff(0) < Duration::from_millis(1));
    }

    #[test]
    fn busy_and_protocol_errors_count_as_contention() {
        let sqlite = |code| {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
        };
        assert!(is_contention(&sqlite(rusqlite::ffi::SQLITE_BUSY)));
        assert!(is_contention(&sqlite(rusqlite::ffi::SQLITE_BUSY_SNAPSHOT)));
        assert!(is_contention(&sqlite(rusqlite::ffi::SQLITE_PROTOCOL)));
        assert!(!is_contention(&sqlite(rusqlite::ffi::SQLITE_CONSTRAINT)));
        assert!(!is_contention(&StoreError::InvalidPath("x".into())));
    }
}
