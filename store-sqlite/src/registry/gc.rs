//! What the garbage collector needs from the registry: the whole reference graph in one
//! read (integer indices, not strings), and unregistration of many paths in one
//! transaction.

use std::collections::HashMap;

use arca_store_core::StorePath;
use rusqlite::{OptionalExtension, TransactionBehavior};

use super::{path_id, retry, Column, Registry};
use crate::error::StoreError;

/// The registry as one graph, loaded in a single read transaction. Paths are numbered
/// `0..len()` (dense indices, unrelated to the database's row ids); edges are kept in
/// compressed rows, so a million paths cost tens of megabytes, not a string per edge.
#[derive(Debug, Default)]
pub struct PathGraph {
    /// Every valid path, by index.
    pub paths: Vec<StorePath>,
    /// `narSize` of each path (0 when unknown).
    pub nar_sizes: Vec<u64>,
    /// The valid deriver of each path, if it has one that is registered.
    pub derivers: Vec<Option<u32>>,
    reference_starts: Vec<u32>,
    references: Vec<u32>,
    output_starts: Vec<u32>,
    outputs: Vec<u32>,
    by_hash_part: HashMap<[u8; 32], u32>,
}

impl PathGraph {
    /// How many valid paths there are.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether the registry is empty.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// What path `index` refers to (itself included when it refers to itself).
    pub fn references(&self, index: u32) -> &[u32] {
        let i = index as usize;
        &self.references[self.reference_starts[i] as usize..self.reference_starts[i + 1] as usize]
    }

    /// The valid outputs recorded for derivation `index` (`DerivationOutputs`).
    pub fn outputs(&self, index: u32) -> &[u32] {
        let i = index as usize;
        &self.outputs[self.output_starts[i] as usize..self.output_starts[i + 1] as usize]
    }

    /// The index of the valid path with this 32-character hash part.
    pub fn index_of_hash_part(&self, hash_part: &str) -> Option<u32> {
        let key: [u8; 32] = hash_part.as_bytes().try_into().ok()?;
        self.by_hash_part.get(&key).copied()
    }

    /// The index of `path`, if it is valid.
    pub fn index_of(&self, path: &StorePath) -> Option<u32> {
        self.index_of_hash_part(path.hash_part())
            .filter(|&index| self.paths[index as usize] == *path)
    }
}

/// Turns (from, to) pairs into compressed rows over `nodes` nodes.
fn compress(nodes: usize, mut pairs: Vec<(u32, u32)>) -> (Vec<u32>, Vec<u32>) {
    pairs.sort_unstable();
    pairs.dedup();
    let mut starts = vec![0u32; nodes + 1];
    for &(from, _) in &pairs {
        starts[from as usize + 1] += 1;
    }
    for i in 0..nodes {
        starts[i + 1] += starts[i];
    }
    (starts, pairs.into_iter().map(|(_, to)| to).collect())
}

impl Registry {
    /// The whole registry as a [`PathGraph`], read in one snapshot.
    pub fn path_graph(&self) -> Result<PathGraph, StoreError> {
        retry(|| self.path_graph_once())
    }

