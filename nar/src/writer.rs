//! [`dump_path`]: the NAR of a file system tree, as `nix-store --dump` writes it.

use std::ffi::OsString;
use std::fs::{self, File, FileType, Metadata};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::case_hack;
use crate::encoder::{EncodeError, NarEncoder};
use crate::format::show;

mod beneath;
mod read_ahead;
mod walk;

/// How [`dump_path`] reads the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpOptions {
    /// Strip Nix's `~nix~case~hack~N` suffixes from names (see [`crate::CASE_HACK_SUFFIX`]).
    pub case_hack: bool,
    /// Refuse regular files that have other hard links and are not owned by this user
    /// ([`DumpError::ForeignHardLink`]). A store that archives files on behalf of a user
    /// sets it to that user, so that a hard link to a file the user may not read (Nix's
    /// `/etc/shadow` attack) is never copied into a world-readable store.
    pub hard_link_owner: Option<u32>,
    /// The tree may be changed by someone else while it is read (the output of a build
    /// whose builder could hand a descriptor to another process): every entry is opened
    /// relative to its parent directory's descriptor without following symlinks and
    /// typed by `fstat` of what was opened, never by path, so a name swapped for a
    /// symlink mid-walk is archived as the symlink, never followed, and nothing outside
    /// the tree is read. One thread; see `writer/beneath.rs`.
    pub untrusted_tree: bool,
}

