//! Nix's export format (`nix-store --export` / `--import`), once for every store.
//!
//! Per path: u64 1, the NAR, u64 `0x4558494e` ("NIXE"), the path, its references (a
//! list of paths), its deriver (or ""), u64 0 (no signature); after the last path, u64 0.
//! Integers are u64 little-endian, strings are length-prefixed and zero-padded to 8.
//!
//! [`write_archive`] writes one from any [`Store`]. Reading is in two calls around the
//! NAR, which the caller consumes itself (the local store restores it as it reads, the
//! daemon client spools it): [`read_entry_start`] says whether a path follows, and
//! [`read_entry_trailer`] reads what comes after its NAR. No length read from the
//! archive sizes an allocation beyond [`MAX_STRING`] bytes or [`MAX_REFERENCES`] paths:
//! more is refused, never cut.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use crate::store::{dependency_order, Store};
use crate::store_path::{StoreDir, StorePath, StorePathError};

/// The marker after each NAR ("NIXE").
pub const EXPORT_MAGIC: u64 = 0x4558_494e;
/// Longest string accepted in the metadata (a full store path is far shorter).
pub const MAX_STRING: u64 = 4096;
/// Most references accepted for one path.
pub const MAX_REFERENCES: u64 = 1 << 20;

/// Why an export archive could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The archive breaks the format; says where.
    #[error("malformed export archive: {0}")]
    Malformed(String),
    /// It ended in the middle of a path.
    #[error("malformed export archive: it is truncated")]
    Truncated,
    /// A path in it is not a store path.
    #[error("malformed export archive")]
    Path(#[from] StorePathError),
    /// Reading or writing the stream failed.
    #[error("export stream")]
    Io(#[source] io::Error),
    /// The store failed to say what a path is or to give its NAR.
    #[error("cannot export '{path}'")]
    Store {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A path to export is not valid.
    #[error("path '{0}' is not valid")]
    InvalidPath(String),
}

/// What follows a path's NAR in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryTrailer {
    pub path: StorePath,
    pub references: BTreeSet<StorePath>,
    pub deriver: Option<StorePath>,
}

/// Writes `paths` from `store` in Nix's export format, each after the paths it refers to.
pub fn write_archive<S: Store + ?Sized>(
    store: &S,
    paths: &BTreeSet<StorePath>,
    out: &mut dyn Write,
) -> Result<(), ExportError> {
    let store_dir = store.store_dir();
    let failed = |path: &StorePath| {
        let path = store_dir.display(path);
        move |error: S::Error| ExportError::Store {
            path,
            source: Box::new(error),
        }
    };
    let mut infos = BTreeMap::new();
    for path in paths {
        let info = store
            .query_path_info(path)
            .map_err(failed(path))?
            .ok_or_else(|| ExportError::InvalidPath(store_dir.display(path)))?;
        infos.insert(path.clone(), info);
    }
    let order = dependency_order(paths, |path| {
        Ok::<_, ExportError>(
            infos
                .get(path)
                .map(|i| i.references.clone())
                .unwrap_or_default(),
        )
    })?;
    for path in order {
        let info = &infos[&path];
        write_u64(out, 1)?;
        store.nar_from_path(&path, out).map_err(failed(&path))?;
        write_u64(out, EXPORT_MAGIC)?;
        write_string(out, &store_dir.display(&path))?;
        write_u64(out, info.references.len() as u64)?;
        for reference in &info.references {
            write_string(out, &store_dir.display(reference))?;
        }
        let deriver = info
            .deriver
            .as_ref()
            .map(|d| store_dir.display(d))
            .unwrap_or_default();
        write_string(out, &deriver)?;
        write_u64(out, 0)?;
    }
    write_u64(out, 0)?;
    out.flush().map_err(ExportError::Io)
}

/// Reads the marker before a path: whether one follows (`false`: the archive ended).
pub fn read_entry_start(input: &mut dyn Read) -> Result<bool, ExportError> {
    match read_u64(input)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(ExportError::Malformed(format!(
            "expected 0 or 1 before a path, got {other}"
        ))),
    }
}

