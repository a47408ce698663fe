//! The read-ahead dump against the sequential one and the tree model: same bytes, same
//! first error, whatever the batch boundaries and the order in which readers finish.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use proptest::prelude::*;

use super::super::{walk, DumpOptions};
use super::*;
use crate::encoder::NarEncoder;
use crate::test_support::{encode, read_tree, tree_strategy, Tree};
use crate::{restore, RestoreOptions};

/// Batches of one or two files, so that boundaries fall everywhere, and a byte budget
/// that leaves some files to the encoder.
fn tiny(readers: usize) -> Config {
    Config {
        readers,
        batch_work: 2,
        batch_items: 3,
        batch_bytes: 100,
        in_flight: 1,
        hard_link_owner: None,
    }
}

/// Configurations that cover one batch per file, one batch for everything, no
/// read-ahead at all (an empty budget), and more readers than batches in flight.
fn configs() -> Vec<Config> {
    let mut configs = vec![tiny(1), tiny(3)];
    configs.push(Config {
        readers: 2,
        batch_work: 1,
        batch_items: 1,
        batch_bytes: usize::MAX,
        in_flight: 2,
        hard_link_owner: None,
    });
    configs.push(Config {
        readers: 2,
        batch_work: 100_000,
        batch_items: 100_000,
        batch_bytes: usize::MAX,
        in_flight: 1,
        hard_link_owner: None,
    });
    configs.push(Config {
        batch_bytes: 0,
        ..tiny(2)
    });
    configs.push(Config {
        readers: 4,
        batch_work: 5,
        batch_items: 16,
        batch_bytes: 4096,
        in_flight: 8,
        hard_link_owner: None,
    });
    configs
}

fn dumper<'a, W: Write>(root: &Path, out: W, options: &'a DumpOptions) -> Dumper<'a, W> {
    Dumper {
        encoder: NarEncoder::new(out),
        path: root.to_owned(),
        options,
    }
}

fn finish(dumper: Dumper<'_, Vec<u8>>) -> Vec<u8> {
    dumper.encoder.finish().expect("a complete NAR")
}

fn dump_with(root: &Path, config: &Config) -> Result<Vec<u8>, DumpError> {
    let options = DumpOptions::default();
    let mut dumper = dumper(root, Vec::new(), &options);
    dumper.dump_with_read_ahead(config)?;
    Ok(finish(dumper))
}

fn dump_sequential(root: &Path) -> Result<Vec<u8>, DumpError> {
    let options = DumpOptions::default();
    let mut dumper = dumper(root, Vec::new(), &options);
    dumper.dump_directory()?;
    Ok(finish(dumper))
}

/// The batches of the walk of `root`, not read ahead.
fn walk_batches(root: &Path, config: &Config) -> Vec<Batch> {
    let mut batches = Vec::new();
    walk::walk(root, &DumpOptions::default(), config, |batch| {
        batches.push(batch);
        true
    });
    batches
}

/// Encodes `batches`, as read ahead (or not) by the caller.
fn encode_batches(root: &Path, batches: Vec<Batch>) -> Result<Vec<u8>, DumpError> {
    let options = DumpOptions::default();
    let mut dumper = dumper(root, Vec::new(), &options);
    for Batch { items, contents } in batches {
        dumper.encode_items(items, &contents)?;
    }
    Ok(finish(dumper))
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A small copy of the benchmark tree (`bench/compare.py`): few files per directory,
/// three levels deep, with symlinks, executables, empty directories and a run of large
/// files, more than one batch holds open.
fn benchmark_tree(root: &Path, files: usize) {
    for i in 0..files {
        let path = benchmark_path(root, i);
        fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        match i % 50 {
            7 => symlink(format!("file-{}", i - 1), &path).expect("symlink"),
            8 => symlink("..", &path).expect("symlink"),
            20..=25 => fs::write(&path, vec![i as u8; 70_000]).expect("write"),
            30 => fs::create_dir(&path).expect("mkdir"),
            _ => {
                let size = (i * 2_654_435_761) % 4096;
                fs::write(&path, format!("{i} ").repeat(size / 2 + 1)).expect("write");
            }
        }
        if i % 10 == 3 {
            set_mode(&path, 0o755);
        }
    }
}

/// Where `benchmark_tree` puts file `i`: symlinks are those with `i % 50 == 7`, large
/// files those with `i % 50` in 20..=25.
fn benchmark_path(root: &Path, i: usize) -> PathBuf {
    root.join(format!(
        "d{}/e{}/f{}/file-{i}",
        i / 60,
        (i / 12) % 5,
        (i / 3) % 4
    ))
}

#[test]
fn read_ahead_across_directories_gives_the_model_nar() {
    let dir = tempfile::tempdir().expect("tempdir");
    benchmark_tree(dir.path(), 400);
    let model = encode(&read_tree(dir.path()));
    assert_eq!(dump_sequential(dir.path()).expect("dump"), model);
    for config in configs() {
        assert_eq!(
            dump_with(dir.path(), &config).expect("dump"),
            model,
            "{config:?}"
        );
    }
}

#[test]
fn deep_narrow_trees_and_empty_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut path = dir.path().to_owned();
    for depth in 0..60 {
        path.push(format!("level{depth}"));
        fs::create_dir(&path).expect("mkdir");
        fs::create_dir(path.with_extension("empty")).expect("mkdir");
        fs::write(path.with_extension("file"), format!("{depth}")).expect("write");
    }
    let model = encode(&read_tree(dir.path()));
    for config in configs() {
        assert_eq!(
            dump_with(dir.path(), &config).expect("dump"),
            model,
            "{config:?}"
        );
    }
}

