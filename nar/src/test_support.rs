//! Helpers shared by the unit tests: a tree model with a proptest strategy, hand-built
//! NAR bytes, and event collection.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;

use crate::{Event, Limits, NarEncoder, NarReader, ReadError};

/// A file system tree as a NAR sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tree {
    Regular { executable: bool, contents: Vec<u8> },
    Symlink { target: Vec<u8> },
    Directory(BTreeMap<Vec<u8>, Tree>),
}

/// Any valid entry name: no `/` or NUL, not `.` or `..`, up to 12 bytes, any other byte.
pub(crate) fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("not / or NUL", |b| *b != b'/' && *b != 0),
        1..12,
    )
    .prop_filter("not . or ..", |name| name != b"." && name != b"..")
}

pub(crate) fn tree_strategy() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(
            |(executable, contents)| Tree::Regular {
                executable,
                contents
            }
        ),
        proptest::collection::vec(1..=255u8, 1..20).prop_map(|target| Tree::Symlink { target }),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        proptest::collection::btree_map(name_strategy(), inner, 0..6).prop_map(Tree::Directory)
    })
}

/// The canonical NAR of `tree`.
pub(crate) fn encode(tree: &Tree) -> Vec<u8> {
    let mut encoder = NarEncoder::new(Vec::new());
    encode_node(&mut encoder, tree);
    encoder.finish().expect("a complete tree encodes")
}

fn encode_node(encoder: &mut NarEncoder<Vec<u8>>, tree: &Tree) {
    match tree {
        Tree::Regular {
            executable,
            contents,
        } => encoder
            .regular(*executable, contents.len() as u64, &mut &contents[..])
            .expect("contents of the declared size"),
        Tree::Symlink { target } => encoder.symlink(target).expect("a valid target"),
        Tree::Directory(entries) => {
            encoder.begin_directory().expect("a node is expected");
            for (name, node) in entries {
                encoder.entry(name).expect("sorted valid names");
                encode_node(encoder, node);
            }
            encoder.end_directory().expect("inside a directory");
        }
    }
}

/// An event with its data owned, and a regular file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OwnedEvent {
    Regular { executable: bool, contents: Vec<u8> },
    Symlink(Vec<u8>),
    Directory,
    Entry(Vec<u8>),
    EndDirectory,
}

/// All events of the NAR `nar`, which must be all of the input.
pub(crate) fn events(nar: &[u8], limits: Limits) -> Result<Vec<OwnedEvent>, ReadError> {
    let mut reader = NarReader::new(nar, limits);
    let mut events = Vec::new();
    while let Some(event) = reader.next()? {
        events.push(match event {
            Event::Regular { executable, .. } => {
                let mut contents = Vec::new();
                reader
                    .contents()
                    .read_to_end(&mut contents)
                    .map_err(|error| {
                        match error.into_inner().map(|e| e.downcast::<ReadError>()) {
                            Some(Ok(error)) => *error,
                            _ => ReadError::Failed,
                        }
                    })?;
                OwnedEvent::Regular {
                    executable,
                    contents,
                }
            }
            Event::Symlink { target } => OwnedEvent::Symlink(target.to_vec()),
            Event::Directory => OwnedEvent::Directory,
            Event::Entry { name } => OwnedEvent::Entry(name.to_vec()),
            Event::EndDirectory => OwnedEvent::EndDirectory,
        });
    }
    reader.finish()?;
    Ok(events)
}

/// The events a parser must produce for `tree`.
pub(crate) fn tree_events(tree: &Tree) -> Vec<OwnedEvent> {
    let mut events = Vec::new();
    push_events(tree, &mut events);
    events
}

fn push_events(tree: &Tree, events: &mut Vec<OwnedEvent>) {
    match tree {
        Tree::Regular {
            executable,
            contents,
        } => events.push(OwnedEvent::Regular {
            executable: *executable,
            contents: contents.clone(),
        }),
        Tree::Symlink { target } => events.push(OwnedEvent::Symlink(target.clone())),
        Tree::Directory(entries) => {
            events.push(OwnedEvent::Directory);
            for (name, node) in entries {
                events.push(OwnedEvent::Entry(name.clone()));
                push_events(node, events);
            }
            events.push(OwnedEvent::EndDirectory);
        }
    }
}

/// Reads a tree back from disk, without following symlinks.
pub(crate) fn read_tree(path: &Path) -> Tree {
    let metadata = fs::symlink_metadata(path).expect("the restored path exists");
    if metadata.is_symlink() {
        let target = fs::read_link(path).expect("a symlink");
        Tree::Symlink {
            target: target.as_os_str().as_bytes().to_vec(),
        }
    } else if metadata.is_dir() {
        let entries = fs::read_dir(path)
            .expect("a directory")
            .map(|entry| {
                let entry = entry.expect("a directory entry");
                (
                    entry.file_name().as_bytes().to_vec(),
                    read_tree(&entry.path()),
                )
            })
            .collect();
        Tree::Directory(entries)
    } else {
        Tree::Regular {
            executable: metadata.permissions().mode() & 0o111 != 0,
            contents: fs::read(path).expect("a regular file"),
        }
    }
}

/// One NAR string: length, bytes, zero padding.
pub(crate) fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(bytes);
    out.resize(out.len().next_multiple_of(8), 0);
    out
}

/// The concatenation of `strings` as NAR strings.
pub(crate) fn strings(strings: &[&[u8]]) -> Vec<u8> {
    strings.iter().flat_map(|s| string(s)).collect()
}

/// A NAR of a directory with the given entries, each an empty regular file, in the given
/// (possibly invalid) order.
pub(crate) fn directory_nar(names: &[&[u8]]) -> Vec<u8> {
    let mut nar = strings(&[b"nix-archive-1", b"(", b"type", b"directory"]);
    for name in names {
        nar.extend(strings(&[b"entry", b"(", b"name", name, b"node"]));
        nar.extend(strings(&[
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"",
            b")",
        ]));
        nar.extend(strings(&[b")"]));
    }
    nar.extend(strings(&[b")"]));
    nar
}
