//! Realisations (Nix's `ca-derivations`): the `Realisations` and `RealisationsRefs`
//! tables of Nix 2.8's `ca-specific-schema.sql`, with the `ca-schema` version file (3).
//!
//! Nix creates these tables only when `ca-derivations` is enabled; so does Arca
//! ([`Registry::enable_realisations`]), and a query on a store without them finds
//! nothing. Rows are Nix's: `drvPath` holds the id's hash as `sha256:<base16>` (not a
//! path), `outputPath` the id of the output's `ValidPaths` row (a realisation goes when
//! its path does), `signatures` space-separated.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use arca_store_core::{DrvOutput, Realisation};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::retry::retry;
use super::Registry;
use crate::error::{IoContext, StoreError};

/// The version Nix 2.8 writes into `db/ca-schema`.
pub const NIX_CA_SCHEMA_VERSION: u32 = 3;

/// Nix 2.8's `ca-specific-schema.sql`.
pub const CA_SCHEMA: &str = r#"create table if not exists Realisations (
    id integer primary key autoincrement not null,
    drvPath text not null,
    outputName text not null, -- symbolic output id, usually "out"
    outputPath integer not null,
    signatures text, -- space-separated list
    foreign key (outputPath) references ValidPaths(id) on delete cascade
);

create index if not exists IndexRealisations on Realisations(drvPath, outputName);

create table if not exists RealisationsRefs (
    referrer integer not null,
    realisationReference integer,
    foreign key (referrer) references Realisations(id) on delete cascade,
    foreign key (realisationReference) references Realisations(id) on delete restrict
);

-- used by QueryRealisationReferences
create index if not exists IndexRealisationsRefs on RealisationsRefs(referrer);
-- used by cascade deletion when ValidPaths is deleted
create index if not exists IndexRealisationsRefsOnOutputPath on Realisations(outputPath);
"#;

