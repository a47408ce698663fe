//! Nix's path registry: `<state>/db/db.sqlite`, with Nix 2.8's schema byte for byte, so
//! that real Nix reads a store Arca wrote and Arca reads a store Nix wrote.
//!
//! # Layout
//! `db_dir` (normally `<root>/nix/var/nix/db`) holds `db.sqlite`, `schema` (the text
//! `10`, no newline), `big-lock` (empty, 0600; the store takes its lock, not this module)
//! and `reserved` (8 MiB of allocated space the garbage collector frees on a full disk).
//! Rows are written exactly as Nix writes them: full paths, `hash` as `sha256:<base16>`,
//! `narSize` NULL when 0, `ultimate` 1 or NULL, `sigs` space-separated or NULL, `ca` and
//! `deriver` NULL when absent.
//!
//! # Concurrency protocol
//! Any number of processes and threads may open their own [`Registry`] on one database.
//! A `Registry` is one SQLite connection (it is `Send`, not `Sync`).
//! - The database is in WAL mode: readers never block the writer nor each other.
//! - Every write is one transaction begun with `BEGIN IMMEDIATE`, which takes the write
//!   lock up front. (Nix uses a deferred `BEGIN`; a deferred transaction that read first
//!   and then wants to write fails with `SQLITE_BUSY_SNAPSHOT` when another writer got in
//!   between, which no busy handler can resolve.) Checks (references valid, path not
//!   referenced) happen inside that transaction, so they cannot race.
//! - Reads that span several statements (a path's row and its references, a closure) run
//!   in one deferred read transaction, so they see one snapshot.
//! - The connection has an hour's busy timeout (as Nix), and on top of it every
//!   transaction is run by `retry` (`retry.rs`): `SQLITE_BUSY` and `SQLITE_PROTOCOL`
//!   that still escape (lock upgrades, WAL recovery, checkpoints racing a commit) roll the
//!   attempt back and retry the *whole* transaction after a random sleep of up to 100 ms.
//!   Contention is never reported as an error; every other error is returned at once and
//!   leaves nothing written.

mod closure;
mod gc;
mod realisations;
mod retry;
mod schema;
#[cfg(test)]
mod tests;
mod unsynced;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use arca_store_core::{base32, ContentAddress, Hash, PathInfo, StoreDir, StorePath};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};

use crate::error::StoreError;
pub use gc::PathGraph;
pub use realisations::{CA_SCHEMA, NIX_CA_SCHEMA_VERSION};
use retry::retry;
pub use schema::{NIX_SCHEMA_VERSION, RESERVED_SIZE, SCHEMA};
pub use unsynced::UnsyncedPath;

