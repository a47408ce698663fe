//! Runs every fuzz body over its committed corpus on stable Rust, so that `cargo test`
//! (and CI) exercises the fuzz targets and keeps every input that once crashed them as a
//! regression test.

use std::fs;
use std::path::Path;

fn run_corpus(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut count = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus directory is readable").path();
        let data = fs::read(&path).expect("corpus file is readable");
        body(&data);
        count += 1;
    }
    assert!(count >= 10, "corpus {target} has only {count} inputs");
}

#[test]
fn nar_parse_corpus_runs_clean() {
    run_corpus("nar_parse", arca_fuzz::nar::fuzz_nar_parse);
}

#[test]
fn drv_parse_corpus_runs_clean() {
    run_corpus("drv_parse", arca_fuzz::drv::fuzz_drv_parse);
}

#[test]
fn daemon_requests_corpus_runs_clean() {
    run_corpus("daemon_requests", arca_fuzz::daemon::fuzz_daemon_requests);
}

#[test]
fn serve_requests_corpus_runs_clean() {
    run_corpus("serve_requests", arca_fuzz::daemon::fuzz_serve_requests);
}

#[test]
fn serve_replies_corpus_runs_clean() {
    run_corpus("serve_replies", arca_fuzz::daemon::fuzz_serve_replies);
}

#[test]
fn narinfo_parse_corpus_runs_clean() {
    run_corpus("narinfo_parse", arca_fuzz::narinfo::fuzz_narinfo_parse);
}

#[test]
fn decompress_corpus_runs_clean() {
    run_corpus("decompress", arca_fuzz::narinfo::fuzz_decompress);
}
