//! [`restore`]: unpacks a NAR into a new file system tree, as `nix-store --restore` does.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::thread;

use crate::case_hack::CaseHackNames;
use crate::encoder::BUFFER_SIZE;
use crate::reader::{Event, Limits, NarReader, ReadError};

mod batch;

use batch::{create_file, finish_file, Batcher, SMALL_FILE};

/// How [`restore`] writes the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Rename entries that collide case-insensitively with an earlier sibling to
    /// `NAME~nix~case~hack~N` (see [`crate::CASE_HACK_SUFFIX`]).
    pub case_hack: bool,
    /// Bounds on the NAR being restored.
    pub limits: Limits,
    /// Give regular files the metadata of a Nix store right away — mode 0444 or 0555 and
    /// times at second 1 of the epoch — instead of Nix's restore modes (0666/0777 less the
    /// umask). Set through the open file, this saves a store two path lookups per file
    /// when it canonicalises afterwards. Directories and symlinks are left to the caller:
    /// a directory's time changes while it is filled, and std cannot set a symlink's.
    pub canonical_metadata: bool,
}

/// Errors from [`restore`].
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The NAR is malformed or could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The target of the restore already exists.
    #[error("path '{}' already exists", path.display())]
    TargetExists {
        /// The target.
        path: PathBuf,
    },
    /// Creating or writing a file, directory or symlink failed.
    #[error("could not create '{}'", path.display())]
    Io {
        /// The path being created.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Restores the NAR read from `nar` at `target`, which must not exist (its parent must).
///
/// Modes match Nix: files are created `0666`, directories `0777`, both less the umask, and
/// executable files then get `+x` for everyone. Every file is created with `O_EXCL` and
/// every directory with `mkdir`, so nothing that already exists is overwritten or
/// followed; since entry names cannot be empty, `.`, `..` or contain `/`, and duplicates
/// are rejected, no restored symlink is ever traversed and nothing is written outside
/// `target`. The input must end with the NAR.
///
/// Small files (up to 64 KiB) and symlinks are created by worker threads, in batches of
/// up to 1 MiB, while the NAR is parsed (see `restore/batch.rs`): this is what makes
/// restoring many small files faster than Nix, which makes the same syscalls on one
/// thread. Memory stays bounded by a few batches per core; larger files are streamed.
///
/// On error, the tree created so far is removed (best effort: a failure to remove it is
/// not reported, the original error is).
pub fn restore(
    nar: impl Read,
    target: &Path,
    options: &RestoreOptions,
) -> Result<(), RestoreError> {
    let mut reader = BufReader::with_capacity(BUFFER_SIZE, nar);
    restore_nar(&mut reader, target, options, true).map(drop)
}

/// Restores the NAR at the start of `nar` at `target`, like [`restore`], but reads
/// nothing past the NAR's last byte and accepts whatever follows it: for NARs embedded
/// in a larger stream (the export format, the daemon protocol). Returns the NAR's size.
pub fn restore_embedded(
    nar: &mut impl BufRead,
    target: &Path,
    options: &RestoreOptions,
) -> Result<u64, RestoreError> {
    restore_nar(nar, target, options, false)
}

fn restore_nar(
    nar: &mut impl BufRead,
    target: &Path,
    options: &RestoreOptions,
    require_eof: bool,
) -> Result<u64, RestoreError> {
    let mut reader = NarReader::new(nar, options.limits.clone());
    let mut created_root = false;
    let result = thread::scope(|scope| {
        let mut restorer = Restorer {
            path: target.to_owned(),
            options,
            directories: Vec::new(),
            created_root: &mut created_root,
            batcher: Batcher::new(scope, options.canonical_metadata),
        };
        let parsed = restorer.run(&mut reader);
        let batcher = restorer.batcher;
        match parsed {
            Ok(()) => batcher.finish(),
            Err(error) => {
                batcher.abandon();
                Err(error)
            }
        }
    });
    let result = result.and_then(|()| {
        if require_eof {
            Ok(reader.finish()?)
        } else {
            Ok(reader.read_to_end()?)
        }
    });
    if result.is_err() && created_root {
        remove_tree(target);
    }
    result
}

/// Removes a partially restored tree. `remove_dir_all` does not follow symlinks, so this
/// deletes only what the restore created.
fn remove_tree(target: &Path) {
    let removed = match fs::symlink_metadata(target) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(target),
        Ok(_) => fs::remove_file(target),
        Err(error) => Err(error),
    };
    // Nothing useful to do if cleaning up fails: the caller gets the original error.
    drop(removed);
}

