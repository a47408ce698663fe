//! A binary cache as a store (`arca_cache::store`), on a `file://` directory: adds that
//! are not what their metadata says leave nothing, text paths round-trip and are found by
//! their hash part, a NAR tampered with in the cache is an error when read.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;

use arca_cache::{BinaryCache, CacheError, OpenMode};
use arca_nar::NarEncoder;
use arca_store_core::{Hash, HashAlgo, PathInfo, Store, StoreDir};
fn cache(dir: &std::path::Path) -> BinaryCache {
    let url = format!("file://{}?compression=none", dir.display());
    BinaryCache::open(&url, &StoreDir::default(), OpenMode::Write).expect("a cache")
}

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in walk(dir) {
        found.push(entry.strip_prefix(dir).unwrap().display().to_string());
    }
    found.sort();
    found
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn nar_of(contents: &[u8]) -> Vec<u8> {
    let mut encoder = NarEncoder::new(Vec::new());
    encoder
        .regular(false, contents.len() as u64, &mut &contents[..])
        .unwrap();
    encoder.finish().unwrap()
}

#[test]
fn a_text_path_round_trips_and_is_found_by_its_hash_part() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let path = cache
        .add_text("hello", b"hello\n", &BTreeSet::new())
        .unwrap();
    let info = cache.query_path_info(&path).unwrap().expect("valid");
    assert_eq!(
        info.nar_hash,
        Hash::digest(HashAlgo::Sha256, &nar_of(b"hello\n"))
    );
    assert!(info.is_content_addressed_correctly(cache.store_dir()));
    let mut nar = Vec::new();
    cache.nar_from_path(&path, &mut nar).unwrap();
    assert_eq!(nar, nar_of(b"hello\n"));
    assert_eq!(
        cache.query_path_from_hash_part(path.hash_part()).unwrap(),
        Some(path.clone())
    );
    assert_eq!(cache.query_path_from_hash_part("not-a-hash").unwrap(), None);
    // Added again: nothing changes.
    let before = files(dir.path());
    cache
        .add_text("hello", b"hello\n", &BTreeSet::new())
        .unwrap();
    assert_eq!(files(dir.path()), before);
}

#[test]
fn a_nar_that_is_not_the_one_described_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let before = files(dir.path());
    let nar = nar_of(b"right\n");
    let path = StoreDir::default()
        .parse_path("/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-x")
        .unwrap();
    let mut info = PathInfo::new(
        path.clone(),
        Hash::digest(HashAlgo::Sha256, b"other"),
        nar.len() as u64,
    );
    let error = cache.add_nar(&info, &mut &nar[..]).unwrap_err();
    assert!(matches!(error, CacheError::NarMismatch { .. }), "{error}");
    // A size that is not the NAR's.
    info.nar_hash = Hash::digest(HashAlgo::Sha256, &nar);
    info.nar_size += 1;
    let error = cache.add_nar(&info, &mut &nar[..]).unwrap_err();
    assert!(matches!(error, CacheError::NarMismatch { .. }), "{error}");
    // Not a NAR at all.
    info.nar_size -= 1;
    let error = cache.add_nar(&info, &mut &b"garbage"[..]).unwrap_err();
    assert!(matches!(error, CacheError::BadNar { .. }), "{error}");
    // A reference the cache lacks.
    info.references.insert(
        StoreDir::default()
            .parse_path("/nix/store/00000000000000000000000000000000-dep")
            .unwrap(),
    );
    let error = cache.add_nar(&info, &mut &nar[..]).unwrap_err();
    assert!(
        matches!(error, CacheError::MissingReferences { .. }),
        "{error}"
    );
    assert_eq!(files(dir.path()), before);
    assert!(!cache.is_valid_path(&path).unwrap());
}

#[test]
fn a_tampered_nar_in_the_cache_is_an_error_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let path = cache
        .add_text("t", b"twelve bytes", &BTreeSet::new())
        .unwrap();
    let narinfo = cache.narinfo(&path).unwrap().unwrap();
    let file = dir.path().join(&narinfo.url);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let error = cache.nar_from_path(&path, &mut io::sink()).unwrap_err();
    assert!(matches!(error, CacheError::NarMismatch { .. }), "{error}");
    let error = cache.query_referrers(&path).unwrap_err();
    assert!(matches!(error, CacheError::Unsupported { .. }), "{error}");
}
