//! The security suite: every attack of issue #13, each test failing if the protection it
//! names is removed.
//!
//! - Forged derivations: a `.drv` that claims another derivation's output path is refused
//!   when it would enter the store (CLI `store add-path`, `derivation add`, `store import`,
//!   the library's adds) and, if one is in the store already (made by an older Arca),
//!   when it would be built.
//!
//! Builds need a static busybox (skipped loudly without it, an error in CI); the tests
//! that act as another host user need root.

use std::fs;

use arca_store_core::{Hash, HashAlgo, PathInfo, StoreDir, StorePath};
use arca_tests::build::{busybox_available, Scratch};
use arca_tests::store::lines;

/// A scratch area with busybox in its Arca store, and two derivations `good` and `bad`
/// whose outputs each hold a file of their own name: (scratch, good drv, bad drv).
fn good_and_bad(test: &str) -> Option<(Scratch, String, String)> {
    if !busybox_available(test) {
        return None;
    }
    let scratch = Scratch::new();
    let bb = scratch.add_busybox_to_arca();
    let good = scratch.add_derivation(&bb, "good", "mkdir $out; echo good > $out/good", &[], &[]);
    let bad = scratch.add_derivation(&bb, "bad", "mkdir $out; echo bad > $out/bad", &[], &[]);
    Some((scratch, good, bad))
}

/// `bad.drv` with `bad`'s output path replaced by `good`'s everywhere (the attack of
/// Nix's `secure-drv-outputs.sh`), written to `<scratch>/forged/bad.drv`.
fn forge(scratch: &Scratch, good: &str, bad: &str) -> std::path::PathBuf {
    let good_out = scratch.arca_output(good);
    let bad_out = scratch.arca_output(bad);
    let text = fs::read_to_string(scratch.arca_physical(bad)).unwrap();
    assert!(text.contains(&bad_out));
    let dir = scratch.path().join("forged");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.drv");
    fs::write(&file, text.replace(&bad_out, &good_out)).unwrap();
    file
}

/// After the attack, building `good` gives `good`'s own contents.
fn assert_good_builds_good(scratch: &Scratch, good: &str) {
    let out = scratch.arca_build_ok(&[good]);
    assert_eq!(out, [scratch.arca_output(good)]);
    let file = scratch.arca_physical(&out[0]).join("good");
    assert_eq!(
        fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())),
        "good\n",
        "the bad derivation stole the output path of the good one"
    );
}

