//! The unsynced journal: which registrations may have files not yet on disk.
//!
//! A store opened with deferred durability does not flush a path's files before it
//! registers the path. Instead, the registering transaction also records the new row's
//! id, with the boot it happened in, in `ArcaUnsynced`. Being in the same transaction, the
//! record exists exactly when the registration does, whatever a power loss keeps of the
//! database. A flush (`syncfs`) later deletes the records it covered. After a reboot, the
//! records left from earlier boots name every path whose files may be damaged, and only
//! those (see `durability.rs` for the recovery).
//!
//! The table is Arca's addition to Nix's database, created by the first deferred
//! registration: Nix never reads it, and its foreign key (`on delete cascade`) drops a
//! record when Nix's own garbage collector deletes the path.

use arca_store_core::{Hash, StorePath};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{retry, Registry};
use crate::error::StoreError;

/// The journal's table.
pub(super) const CREATE_TABLE: &str = "create table if not exists ArcaUnsynced (\
     id integer primary key not null, \
     boot text not null, \
     foreign key (id) references ValidPaths(id) on delete cascade)";

/// A registration recorded in another boot than the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsyncedPath {
    /// The registered path.
    pub path: StorePath,
    /// Its registered NAR hash.
    pub nar_hash: Hash,
    /// Its registered NAR size (0 when unknown).
    pub nar_size: u64,
}

/// Records that the newly inserted rows `ids` were registered in `boot` without a flush.
/// Runs inside the registering transaction.
pub(super) fn record(tx: &Transaction<'_>, boot: &str, ids: &[i64]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    // A no-op once the table exists; it cannot be done at open time without writing to
    // a database that may be only read.
    tx.execute_batch(CREATE_TABLE)?;
    let mut insert =
        tx.prepare_cached("insert or replace into ArcaUnsynced (id, boot) values (?, ?)")?;
    for id in ids {
        insert.execute(params![id, boot])?;
    }
    Ok(())
}

fn table_exists(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "select 1 from sqlite_master where type = 'table' and name = 'ArcaUnsynced'",
        )?
        .query_row([], |_| Ok(()))
        .optional()?
        .is_some())
}

impl Registry {
    /// Makes every registration that inserts a new row record it in the unsynced journal
    /// under `boot` (`None`: record nothing, the caller flushes before registering).
    pub fn set_unsynced_boot(&mut self, boot: Option<String>) {
        self.unsynced_boot = boot;
    }

    /// The highest id recorded in the journal during `boot`, if any: what a flush that
    /// starts now will cover.
    pub fn max_unsynced_id(&self, boot: &str) -> Result<Option<i64>, StoreError> {
        retry(|| {
            if !table_exists(&self.conn)? {
                return Ok(None);
            }
            Ok(self
                .conn
                .prepare_cached("select max(id) from ArcaUnsynced where boot = ?")?
                .query_row([boot], |row| row.get(0))?)
        })
    }

    /// When the oldest path recorded during `boot` was registered (seconds since the
    /// epoch), if any.
    pub fn oldest_unsynced_time(&self, boot: &str) -> Result<Option<i64>, StoreError> {
        retry(|| {
            if !table_exists(&self.conn)? {
                return Ok(None);
            }
            Ok(self
                .conn
                .prepare_cached(
                    "select min(v.registrationTime) from ArcaUnsynced u \
                     join ValidPaths v on v.id = u.id where u.boot = ?",
                )?
                .query_row([boot], |row| row.get(0))?)
        })
    }

    /// Forgets the records of `boot` up to `id`: their files have been flushed.
    pub fn mark_synced(&mut self, boot: &str, id: i64) -> Result<(), StoreError> {
        let conn = &mut self.conn;
        retry(|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached("delete from ArcaUnsynced where boot = ? and id <= ?")?
                .execute(params![boot, id])?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The paths recorded in other boots than `boot`, in registration order: the ones a
    /// power loss may have damaged.
    pub fn unsynced_before(&self, boot: &str) -> Result<Vec<UnsyncedPath>, StoreError> {
        retry(|| {
            if !table_exists(&self.conn)? {
                return Ok(Vec::new());
            }
            let mut stmt = self.conn.prepare_cached(
                "select v.path, v.hash, v.narSize from ArcaUnsynced u \
                 join ValidPaths v on v.id = u.id where u.boot != ? order by v.id",
            )?;
            let mut rows = stmt.query([boot])?;
            let mut found = Vec::new();
            while let Some(row) = rows.next()? {
                let (path, nar_hash, nar_size) = self.nar_hash_row(row)?;
                found.push(UnsyncedPath {
                    path,
                    nar_hash,
                    nar_size,
                });
            }
            Ok(found)
        })
    }

    /// Forgets every record of other boots than `boot`: they have been checked.
    pub fn forget_unsynced_before(&mut self, boot: &str) -> Result<(), StoreError> {
        let conn = &mut self.conn;
        retry(|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if table_exists(&tx)? {
                tx.prepare_cached("delete from ArcaUnsynced where boot != ?")?
                    .execute([boot])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// How many records the journal holds (all boots).
    pub fn unsynced_count(&self) -> Result<u64, StoreError> {
        retry(|| {
            if !table_exists(&self.conn)? {
                return Ok(0);
            }
            let n: i64 = self
                .conn
                .prepare_cached("select count(*) from ArcaUnsynced")?
                .query_row([], |row| row.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
}
