//! Store optimisation beside real Nix 2.8: on two copies of one Nix-made store,
//! `arca store optimise` and `nix-store --optimise` print the same summary and share the
//! same files; the optimised store (also after a `kill -9` in the middle of optimising)
//! passes `nix-store --verify --check-contents`; and each optimiser then finds nothing
//! more to link after the other.
//!
//! Needs real Nix; skipped loudly without it (an error in CI).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use arca_tests::store::{arca_cmd, assert_arca_verify_clean, run};
use arca_tests::{nix_available, NIX_CONFIG};
use serde_json::Value;

/// The lines `nix-store --verify --check-contents` prints on a healthy store.
const NIX_VERIFY_PROGRESS: &[&str] = &[
    "reading the Nix store...",
    "checking path existence...",
    "checking link hashes...",
    "checking store hashes...",
];

/// `count` source trees under `dir`: files shared between trees (some executable, with
/// the same bytes as a non-executable one), empty files, unique files and a unique
/// symlink each. (Nix also links identical symlinks and Arca does not, so no two trees
/// have the same symlink.)
fn make_trees(dir: &Path, count: usize) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let tree = dir.join(format!("tree-{i}"));
            for sub in ["lib", "bin", "share/doc"] {
                fs::create_dir_all(tree.join(sub)).unwrap();
            }
            let write = |relative: &str, contents: &[u8], mode: u32| {
                let file = tree.join(relative);
                fs::write(&file, contents).unwrap();
                fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            };
            let common = format!("library {}\n", i % 5).repeat(4000 + 100 * (i % 5));
            write("lib/common", common.as_bytes(), 0o644);
            write("bin/tool", common.as_bytes(), 0o755);
            write("share/doc/README", b"see the manual\n", 0o644);
            write("share/empty", b"", 0o644);
            write("own", format!("tree {i}\n").repeat(i + 1).as_bytes(), 0o644);
            symlink(format!("../target-{i}"), tree.join("link")).unwrap();
            tree
        })
        .collect()
}

/// A Nix store root holding `trees`, added by `nix-store --add`.
fn nix_root(parent: &Path, name: &str, trees: &[PathBuf]) -> PathBuf {
    let root = parent.join(name);
    let uri = uri(&root);
    let mut command = nix_store(&uri);
    command.arg("--add").args(trees);
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    root
}

fn uri(root: &Path) -> String {
    format!("local?root={}", root.display())
}

fn nix_store(uri: &str) -> Command {
    let mut command = Command::new("nix-store");
    command
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["--store", uri])
        .stdin(Stdio::null());
    command
}

/// `cp -a`: an identical second store (modes, times, registry).
fn copy_root(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The summary line an optimiser printed on stderr.
fn summary(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "optimise failed: {stderr}");
    stderr
        .lines()
        .find(|line| line.contains("freed by hard-linking"))
        .unwrap_or_else(|| panic!("no summary in: {stderr}"))
        .to_owned()
}

fn nix_optimise(root: &Path) -> String {
    summary(&nix_store(&uri(root)).arg("--optimise").output().unwrap())
}

/// `arca store optimise --json`: the summary line and the counts.
fn arca_optimise(root: &Path) -> (String, Value) {
    let output = run(arca_cmd(root).args(["store", "optimise", "--json"]), b"");
    let line = summary(&output);
    (line, serde_json::from_slice(&output.stdout).unwrap())
}

