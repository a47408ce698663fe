//! Crash safety: `kill -9` of `arca store add-path` of a large tree and of `arca store
//! import` of a big export, at random moments (seeded, printed on failure). After each
//! kill the next open of the store (`arca store verify --check-contents`) must find it
//! clean: every registered path complete (its NAR hash, recomputed here independently,
//! matches the registry), no staging leftovers, no unregistered path at a final name;
//! and the same add or import then succeeds. Needs no Nix.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arca_nar::DumpOptions;
use arca_store_core::{HashAlgo, Hasher};
use arca_tests::store::{
    add_derivation, arca_cmd, arca_ok, arca_ok_from, assert_arca_verify_clean, lines, registry_db,
    scratch_dir, sql, staging_leftovers, DIAMOND,
};
use arca_tests::{random_tree, Rng};

const KILLS: u64 = 15;

/// A tree of 3000 files in 30 directories, with executables and symlinks.
fn large_tree(path: &Path) {
    fs::create_dir(path).unwrap();
    for d in 0..30 {
        let dir = path.join(format!("dir-{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            let file = dir.join(format!("file-{f}"));
            fs::write(&file, format!("{d}/{f} ").repeat(1 + (d * f) % 40)).unwrap();
            if f % 10 == 0 {
                fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        symlink(format!("dir-{d}/file-0"), path.join(format!("link-{d}"))).unwrap();
    }
}

/// `path`, opened, as standard input.
fn file(path: &Path) -> Stdio {
    Stdio::from(fs::File::open(path).unwrap())
}

/// Runs `args` and kills it with SIGKILL after `delay` (if it is still running).
/// Returns whether it finished before the kill.
fn run_and_kill(root: &Path, args: &[&str], stdin: Option<&Path>, delay: Duration) -> bool {
    let mut command = arca_cmd(root);
    command
        .args(args)
        .stdin(stdin.map_or_else(Stdio::null, file))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    std::thread::sleep(delay);
    let finished = child.try_wait().unwrap().is_some();
    if !finished {
        child.kill().unwrap(); // SIGKILL
    }
    child.wait().unwrap();
    finished
}

/// The checks after a crash. `context` names the seed and delay for the failure message.
fn assert_recovered(root: &Path, context: &str) {
    let db = registry_db(root);
    if !db.exists() {
        // Killed before the store was even created: opening it now must work.
        arca_ok(root, &["store", "verify"], b"");
    }
    // The next open cleans up; verify must then be clean.
    assert_arca_verify_clean(root, &format!("{context}: after the crash"));
    let store = root.join("nix/store");
    let staging = staging_leftovers(root);
    assert!(
        staging.is_empty(),
        "{context}: staging leftovers survive the next open: {staging:?}"
    );
    let registered: BTreeSet<String> = sql(&db, "select path from ValidPaths")
        .into_iter()
        .collect();
    for entry in fs::read_dir(&store).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with(".lock") {
            continue;
        }
        assert!(
            registered.contains(&format!("/nix/store/{name}")),
            "{context}: an unregistered path at a final name: {name}"
        );
    }
    // Every registered path is complete: its NAR hash, recomputed here, is the one
    // registered.
    for row in sql(&db, "select path, hash, narSize from ValidPaths") {
        let mut fields = row.split('|');
        let (path, hash, size) = (
            fields.next().unwrap(),
            fields.next().unwrap(),
            fields.next().unwrap(),
        );
        let physical = root.join(path.trim_start_matches('/'));
        let mut hasher = Hasher::new(HashAlgo::Sha256);
        let nar_size = arca_nar::dump_path(&physical, &mut hasher, &DumpOptions::default())
            .unwrap_or_else(|e| panic!("{context}: registered {path} cannot be read: {e}"));
        let actual = format!("sha256:{}", hasher.finish().to_base16());
        assert_eq!(actual, hash, "{context}: registered {path} is incomplete");
        assert_eq!(nar_size.to_string(), size, "{context}: NAR size of {path}");
    }
    let registered_again: BTreeSet<String> = sql(&db, "select path from ValidPaths")
        .into_iter()
        .collect();
    assert_eq!(registered, registered_again);
}

/// Random delays over `0..1.2 × full` (some kills land after the end: those runs must
/// simply be complete).
fn delays(seed: u64, full: Duration) -> Vec<Duration> {
    let mut rng = Rng::new(seed);
    // Within 90% of a full run: runs are often a little quicker than the calibration.
    let span = (full.as_micros() as u64 * 9 / 10).max(1000);
    (0..KILLS)
        .map(|_| Duration::from_micros(rng.below(span)))
        .collect()
}

#[test]
fn kill_9_during_add_path_of_a_large_tree() {
    let scratch = scratch_dir();
    let tree = scratch.path().join("large-tree");
    large_tree(&tree);
    let tree_arg = tree.to_str().unwrap();

    // Calibrate: how long a complete add takes here.
    let calibration = scratch.path().join("calibration");
    let started = Instant::now();
    let expected = lines(&arca_ok(
        &calibration,
        &["store", "add-path", tree_arg],
        b"",
    ));
    let full = started.elapsed();
    assert_eq!(expected.len(), 1);

    let seed = 0xadd;
    let mut killed = 0;
    for (index, delay) in delays(seed, full).into_iter().enumerate() {
        let context = format!("add-path, seed {seed:#x}, kill {index} after {delay:?}");
        let root = scratch.path().join(format!("root-{index}"));
        // Half the time, the store exists and has content before the crash.
        if index % 2 == 1 {
            for drv in &DIAMOND[..2] {
                add_derivation(&root, drv);
            }
        }
        if !run_and_kill(&root, &["store", "add-path", tree_arg], None, delay) {
            killed += 1;
        }
        assert_recovered(&root, &context);
        // The same add succeeds afterwards, and gives the same path.
        let again = lines(&arca_ok(&root, &["store", "add-path", tree_arg], b""));
        assert_eq!(again, expected, "{context}");
        assert_recovered(&root, &format!("{context}, after adding again"));
        chmod_and_remove(&root);
    }
    eprintln!("add-path: a full add takes {full:?}; {killed} of {KILLS} runs were killed");
    assert!(
        killed >= KILLS / 2,
        "most runs were killed before they finished"
    );
}

#[test]
fn kill_9_during_import_of_a_big_export() {
    let scratch = scratch_dir();
    // The source: the diamond derivations (with references) and 150 trees.
    let source = scratch.path().join("source");
    for drv in DIAMOND {
        add_derivation(&source, drv);
    }
    let trees_dir = scratch.path().join("trees");
    fs::create_dir(&trees_dir).unwrap();
    let mut trees = Vec::new();
    for seed in 0..150u64 {
        let tree = trees_dir.join(format!("tree-{seed}"));
        if seed % 50 == 0 {
            large_tree(&tree);
        } else {
            random_tree(9000 + seed, &tree).unwrap();
        }
        trees.push(tree.to_str().unwrap().to_owned());
    }
    let tree_args: Vec<&str> = trees.iter().map(String::as_str).collect();
    let mut paths = lines(&arca_ok(
        &source,
        &[&["store", "add-path"][..], &tree_args].concat(),
        b"",
    ));
    paths.extend(DIAMOND.iter().map(|d| d.to_string()));
    let path_args: Vec<&str> = paths.iter().map(String::as_str).collect();
    let export = scratch.path().join("big.export");
    fs::write(
        &export,
        arca_ok(
            &source,
            &[&["store", "export"][..], &path_args].concat(),
            b"",
        ),
    )
    .unwrap();

    // Calibrate on warm caches: the quickest of three complete imports (a first, cold
    // one can take twice as long, and delays drawn from it would mostly miss).
    let full = (0..3)
        .map(|round| {
            let calibration = scratch.path().join(format!("calibration-{round}"));
            let started = Instant::now();
            arca_ok_from(&calibration, &["store", "import"], file(&export));
            let took = started.elapsed();
            chmod_and_remove(&calibration);
            took
        })
        .min()
        .expect("three rounds");
    let all: BTreeSet<String> = paths.iter().cloned().collect();

    let seed = 0x1e9;
    let mut killed = 0;
    for (index, delay) in delays(seed, full).into_iter().enumerate() {
        let context = format!("import, seed {seed:#x}, kill {index} after {delay:?}");
        let root = scratch.path().join(format!("root-{index}"));
        if !run_and_kill(&root, &["store", "import"], Some(&export), delay) {
            killed += 1;
        }
        assert_recovered(&root, &context);
        let printed = lines(&arca_ok_from(&root, &["store", "import"], file(&export)));
        assert_eq!(printed.len(), paths.len(), "{context}");
        assert_recovered(&root, &format!("{context}, after importing again"));
        let registered: BTreeSet<String> = sql(&registry_db(&root), "select path from ValidPaths")
            .into_iter()
            .collect();
        assert_eq!(registered, all, "{context}: everything imported in the end");
        chmod_and_remove(&root);
    }
    eprintln!("import: a full import takes {full:?}; {killed} of {KILLS} runs were killed");
    assert!(
        killed >= KILLS / 2,
        "most runs were killed before they finished"
    );
}

/// Removes a store root (its directories are read-only).
fn chmod_and_remove(root: &PathBuf) {
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(root)
        .status();
    let _ = fs::remove_dir_all(root);
}
