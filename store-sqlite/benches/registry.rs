//! Registry hot paths: registering 100,000 paths (~3 references each) in batches and in
//! one batch, and the closure of 5,000 paths in a 100,000-path database, walked by
//! `Registry::requisites` and, for comparison, by a recursive CTE.
//!
//! `cargo bench -p arca-store-sqlite --bench registry`
//!
//! For the side-by-side with Nix, `ARCA_BENCH_NIX_INPUT=<file> cargo bench -p
//! arca-store-sqlite --bench registry` writes the same 100,000 paths in the format of
//! `nix-store --load-db` (path, sha256, size, deriver, reference count, references) and
//! prints the closure root instead of benchmarking.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use arca_store_core::{Hash, HashAlgo, PathInfo, StoreDir, StorePath};
use arca_store_sqlite::registry::Registry;

const PATHS: usize = 100_000;
/// Paths form groups of this size whose references stay inside the group; the last path
/// of a group reaches the whole group (it refers to its predecessor).
const GROUP: usize = 5_000;

fn store_path(i: usize) -> StorePath {
    let digest = Hash::digest(HashAlgo::Sha256, format!("bench/{i}").as_bytes()).compress(20);
    let mut folded = [0u8; 20];
    folded.copy_from_slice(&digest);
    StorePath::from_hash(&folded, &format!("bench-path-{i}")).expect("bench names are valid")
}

/// Path `i` (local index `k` in its group) refers to `k-1`, `k/2` and `2k/3` of its group.
fn reference_indices(i: usize) -> BTreeSet<usize> {
    let (base, k) = (i - i % GROUP, i % GROUP);
    [k.wrapping_sub(1), k / 2, 2 * k / 3]
        .into_iter()
        .filter(|&j| j < k)
        .map(|j| base + j)
        .collect()
}

fn infos() -> &'static [PathInfo] {
    static INFOS: OnceLock<Vec<PathInfo>> = OnceLock::new();
    INFOS.get_or_init(|| {
        let paths: Vec<StorePath> = (0..PATHS).map(store_path).collect();
        (0..PATHS)
            .map(|i| {
                let mut info = PathInfo::new(
                    paths[i].clone(),
                    Hash::digest(HashAlgo::Sha256, paths[i].as_str().as_bytes()),
                    4096 + i as u64,
                );
                info.references = reference_indices(i)
                    .into_iter()
                    .map(|j| paths[j].clone())
                    .collect();
                info.registration_time = 1_700_000_000;
                info
            })
            .collect()
    })
}

fn register_all(batch: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut registry = Registry::open(dir.path(), StoreDir::default()).expect("open registry");
    for chunk in infos().chunks(batch) {
        registry.register(chunk, &[]).expect("register");
    }
    dir
}

#[divan::bench(sample_count = 3, sample_size = 1, args = [1_000, PATHS])]
fn register_100k_paths(bencher: divan::Bencher, batch: usize) {
    infos();
    bencher.bench(|| register_all(batch));
}

/// A 100k-path database, built once for the closure benches.
fn big_db() -> &'static Path {
    static DB: OnceLock<tempfile::TempDir> = OnceLock::new();
    DB.get_or_init(|| register_all(10_000)).path()
}

fn closure_root() -> StorePath {
    store_path(GROUP - 1)
}

#[divan::bench(sample_count = 20)]
fn requisites_5k_closure_in_100k_db(bencher: divan::Bencher) {
    let registry = Registry::open(big_db(), StoreDir::default()).expect("open registry");
    let roots = BTreeSet::from([closure_root()]);
    assert_eq!(registry.requisites(&roots, false).unwrap().len(), GROUP);
    bencher.bench_local(|| registry.requisites(&roots, false).unwrap());
}

/// Referrers of one path in the 100k db (Nix 2.8 costs about 40 µs per referrer query).
#[divan::bench(sample_count = 50)]
fn referrers_of_one_path_in_100k_db(bencher: divan::Bencher) {
    let registry = Registry::open(big_db(), StoreDir::default()).expect("open registry");
    let path = store_path(GROUP / 2);
    assert!(!registry.referrers(&path).unwrap().is_empty());
    bencher.bench_local(|| registry.referrers(&path).unwrap());
}

/// The alternative we measured against: one recursive CTE, paths parsed the same way.
#[divan::bench(sample_count = 20)]
fn requisites_5k_closure_in_100k_db_recursive_cte(bencher: divan::Bencher) {
    let conn = rusqlite::Connection::open(big_db().join("db.sqlite")).expect("open db");
    let root = StoreDir::default().display(&closure_root());
    let dir = StoreDir::default();
    let query = |conn: &rusqlite::Connection| -> BTreeSet<StorePath> {
        let mut stmt = conn
            .prepare_cached(
                "with recursive closure(id) as ( \
                   select id from ValidPaths where path = ? \
                   union select reference from Refs join closure on referrer = closure.id) \
                 select path from ValidPaths join closure on ValidPaths.id = closure.id",
            )
            .unwrap();
        let rows = stmt
            .query_map([&root], |row| row.get::<_, String>(0))
            .unwrap();
        rows.map(|full| dir.parse_path(&full.unwrap()).unwrap())
            .collect()
    };
    assert_eq!(query(&conn).len(), GROUP);
    bencher.bench_local(|| query(&conn));
}

/// Writes the bench's paths as `nix-store --load-db` input.
fn write_nix_input(file: &Path) -> std::io::Result<()> {
    let dir = StoreDir::default();
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    for info in infos() {
        writeln!(out, "{}", dir.display(&info.path))?;
        writeln!(
            out,
            "{}:{}",
            info.nar_hash.algo(),
            info.nar_hash.to_base16()
        )?;
        writeln!(out, "{}", info.nar_size)?;
        writeln!(out)?; // no deriver
        writeln!(out, "{}", info.references.len())?;
        for reference in &info.references {
            writeln!(out, "{}", dir.display(reference))?;
        }
    }
    out.flush()
}

fn main() {
    if let Some(file) = std::env::var_os("ARCA_BENCH_NIX_INPUT") {
        write_nix_input(Path::new(&file)).expect("write nix-store --load-db input");
        println!("{}", StoreDir::default().display(&closure_root()));
        return;
    }
    divan::main();
}