fn assert_nix_verifies_clean(root: &Path, context: &str) {
    let output = run(
        nix_store(&uri(root)).args(["--verify", "--check-contents"]),
        b"",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let unexpected: Vec<&str> = stderr
        .lines()
        .filter(|line| !NIX_VERIFY_PROGRESS.contains(line))
        .collect();
    assert!(
        output.status.success() && output.stdout.is_empty() && unexpected.is_empty(),
        "{context}: nix-store --verify --check-contents: {}\n{}",
        output.status,
        unexpected.join("\n")
    );
}

/// The regular files of the store (relative to it), grouped by inode: which files
/// share their bytes on disk.
fn sharing(root: &Path) -> BTreeSet<BTreeSet<PathBuf>> {
    let store = root.join("nix/store");
    let mut by_inode: BTreeMap<u64, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut pending: Vec<PathBuf> = fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    while let Some(entry) = pending.pop() {
        let metadata = fs::symlink_metadata(&entry).unwrap();
        if metadata.is_dir() {
            pending.extend(fs::read_dir(&entry).unwrap().map(|e| e.unwrap().path()));
        } else if metadata.is_file() {
            let relative = entry.strip_prefix(&store).unwrap().to_owned();
            by_inode.entry(metadata.ino()).or_default().insert(relative);
        }
    }
    by_inode.into_values().collect()
}

/// What Nix counts for a store optimised into `groups`: every file of a group but one
/// was replaced, freeing its size.
fn expected_counts(root: &Path, groups: &BTreeSet<BTreeSet<PathBuf>>) -> (u64, u64) {
    let store = root.join("nix/store");
    let (mut files, mut bytes) = (0, 0);
    for group in groups {
        let size = fs::metadata(store.join(group.first().unwrap()))
            .unwrap()
            .len();
        files += group.len() as u64 - 1;
        bytes += (group.len() as u64 - 1) * size;
    }
    (files, bytes)
}

#[test]
fn arca_and_nix_optimise_link_the_same_files_and_print_the_same_summary() {
    if !nix_available("arca_and_nix_optimise_link_the_same_files_and_print_the_same_summary") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trees = make_trees(&dir.path().join("src"), 40);
    let by_nix = nix_root(dir.path(), "by-nix", &trees);
    let by_arca = dir.path().join("by-arca");
    copy_root(&by_nix, &by_arca);

    let nix_line = nix_optimise(&by_nix);
    let (arca_line, counts) = arca_optimise(&by_arca);

    assert_eq!(arca_line, nix_line);
    let groups = sharing(&by_nix);
    assert_eq!(sharing(&by_arca), groups, "the same files share an inode");
    let (files, bytes) = expected_counts(&by_nix, &groups);
    assert!(
        files > 100 && bytes > 1 << 20,
        "a meaningful store: {files} {bytes}"
    );
    assert_eq!(counts["filesLinked"], files, "{counts}");
    assert_eq!(counts["bytesSaved"], bytes, "{counts}");
    assert_nix_verifies_clean(&by_arca, "after arca store optimise");
    assert_arca_verify_clean(&by_arca, "after arca store optimise");

    // Each optimiser recognises the other's work: nothing more to link.
    assert_eq!(
        nix_optimise(&by_arca),
        "0.00 MiB freed by hard-linking 0 files"
    );
    let (line, counts) = arca_optimise(&by_nix);
    assert_eq!(line, "0.00 MiB freed by hard-linking 0 files");
    assert_eq!(
        counts["filesHashed"], 0,
        "Nix's .links inodes are honoured: {counts}"
    );
    assert_nix_verifies_clean(&by_arca, "after nix-store --optimise on Arca's work");
    assert_nix_verifies_clean(&by_nix, "after arca store optimise on Nix's work");
}

/// How many shard directories Arca's optimiser has made so far.
fn shards(root: &Path) -> usize {
    fs::read_dir(root.join("nix/store/.arca-links")).map_or(0, Iterator::count)
}

#[test]
fn kill_9_during_arca_optimise_leaves_a_store_nix_verifies() {
    if !nix_available("kill_9_during_arca_optimise_leaves_a_store_nix_verifies") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trees = make_trees(&dir.path().join("src"), 300);
    let root = nix_root(dir.path(), "root", &trees);

    // Kill once the run has made this many shards: the run is then in full swing.
    for kill_at in [1, 20, 60, 100, 140] {
        let mut child = arca_cmd(&root)
            .args(["store", "optimise"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while shards(&root) < kill_at && child.try_wait().unwrap().is_none() {
            std::thread::yield_now();
        }
        let _ = child.kill(); // SIGKILL (or it has finished)
        child.wait().unwrap();

        // As the kill left it, before any Arca process cleans up.
        assert_nix_verifies_clean(&root, &format!("after a kill at {kill_at} shards"));
    }

    let (line, _) = arca_optimise(&root);
    assert!(line.ends_with("files"), "{line}");
    assert_nix_verifies_clean(&root, "after the final run");
    assert_arca_verify_clean(&root, "after the final run");
    let (line, _) = arca_optimise(&root);
    assert_eq!(line, "0.00 MiB freed by hard-linking 0 files");
}