/// Errors from [`dump_path`]. Each names the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Reading a file, directory or symlink failed.
    #[error("could not read '{}'", path.display())]
    Io {
        /// The path being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Writing the NAR to the output failed.
    #[error("could not write the NAR of '{}'", path.display())]
    Write {
        /// The path being archived when the output failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file became shorter while it was being archived.
    #[error("file '{}' shrank while being archived: {actual} of {expected} bytes", path.display())]
    FileShrank {
        /// The file.
        path: PathBuf,
        /// Its size when archiving began.
        expected: u64,
        /// The bytes that could be read.
        actual: u64,
    },
    /// A file became longer while it was being archived.
    #[error("file '{}' grew while being archived beyond {expected} bytes", path.display())]
    FileGrew {
        /// The file.
        path: PathBuf,
        /// Its size when archiving began.
        expected: u64,
    },
    /// A regular file with other hard links, owned by someone other than
    /// [`DumpOptions::hard_link_owner`].
    #[error("refusing to archive '{}': it is a hard link to a file owned by another user", path.display())]
    ForeignHardLink {
        /// The file.
        path: PathBuf,
    },
    /// An entry changed kind while it was being archived ([`DumpOptions::untrusted_tree`]).
    #[error("'{}' changed while being archived", path.display())]
    Changed {
        /// The entry.
        path: PathBuf,
    },
    /// A fifo, socket or device, which a NAR cannot represent.
    #[error("file '{}' has an unsupported type", path.display())]
    UnsupportedFileType {
        /// The file.
        path: PathBuf,
    },
    /// Two names of one directory that are equal once their case-hack suffix is stripped.
    #[error("file name collision on '{}' in '{}'", show(name), path.display())]
    CaseHackCollision {
        /// The directory.
        path: PathBuf,
        /// The name both entries have in the NAR.
        name: Vec<u8>,
    },
    /// A name or target that no NAR may hold (e.g. a name that is only a case-hack suffix).
    #[error("cannot archive '{}'", path.display())]
    Encode {
        /// The path at fault.
        path: PathBuf,
        /// What the encoder rejected.
        #[source]
        source: EncodeError,
    },
}

/// Writes the NAR of `path` to `out` and returns its size in bytes.
///
/// Symlinks are archived as symlinks, never followed, including `path` itself. Entries are
/// sorted by the bytes of their names, so the output is byte-identical to
/// `nix-store --dump`. File contents are streamed with constant memory, and a file whose
/// size changes while it is read is an error rather than a silently wrong NAR. `out` need
/// not be buffered. With several cores, a directory is walked on one thread while small
/// files are read ahead on others and encoded in order on the calling thread (see
/// `writer/read_ahead.rs`), which is what makes dumping many small files faster than Nix,
/// which makes the same syscalls on one thread; a small tree (up to 512 walked items) is
/// dumped on the calling thread alone.
pub fn dump_path(
    path: &Path,
    out: &mut impl Write,
    options: &DumpOptions,
) -> Result<u64, DumpError> {
    let file_type = fs::symlink_metadata(path)
        .map_err(|source| DumpError::Io {
            path: path.to_owned(),
            source,
        })?
        .file_type();
    let mut dumper = Dumper {
        encoder: NarEncoder::new(out),
        path: path.to_owned(),
        options,
    };
    match read_ahead::Config::for_this_machine(options) {
        _ if options.untrusted_tree => dumper.dump_beneath()?,
        Some(config) if file_type.is_dir() => dumper.dump_with_read_ahead(&config)?,
        _ => dumper.dump(file_type)?,
    }
    let size = dumper.encoder.position();
    dumper
        .encoder
        .finish()
        .map_err(|error| encode_error(path, error))?;
    Ok(size)
}

/// Checks that the file opened at `path` is a regular file that may be archived (see
/// [`DumpOptions::hard_link_owner`]).
fn check_regular_file(
    path: &Path,
    metadata: &Metadata,
    hard_link_owner: Option<u32>,
) -> Result<(), DumpError> {
    if !metadata.is_file() {
        return Err(DumpError::UnsupportedFileType {
            path: path.to_owned(),
        });
    }
    if let Some(owner) = hard_link_owner {
        if metadata.nlink() > 1 && metadata.uid() != owner {
            return Err(DumpError::ForeignHardLink {
                path: path.to_owned(),
            });
        }
    }
    Ok(())
}

/// One directory entry, sorted by its name in the NAR.
#[derive(Debug)]
struct DirectoryEntry {
    /// The name on disk.
    disk_name: OsString,
    /// How many leading bytes of `disk_name` make its name in the NAR (fewer with the case
    /// hack).
    nar_name_len: usize,
    file_type: FileType,
}

impl DirectoryEntry {
    fn nar_name(&self) -> &[u8] {
        &self.disk_name.as_bytes()[..self.nar_name_len]
    }
}

struct Dumper<'a, W: Write> {
    encoder: NarEncoder<W>,
    /// The path of the node being dumped; entries are pushed and popped so that one
    /// buffer serves the whole tree.
    path: PathBuf,
    options: &'a DumpOptions,
}

