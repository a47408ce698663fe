//! Nix's export format (`nix-store --export` / `--import`) for the local store, streamed
//! both ways; the format itself is `arca_store_core::export`, which every store uses.
//!
//! The NAR comes before the path it belongs to, so an import restores each NAR into a
//! staging tree while hashing it, and only then learns which path it is. Memory stays
//! flat whatever the archive's size (Nix 2.8 holds the whole archive in memory).

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::sync::Arc;

use arca_store_core::{export, PathInfo, Store, StorePath};

use crate::add_batch::staged_limit;
use crate::canonicalise::store_restore_options;
use crate::error::StoreError;
use crate::hashing::HashingReader;
use crate::lock::PathLock;
use crate::staging::{Staged, StagedGroup};
use crate::LocalStore;

impl LocalStore {
    /// Writes `paths` in Nix's export format, each after the paths it refers to.
    pub fn export_paths(
        &self,
        paths: &BTreeSet<StorePath>,
        out: &mut dyn Write,
    ) -> Result<(), StoreError> {
        Ok(export::write_archive(self, paths, out)?)
    }

    /// Imports an export archive, returning the paths it held in order. Paths already
    /// valid are skipped (their NAR is read and dropped). Each path must refer only to
    /// valid paths or to paths earlier in the archive.
    ///
    /// Paths are committed in batches (one transaction, and one `syncfs` in immediate
    /// durability, per batch of up to [`staged_limit`] paths or 256 MiB), each batch
    /// staged under one lock ([`StagedGroup`]): a crash loses at most the batch being
    /// written, and never leaves a partial path.
    pub fn import_paths(&self, input: &mut impl BufRead) -> Result<Vec<StorePath>, StoreError> {
        let mut imported = Vec::new();
        let mut batch = Batch {
            entries: Vec::new(),
            max_entries: staged_limit(),
            paths: BTreeSet::new(),
            bytes: 0,
            group: None,
        };
        while export::read_entry_start(input)? {
            imported.push(self.import_one(input, &mut batch)?);
            if batch.is_full() {
                self.commit_import_batch(&mut batch)?;
            }
        }
        self.commit_import_batch(&mut batch)?;
        Ok(imported)
    }

    fn commit_import_batch(&self, batch: &mut Batch) -> Result<(), StoreError> {
        let entries = std::mem::take(&mut batch.entries);
        batch.paths.clear();
        batch.bytes = 0;
        // The next paths go to a new group; this one goes when its last member does.
        batch.group = None;
        let (items, locks): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .map(|(staged, info, lock)| ((staged, info), lock))
            .unzip();
        let committed = self.commit_batch(items);
        drop(locks);
        committed
    }

    fn import_one(
        &self,
        input: &mut impl BufRead,
        batch: &mut Batch,
    ) -> Result<StorePath, StoreError> {
        let group = match &batch.group {
            Some(group) => group.clone(),
            None => batch.group.insert(self.stage_group()?).clone(),
        };
        let staged = Staged::member(&group);
        let mut hashing = HashingReader::new(input);
        let nar_size =
            arca_nar::restore_embedded(&mut hashing, staged.tree(), &store_restore_options())
                .map_err(|source| StoreError::Restore {
                    path: "<import stream>".to_owned(),
                    source,
                })?;
        let (nar_hash, _) = hashing.result();
        let export::EntryTrailer {
            path,
            references,
            deriver,
        } = export::read_entry_trailer(input, self.store_dir())?;
        let mut info = PathInfo::new(path.clone(), nar_hash, nar_size);
        info.references = references;
        info.deriver = deriver;
        if batch.paths.contains(&path) {
            return Ok(path); // twice in one archive: `staged` is dropped and removed
        }
        // Waiting for a lock while holding the batch's locks could deadlock with another
        // import taking the same paths in another order: commit (and release) first.
        let lock = match self.try_lock_path(&path)? {
            Some(lock) => lock,
            None => {
                self.commit_import_batch(batch)?;
                self.lock_path(&path)?
            }
        };
        if self.is_valid_path(&path)? {
            return Ok(path); // `staged` is dropped: its tree is removed
        }
        self.check_references_with(&info, &batch.paths)?;
        batch.bytes += nar_size;
        batch.paths.insert(path.clone());
        batch.entries.push((staged, info, lock));
        Ok(path)
    }
}

/// Paths of an import staged and locked, waiting to be committed together.
struct Batch {
    entries: Vec<(Staged, PathInfo, PathLock)>,
    /// Most entries per batch: see [`staged_limit`].
    max_entries: usize,
    /// The paths of `entries`.
    paths: BTreeSet<StorePath>,
    bytes: u64,
    /// Where the batch's paths are staged, under one lock.
    group: Option<Arc<StagedGroup>>,
}

impl Batch {
    /// Bounds what one batch holds: locks and descriptors, and what a crash can lose.
    fn is_full(&self) -> bool {
        self.entries.len() >= self.max_entries || self.bytes >= 256 << 20
    }
}