impl Registry {
    /// Creates the realisation tables and the `ca-schema` file when they are missing
    /// (Nix does this when it opens a store with `ca-derivations` enabled). Refuses a
    /// `ca-schema` newer than Nix 2.8's.
    pub fn enable_realisations(&mut self) -> Result<(), StoreError> {
        let db_dir = self
            .db_path()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let schema_path = db_dir.join("ca-schema");
        let current = match fs::read_to_string(&schema_path) {
            Ok(text) => text.trim().parse::<u32>().unwrap_or(0),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(error).at(&schema_path),
        };
        if current > NIX_CA_SCHEMA_VERSION {
            return Err(StoreError::CaSchemaVersion {
                found: current,
                supported: NIX_CA_SCHEMA_VERSION,
            });
        }
        if current == NIX_CA_SCHEMA_VERSION && self.has_realisations()? {
            return Ok(());
        }
        let conn = &mut self.conn;
        retry(|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(CA_SCHEMA)?;
            tx.commit()?;
            Ok(())
        })?;
        let tmp = db_dir.join(format!(".ca-schema.tmp-{}", std::process::id()));
        fs::write(&tmp, NIX_CA_SCHEMA_VERSION.to_string()).at(&tmp)?;
        fs::rename(&tmp, &schema_path).at(&schema_path)
    }

    fn has_realisations(&self) -> Result<bool, StoreError> {
        has_realisations(&self.conn)
    }

    /// Records `realisation` (Nix's `registerDrvOutput`): its path must be valid. A
    /// realisation of the same output to the same path gains the new signatures; one to
    /// another path is refused. Each dependent realisation must be known here, to the
    /// same path.
    pub fn register_realisation(&mut self, realisation: &Realisation) -> Result<(), StoreError> {
        self.enable_realisations()?;
        let store_dir = self.store_dir.clone();
        let conn = &mut self.conn;
        retry(|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let id = &realisation.id;
            let key = hash_key(id);
            match query_core(&tx, id)? {
                Some((_, old_path, old_signatures)) => {
                    if old_path != store_dir.display(&realisation.out_path) {
                        return Err(StoreError::RealisationConflict {
                            id: id.to_string(),
                            local: old_path,
                            remote: store_dir.display(&realisation.out_path),
                        });
                    }
                    let mut signatures = old_signatures;
                    signatures.extend(realisation.signatures.iter().cloned());
                    tx.prepare_cached(
                        "update Realisations set signatures = ? where drvPath = ? and outputName = ?",
                    )?
                    .execute((join(&signatures), &key, id.output.as_str()))?;
                }
                None => {
                    let full = store_dir.display(&realisation.out_path);
                    let path_id: Option<i64> = tx
                        .prepare_cached("select id from ValidPaths where path = ?")?
                        .query_row([&full], |row| row.get(0))
                        .optional()?;
                    let Some(path_id) = path_id else {
                        return Err(StoreError::InvalidPath(full));
                    };
                    tx.prepare_cached(
                        "insert into Realisations (drvPath, outputName, outputPath, signatures) \
                         values (?, ?, ?, ?)",
                    )?
                    .execute((
                        &key,
                        id.output.as_str(),
                        path_id,
                        join(&realisation.signatures),
                    ))?;
                }
            }
            for (dependency, path) in &realisation.dependent_realisations {
                let local = query_core(&tx, dependency)?;
                match local {
                    None => {
                        return Err(StoreError::MissingRealisation {
                            id: id.to_string(),
                            dependency: dependency.to_string(),
                        })
                    }
                    Some((_, local_path, _)) if local_path != store_dir.display(path) => {
                        return Err(StoreError::RealisationConflict {
                            id: dependency.to_string(),
                            local: local_path,
                            remote: store_dir.display(path),
                        })
                    }
                    Some(_) => {}
                }
                tx.prepare_cached(
                    "insert or replace into RealisationsRefs (referrer, realisationReference) values (\
                     (select id from Realisations where drvPath = ? and outputName = ?), \
                     (select id from Realisations where drvPath = ? and outputName = ?))",
                )?
                .execute((
                    &key,
                    id.output.as_str(),
                    hash_key(dependency),
                    dependency.output.as_str(),
                ))?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The realisation of `id`, with its dependent realisations (`None`: not known, or
    /// no realisation tables in this store).
    pub fn realisation(&self, id: &DrvOutput) -> Result<Option<Realisation>, StoreError> {
        retry(|| {
            let tx = self.conn.unchecked_transaction()?;
            if !has_realisations(&tx)? {
                return Ok(None);
            }
            let Some((row, path, signatures)) = query_core(&tx, id)? else {
                return Ok(None);
            };
            let parse = |full: &str| {
                self.store_dir
                    .parse_path(full)
                    .map_err(|error| StoreError::CorruptRegistry {
                        path: full.to_owned(),
                        reason: error.to_string(),
                    })
            };
            let mut dependent = BTreeMap::new();
            let mut statement = tx.prepare_cached(
                "select r.drvPath, r.outputName, v.path from RealisationsRefs x \
                 join Realisations r on x.realisationReference = r.id \
                 join ValidPaths v on v.id = r.outputPath where x.referrer = ?",
            )?;
            let mut rows = statement.query([row])?;
            while let Some(row) = rows.next()? {
                let key: String = row.get(0)?;
                let output: String = row.get(1)?;
                let full: String = row.get(2)?;
                let dependency = DrvOutput::parse(&format!("{key}!{output}")).map_err(|error| {
                    StoreError::CorruptRegistry {
                        path: key.clone(),
                        reason: error.to_string(),
                    }
                })?;
                dependent.insert(dependency, parse(&full)?);
            }
            drop(rows);
            drop(statement);
            tx.commit()?;
            Ok(Some(Realisation {
                id: id.clone(),
                out_path: parse(&path)?,
                signatures,
                dependent_realisations: dependent,
            }))
        })
    }
}

fn has_realisations(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "select 1 from sqlite_master where type = 'table' and name = 'Realisations'",
        )?
        .exists([])?)
}

/// The `drvPath` column: the id's hash as `sha256:<base16>`.
fn hash_key(id: &DrvOutput) -> String {
    format!("{}:{}", id.drv_hash.algo(), id.drv_hash.to_base16())
}

fn join(signatures: &BTreeSet<String>) -> String {
    signatures.iter().cloned().collect::<Vec<_>>().join(" ")
}

/// The row id, full output path and signatures of `id`'s realisation.
fn query_core(
    conn: &Connection,
    id: &DrvOutput,
) -> Result<Option<(i64, String, BTreeSet<String>)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "select r.id, v.path, r.signatures from Realisations r \
             join ValidPaths v on v.id = r.outputPath where r.drvPath = ? and r.outputName = ?",
        )?
        .query_row((hash_key(id), id.output.as_str()), |row| {
            let signatures: Option<String> = row.get(2)?;
            Ok((
                row.get(0)?,
                row.get(1)?,
                signatures
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
            ))
        })
        .optional()?)
}
