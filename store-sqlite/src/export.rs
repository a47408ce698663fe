//! Nix's export format (`nix-store --export` / `--import`), streamed both ways.
//!
//! Per path: u64 1, the NAR, u64 `0x4558494e` ("NIXE"), the path, its references (a
//! list of paths), its deriver (or ""), u64 0 (no signature); after the last path, u64 0.
//! Integers are u64 little-endian, strings are length-prefixed and zero-padded to 8.
//!
//! The NAR comes before the path it belongs to, so an import restores each NAR into a
//! staging tree while hashing it, and only then learns which path it is. Memory stays
//! flat whatever the archive's size (Nix 2.8 holds the whole archive in memory).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};

use arca_store_core::{dependency_order, PathInfo, Store, StorePath};

use crate::canonicalise::store_restore_options;
use crate::error::{IoContext, StoreError};
use crate::hashing::HashingReader;
use crate::lock::PathLock;
use crate::staging::Staged;
use crate::LocalStore;

const EXPORT_MAGIC: u64 = 0x4558_494e;
/// Longest string accepted in the metadata (a full store path is far shorter).
const MAX_STRING: u64 = 4096;
/// Most references accepted for one path.
const MAX_REFERENCES: u64 = 1 << 20;

impl LocalStore {
    /// Writes `paths` in Nix's export format, each after the paths it refers to.
    pub fn export_paths(
        &self,
        paths: &BTreeSet<StorePath>,
        out: &mut impl Write,
    ) -> Result<(), StoreError> {
        let mut infos = BTreeMap::new();
        for path in paths {
            let info = self
                .query_path_info(path)?
                .ok_or_else(|| StoreError::InvalidPath(self.store_dir().display(path)))?;
            infos.insert(path.clone(), info);
        }
        let to_io = |error: std::io::Error| StoreError::Io {
            path: "<export stream>".into(),
            source: error,
        };
        let order = dependency_order(paths, |path| {
            Ok::<_, StoreError>(
                infos
                    .get(path)
                    .map(|i| i.references.clone())
                    .unwrap_or_default(),
            )
        })?;
        for path in order {
            let info = &infos[&path];
            write_u64(out, 1).map_err(to_io)?;
            self.nar_from_path(&path, out)?;
            write_u64(out, EXPORT_MAGIC).map_err(to_io)?;
            write_string(out, self.store_dir().display(&path).as_bytes()).map_err(to_io)?;
            write_u64(out, info.references.len() as u64).map_err(to_io)?;
            for reference in &info.references {
                write_string(out, self.store_dir().display(reference).as_bytes()).map_err(to_io)?;
            }
            let deriver = info
                .deriver
                .as_ref()
                .map(|d| self.store_dir().display(d))
                .unwrap_or_default();
            write_string(out, deriver.as_bytes()).map_err(to_io)?;
            write_u64(out, 0).map_err(to_io)?;
        }
        write_u64(out, 0).map_err(to_io)?;
        out.flush().map_err(to_io)
    }

    /// Imports an export archive, returning the paths it held in order. Paths already
    /// valid are skipped (their NAR is read and dropped). Each path must refer only to
    /// valid paths or to paths earlier in the archive.
    ///
    /// Paths are committed in batches (one transaction, and one `syncfs` in immediate
    /// durability, per batch of up to 200 paths): a crash
    /// loses at most the batch being written, and never leaves a partial path.
    pub fn import_paths(&self, input: &mut impl BufRead) -> Result<Vec<StorePath>, StoreError> {
        let mut imported = Vec::new();
        let mut batch = Batch {
            entries: Vec::new(),
            max_entries: batch_limit(),
            paths: BTreeSet::new(),
            bytes: 0,
        };
        loop {
            match read_u64(input)? {
                0 => {
                    self.commit_import_batch(&mut batch)?;
                    return Ok(imported);
                }
                1 => {
                    imported.push(self.import_one(input, &mut batch)?);
                    if batch.is_full() {
                        self.commit_import_batch(&mut batch)?;
                    }
                }
                other => {
                    return Err(StoreError::BadExport(format!(
                        "expected 0 or 1 before path {}, got {other}",
                        imported.len() + 1
                    )))
                }
            }
        }
    }