#[test]
fn forged_drv_is_refused_by_store_add_path() {
    let Some((scratch, good, bad)) = good_and_bad("forged_drv_is_refused_by_store_add_path") else {
        return;
    };
    let forged = forge(&scratch, &good, &bad);
    let output = scratch.arca(&["store", "add-path", forged.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let good_out = scratch.arca_output(&good);
    let bad_out = scratch.arca_output(&bad);
    assert!(
        stderr.contains(&format!(
            "has incorrect output '{good_out}', should be '{bad_out}'"
        )),
        "{stderr}"
    );
    assert!(lines(&output.stdout).is_empty());
    assert_good_builds_good(&scratch, &good);
}

#[test]
fn forged_drv_is_refused_by_derivation_add() {
    let Some((scratch, good, bad)) = good_and_bad("forged_drv_is_refused_by_derivation_add") else {
        return;
    };
    let good_out = scratch.arca_output(&good);
    let mut json: serde_json::Value =
        serde_json::from_slice(&scratch.arca_ok(&["derivation", "show", &bad])).unwrap();
    let mut drv = json.as_object_mut().unwrap().remove(&bad).unwrap();
    drv["name"] = "bad".into();
    drv["outputs"]["out"]["path"] = good_out.clone().into();
    drv["env"]["out"] = good_out.clone().into();
    let output = scratch
        .arca_cmd()
        .args(["derivation", "add"])
        .output_with(&drv);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // The CLI names the path it computed before the store would refuse it.
    assert!(stderr.contains(&format!("'{good_out}'")), "{stderr}");
    assert_good_builds_good(&scratch, &good);
}

/// The library's `add_derivation` (what `derivation add` and the daemon's adds end in)
/// refuses it too, naming the output, the path claimed and the right one.
#[test]
fn forged_drv_is_refused_by_the_library() {
    let Some((scratch, good, bad)) = good_and_bad("forged_drv_is_refused_by_the_library") else {
        return;
    };
    let good_out = scratch.arca_output(&good);
    let bad_out = scratch.arca_output(&bad);
    let forged = forge(&scratch, &good, &bad);
    let store_dir = StoreDir::default();
    let drv =
        arca_store_core::Derivation::parse(&store_dir, "bad", &fs::read(&forged).unwrap()).unwrap();
    let store = arca_store_sqlite::LocalStore::open(&scratch.arca_root()).unwrap();
    let error = store.add_derivation(&drv).unwrap_err();
    assert!(
        matches!(error, arca_store_sqlite::StoreError::IncorrectDerivation(_)),
        "{error:?}"
    );
    assert!(
        error.to_string().ends_with(&format!(
            "has incorrect output '{good_out}', should be '{bad_out}'"
        )),
        "{error}"
    );
    drop(store);
    assert_good_builds_good(&scratch, &good);
}

#[test]
fn forged_drv_is_refused_by_store_import() {
    let Some((scratch, good, bad)) = good_and_bad("forged_drv_is_refused_by_store_import") else {
        return;
    };
    // The export archive another store would make of the forged file.
    let forged = forge(&scratch, &good, &bad);
    let nar = scratch.arca_ok(&["nar", "dump-path", forged.to_str().unwrap()]);
    let text = fs::read(&forged).unwrap();
    let store_dir = StoreDir::default();
    let references: std::collections::BTreeSet<StorePath> = text_references(&text);
    let path = store_dir
        .make_text_path(
            "bad.drv",
            &Hash::digest(HashAlgo::Sha256, &text),
            &references,
        )
        .unwrap();
    let archive = export_archive(&store_dir, &path, &nar, &references);
    let output = arca_tests::store::run(scratch.arca_cmd().args(["store", "import"]), &archive);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has incorrect output"), "{stderr}");
    assert!(!scratch.arca_registered(&store_dir.display(&path)));
    assert_good_builds_good(&scratch, &good);
}

/// A forged `.drv` registered by something that did not check (an older Arca), built
/// through the library: refused before anything runs.
#[test]
fn forged_drv_already_in_the_store_is_never_built() {
    let Some((scratch, good, bad)) = good_and_bad("forged_drv_already_in_the_store_is_never_built")
    else {
        return;
    };
    let forged = forge(&scratch, &good, &bad);
    let text = fs::read(&forged).unwrap();
    let store_dir = StoreDir::default();
    let references = text_references(&text);
    let path = store_dir
        .make_text_path(
            "bad.drv",
            &Hash::digest(HashAlgo::Sha256, &text),
            &references,
        )
        .unwrap();
    let store = arca_store_sqlite::LocalStore::open(&scratch.arca_root()).unwrap();
    fs::write(scratch.arca_physical(&store_dir.display(&path)), &text).unwrap();
    let mut info = PathInfo::new(
        path.clone(),
        arca_store_sqlite::nar_hash_of(&scratch.arca_physical(&store_dir.display(&path)))
            .unwrap()
            .0,
        0,
    );
    info.references = references;
    store.registry().register(&[info], &[]).unwrap();

    let error = arca_build::build(
        &store,
        &[arca_build::BuildTarget::all(path.clone())],
        &arca_build::BuildOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    let good_out = scratch.arca_output(&good);
    assert!(
        error
            .to_string()
            .contains(&format!("has incorrect output '{good_out}'")),
        "{error}"
    );
    drop(store);
    // The CLI refuses it the same way.
    let stderr = scratch.arca_build_fails(&[&store_dir.display(&path)]);
    assert!(stderr.contains("has incorrect output"), "{stderr}");
    assert!(!scratch.arca_registered(&good_out));
    assert_good_builds_good(&scratch, &good);
}

/// The store paths named in a `.drv`'s text that are its references (input sources and
/// input derivations): every `/nix/store/…` string but the outputs. Enough for the
/// derivations of these tests, which have no input derivations.
fn text_references(text: &[u8]) -> std::collections::BTreeSet<StorePath> {
    let store_dir = StoreDir::default();
    let drv = arca_store_core::Derivation::parse(&store_dir, "bad", text).unwrap();
    drv.drv_references()
}

/// Nix's export format for one path without deriver or signature.
fn export_archive(
    store_dir: &StoreDir,
    path: &StorePath,
    nar: &[u8],
    references: &std::collections::BTreeSet<StorePath>,
) -> Vec<u8> {
    fn int(out: &mut Vec<u8>, n: u64) {
        out.extend_from_slice(&n.to_le_bytes());
    }
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        int(out, s.len() as u64);
        out.extend_from_slice(s);
        out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
    }
    let mut out = Vec::new();
    int(&mut out, 1);
    out.extend_from_slice(nar);
    int(&mut out, 0x4558_494e);
    string(&mut out, store_dir.display(path).as_bytes());
    int(&mut out, references.len() as u64);
    for reference in references {
        string(&mut out, store_dir.display(reference).as_bytes());
    }
    string(&mut out, b"");
    int(&mut out, 0);
    int(&mut out, 0);
    out
}

trait OutputWith {
    fn output_with(&mut self, json: &serde_json::Value) -> std::process::Output;
}

impl OutputWith for std::process::Command {
    fn output_with(&mut self, json: &serde_json::Value) -> std::process::Output {
        arca_tests::store::run(self, &serde_json::to_vec(json).unwrap())
    }
}