impl<W: Write> Dumper<'_, W> {
    fn dump(&mut self, file_type: FileType) -> Result<(), DumpError> {
        if file_type.is_symlink() {
            self.dump_symlink()
        } else if file_type.is_dir() {
            self.dump_directory()
        } else if file_type.is_file() {
            self.dump_regular()
        } else {
            Err(DumpError::UnsupportedFileType {
                path: self.path.clone(),
            })
        }
    }

    fn dump_symlink(&mut self) -> Result<(), DumpError> {
        let target = fs::read_link(&self.path).map_err(|source| self.io_error(source))?;
        self.encode_symlink(&target)
    }

    fn encode_symlink(&mut self, target: &Path) -> Result<(), DumpError> {
        self.encoder
            .symlink(target.as_os_str().as_bytes())
            .map_err(|error| encode_error(&self.path, error))
    }

    fn dump_regular(&mut self) -> Result<(), DumpError> {
        // The size and mode come from the open file, so they describe the very file we
        // read. std offers no O_NOFOLLOW: if the entry is swapped for a symlink between
        // `read_dir` and `open`, the link is followed, a window Nix 2.8 has as well; store
        // paths are read-only, so it matters only for dumps of trees being modified.
        let mut file = File::open(&self.path).map_err(|source| self.io_error(source))?;
        let metadata = file.metadata().map_err(|source| self.io_error(source))?;
        self.dump_open_file(&mut file, &metadata)
    }

    fn dump_open_file(&mut self, file: &mut File, metadata: &Metadata) -> Result<(), DumpError> {
        check_regular_file(&self.path, metadata, self.options.hard_link_owner)?;
        let executable = metadata.permissions().mode() & 0o111 != 0;
        let size = metadata.len();
        self.encoder
            .regular_file(executable, size, file)
            .map_err(|error| match error {
                EncodeError::ReadContents(source) => self.io_error(source),
                EncodeError::ContentsTooShort { expected, actual } => DumpError::FileShrank {
                    path: self.path.clone(),
                    expected,
                    actual,
                },
                EncodeError::ContentsTooLong { expected } => DumpError::FileGrew {
                    path: self.path.clone(),
                    expected,
                },
                error => encode_error(&self.path, error),
            })
    }

    fn dump_directory(&mut self) -> Result<(), DumpError> {
        let entries = read_directory(&self.path, self.options)?;
        self.encoder
            .begin_directory()
            .map_err(|error| encode_error(&self.path, error))?;
        for entry in &entries {
            self.encoder
                .entry(entry.nar_name())
                .map_err(|error| encode_error(&self.path, error))?;
            self.path.push(&entry.disk_name);
            self.dump(entry.file_type)?;
            self.path.pop();
        }
        self.encoder
            .end_directory()
            .map_err(|error| encode_error(&self.path, error))
    }

    fn io_error(&self, source: io::Error) -> DumpError {
        DumpError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// The entries of the directory at `path`, in NAR order.
fn read_directory(path: &Path, options: &DumpOptions) -> Result<Vec<DirectoryEntry>, DumpError> {
    let mut entries = Vec::new();
    let io_error = |source| DumpError::Io {
        path: path.to_owned(),
        source,
    };
    for entry in fs::read_dir(path).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        // `file_type` comes from the directory listing (d_type) on most file systems,
        // which saves a stat per directory and symlink.
        let file_type = entry.file_type().map_err(|source| DumpError::Io {
            path: entry.path(),
            source,
        })?;
        let disk_name = entry.file_name();
        let nar_name_len = if options.case_hack {
            case_hack::strip(disk_name.as_bytes()).len()
        } else {
            disk_name.len()
        };
        entries.push(DirectoryEntry {
            disk_name,
            nar_name_len,
            file_type,
        });
    }
    entries.sort_unstable_by(|a, b| a.nar_name().cmp(b.nar_name()));
    if let Some(pair) = entries
        .windows(2)
        .find(|pair| pair[0].nar_name() == pair[1].nar_name())
    {
        // Only the case hack can make two names equal.
        return Err(DumpError::CaseHackCollision {
            path: path.to_owned(),
            name: pair[0].nar_name().to_vec(),
        });
    }
    Ok(entries)
}

