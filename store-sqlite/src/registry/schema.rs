//! The registry's on-disk layout as Nix 2.8 makes it: `db.sqlite` with Nix's schema, the
//! `schema` version file, `big-lock` and `reserved`, and the connection pragmas.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::retry::retry;
use crate::error::{IoContext, StoreError};
use crate::lock::open_lock_file;

/// The registry schema version Nix 2.8 writes into `db/schema` (and the only one we read).
pub const NIX_SCHEMA_VERSION: u32 = 10;

/// Nix 2.8's `schema.sql`, statement for statement. SQLite keeps the text of each `create`
/// from the object's name on, and rewrites `create table if not exists` to `CREATE TABLE`,
/// so `sqlite_master` of a database made from this text is identical to one made by Nix
/// (checked by a test against a database real Nix creates).
pub const SCHEMA: &str = r#"create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- Paths can refer to themselves, causing a tuple (N, N) in the Refs
-- table.  This causes a deletion of the corresponding row in
-- ValidPaths to cause a foreign key constraint violation (due to `on
-- delete restrict' on the `reference' column).  Therefore, explicitly
-- get rid of self-references.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
"#;

/// Nix's default `reserved-size`: space kept in `db/reserved` so that the garbage
/// collector can still open the database on a full disk (it deletes the file first).
pub const RESERVED_SIZE: u64 = 8 * 1024 * 1024;

/// Nix waits up to an hour for a lock on the database before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// What `prepare_db_dir` found: whether the store is new (no `schema` file yet).
pub struct DbDirState {
    pub is_new: bool,
}

/// Creates `db_dir`, `big-lock` and `reserved` as Nix does, and checks the `schema` file.
pub fn prepare_db_dir(db_dir: &Path) -> Result<DbDirState, StoreError> {
    fs::create_dir_all(db_dir).at(db_dir)?;

    let schema_path = db_dir.join("schema");
    let is_new = match fs::read_to_string(&schema_path) {
        Ok(text) => {
            // Nix writes the bare number; it would call "10\n" corrupt, we are lenient.
            if text.trim() != NIX_SCHEMA_VERSION.to_string() {
                return Err(StoreError::SchemaVersion {
                    path: schema_path,
                    found: text.trim().to_owned(),
                    expected: NIX_SCHEMA_VERSION,
                });
            }
            false
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => return Err(e).at(schema_path),
    };

    // Nix opens (creating) the big lock with mode 0600 and never truncates it.
    open_lock_file(&db_dir.join("big-lock"))?;

    // Like Nix, failing to reserve space is not an error: the file only helps GC later.
    let _ = ensure_reserved(&db_dir.join("reserved"));

    Ok(DbDirState { is_new })
}

/// Makes `reserved` exactly [`RESERVED_SIZE`] bytes of allocated space if it is missing or
/// of another size (Nix does the same on every store open).
fn ensure_reserved(path: &Path) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(meta) if meta.len() == RESERVED_SIZE => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    // posix_fallocate really allocates the blocks; a sparse file would reserve nothing.
    let len = RESERVED_SIZE as nix::libc::off_t;
    if nix::fcntl::posix_fallocate(file.as_raw_fd(), 0, len).is_err() {
        file.write_all(&vec![b'X'; RESERVED_SIZE as usize])?;
        file.set_len(RESERVED_SIZE)?;
    }
    Ok(())
}

/// Writes the `schema` file atomically (temporary file + rename), so that a concurrent
/// opener never reads it half-written and mistakes it for another version.
pub fn write_schema_file(db_dir: &Path) -> Result<(), StoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = db_dir.join(format!(
        ".schema.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&tmp, NIX_SCHEMA_VERSION.to_string()).at(&tmp)?;
    let target = db_dir.join("schema");
    fs::rename(&tmp, &target).at(target)
}

/// Sets Nix 2.8's pragmas (`SQLite::SQLite` and `LocalStore::openDB`): an hour's busy
/// timeout, foreign keys, `synchronous = normal`, WAL, and a WAL auto-checkpoint every
/// 40000 pages. Creates the schema when `create` is set.
pub fn configure(conn: &mut Connection, create: bool) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // More than the statements we prepare, so none is ever evicted and re-prepared.
    conn.set_prepared_statement_cache_capacity(64);
    retry(|| {
        conn.execute_batch("pragma foreign_keys = 1; pragma synchronous = normal;")?;
        // Only switch when needed: changing the journal mode takes an exclusive lock.
        let mode: String = conn.query_row("pragma main.journal_mode", [], |row| row.get(0))?;
        if mode != "wal" {
            conn.query_row("pragma main.journal_mode = wal", [], |_| Ok(()))?;
        }
        conn.execute_batch("pragma wal_autocheckpoint = 40000;")?;
        Ok(())
    })?;
    if create {
        retry(|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(SCHEMA)?;
            tx.commit()?;
            Ok(())
        })?;
    }
    Ok(())
}
