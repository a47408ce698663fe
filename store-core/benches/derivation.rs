//! Parsing, printing and hashing `.drv` files:
//! `cargo bench -p arca-store-core --bench derivation`.
//!
//! The input is a synthetic derivation shaped like a large real one (many inputs, long env
//! values with escapes), since the fixtures are all small.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;

use arca_store_core::derivation::{
    derivation_path, hash_derivation_modulo, Derivation, DerivationOutput, DrvHash, OutputName,
};
use arca_store_core::{Hash, HashAlgo, StoreDir, StorePath};
use divan::counter::BytesCount;
use divan::Bencher;

fn main() {
    divan::main();
}

fn path(i: usize, suffix: &str) -> StorePath {
    let hash = Hash::digest(HashAlgo::Sha256, &i.to_le_bytes()).to_base32();
    StorePath::from_base_name(&format!("{}-input-{i}{suffix}", &hash[..32])).unwrap()
}

fn big_derivation() -> Derivation {
    let input_drvs = (0..200)
        .map(|i| (path(i, ".drv"), BTreeSet::from([OutputName::out()])))
        .collect();
    let input_srcs = (200..300).map(|i| path(i, "")).collect();
    let script = "set -e\n\tcd \"$src\" && make -j$NIX_BUILD_CORES \\\n  install\n".repeat(200);
    let mut env: BTreeMap<String, String> = (0..100)
        .map(|i| {
            (
                format!("var{i}"),
                format!("/nix/store/value-{i} \"quoted\"\n"),
            )
        })
        .collect();
    env.insert("buildPhase".to_owned(), script);
    Derivation {
        name: "big".to_owned(),
        outputs: BTreeMap::from([(
            OutputName::out(),
            DerivationOutput::InputAddressed {
                path: path(999, ""),
            },
        )]),
        input_drvs,
        input_srcs,
        system: "x86_64-linux".to_owned(),
        builder: "/bin/sh".to_owned(),
        args: vec!["-e".to_owned(), "builder.sh".to_owned()],
        env,
    }
}

#[divan::bench]
fn parse(bencher: Bencher) {
    let store = StoreDir::default();
    let text = big_derivation().to_aterm(&store);
    bencher
        .counter(BytesCount::new(text.len()))
        .bench(|| Derivation::parse(&store, "big", black_box(text.as_bytes())).unwrap());
}

#[divan::bench]
fn print(bencher: Bencher) {
    let store = StoreDir::default();
    let drv = big_derivation();
    let len = drv.to_aterm(&store).len();
    bencher
        .counter(BytesCount::new(len))
        .bench(|| black_box(&drv).to_aterm(&store));
}

#[divan::bench]
fn hash_modulo_and_drv_path(bencher: Bencher) {
    let store = StoreDir::default();
    let drv = big_derivation();
    let input_hash = Hash::digest(HashAlgo::Sha256, b"input");
    bencher.bench(|| {
        let hash = hash_derivation_modulo(black_box(&drv), &store, |_| {
            Ok::<_, std::convert::Infallible>(DrvHash {
                hash: input_hash.clone(),
                deferred: false,
            })
        })
        .unwrap()
        .hash;
        (hash, derivation_path(&store, &drv).unwrap())
    });
}