#[test]
fn symlinks_are_archived_not_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("tree");
    let outside = dir.path().join("outside");
    fs::create_dir_all(root.join("a/b")).expect("mkdir");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("secret"), "not archived").expect("write");
    fs::write(outside.join("big"), vec![1; 100_000]).expect("write");
    for (name, target) in [
        ("a/b/to-dir", outside.clone()),
        ("a/b/to-file", outside.join("secret")),
        ("a/to-big", outside.join("big")),
        ("a/dangling", dir.path().join("missing")),
        ("to-self", root.join("to-self")),
    ] {
        symlink(target, root.join(name)).expect("symlink");
    }
    fs::write(root.join("a/b/plain"), "plain").expect("write");
    let model = encode(&read_tree(&root));
    for config in configs() {
        assert_eq!(
            dump_with(&root, &config).expect("dump"),
            model,
            "{config:?}"
        );
    }
}

/// A tree whose walk fails at `bad` (a socket) after files in other directories and with
/// files after it in the same and later directories.
#[test]
fn a_walk_error_in_the_middle_of_a_batch_comes_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    benchmark_tree(dir.path(), 200);
    let bad = dir.path().join("d1/e2/f1/socket");
    let _listener = std::os::unix::net::UnixListener::bind(&bad).expect("bind");
    let Err(DumpError::UnsupportedFileType { path }) = dump_sequential(dir.path()) else {
        panic!("the socket is an error");
    };
    assert_eq!(path, bad);
    for config in configs() {
        match dump_with(dir.path(), &config) {
            Err(DumpError::UnsupportedFileType { path }) => assert_eq!(path, bad),
            other => panic!("wrong result {other:?} with {config:?}"),
        }
    }
}

#[test]
fn a_case_hack_collision_deep_in_the_tree_comes_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    benchmark_tree(dir.path(), 200);
    let bad = dir.path().join("d2/e0/f2");
    fs::write(bad.join("x"), "1").expect("write");
    fs::write(bad.join("x~nix~case~hack~1"), "2").expect("write");
    let options = DumpOptions {
        case_hack: true,
        ..Default::default()
    };
    for config in configs() {
        let mut dumper = dumper(dir.path(), Vec::new(), &options);
        match dumper.dump_with_read_ahead(&config) {
            Err(DumpError::CaseHackCollision { path, name }) => {
                assert_eq!((path, name), (bad.clone(), b"x".to_vec()));
            }
            other => panic!("wrong result {other:?} with {config:?}"),
        }
    }
}

/// The regular files of `batches`, in NAR order.
fn regular_paths(batches: &[Batch]) -> Vec<(usize, PathBuf)> {
    let mut paths = Vec::new();
    for (index, batch) in batches.iter().enumerate() {
        for item in &batch.items {
            if let Item::Regular { path, .. } = item {
                paths.push((index, path.clone()));
            }
        }
    }
    paths
}

/// Reads `batches` ahead last first, as readers racing each other might, and encodes
/// them in order.
fn read_backwards_and_encode(root: &Path, mut batches: Vec<Batch>) -> Result<Vec<u8>, DumpError> {
    let config = Config {
        batch_bytes: usize::MAX,
        ..tiny(1)
    };
    for batch in batches.iter_mut().rev() {
        batch.read_ahead(&config);
    }
    encode_batches(root, batches)
}