struct Restorer<'a, 'scope, 'env> {
    /// The path of the node being restored: entries are pushed and popped.
    path: PathBuf,
    options: &'a RestoreOptions,
    /// One per open directory: the names given so far, when the case hack is on.
    directories: Vec<Option<CaseHackNames>>,
    /// Whether the root exists, so that it must be removed on error.
    created_root: &'a mut bool,
    batcher: Batcher<'scope, 'env>,
}

impl Restorer<'_, '_, '_> {
    fn run<R: io::BufRead>(&mut self, nar: &mut NarReader<R>) -> Result<(), RestoreError> {
        while let Some(event) = nar.next()? {
            match event {
                Event::Directory => {
                    self.create(|path| fs::create_dir(path))?;
                    let names = self.options.case_hack.then(CaseHackNames::default);
                    self.directories.push(names);
                }
                Event::Entry { name } => {
                    let disk_name = match self.directories.last_mut() {
                        Some(Some(names)) => names.disk_name(name),
                        _ => Cow::Borrowed(name),
                    };
                    self.path.push(OsStr::from_bytes(&disk_name));
                }
                Event::Regular { executable, size } => {
                    if self.is_root() || size > SMALL_FILE {
                        self.write_file(executable, nar)?;
                    } else {
                        self.batcher.add_file(&self.path, executable, nar)?;
                    }
                    self.end_node();
                }
                Event::Symlink { target } => {
                    if self.is_root() {
                        self.create(|path| symlink(OsStr::from_bytes(target), path))?;
                    } else {
                        self.batcher.add_symlink(&self.path, target)?;
                    }
                    self.end_node();
                }
                Event::EndDirectory => {
                    self.directories.pop();
                    self.end_node();
                }
            }
        }
        Ok(())
    }

    fn is_root(&self) -> bool {
        self.directories.is_empty()
    }

    /// Creates the node at `self.path`, remembering whether it is the root, which must be
    /// removed on error.
    fn create<T>(
        &mut self,
        create: impl FnOnce(&Path) -> io::Result<T>,
    ) -> Result<T, RestoreError> {
        let is_root = self.is_root();
        match create(&self.path) {
            Ok(created) => {
                *self.created_root |= is_root;
                Ok(created)
            }
            Err(error) if is_root && error.kind() == io::ErrorKind::AlreadyExists => {
                Err(RestoreError::TargetExists {
                    path: self.path.clone(),
                })
            }
            Err(source) => Err(self.io_error(source)),
        }
    }

    /// Creates a file and streams its contents from the NAR, for the root and for files
    /// too large to batch.
    fn write_file<R: io::BufRead>(
        &mut self,
        executable: bool,
        nar: &mut NarReader<R>,
    ) -> Result<(), RestoreError> {
        let mut file = self.create(create_file)?;
        loop {
            let chunk = nar.fill_contents()?;
            if chunk.is_empty() {
                break;
            }
            file.write_all(chunk)
                .map_err(|source| self.io_error(source))?;
            let written = chunk.len();
            nar.consume_contents(written);
        }
        finish_file(&file, executable, self.options.canonical_metadata)
            .map_err(|source| self.io_error(source))
    }

    /// After a node: unless it is the root, `self.path` goes back to its directory.
    fn end_node(&mut self) {
        if !self.is_root() {
            self.path.pop();
        }
    }

    fn io_error(&self, source: io::Error) -> RestoreError {
        RestoreError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use proptest::prelude::*;

    use super::*;
    use crate::test_support::{directory_nar, encode, read_tree, strings, tree_strategy, Tree};
    use crate::{dump_path, DumpOptions};

    const TREE_NAR: &[u8] = include_bytes!("../tests/fixtures/tree.nar");

    fn dump(path: &Path, options: &DumpOptions) -> Vec<u8> {
        let mut nar = Vec::new();
        dump_path(path, &mut nar, options).expect("dump succeeds");
        nar
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn restores_nix_golden_tree_and_dumps_it_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("out");
        restore(TREE_NAR, &target, &RestoreOptions::default()).expect("restore");
        assert_eq!(dump(&target, &DumpOptions::default()), TREE_NAR);
        assert_eq!(
            fs::read_link(target.join("l")).expect("symlink"),
            Path::new("a")
        );
        assert_eq!(fs::read(target.join("sub/e")).expect("file"), b"x\n");
    }

    #[test]
    fn modes_match_nix_restore() {
        // Nix creates files 0666 and directories 0777 less the umask, and adds +x for all
        // to executables, so with any umask: read/write bits agree, x bits are all or none
        // on files.
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("out");
        restore(TREE_NAR, &target, &RestoreOptions::default()).expect("restore");
        let (executable, plain) = (mode(&target.join("a")), mode(&target.join("B")));
        assert_eq!(executable & 0o111, 0o111);
        assert_eq!(plain & 0o111, 0);
        assert_eq!(executable & !0o111, plain);
        assert_eq!(mode(&target.join("sub")) & !0o111, plain);
    }

    #[test]
    fn refuses_an_existing_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let existing_dir = dir.path().join("dir");
        fs::create_dir(&existing_dir).expect("mkdir");
        let existing_link = dir.path().join("link");
        symlink_to(&existing_dir, &existing_link);
        for target in [&existing_dir, &existing_link] {
            match restore(TREE_NAR, target, &RestoreOptions::default()) {
                Err(RestoreError::TargetExists { path }) => assert_eq!(&path, target),
                other => panic!("wrong result {other:?}"),
            }
        }
        // Nothing was removed or written through the link.
        assert!(existing_link.symlink_metadata().is_ok());
        assert_eq!(fs::read_dir(&existing_dir).expect("dir").count(), 0);
    }

    fn symlink_to(target: &Path, link: &Path) {
        std::os::unix::fs::symlink(target, link).expect("symlink");
    }

    #[test]
    fn a_symlink_followed_by_entries_cannot_escape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        // Entry `a` is a symlink to `outside`, then `a` again as a directory holding `x`:
        // if the second `a` were accepted, `a/x` would land in `outside`.
        let mut nar = strings(&[b"nix-archive-1", b"(", b"type", b"directory"]);
        nar.extend(strings(&[b"entry", b"(", b"name", b"a", b"node"]));
        nar.extend(strings(&[b"(", b"type", b"symlink", b"target"]));
        nar.extend(strings(&[outside.as_os_str().as_bytes(), b")", b")"]));
        nar.extend(strings(&[b"entry", b"(", b"name", b"a", b"node"]));
        nar.extend(strings(&[
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"x",
        ]));
        nar.extend(strings(&[
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"",
            b")",
        ]));
        nar.extend(strings(&[b")", b")", b")", b")"]));
        let target = dir.path().join("out");
        assert!(matches!(
            restore(&nar[..], &target, &RestoreOptions::default()),
            Err(RestoreError::Read(crate::ReadError::DuplicateEntry { .. }))
        ));
        assert_eq!(fs::read_dir(&outside).expect("dir").count(), 0);
        assert!(!target.exists(), "the partial tree is removed");
    }

    #[test]
    fn a_malformed_nar_leaves_no_target_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("out");
        let truncated = &TREE_NAR[..TREE_NAR.len() - 20];
        assert!(matches!(
            restore(truncated, &target, &RestoreOptions::default()),
            Err(RestoreError::Read(crate::ReadError::UnexpectedEof { .. }))
        ));
        assert!(target.symlink_metadata().is_err());

        let unsorted = directory_nar(&[b"b", b"a"]);
        assert!(restore(&unsorted[..], &target, &RestoreOptions::default()).is_err());
        assert!(target.symlink_metadata().is_err());
    }

    #[test]
    fn case_hack_renames_colliding_entries_and_dump_undoes_it() {
        let nar = directory_nar(&[b"FOO", b"Foo", b"bar", b"foo"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("out");
        let options = RestoreOptions {
            case_hack: true,
            ..RestoreOptions::default()
        };
        restore(&nar[..], &target, &options).expect("restore");
        let mut names: Vec<String> = fs::read_dir(&target)
            .expect("dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8")
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["FOO", "Foo~nix~case~hack~1", "bar", "foo~nix~case~hack~2"]
        );
        assert_eq!(
            dump(
                &target,
                &DumpOptions {
                    case_hack: true,
                    ..Default::default()
                }
            ),
            nar
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn restore_then_dump_gives_the_same_nar(tree in tree_strategy()) {
            let nar = encode(&tree);
            let dir = tempfile::tempdir().expect("tempdir");
            let target = dir.path().join("out");
            restore(&nar[..], &target, &RestoreOptions::default()).expect("restore");
            prop_assert_eq!(read_tree(&target), tree);
            prop_assert_eq!(dump(&target, &DumpOptions::default()), nar);
        }
    }

    /// A directory of `count` small files (some executable) and symlinks: enough nodes to
    /// fill several batches and start the worker threads.
    fn many_small_files(count: usize) -> Tree {
        let entries = (0..count).map(|i| {
            let node = if i % 10 == 9 {
                Tree::Symlink {
                    target: format!("file{}", i - 1).into_bytes(),
                }
            } else {
                Tree::Regular {
                    executable: i % 3 == 0,
                    contents: format!("contents of {i}\n").repeat(i % 7).into_bytes(),
                }
            };
            (format!("file{i}").into_bytes(), node)
        });
        Tree::Directory(entries.collect())
    }

    #[test]
    fn restores_many_small_files_on_worker_threads() {
        let tree = Tree::Directory(
            [
                (b"a".to_vec(), many_small_files(700)),
                (b"b".to_vec(), many_small_files(300)),
            ]
            .into_iter()
            .collect(),
        );
        let nar = encode(&tree);
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("out");
        restore(&nar[..], &target, &RestoreOptions::default()).expect("restore");
        assert_eq!(read_tree(&target), tree);
        assert_eq!(dump(&target, &DumpOptions::default()), nar);
    }

    #[test]
    fn a_failing_worker_stops_the_restore_and_leaves_no_target() {
        // A name over the file system's 255-byte limit, after enough files that the
        // workers are running, fails in a worker thread.
        let Tree::Directory(mut entries) = many_small_files(1000) else {
            unreachable!("many_small_files makes a directory")
        };
        let long_name = vec![b'z'; 300];
        entries.insert(
            long_name.clone(),
            Tree::Regular {
                executable: false,
                contents: b"x".to_vec(),
            },
        );
        let nar = encode(&Tree::Directory(entries));
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("out");
        match restore(&nar[..], &target, &RestoreOptions::default()) {
            Err(RestoreError::Io { path, .. }) => {
                assert_eq!(path.file_name().map(|n| n.len()), Some(long_name.len()));
            }
            other => panic!("wrong result {other:?}"),
        }
        assert!(target.symlink_metadata().is_err());
    }

    #[test]
    fn executable_bit_round_trips() {
        let tree = Tree::Directory(
            [
                (
                    b"run".to_vec(),
                    Tree::Regular {
                        executable: true,
                        contents: b"#!".to_vec(),
                    },
                ),
                (
                    b"data".to_vec(),
                    Tree::Regular {
                        executable: false,
                        contents: vec![],
                    },
                ),
            ]
            .into_iter()
            .collect(),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("out");
        restore(&encode(&tree)[..], &target, &RestoreOptions::default()).expect("restore");
        assert_eq!(read_tree(&target), tree);
    }

    #[test]
    fn canonical_metadata_gives_store_modes_and_times() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        fs::create_dir(&source).unwrap();
        // Enough small files that worker threads create some of them.
        for i in 0..300 {
            fs::write(source.join(format!("f{i:03}")), "x").unwrap();
        }
        fs::write(source.join("big"), vec![7u8; 100_000]).unwrap();
        fs::set_permissions(source.join("f007"), fs::Permissions::from_mode(0o750)).unwrap();
        let mut nar = Vec::new();
        crate::dump_path(&source, &mut nar, &Default::default()).unwrap();
        let target = dir.path().join("target");
        let options = RestoreOptions {
            canonical_metadata: true,
            ..Default::default()
        };
        restore(&nar[..], &target, &options).unwrap();
        for entry in fs::read_dir(&target).unwrap() {
            let metadata = entry.unwrap().metadata().unwrap();
            let expected = if metadata.mode() & 0o111 != 0 {
                0o555
            } else {
                0o444
            };
            assert_eq!(metadata.mode() & 0o7777, expected);
            assert_eq!((metadata.mtime(), metadata.mtime_nsec()), (1, 0));
        }
        assert_eq!(
            fs::metadata(target.join("f007")).unwrap().mode() & 0o7777,
            0o555
        );
    }
}