/// Reads what follows a path's NAR: the marker, the path, its references and deriver,
/// and the (absent) signature.
pub fn read_entry_trailer(
    input: &mut dyn Read,
    store_dir: &StoreDir,
) -> Result<EntryTrailer, ExportError> {
    if read_u64(input)? != EXPORT_MAGIC {
        return Err(ExportError::Malformed(
            "missing NIXE marker after a NAR".to_owned(),
        ));
    }
    let path = store_dir.parse_path(&read_text(input)?)?;
    let count = read_u64(input)?;
    if count > MAX_REFERENCES {
        return Err(ExportError::Malformed(format!(
            "'{}' claims {count} references (at most {MAX_REFERENCES})",
            store_dir.display(&path)
        )));
    }
    let mut references = BTreeSet::new();
    for _ in 0..count {
        references.insert(store_dir.parse_path(&read_text(input)?)?);
    }
    let deriver = match read_text(input)?.as_str() {
        "" => None,
        text => Some(store_dir.parse_path(text)?),
    };
    if read_u64(input)? != 0 {
        return Err(ExportError::Malformed(format!(
            "signed exports are not supported ('{}')",
            store_dir.display(&path)
        )));
    }
    Ok(EntryTrailer {
        path,
        references,
        deriver,
    })
}

fn write_u64(out: &mut dyn Write, value: u64) -> Result<(), ExportError> {
    out.write_all(&value.to_le_bytes()).map_err(ExportError::Io)
}

fn write_string(out: &mut dyn Write, text: &str) -> Result<(), ExportError> {
    write_u64(out, text.len() as u64)?;
    out.write_all(text.as_bytes()).map_err(ExportError::Io)?;
    out.write_all(&[0u8; 8][..(8 - text.len() % 8) % 8])
        .map_err(ExportError::Io)
}

fn read_u64(input: &mut dyn Read) -> Result<u64, ExportError> {
    let mut bytes = [0u8; 8];
    read_exact(input, &mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// `read_exact` that calls an early end what it is: a truncated archive.
fn read_exact(input: &mut dyn Read, buffer: &mut [u8]) -> Result<(), ExportError> {
    match input.read_exact(buffer) {
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Err(ExportError::Truncated),
        result => result.map_err(ExportError::Io),
    }
}

fn read_text(input: &mut dyn Read) -> Result<String, ExportError> {
    let len = read_u64(input)?;
    if len > MAX_STRING {
        return Err(ExportError::Malformed(format!(
            "a metadata string of {len} bytes (at most {MAX_STRING})"
        )));
    }
    let len = len as usize;
    let mut bytes = vec![0u8; len + (8 - len % 8) % 8];
    read_exact(input, &mut bytes)?;
    if bytes[len..].iter().any(|&b| b != 0) {
        return Err(ExportError::Malformed(
            "non-zero padding in a string".to_owned(),
        ));
    }
    bytes.truncate(len);
    String::from_utf8(bytes)
        .map_err(|_| ExportError::Malformed("a path that is not UTF-8".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> StorePath {
        StorePath::from_base_name(&format!("{}-{name}", "a".repeat(32))).unwrap()
    }

    #[test]
    fn trailers_round_trip_and_oversized_counts_are_refused() {
        let store_dir = StoreDir::default();
        let mut bytes = Vec::new();
        write_u64(&mut bytes, EXPORT_MAGIC).unwrap();
        write_string(&mut bytes, &store_dir.display(&p("x"))).unwrap();
        write_u64(&mut bytes, 1).unwrap();
        write_string(&mut bytes, &store_dir.display(&p("y"))).unwrap();
        write_string(&mut bytes, "").unwrap();
        write_u64(&mut bytes, 0).unwrap();
        let trailer = read_entry_trailer(&mut &bytes[..], &store_dir).unwrap();
        assert_eq!(trailer.path, p("x"));
        assert_eq!(trailer.references, BTreeSet::from([p("y")]));
        assert_eq!(trailer.deriver, None);
        assert!(matches!(
            read_entry_trailer(&mut &bytes[..bytes.len() - 3], &store_dir),
            Err(ExportError::Truncated)
        ));

        let mut huge = Vec::new();
        write_u64(&mut huge, EXPORT_MAGIC).unwrap();
        write_string(&mut huge, &store_dir.display(&p("x"))).unwrap();
        write_u64(&mut huge, u64::MAX).unwrap();
        assert!(matches!(
            read_entry_trailer(&mut &huge[..], &store_dir),
            Err(ExportError::Malformed(m)) if m.contains("references")
        ));
        assert!(matches!(
            read_entry_start(&mut &7u64.to_le_bytes()[..]),
            Err(ExportError::Malformed(_))
        ));
    }
}