    fn path_graph_once(&self) -> Result<PathGraph, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let mut graph = PathGraph::default();
        let mut index_of_id: HashMap<i64, u32> = HashMap::new();
        let mut deriver_names: Vec<(u32, String)> = Vec::new();
        {
            let mut stmt = tx.prepare("select id, path, deriver, narSize from ValidPaths")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let column = Column { row, path: "" };
                let id = column.int(0, "id")?.unwrap_or_default();
                let full = column.text(1, "path")?.unwrap_or_default();
                let path = self.parse_path(full, full)?;
                let index = u32::try_from(graph.paths.len())
                    .map_err(|_| super::corrupt(full, "more than 2^32 valid paths"))?;
                if let Some(deriver) = column.text(2, "deriver")? {
                    deriver_names.push((index, deriver.to_owned()));
                }
                let size = column.int(3, "narSize")?.unwrap_or(0);
                let key: [u8; 32] = path
                    .hash_part()
                    .as_bytes()
                    .try_into()
                    .map_err(|_| super::corrupt(full, "hash part is not 32 bytes"))?;
                graph.by_hash_part.insert(key, index);
                index_of_id.insert(id, index);
                graph.paths.push(path);
                graph.nar_sizes.push(u64::try_from(size).unwrap_or(0));
            }
        }
        let nodes = graph.paths.len();
        graph.derivers = vec![None; nodes];
        for (index, deriver) in deriver_names {
            let Ok(deriver) = self.store_dir.parse_path(&deriver) else {
                continue; // a deriver outside the store is just not a valid path
            };
            graph.derivers[index as usize] = graph.index_of(&deriver);
        }

        let mut pairs = Vec::new();
        {
            let mut stmt = tx.prepare("select referrer, reference from Refs")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let (referrer, reference): (i64, i64) = (row.get(0)?, row.get(1)?);
                if let (Some(&from), Some(&to)) =
                    (index_of_id.get(&referrer), index_of_id.get(&reference))
                {
                    pairs.push((from, to));
                }
            }
        }
        (graph.reference_starts, graph.references) = compress(nodes, pairs);

        let mut pairs = Vec::new();
        {
            let mut stmt = tx.prepare("select drv, path from DerivationOutputs")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let drv: i64 = row.get(0)?;
                let output: String = row.get(1)?;
                let Some(&from) = index_of_id.get(&drv) else {
                    continue;
                };
                let Ok(output) = self.store_dir.parse_path(&output) else {
                    continue;
                };
                if let Some(to) = graph.index_of(&output) {
                    pairs.push((from, to));
                }
            }
        }
        (graph.output_starts, graph.outputs) = compress(nodes, pairs);
        tx.finish()?;
        Ok(graph)
    }

    /// Adds `signatures` to the valid `path`'s (`nix store sign`, the daemon's
    /// `AddSignatures`), keeping the ones it has.
    pub fn add_signatures(
        &mut self,
        path: &StorePath,
        signatures: &[arca_store_core::Signature],
    ) -> Result<(), StoreError> {
        // Parsed values only: a string with a space in it would read back as several.
        let signatures: Vec<String> = signatures.iter().map(ToString::to_string).collect();
        let full = self.store_dir.display(path);
        let conn = &mut self.conn;
        retry(|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<Option<String>> = tx
                .prepare_cached("select sigs from ValidPaths where path = ?")?
                .query_row([&full], |row| row.get(0))
                .optional()?;
            let Some(current) = current else {
                return Err(StoreError::InvalidPath(full.clone()));
            };
            let mut all: std::collections::BTreeSet<&str> = current
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            all.extend(
                signatures
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !s.is_empty()),
            );
            let joined = all.into_iter().collect::<Vec<_>>().join(" ");
            tx.prepare_cached("update ValidPaths set sigs = ? where path = ?")?
                .execute(rusqlite::params![
                    (!joined.is_empty()).then_some(joined),
                    full
                ])?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Unregisters `paths` in this order, in one transaction: each one that no valid
    /// path still refers to (a self-reference or a path unregistered earlier in the list
    /// does not count) is removed with its references and derivation outputs; the
    /// others stay. Returns, for each path, whether it is gone now (a path that was not
    /// valid counts as gone).
    pub fn unregister_many(&mut self, paths: &[StorePath]) -> Result<Vec<bool>, StoreError> {
        let store_dir = &self.store_dir;
        let conn = &mut self.conn;
        // Each delete cascades and fires a trigger, so SQLite keeps a statement journal
        // for it; in memory rather than a temporary file, that was a fifth of the
        // collector's time.
        conn.pragma_update(None, "temp_store", "memory")?;
        retry(|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut removed = Vec::with_capacity(paths.len());
            {
                let mut referrer = tx.prepare_cached(
                    "select 1 from Refs where reference = ?1 and referrer != ?1 limit 1",
                )?;
                let mut delete = tx.prepare_cached("delete from ValidPaths where id = ?")?;
                for path in paths {
                    let Some(id) = path_id(&tx, &store_dir.display(path))? else {
                        removed.push(true);
                        continue;
                    };
                    if referrer.exists([id])? {
                        removed.push(false);
                        continue;
                    }
                    delete.execute([id])?;
                    removed.push(true);
                }
            }
            tx.commit()?;
            Ok(removed)
        })
    }
}