    fn commit_import_batch(&self, batch: &mut Batch) -> Result<(), StoreError> {
        let entries = std::mem::take(&mut batch.entries);
        batch.paths.clear();
        batch.bytes = 0;
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
        let staged = self.stage()?;
        let mut hashing = HashingReader::new(input);
        let nar_size =
            arca_nar::restore_embedded(&mut hashing, staged.tree(), &store_restore_options())
                .map_err(|source| StoreError::Restore {
                    path: "<import stream>".to_owned(),
                    source,
                })?;
        let (nar_hash, _) = hashing.result();
        if read_u64(input)? != EXPORT_MAGIC {
            return Err(StoreError::BadExport(
                "missing NIXE marker after a NAR".to_owned(),
            ));
        }
        let path = self.store_dir().parse_path(&read_text(input)?)?;
        let reference_count = read_u64(input)?;
        if reference_count > MAX_REFERENCES {
            return Err(StoreError::BadExport(format!(
                "'{}' claims {reference_count} references",
                self.store_dir().display(&path)
            )));
        }
        let mut references = BTreeSet::new();
        for _ in 0..reference_count {
            references.insert(self.store_dir().parse_path(&read_text(input)?)?);
        }
        let deriver = match read_text(input)?.as_str() {
            "" => None,
            text => Some(self.store_dir().parse_path(text)?),
        };
        if read_u64(input)? != 0 {
            return Err(StoreError::BadExport(format!(
                "signed exports are not supported ('{}')",
                self.store_dir().display(&path)
            )));
        }
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

/// How many paths one import batch may hold. Each holds two open files (its staging
/// lock and its path lock), so the batch must fit the process's descriptor limit with
/// room to spare (the usual soft limit is 1024); more than 1000 gains nothing.
fn batch_limit() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let usable = soft.saturating_sub(256) / 2;
    usize::try_from(usable)
        .unwrap_or(usize::MAX)
        .clamp(16, 1000)
}

/// Paths of an import staged and locked, waiting to be committed together.
struct Batch {
    entries: Vec<(Staged, PathInfo, PathLock)>,
    /// Most entries per batch: see [`batch_limit`].
    max_entries: usize,
    /// The paths of `entries`.
    paths: BTreeSet<StorePath>,
    bytes: u64,
}

impl Batch {
    /// Bounds what one batch holds: locks and descriptors, and what a crash can lose.
    fn is_full(&self) -> bool {
        self.entries.len() >= self.max_entries || self.bytes >= 256 << 20
    }
}

fn write_u64(out: &mut impl Write, value: u64) -> std::io::Result<()> {
    out.write_all(&value.to_le_bytes())
}

fn write_string(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    write_u64(out, bytes.len() as u64)?;
    out.write_all(bytes)?;
    out.write_all(&[0u8; 8][..(8 - bytes.len() % 8) % 8])
}

fn read_u64(input: &mut impl Read) -> Result<u64, StoreError> {
    let mut bytes = [0u8; 8];
    read_exact(input, &mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// `read_exact` that calls an early end what it is: a truncated archive.
fn read_exact(input: &mut impl Read, buffer: &mut [u8]) -> Result<(), StoreError> {
    match input.read_exact(buffer) {
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(StoreError::BadExport("the archive is truncated".to_owned()))
        }
        result => result.at("<import stream>"),
    }
}

fn read_text(input: &mut impl Read) -> Result<String, StoreError> {
    let len = read_u64(input)?;
    if len > MAX_STRING {
        return Err(StoreError::BadExport(format!(
            "a metadata string of {len} bytes (at most {MAX_STRING})"
        )));
    }
    let len = len as usize;
    let mut bytes = vec![0u8; len + (8 - len % 8) % 8];
    read_exact(input, &mut bytes)?;
    if bytes[len..].iter().any(|&b| b != 0) {
        return Err(StoreError::BadExport(
            "non-zero padding in a string".to_owned(),
        ));
    }
    bytes.truncate(len);
    String::from_utf8(bytes)
        .map_err(|_| StoreError::BadExport("a path that is not UTF-8".to_owned()))
}