fn encode_error(path: &Path, error: EncodeError) -> DumpError {
    match error {
        EncodeError::Write(source) => DumpError::Write {
            path: path.to_owned(),
            source,
        },
        source => DumpError::Encode {
            path: path.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::test_support::{events, OwnedEvent};
    use crate::Limits;

    fn dump(path: &Path, options: &DumpOptions) -> Result<Vec<u8>, DumpError> {
        let mut nar = Vec::new();
        let size = dump_path(path, &mut nar, options)?;
        assert_eq!(size, nar.len() as u64);
        Ok(nar)
    }

    fn dump_default(path: &Path) -> Vec<u8> {
        dump(path, &DumpOptions::default()).expect("dump succeeds")
    }

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// The tree of `tests/fixtures/gen.sh`, built the same way.
    fn golden_tree(root: &Path) {
        fs::create_dir_all(root.join("sub/deeper")).expect("mkdir");
        fs::create_dir(root.join("empty-dir")).expect("mkdir");
        fs::write(root.join("a"), "hi\n").expect("write");
        set_mode(&root.join("a"), 0o755);
        fs::write(root.join("B"), "12345678").expect("write");
        fs::write(root.join("sub/deeper/nothing"), "").expect("write");
        fs::write(root.join("sub/e"), "x\n").expect("write");
        symlink("a", root.join("l")).expect("symlink");
        symlink("/nix/store/does-not-exist", root.join("sub/abs")).expect("symlink");
    }

    #[test]
    fn dumps_the_same_bytes_as_nix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        golden_tree(&tree);
        assert_eq!(
            dump_default(&tree),
            include_bytes!("../tests/fixtures/tree.nar")
        );

        let hello = dir.path().join("hello");
        fs::write(&hello, "#!/bin/sh\necho hello\n").expect("write");
        set_mode(&hello, 0o700);
        assert_eq!(
            dump_default(&hello),
            include_bytes!("../tests/fixtures/hello.nar")
        );

        let link = dir.path().join("link");
        symlink("../somewhere/else", &link).expect("symlink");
        assert_eq!(
            dump_default(&link),
            include_bytes!("../tests/fixtures/symlink.nar")
        );
    }

    #[test]
    fn does_not_follow_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        fs::create_dir(&real).expect("mkdir");
        fs::write(real.join("secret"), "not archived").expect("write");
        symlink(&real, dir.path().join("root-link")).expect("symlink");
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).expect("mkdir");
        symlink(&real, tree.join("inner-link")).expect("symlink");

        let root = events(
            &dump_default(&dir.path().join("root-link")),
            Limits::default(),
        );
        assert_eq!(
            root.expect("valid"),
            [OwnedEvent::Symlink(real.as_os_str().as_bytes().to_vec())]
        );
        let inner = events(&dump_default(&tree), Limits::default()).expect("valid");
        assert_eq!(
            inner[2],
            OwnedEvent::Symlink(real.as_os_str().as_bytes().to_vec())
        );
        assert_eq!(inner.len(), 4);
    }

    #[test]
    fn any_execute_bit_makes_a_file_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        fs::write(&file, "x").expect("write");
        for (mode, executable) in [(0o644, false), (0o744, true), (0o654, true), (0o645, true)] {
            set_mode(&file, mode);
            let events = events(&dump_default(&file), Limits::default()).expect("valid");
            assert_eq!(
                events,
                [OwnedEvent::Regular {
                    executable,
                    contents: b"x".to_vec()
                }],
                "mode {mode:o}"
            );
        }
    }

    #[test]
    fn dumps_files_larger_than_the_buffer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("big");
        let contents: Vec<u8> = (0..crate::encoder::BUFFER_SIZE * 3 + 5)
            .map(|i| i as u8)
            .collect();
        fs::write(&file, &contents).expect("write");
        let events = events(&dump_default(&file), Limits::default()).expect("valid");
        assert_eq!(
            events,
            [OwnedEvent::Regular {
                executable: false,
                contents
            }]
        );
    }

    #[test]
    fn read_ahead_gives_the_same_nar_as_the_model() {
        // Enough small files for read-ahead threads, mixed with what they skip: large
        // files, a subdirectory, symlinks, executables, empty files.
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for i in 0..300 {
            let path = root.join(format!("f{i:03}"));
            match i % 50 {
                7 => fs::create_dir(&path).expect("mkdir"),
                8 => symlink(format!("f{:03}", i - 1), &path).expect("symlink"),
                9 => fs::write(&path, vec![i as u8; 100_000]).expect("write"),
                _ => fs::write(&path, format!("{i}\n").repeat(i % 5)).expect("write"),
            }
            if i % 4 == 1 {
                set_mode(&path, 0o755);
            }
        }
        let model = crate::test_support::encode(&crate::test_support::read_tree(root));
        assert_eq!(dump_default(root), model);
    }

    const UNTRUSTED: DumpOptions = DumpOptions {
        case_hack: false,
        hard_link_owner: None,
        untrusted_tree: true,
    };

    #[test]
    fn untrusted_walk_gives_the_same_nar_as_the_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("tree");
        fs::create_dir_all(root.join("a/b/c")).expect("mkdir");
        fs::write(root.join("a/b/c/deep"), "deep").expect("write");
        fs::write(root.join("exec"), "#!").expect("write");
        set_mode(&root.join("exec"), 0o755);
        fs::write(root.join("big"), vec![7u8; 300_000]).expect("write");
        symlink("a/b", root.join("link")).expect("symlink");
        symlink("/etc", root.join("abs")).expect("symlink");
        fs::create_dir(root.join("empty")).expect("mkdir");
        let model = crate::test_support::encode(&crate::test_support::read_tree(&root));
        assert_eq!(dump(&root, &UNTRUSTED).expect("dump"), model);
        // A single file and a single symlink at the root too.
        for single in [root.join("exec"), root.join("abs")] {
            assert_eq!(
                dump(&single, &UNTRUSTED).expect("dump"),
                dump_default(&single),
                "{}",
                single.display()
            );
        }
    }

    #[test]
    fn untrusted_walk_refuses_sockets_and_foreign_hard_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        match dump(dir.path(), &UNTRUSTED) {
            Err(DumpError::UnsupportedFileType { path }) => assert_eq!(path, socket),
            other => panic!("wrong result {other:?}"),
        }
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("f"), "x").expect("write");
        fs::hard_link(dir.path().join("f"), dir.path().join("g")).expect("link");
        let owner = fs::metadata(dir.path()).expect("stat").uid();
        let options = DumpOptions {
            hard_link_owner: Some(owner + 1),
            ..UNTRUSTED
        };
        assert!(matches!(
            dump(dir.path(), &options),
            Err(DumpError::ForeignHardLink { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any tree (files, executables, symlinks, nested directories, a file or a
        /// symlink at the root) gives the model's NAR through the untrusted walk too.
        #[test]
        fn untrusted_walk_of_any_tree_gives_the_model_nar(
            tree in crate::test_support::tree_strategy()
        ) {
            let nar = crate::test_support::encode(&tree);
            let dir = tempfile::tempdir().expect("tempdir");
            let root = dir.path().join("tree");
            crate::restore(&nar[..], &root, &crate::RestoreOptions::default()).expect("restore");
            proptest::prop_assert_eq!(dump(&root, &UNTRUSTED).expect("dump"), nar);
        }
    }

    /// A directory swapped for a symlink to a directory outside while the walk holds
    /// its parent: what is archived is the symlink, never what it points to.
    #[test]
    fn untrusted_walk_never_reads_outside_the_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        fs::create_dir(&secret).expect("mkdir");
        fs::write(secret.join("shadow"), "SECRET-BYTES").expect("write");
        let root = dir.path().join("tree");
        fs::create_dir(&root).expect("mkdir");
        // Many names, each flipped between a directory holding a file and a symlink to
        // the secret directory by a thread racing the walk.
        for i in 0..200 {
            fs::create_dir(root.join(format!("d{i:03}"))).expect("mkdir");
            fs::write(root.join(format!("d{i:03}/shadow")), "ok").expect("write");
            symlink(&secret, root.join(format!("s{i:03}"))).expect("symlink");
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for i in 0..200 {
                        let _ = fs::rename(root.join(format!("d{i:03}")), root.join("tmp"));
                        let _ = fs::rename(
                            root.join(format!("s{i:03}")),
                            root.join(format!("d{i:03}")),
                        );
                        let _ = fs::rename(
                            root.join(format!("d{i:03}")),
                            root.join(format!("s{i:03}")),
                        );
                        let _ = fs::rename(root.join("tmp"), root.join(format!("d{i:03}")));
                    }
                }
            });
            for _ in 0..50 {
                // What was written before an error counts too.
                let mut nar = Vec::new();
                let _ = dump_path(&root, &mut nar, &UNTRUSTED);
                assert!(
                    !nar.windows(12).any(|w| w == b"SECRET-BYTES"),
                    "the walk followed a symlink out of the tree"
                );
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }

    #[test]
    fn sorts_entries_by_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["b", "a", "B", "\u{e9}", "_", "aa"] {
            fs::write(dir.path().join(name), "").expect("write");
        }
        let names: Vec<Vec<u8>> = events(&dump_default(dir.path()), Limits::default())
            .expect("valid")
            .into_iter()
            .filter_map(|event| match event {
                OwnedEvent::Entry(name) => Some(name),
                _ => None,
            })
            .collect();
        let expected: Vec<&[u8]> = vec![b"B", b"_", b"a", b"aa", b"b", "\u{e9}".as_bytes()];
        assert_eq!(names, expected);
    }

    #[test]
    fn rejects_unsupported_file_types() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        match dump(dir.path(), &DumpOptions::default()) {
            Err(DumpError::UnsupportedFileType { path }) => assert_eq!(path, socket),
            other => panic!("wrong result {other:?}"),
        }
    }

    #[test]
    fn names_the_missing_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        match dump(&missing, &DumpOptions::default()) {
            Err(error @ DumpError::Io { .. }) => {
                assert!(error.to_string().contains("missing"), "{error}");
            }
            other => panic!("wrong result {other:?}"),
        }
    }

    #[test]
    fn case_hack_strips_suffixes() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("foo"), "1").expect("write");
        fs::write(dir.path().join("Foo~nix~case~hack~1"), "2").expect("write");
        let entries = |options| -> Vec<Vec<u8>> {
            events(
                &dump(dir.path(), &options).expect("dump"),
                Limits::default(),
            )
            .expect("valid")
            .into_iter()
            .filter_map(|event| match event {
                OwnedEvent::Entry(name) => Some(name),
                _ => None,
            })
            .collect()
        };
        assert_eq!(
            entries(DumpOptions {
                case_hack: true,
                ..Default::default()
            }),
            [b"Foo".to_vec(), b"foo".to_vec()]
        );
        assert_eq!(
            entries(DumpOptions::default()),
            [b"Foo~nix~case~hack~1".to_vec(), b"foo".to_vec()]
        );
    }

    #[test]
    fn case_hack_rejects_colliding_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("foo"), "1").expect("write");
        fs::write(dir.path().join("foo~nix~case~hack~1"), "2").expect("write");
        assert!(matches!(
            dump(dir.path(), &DumpOptions { case_hack: true, ..Default::default() }),
            Err(DumpError::CaseHackCollision { name, .. }) if name == b"foo"
        ));
    }

    #[test]
    fn hard_links_owned_by_others_are_refused_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        // Enough files that the read-ahead path is taken too on a multi-core machine.
        for i in 0..100 {
            fs::write(tree.join(format!("f{i:03}")), "x").unwrap();
        }
        fs::hard_link(tree.join("f050"), dir.path().join("outside-link")).unwrap();
        let uid = fs::metadata(tree.join("f050")).unwrap().uid();
        let mut out = Vec::new();
        assert!(dump_path(&tree, &mut out, &DumpOptions::default()).is_ok());
        let own = DumpOptions {
            hard_link_owner: Some(uid),
            ..Default::default()
        };
        assert!(dump_path(&tree, &mut Vec::new(), &own).is_ok());
        let other = DumpOptions {
            hard_link_owner: Some(uid.wrapping_add(1)),
            ..Default::default()
        };
        let error = dump_path(&tree, &mut Vec::new(), &other).unwrap_err();
        assert!(
            matches!(&error, DumpError::ForeignHardLink { path } if path.ends_with("f050")),
            "{error:?}"
        );
        // A single file as the root goes through the sequential path.
        let error = dump_path(&tree.join("f050"), &mut Vec::new(), &other).unwrap_err();
        assert!(
            matches!(error, DumpError::ForeignHardLink { .. }),
            "{error:?}"
        );
    }
}