#[test]
fn read_errors_come_in_nar_order_whichever_batch_is_read_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    benchmark_tree(dir.path(), 200);
    let config = Config {
        batch_work: 7,
        batch_items: 40,
        ..tiny(1)
    };
    let batches = walk_batches(dir.path(), &config);
    let files = regular_paths(&batches);
    // The first vanished file is in the middle of a batch that spans directories; the
    // second, in a later batch, is read (and fails) first.
    let (first_batch, first) = files[files.len() / 3].clone();
    let (last_batch, last) = files[files.len() * 2 / 3].clone();
    assert!(first_batch < last_batch);
    fs::remove_file(&first).expect("rm");
    fs::remove_file(&last).expect("rm");
    match read_backwards_and_encode(dir.path(), batches) {
        Err(DumpError::Io { path, source }) => {
            assert_eq!(path, first);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("wrong result {other:?}"),
    }
}

#[test]
fn a_file_swapped_for_a_symlink_after_the_walk_is_an_error_at_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    benchmark_tree(dir.path(), 200);
    let batches = walk_batches(dir.path(), &tiny(1));
    // Opening follows the new symlink (std has no O_NOFOLLOW, nor had Nix 2.8) and finds
    // a directory. A later swap of a symlink for a file, read first, must not win.
    let file = benchmark_path(dir.path(), 74);
    fs::remove_file(&file).expect("rm");
    symlink("..", &file).expect("symlink");
    let link = benchmark_path(dir.path(), 157);
    fs::remove_file(&link).expect("rm");
    fs::write(&link, "now a file").expect("write");
    match read_backwards_and_encode(dir.path(), batches) {
        Err(DumpError::UnsupportedFileType { path }) => assert_eq!(path, file),
        other => panic!("wrong result {other:?}"),
    }
}

#[test]
fn a_symlink_swapped_for_a_file_after_the_walk_is_an_error_at_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    benchmark_tree(dir.path(), 200);
    let batches = walk_batches(dir.path(), &tiny(1));
    let link = benchmark_path(dir.path(), 157);
    fs::remove_file(&link).expect("rm");
    fs::write(&link, "now a file").expect("write");
    match read_backwards_and_encode(dir.path(), batches) {
        Err(DumpError::Io { path, source }) => {
            assert_eq!(path, link);
            assert_eq!(source.kind(), io::ErrorKind::InvalidInput);
        }
        other => panic!("wrong result {other:?}"),
    }
}

#[test]
fn files_that_change_size_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    fs::write(&path, "12345").expect("write");
    let mut buffer = b"kept".to_vec();
    let mut file = File::open(&path).expect("open");
    assert!(matches!(
        read_exactly(&mut file, 4, &mut buffer),
        Ok(Err(SizeError::Grew { expected: 4 }))
    ));
    let mut file = File::open(&path).expect("open");
    assert!(matches!(
        read_exactly(&mut file, 9, &mut buffer),
        Ok(Err(SizeError::Shrank {
            expected: 9,
            actual: 5
        }))
    ));
    let mut file = File::open(&path).expect("open");
    assert!(matches!(
        read_exactly(&mut file, 5, &mut buffer),
        Ok(Ok(()))
    ));
    assert_eq!(buffer, b"kept12345");
}

/// An output that fails after `left` bytes.
struct FailingWriter {
    left: usize,
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left < buf.len() {
            return Err(io::Error::other("disk full"));
        }
        self.left -= buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_output_stops_the_walker_and_the_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    benchmark_tree(dir.path(), 400);
    let options = DumpOptions::default();
    for config in configs() {
        let mut dumper = dumper(dir.path(), FailingWriter { left: 1000 }, &options);
        // The test would hang if a thread kept waiting for the encoder.
        assert!(matches!(
            dumper.dump_with_read_ahead(&config),
            Err(DumpError::Write { .. })
        ));
    }
}

/// `tree` as a directory: non-directory trees become its only entry.
fn as_directory(tree: Tree) -> Tree {
    match tree {
        Tree::Directory(_) => tree,
        other => Tree::Directory(BTreeMap::from([(b"only".to_vec(), other)])),
    }
}

fn config_strategy() -> impl Strategy<Value = Config> {
    (1..4usize, 1..6usize, 1..8usize, 0..200usize, 1..4usize).prop_map(
        |(readers, batch_work, batch_items, batch_bytes, in_flight)| Config {
            readers,
            batch_work,
            batch_items,
            batch_bytes,
            in_flight,
            hard_link_owner: None,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_tree_with_any_batches_gives_the_model_nar(
        tree in tree_strategy().prop_map(as_directory),
        config in config_strategy(),
    ) {
        let nar = encode(&tree);
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("tree");
        restore(&nar[..], &root, &RestoreOptions::default()).expect("restore");
        prop_assert_eq!(dump_with(&root, &config).expect("dump"), nar);
    }
}
