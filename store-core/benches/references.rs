//! Reference scanning throughput: `cargo bench -p arca-store-core --bench references`.
//!
//! Arguments are the number of candidates absent from the input (16 more are present in
//! the text). Inputs of 16 MiB: English-like text with a store path per line every so often, random
//! bytes (like a compiled binary), and the worst case, a run of nix-base32 characters that
//! forces a lookup at every offset.

use std::collections::BTreeSet;
use std::hint::black_box;

use arca_store_core::references::ReferenceScanner;
use divan::counter::BytesCount;
use divan::Bencher;

const SIZE: usize = 16 << 20;
const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

fn main() {
    divan::main();
}

/// A small deterministic generator (xorshift), so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn hash_part(&mut self) -> String {
        (0..32)
            .map(|_| char::from(ALPHABET[(self.next() % 32) as usize]))
            .collect()
    }
}

fn candidates(n: usize) -> Vec<String> {
    let mut rng = Rng(0x5eed);
    (0..n).map(|_| rng.hash_part()).collect()
}

fn text() -> Vec<u8> {
    let words = [
        "the",
        "store",
        "path",
        "of",
        "a",
        "derivation",
        "is",
        "computed",
        "from",
        "its",
        "inputs",
        "and",
        "builder",
        "export",
        "PATH=",
        "exec",
        "--prefix",
        "lib",
        "include",
    ];
    let mut rng = Rng(42);
    let refs = candidates(16);
    let mut out = Vec::with_capacity(SIZE + 128);
    while out.len() < SIZE {
        for _ in 0..12 {
            out.extend_from_slice(words[(rng.next() % words.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        if rng.next().is_multiple_of(8) {
            out.extend_from_slice(b"/nix/store/");
            out.extend_from_slice(refs[(rng.next() % 16) as usize].as_bytes());
            out.extend_from_slice(b"-bash-5.1/bin/sh");
        }
        out.push(b'\n');
    }
    out.truncate(SIZE);
    out
}

fn random_bytes() -> Vec<u8> {
    let mut rng = Rng(7);
    (0..SIZE).map(|_| rng.next() as u8).collect()
}

fn all_base32() -> Vec<u8> {
    let mut rng = Rng(9);
    (0..SIZE)
        .map(|_| ALPHABET[(rng.next() % 32) as usize])
        .collect()
}

fn scan(bencher: Bencher, data: Vec<u8>, absent: usize) {
    let candidates = candidates_with_absent(absent);
    // Setting up the candidate set is not part of the scan.
    let scanner = ReferenceScanner::new(&candidates).unwrap();
    bencher
        .counter(BytesCount::new(data.len()))
        .with_inputs(|| scanner.clone())
        .bench_local_values(|mut scanner| {
            for chunk in black_box(&data).chunks(64 * 1024) {
                scanner.update(chunk);
            }
            black_box(scanner.finish())
        });
}

/// The 16 hash parts `text()` mentions plus `absent` others, so that the scan never ends
/// early for having found everything.
fn candidates_with_absent(absent: usize) -> BTreeSet<String> {
    let mut all: BTreeSet<String> = candidates(16).into_iter().collect();
    let mut rng = Rng(0xfeed);
    while all.len() < 16 + absent {
        all.insert(rng.hash_part());
    }
    all
}

#[divan::bench(args = [1, 1000, 100_000])]
fn plain_text(bencher: Bencher, absent: usize) {
    scan(bencher, text(), absent);
}

#[divan::bench(args = [1, 1000])]
fn random_binary(bencher: Bencher, absent: usize) {
    scan(bencher, random_bytes(), absent);
}

#[divan::bench(args = [1000])]
fn worst_case_all_base32(bencher: Bencher, absent: usize) {
    scan(bencher, all_base32(), absent);
}
