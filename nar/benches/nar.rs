//! Hot paths of the crate: dumping and parsing one large file and a tree of many small
//! files. Run with `cargo bench -p arca-nar`; whole commands are compared against Nix by
//! `bench/compare.sh` (see BENCHMARKS.md).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arca_nar::{dump_path, restore, validate, DumpOptions, Limits, RestoreOptions};
use divan::counter::BytesCount;
use divan::Bencher;

fn main() {
    divan::main();
    // Statics are never dropped: remove the fixture's temporary directory by hand.
    if let Some(fixture) = FIXTURE.get() {
        let _ = fs::remove_dir_all(fixture.dir.path());
    }
}

const LARGE_FILE_SIZE: usize = 64 << 20;
const TREE_DIRECTORIES: usize = 50;
const TREE_FILES_PER_DIRECTORY: usize = 100;

/// Inputs made once per run: a 64 MiB file and a tree of 5000 small files in a temporary
/// directory (in the page cache after the first iteration), and their NARs in memory.
struct Fixture {
    dir: tempfile::TempDir,
    large_file: PathBuf,
    large_nar: Vec<u8>,
    tree: PathBuf,
    tree_nar: Vec<u8>,
    scratch: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let large_file = dir.path().join("large");
        let contents: Vec<u8> = (0..LARGE_FILE_SIZE).map(|i| (i * 31 % 251) as u8).collect();
        fs::write(&large_file, contents).expect("write the large file");
        let tree = dir.path().join("tree");
        for d in 0..TREE_DIRECTORIES {
            let directory = tree.join(format!("dir{d}"));
            fs::create_dir_all(&directory).expect("mkdir");
            for f in 0..TREE_FILES_PER_DIRECTORY {
                fs::write(
                    directory.join(format!("file{f}")),
                    format!("file {d}/{f}\n"),
                )
                .expect("write a small file");
            }
        }
        let scratch = dir.path().join("scratch");
        fs::create_dir(&scratch).expect("mkdir");
        Fixture {
            large_nar: dump(&large_file),
            tree_nar: dump(&tree),
            large_file,
            tree,
            scratch,
            dir,
        }
    })
}

fn dump(path: &Path) -> Vec<u8> {
    let mut nar = Vec::new();
    dump_path(path, &mut nar, &DumpOptions::default()).expect("dump");
    nar
}

#[divan::bench]
fn dump_large_file(bencher: Bencher) {
    let fixture = fixture();
    bencher.counter(BytesCount::new(LARGE_FILE_SIZE)).bench(|| {
        dump_path(
            &fixture.large_file,
            &mut io::sink(),
            &DumpOptions::default(),
        )
    });
}

#[divan::bench]
fn parse_large_file(bencher: Bencher) {
    let fixture = fixture();
    bencher
        .counter(BytesCount::new(LARGE_FILE_SIZE))
        .bench(|| validate(&fixture.large_nar[..], &Limits::default()));
}

#[divan::bench]
fn dump_tree(bencher: Bencher) {
    let fixture = fixture();
    bencher.bench(|| dump_path(&fixture.tree, &mut io::sink(), &DumpOptions::default()));
}

#[divan::bench]
fn parse_tree(bencher: Bencher) {
    let fixture = fixture();
    bencher.bench(|| validate(&fixture.tree_nar[..], &Limits::default()));
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn restore_tree(bencher: Bencher) {
    let fixture = fixture();
    let target = fixture.scratch.join("restored");
    bencher
        .with_inputs(|| {
            // Untimed: clear the previous iteration's tree.
            let _ = fs::remove_dir_all(&target);
            target.clone()
        })
        .bench_local_values(|target| {
            restore(&fixture.tree_nar[..], &target, &RestoreOptions::default())
        });
}
