//! [`list`] and [`cat`]: look inside a NAR without restoring it (`nix nar ls`, `nix nar cat`).

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::encoder::BUFFER_SIZE;
use crate::reader::{Event, Limits, NarReader, ReadError};

/// The tree of a NAR, without file contents: what `nix nar ls --json -R` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// A regular file.
    Regular {
        /// Whether it is executable.
        executable: bool,
        /// Size of its contents in bytes.
        size: u64,
        /// Where its contents start in the NAR (Nix's `narOffset`).
        nar_offset: u64,
    },
    /// A symlink.
    Symlink {
        /// Where it points.
        target: Vec<u8>,
    },
    /// A directory.
    Directory {
        /// Its entries by name, in NAR order.
        entries: BTreeMap<Vec<u8>, Listing>,
    },
}

impl Listing {
    /// The node at `path` inside this tree (`/`, `` and `.` are the root; `..` finds
    /// nothing). Symlinks are not followed.
    pub fn get(&self, path: &Path) -> Option<&Listing> {
        components(path)?
            .into_iter()
            .try_fold(self, |node, name| match node {
                Listing::Directory { entries } => entries.get(name),
                _ => None,
            })
    }
}

/// Errors from [`cat`].
#[derive(Debug, thiserror::Error)]
pub enum CatError {
    /// The NAR is malformed or could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Nothing in the NAR has that path.
    #[error("path '{}' does not exist in the NAR", path.display())]
    NotFound {
        /// The path asked for.
        path: PathBuf,
    },
    /// The path is a directory or a symlink.
    #[error("path '{}' in the NAR is not a regular file", path.display())]
    NotRegular {
        /// The path asked for.
        path: PathBuf,
    },
    /// Writing the contents to the output failed.
    #[error("could not write the contents of '{}'", path.display())]
    Write {
        /// The path asked for.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

type Entries = BTreeMap<Vec<u8>, Listing>;

/// Reads the whole NAR and returns its tree. The input must end with the NAR.
pub fn list(nar: impl Read, limits: &Limits) -> Result<Listing, ReadError> {
    let mut reader = NarReader::new(BufReader::with_capacity(BUFFER_SIZE, nar), limits.clone());
    // Open directories, innermost last, each with the name it has in its parent.
    let mut open: Vec<(Option<Vec<u8>>, Entries)> = Vec::new();
    let mut name = None;
    let mut root = None;
    while let Some(event) = reader.next()? {
        let node = match event {
            Event::Entry { name: entry } => {
                name = Some(entry.to_vec());
                continue;
            }
            Event::Directory => {
                open.push((name.take(), BTreeMap::new()));
                continue;
            }
            Event::Regular { executable, size } => Listing::Regular {
                executable,
                size,
                nar_offset: reader.offset(),
            },
            Event::Symlink { target } => Listing::Symlink {
                target: target.to_vec(),
            },
            Event::EndDirectory => {
                let (directory_name, entries) = open
                    .pop()
                    .expect("the reader ends only directories it opened");
                name = directory_name;
                Listing::Directory { entries }
            }
        };
        match open.last_mut() {
            Some((_, entries)) => {
                let name = name
                    .take()
                    .expect("the reader gives an entry's name before its node");
                entries.insert(name, node);
            }
            None => root = Some(node),
        }
    }
    reader.finish()?;
    Ok(root.expect("a NAR that parsed to the end has a root node"))
}

/// Writes the contents of the regular file at `path` inside the NAR to `out` and returns
/// their size. `path` is relative to the root of the NAR (a leading `/` is allowed);
/// symlinks are not followed. Reading stops right after the file, so the rest of the NAR
/// is not validated.
pub fn cat(
    nar: impl Read,
    path: &Path,
    out: &mut impl Write,
    limits: &Limits,
) -> Result<u64, CatError> {
    let not_found = || CatError::NotFound {
        path: path.to_owned(),
    };
    let wanted = components(path).ok_or_else(not_found)?;
    let mut reader = NarReader::new(BufReader::with_capacity(BUFFER_SIZE, nar), limits.clone());
    // `depth` directories are open; the outermost `matched` of them lie on `wanted`.
    let mut depth = 0;
    let mut matched = 0;
    // Whether the next node lies on `wanted`, and how deep it is. The root lies on it.
    let mut node_on_path = true;
    let mut node_depth = 0;
    while let Some(event) = reader.next()? {
        let is_wanted = node_on_path && node_depth == wanted.len();
        match event {
            Event::Entry { name } => {
                // The root directory has no name: an entry of the `depth`th open
                // directory is component `depth - 1` of its path.
                node_on_path = matched == depth && wanted.get(depth - 1) == Some(&name);
                node_depth = depth;
            }
            Event::Regular { size, .. } if is_wanted => {
                return copy_contents(&mut reader, out)
                    .map_err(|error| match error {
                        CopyError::Read(error) => CatError::Read(error),
                        CopyError::Write(source) => CatError::Write {
                            path: path.to_owned(),
                            source,
                        },
                    })
                    .map(|()| size);
            }
            Event::Symlink { .. } | Event::Directory if is_wanted => {
                return Err(CatError::NotRegular {
                    path: path.to_owned(),
                })
            }
            Event::Directory => {
                depth += 1;
                if node_on_path {
                    matched = depth;
                }
            }
            Event::EndDirectory => {
                if matched == depth {
                    // The directory on the way to `wanted` is over: it is not in the NAR.
                    return Err(not_found());
                }
                depth -= 1;
            }
            Event::Regular { .. } | Event::Symlink { .. } => {}
        }
    }
    Err(not_found())
}

enum CopyError {
    Read(ReadError),
    Write(io::Error),
}

fn copy_contents<R: io::BufRead>(
    reader: &mut NarReader<R>,
    out: &mut impl Write,
) -> Result<(), CopyError> {
    loop {
        let chunk = reader.fill_contents().map_err(CopyError::Read)?;
        if chunk.is_empty() {
            return Ok(());
        }
        out.write_all(chunk).map_err(CopyError::Write)?;
        let written = chunk.len();
        reader.consume_contents(written);
    }
}

/// The names along `path` inside a NAR, or `None` if it uses `..`.
fn components(path: &Path) -> Option<Vec<&[u8]>> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(Some(name.as_bytes())),
            Component::RootDir | Component::CurDir => None,
            Component::ParentDir | Component::Prefix(_) => Some(None),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TREE_NAR: &[u8] = include_bytes!("../tests/fixtures/tree.nar");

    fn regular(executable: bool, size: u64, nar_offset: u64) -> Listing {
        Listing::Regular {
            executable,
            size,
            nar_offset,
        }
    }

    fn directory<const N: usize>(entries: [(&str, Listing); N]) -> Listing {
        Listing::Directory {
            entries: entries
                .into_iter()
                .map(|(name, node)| (name.as_bytes().to_vec(), node))
                .collect(),
        }
    }

    fn symlink(target: &str) -> Listing {
        Listing::Symlink {
            target: target.as_bytes().to_vec(),
        }
    }

    #[test]
    fn lists_what_nix_nar_ls_reports() {
        // From `nix nar ls --json -R tests/fixtures/tree.nar /`.
        let expected = directory([
            ("B", regular(false, 8, 232)),
            ("a", regular(true, 3, 456)),
            ("empty-dir", directory([])),
            ("l", symlink("a")),
            (
                "sub",
                directory([
                    ("abs", symlink("/nix/store/does-not-exist")),
                    ("deeper", directory([("nothing", regular(false, 0, 1504))])),
                    ("e", regular(false, 2, 1720)),
                ]),
            ),
        ]);
        let listing = list(TREE_NAR, &Limits::default()).expect("valid");
        assert_eq!(listing, expected);
        assert_eq!(
            listing.get(Path::new("/sub/deeper/nothing")),
            Some(&regular(false, 0, 1504))
        );
        assert_eq!(listing.get(Path::new("")), Some(&listing));
        assert_eq!(listing.get(Path::new("l/x")), None);
        assert_eq!(listing.get(Path::new("sub/../a")), None);
    }

    #[test]
    fn lists_a_root_file() {
        let nar = include_bytes!("../tests/fixtures/hello.nar");
        assert_eq!(
            list(&nar[..], &Limits::default()).expect("valid"),
            regular(true, 21, 128)
        );
    }

    #[test]
    fn list_rejects_malformed_nars() {
        assert!(matches!(
            list(&TREE_NAR[..100], &Limits::default()),
            Err(ReadError::UnexpectedEof { offset: 100 })
        ));
    }

    fn cat_to_vec(nar: &[u8], path: &str) -> Result<Vec<u8>, CatError> {
        let mut out = Vec::new();
        let size = cat(nar, Path::new(path), &mut out, &Limits::default())?;
        assert_eq!(size, out.len() as u64);
        Ok(out)
    }

    #[test]
    fn cat_writes_one_file() {
        assert_eq!(cat_to_vec(TREE_NAR, "/sub/e").expect("found"), b"x\n");
        assert_eq!(cat_to_vec(TREE_NAR, "B").expect("found"), b"12345678");
        assert_eq!(cat_to_vec(TREE_NAR, "./a").expect("found"), b"hi\n");
        assert_eq!(
            cat_to_vec(TREE_NAR, "sub/deeper/nothing").expect("found"),
            b""
        );
        let hello = include_bytes!("../tests/fixtures/hello.nar");
        assert_eq!(
            cat_to_vec(hello, "/").expect("found"),
            b"#!/bin/sh\necho hello\n"
        );
    }

    #[test]
    fn cat_reports_missing_paths() {
        for path in [
            "missing",
            "sub/missing",
            "sub/deeper/nothing/more",
            "a/b",
            "../a",
            "C",
        ] {
            assert!(
                matches!(cat_to_vec(TREE_NAR, path), Err(CatError::NotFound { .. })),
                "{path}"
            );
        }
    }

    #[test]
    fn cat_refuses_directories_and_symlinks() {
        for path in ["/", "sub", "empty-dir", "l", "sub/abs"] {
            assert!(
                matches!(cat_to_vec(TREE_NAR, path), Err(CatError::NotRegular { .. })),
                "{path}"
            );
        }
    }
}