/// Nix's path registry over one SQLite connection. See the module documentation for the
/// files it manages and how concurrent registries cooperate.
pub struct Registry {
    conn: Connection,
    store_dir: StoreDir,
    db_path: PathBuf,
    /// When set, registrations are recorded in the unsynced journal under this boot.
    unsynced_boot: Option<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("store_dir", &self.store_dir)
            .field("db_path", &self.db_path)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Opens `<db_dir>/db.sqlite`, creating the directory, the database with Nix's schema,
    /// the `schema` file, `big-lock` and `reserved` when they are missing. Fails with
    /// [`StoreError::SchemaVersion`] when `schema` names a version other than 10.
    pub fn open(db_dir: &Path, store_dir: StoreDir) -> Result<Registry, StoreError> {
        let state = schema::prepare_db_dir(db_dir)?;
        let db_path = db_dir.join("db.sqlite");
        // As Nix: only a new store (no `schema` file) may create the database; an existing
        // store without `db.sqlite` is broken, not empty.
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if state.is_new {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let mut conn = Connection::open_with_flags(&db_path, flags)?;
        schema::configure(&mut conn, state.is_new)?;
        if state.is_new {
            // After the schema exists, as Nix does: a crash in between leaves a store
            // that is still "new" and gets its (idempotent) schema again.
            schema::write_schema_file(db_dir)?;
        }
        Ok(Registry {
            conn,
            store_dir,
            db_path,
            unsynced_boot: None,
        })
    }

    /// The logical store directory the registry's full paths are in.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// The `db.sqlite` file.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Registers `infos` and the `DerivationOutputs` rows of `derivation_outputs` (drv ->
    /// output name -> output path) in one transaction, as Nix's `registerValidPaths`:
    /// a path that is already valid gets its hash, size, `ultimate`, signatures and
    /// content address updated (its deriver and registration time stay) and gains any
    /// new references. `registration_time` 0 means now.
    ///
    /// Every reference must be valid already or among `infos`
    /// ([`StoreError::MissingReference`]), every drv of `derivation_outputs` likewise
    /// ([`StoreError::InvalidPath`]), and the references among `infos` must not form a
    /// cycle other than self-references ([`StoreError::ReferenceCycle`]). On any error
    /// nothing is written. With an unsynced boot set
    /// ([`Registry::set_unsynced_boot`]), the new rows are recorded in the unsynced
    /// journal in the same transaction.
    pub fn register(
        &mut self,
        infos: &[PathInfo],
        derivation_outputs: &[(StorePath, BTreeMap<String, StorePath>)],
    ) -> Result<(), StoreError> {
        check_acyclic(&self.store_dir, infos)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let store_dir = &self.store_dir;
        let conn = &mut self.conn;
        let boot = self.unsynced_boot.as_deref();
        retry(|| register_once(conn, store_dir, infos, derivation_outputs, now, boot))
    }

    /// Whether `path` is registered.
    pub fn is_valid(&self, path: &StorePath) -> Result<bool, StoreError> {
        let full = self.store_dir.display(path);
        retry(|| Ok(path_id(&self.conn, &full)?.is_some()))
    }

    /// Everything registered about `path`, or `None` if it is not valid.
    pub fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, StoreError> {
        let full = self.store_dir.display(path);
        retry(|| {
            let tx = self.conn.unchecked_transaction()?;
            let info = self.read_path_info(path, &full)?;
            tx.commit()?;
            Ok(info)
        })
    }

    fn read_path_info(&self, path: &StorePath, full: &str) -> Result<Option<PathInfo>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "select id, hash, registrationTime, deriver, narSize, ultimate, sigs, ca \
             from ValidPaths where path = ?",
        )?;
        let mut rows = stmt.query([full])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        let column = Column { row, path: full };
        let id = column
            .int(0, "id")?
            .ok_or_else(|| corrupt(full, "id is NULL"))?;
        let hash_text = column
            .text(1, "hash")?
            .ok_or_else(|| corrupt(full, "hash is NULL"))?;
        let nar_hash = Hash::parse(hash_text, None)
            .map_err(|e| corrupt(full, format!("bad hash '{hash_text}': {e}")))?;
        let registration_time = column
            .int(2, "registrationTime")?
            .ok_or_else(|| corrupt(full, "registrationTime is NULL"))?;
        let deriver = match column.text(3, "deriver")? {
            None | Some("") => None,
            Some(text) => Some(self.parse_path(text, full)?),
        };
        let nar_size = match column.int(4, "narSize")? {
            None => 0,
            Some(n) => u64::try_from(n).map_err(|_| corrupt(full, format!("narSize {n}")))?,
        };
        let ultimate = column.int(5, "ultimate")? == Some(1);
        let signatures = column
            .text(6, "sigs")?
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let ca = match column.text(7, "ca")? {
            None | Some("") => None,
            Some(text) => Some(
                ContentAddress::parse(text)
                    .map_err(|e| corrupt(full, format!("bad content address: {e}")))?,
            ),
        };
        drop(rows);
        drop(stmt);
        let references = self.paths_of(
            "select path from Refs join ValidPaths on reference = id where referrer = ?",
            id,
            full,
        )?;
        Ok(Some(PathInfo {
            path: path.clone(),
            deriver,
            nar_hash,
            nar_size,
            references,
            registration_time,
            ultimate,
            signatures,
            ca,
        }))
    }

    /// The references of `path` (empty if it is not valid).
    pub fn references(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        self.paths_related_to(
            path,
            "select v.path from Refs r join ValidPaths v on r.reference = v.id \
             where r.referrer = (select id from ValidPaths where path = ?)",
        )
    }

    /// The valid paths that refer to `path`, including `path` itself if it refers to
    /// itself (as Nix's `queryReferrers`).
    pub fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        self.paths_related_to(
            path,
            "select v.path from Refs r join ValidPaths v on r.referrer = v.id \
             where r.reference = (select id from ValidPaths where path = ?)",
        )
    }

    /// The valid derivations that have an output row whose path is `path`.
    pub fn valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        self.paths_related_to(
            path,
            "select v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id \
             where d.path = ?",
        )
    }

    /// The output rows of the valid derivation `drv`, by output name
    /// ([`StoreError::InvalidPath`] if `drv` is not valid, as Nix).
    pub fn derivation_outputs(
        &self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>, StoreError> {
        let full = self.store_dir.display(drv);
        retry(|| {
            let tx = self.conn.unchecked_transaction()?;
            let id =
                path_id(&self.conn, &full)?.ok_or_else(|| StoreError::InvalidPath(full.clone()))?;
            let mut stmt = self
                .conn
                .prepare_cached("select id, path from DerivationOutputs where drv = ?")?;
            let mut rows = stmt.query([id])?;
            let mut outputs = BTreeMap::new();
            while let Some(row) = rows.next()? {
                let column = Column { row, path: &full };
                let name = column.text(0, "DerivationOutputs.id")?;
                let out = column.text(1, "DerivationOutputs.path")?;
                let (Some(name), Some(out)) = (name, out) else {
                    return Err(corrupt(&full, "NULL in DerivationOutputs"));
                };
                outputs.insert(name.to_owned(), self.parse_path(out, &full)?);
            }
            drop(rows);
            drop(stmt);
            tx.commit()?;
            Ok(outputs)
        })
    }

    /// The valid path whose hash part is `hash_part`, found as Nix does with a range
    /// query on the unique path index (`path >= '<store>/<hash part>' limit 1`).
    pub fn path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>, StoreError> {
        if hash_part.len() != arca_store_core::store_path::HASH_PART_LEN
            || !hash_part.bytes().all(base32::is_base32_char)
        {
            return Err(StoreError::InvalidHashPart(hash_part.to_owned()));
        }
        let prefix = format!("{}/{hash_part}-", self.store_dir);
        retry(|| {
            let found: Option<String> = self
                .conn
                .prepare_cached("select path from ValidPaths where path >= ? limit 1")?
                .query_row([&prefix], |row| row.get(0))
                .optional()?;
            match found {
                Some(full) if full.starts_with(&prefix) => Ok(Some(self.parse_path(&full, &full)?)),
                _ => Ok(None),
            }
        })
    }

    /// Every valid path.
    pub fn all_valid_paths(&self) -> Result<BTreeSet<StorePath>, StoreError> {
        retry(|| {
            let mut stmt = self.conn.prepare_cached("select path from ValidPaths")?;
            let mut rows = stmt.query([])?;
            let mut paths = BTreeSet::new();
            while let Some(row) = rows.next()? {
                let full = Column { row, path: "" }
                    .text(0, "path")?
                    .unwrap_or_default();
                paths.insert(self.parse_path(full, full)?);
            }
            Ok(paths)
        })
    }

    /// [`Registry::requisites`], each path with its references (the edges of the
    /// closure), in the same single walk: enough to print the closure in dependency order
    /// without a query per path.
    pub fn requisites_graph(
        &self,
        roots: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeMap<StorePath, BTreeSet<StorePath>>, StoreError> {
        retry(|| self.closure_graph(roots, include_outputs))
    }

    /// Every valid path with its NAR hash and size, in one query (for verification).
    pub fn all_nar_hashes(&self) -> Result<Vec<(StorePath, Hash, u64)>, StoreError> {
        retry(|| {
            let mut stmt = self
                .conn
                .prepare_cached("select path, hash, narSize from ValidPaths")?;
            let mut rows = stmt.query([])?;
            let mut entries = Vec::new();
            while let Some(row) = rows.next()? {
                entries.push(self.nar_hash_row(row)?);
            }
            Ok(entries)
        })
    }

    /// References whose target row is gone (`referrer`, missing id): impossible while
    /// SQLite enforces the foreign keys, so anything here means the database was edited
    /// without them.
    pub fn dangling_references(&self) -> Result<Vec<(StorePath, i64)>, StoreError> {
        retry(|| {
            let mut stmt = self.conn.prepare_cached(
                "select v.path, r.reference from Refs r join ValidPaths v on v.id = r.referrer \
                 where not exists (select 1 from ValidPaths t where t.id = r.reference)",
            )?;
            let mut rows = stmt.query([])?;
            let mut dangling = Vec::new();
            while let Some(row) = rows.next()? {
                let full = Column { row, path: "" }
                    .text(0, "path")?
                    .unwrap_or_default();
                let missing = Column { row, path: full }.int(1, "reference")?.unwrap_or(0);
                dangling.push((self.parse_path(full, full)?, missing));
            }
            Ok(dangling)
        })
    }

    /// The closure of `roots` under references (`nix-store -q --requisites`). With
    /// `include_outputs`, the valid outputs of every derivation in the closure and their
    /// closures are added too. Fails with [`StoreError::InvalidPath`] on an invalid root.
    pub fn requisites(
        &self,
        roots: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        retry(|| self.closure(roots, closure::Direction::References { include_outputs }))
    }

    /// The closure of `roots` under referrers: every valid path that refers to them,
    /// directly or not (what deleting them would break).
    pub fn referrers_closure(
        &self,
        roots: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        retry(|| self.closure(roots, closure::Direction::Referrers))
    }

    /// Removes `path`'s registration; its references and derivation output rows go with
    /// it. Fails with [`StoreError::StillReferenced`] while another valid path refers to
    /// it (a self-reference does not count). Like Nix, a path that is not valid is left
    /// alone without error.
    pub fn unregister(&mut self, path: &StorePath) -> Result<(), StoreError> {
        let full = self.store_dir.display(path);
        let conn = &mut self.conn;
        retry(|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(id) = path_id(&tx, &full)? else {
                return Ok(());
            };
            let referrer: Option<String> = tx
                .prepare_cached(
                    "select v.path from Refs r join ValidPaths v on r.referrer = v.id \
                     where r.reference = ?1 and r.referrer != ?1 limit 1",
                )?
                .query_row([id], |row| row.get(0))
                .optional()?;
            if let Some(referrer) = referrer {
                return Err(StoreError::StillReferenced {
                    path: full.clone(),
                    referrer,
                });
            }
            // The DeleteSelfRefs trigger drops a self-reference first; the foreign keys
            // cascade the path's own Refs and DerivationOutputs rows.
            tx.prepare_cached("delete from ValidPaths where id = ?")?
                .execute([id])?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Replaces the NAR hash and size of the valid `path` (`nix-store --verify --repair`).
    pub fn update_nar_hash(
        &mut self,
        path: &StorePath,
        nar_hash: &Hash,
        nar_size: u64,
    ) -> Result<(), StoreError> {
        let full = self.store_dir.display(path);
        let hash = hash_column(nar_hash);
        let size = nar_size_column(nar_size);
        retry(|| {
            let changed = self
                .conn
                .prepare_cached("update ValidPaths set hash = ?, narSize = ? where path = ?")?
                .execute(params![hash, size, full])?;
            if changed == 0 {
                return Err(StoreError::InvalidPath(full.clone()));
            }
            Ok(())
        })
    }

    /// The paths `sql` yields for the full path of `path`, in one statement.
    fn paths_related_to(
        &self,
        path: &StorePath,
        sql: &str,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        let full = self.store_dir.display(path);
        retry(|| self.paths_of(sql, &full, &full))
    }

    /// Runs `sql` with one parameter and parses the first column of every row as a
    /// store path; `owner` names the registry entry being read in errors.
    fn paths_of(
        &self,
        sql: &str,
        param: impl rusqlite::ToSql,
        owner: &str,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query([param])?;
        let mut paths = BTreeSet::new();
        while let Some(row) = rows.next()? {
            let text = Column { row, path: owner }
                .text(0, "path")?
                .ok_or_else(|| corrupt(owner, "path is NULL"))?;
            paths.insert(self.parse_path(text, owner)?);
        }
        Ok(paths)
    }

    /// Parses a full path read from the registry; `owner` is the entry it was read for.
    /// A row of (`path`, `hash`, `narSize`): the path with its NAR hash and size.
    fn nar_hash_row(&self, row: &Row<'_>) -> Result<(StorePath, Hash, u64), StoreError> {
        let full = Column { row, path: "" }
            .text(0, "path")?
            .unwrap_or_default();
        let column = Column { row, path: full };
        let hash_text = column
            .text(1, "hash")?
            .ok_or_else(|| corrupt(full, "hash is NULL"))?;
        let hash = Hash::parse(hash_text, None)
            .map_err(|e| corrupt(full, format!("bad hash '{hash_text}': {e}")))?;
        let size = match column.int(2, "narSize")? {
            None => 0,
            Some(n) => u64::try_from(n).map_err(|_| corrupt(full, format!("narSize {n}")))?,
        };
        Ok((self.parse_path(full, full)?, hash, size))
    }

    fn parse_path(&self, full: &str, owner: &str) -> Result<StorePath, StoreError> {
        self.store_dir.parse_path(full).map_err(|e| {
            let owner = if owner.is_empty() { full } else { owner };
            corrupt(owner, format!("bad store path '{full}': {e}"))
        })
    }
}

/// One attempt of [`Registry::register`]: the whole batch in one immediate transaction.
fn register_once(
    conn: &mut Connection,
    store_dir: &StoreDir,
    infos: &[PathInfo],
    derivation_outputs: &[(StorePath, BTreeMap<String, StorePath>)],
    now: i64,
    unsynced_boot: Option<&str>,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut inserted = Vec::new();
    let batch: HashSet<&StorePath> = infos.iter().map(|info| &info.path).collect();

    // Resolve everything outside the batch first, so that a missing reference or drv
    // fails before a single row is written (the rollback would undo it anyway).
    let mut ids: HashMap<&StorePath, i64> = HashMap::new();
    for info in infos {
        for reference in &info.references {
            if batch.contains(reference) || ids.contains_key(reference) {
                continue;
            }
            match path_id(&tx, &store_dir.display(reference))? {
                Some(id) => {
                    ids.insert(reference, id);
                }
                None => {
                    return Err(StoreError::MissingReference {
                        path: store_dir.display(&info.path),
                        reference: store_dir.display(reference),
                    })
                }
            }
        }
    }
    for (drv, _) in derivation_outputs {
        if batch.contains(drv) || ids.contains_key(drv) {
            continue;
        }
        let full = store_dir.display(drv);
        let id = path_id(&tx, &full)?.ok_or(StoreError::InvalidPath(full))?;
        ids.insert(drv, id);
    }

    {
        let mut insert = tx.prepare_cached(
            "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, \
             sigs, ca) values (?, ?, ?, ?, ?, ?, ?, ?)",
        )?;
        let mut update = tx.prepare_cached(
            "update ValidPaths set narSize = ?, hash = ?, ultimate = ?, sigs = ?, ca = ? \
             where path = ?",
        )?;
        for info in infos {
            let full = store_dir.display(&info.path);
            let hash = hash_column(&info.nar_hash);
            let nar_size = nar_size_column(info.nar_size);
            let ultimate = info.ultimate.then_some(1i64);
            let sigs = (!info.signatures.is_empty()).then(|| {
                info.signatures
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            let ca = info.ca.as_ref().map(ToString::to_string);
            let id = match path_id(&tx, &full)? {
                Some(id) => {
                    update.execute(params![nar_size, hash, ultimate, sigs, ca, full])?;
                    id
                }
                None => {
                    let time = if info.registration_time == 0 {
                        now
                    } else {
                        info.registration_time
                    };
                    let deriver = info.deriver.as_ref().map(|d| store_dir.display(d));
                    insert.execute(params![
                        full, hash, time, deriver, nar_size, ultimate, sigs, ca
                    ])?;
                    inserted.push(tx.last_insert_rowid());
                    tx.last_insert_rowid()
                }
            };
            ids.insert(&info.path, id);
        }

        let mut add_reference =
            tx.prepare_cached("insert or replace into Refs (referrer, reference) values (?, ?)")?;
        for info in infos {
            let referrer = ids[&info.path];
            for reference in &info.references {
                add_reference.execute([referrer, ids[reference]])?;
            }
        }

        let mut add_output = tx.prepare_cached(
            "insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)",
        )?;
        for (drv, outputs) in derivation_outputs {
            let drv_id = ids[drv];
            for (name, out) in outputs {
                add_output.execute(params![drv_id, name, store_dir.display(out)])?;
            }
        }
    }
    if let Some(boot) = unsynced_boot {
        unsynced::record(&tx, boot, &inserted)?;
    }
    tx.commit()?;
    Ok(())
}

/// Refuses reference cycles among `infos` (self-references aside), as Nix's topological
/// sort in `registerValidPaths` does: real content-addressed paths cannot form them, but
/// a multi-output derivation's outputs can, and such a store could never be copied.
fn check_acyclic(store_dir: &StoreDir, infos: &[PathInfo]) -> Result<(), StoreError> {
    let index: HashMap<&StorePath, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, info)| (&info.path, i))
        .collect();
    // 0 = unvisited, 1 = on the DFS stack, 2 = done.
    let mut state = vec![0u8; infos.len()];
    for start in 0..infos.len() {
        if state[start] != 0 {
            continue;
        }
        // Iterative DFS: (node, its references still to look at).
        let mut stack = vec![(start, infos[start].references.iter())];
        state[start] = 1;
        while let Some((node, pending)) = stack.last_mut() {
            let node = *node;
            match pending.next() {
                Some(reference) => {
                    let Some(&next) = index.get(reference) else {
                        continue;
                    };
                    if infos[next].path == infos[node].path {
                        continue;
                    }
                    match state[next] {
                        0 => {
                            state[next] = 1;
                            stack.push((next, infos[next].references.iter()));
                        }
                        1 => {
                            return Err(StoreError::ReferenceCycle {
                                path: store_dir.display(&infos[node].path),
                                reference: store_dir.display(reference),
                            })
                        }
                        _ => {}
                    }
                }
                None => {
                    state[node] = 2;
                    stack.pop();
                }
            }
        }
    }
    Ok(())
}

/// The id of the registered full path `full`.
fn path_id(conn: &Connection, full: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("select id from ValidPaths where path = ?")?
        .query_row([full], |row| row.get(0))
        .optional()?)
}

/// `sha256:<base16>`, the form Nix writes into the `hash` column.
fn hash_column(hash: &Hash) -> String {
    format!("{}:{}", hash.algo(), hash.to_base16())
}

/// Nix writes a NAR size of 0 (unknown) as NULL.
fn nar_size_column(nar_size: u64) -> Option<i64> {
    // No NAR reaches 2^63 bytes; saturate rather than wrap if one claims to.
    (nar_size != 0).then(|| i64::try_from(nar_size).unwrap_or(i64::MAX))
}

fn corrupt(path: &str, reason: impl Into<String>) -> StoreError {
    StoreError::CorruptRegistry {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Typed access to a row's columns, with errors naming the registry entry.
struct Column<'a, 'r> {
    row: &'a Row<'r>,
    path: &'a str,
}

impl<'a> Column<'a, '_> {
    fn text(&self, index: usize, name: &str) -> Result<Option<&'a str>, StoreError> {
        match self.row.get_ref(index)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| corrupt(self.path, format!("column {name} is not UTF-8"))),
            other => Err(corrupt(
                self.path,
                format!(
                    "column {name} has type {}, expected text",
                    other.data_type()
                ),
            )),
        }
    }

    fn int(&self, index: usize, name: &str) -> Result<Option<i64>, StoreError> {
        match self.row.get_ref(index)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(n) => Ok(Some(n)),
            other => Err(corrupt(
                self.path,
                format!(
                    "column {name} has type {}, expected integer",
                    other.data_type()
                ),
            )),
        }
    }
}
