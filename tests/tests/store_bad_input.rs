//! `arca store import` of bad archives: a truncated export, a corrupt NAR, a reference to
//! a path that is neither valid nor earlier in the archive, an invalid store path in the
//! metadata, a bad marker. Each must exit 1 with an `error: ` line naming the problem and
//! leave the store exactly as it was: same valid paths, same answers to queries, `verify`
//! clean, no new files, no leftovers. Needs no Nix: the archives come from `arca store
//! export` of a source store and are edited here.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use arca_tests::random_tree;
use arca_tests::store::{
    add_derivation, assert_arca_verify_clean, lines, sql, staging_leftovers, Root, DIAMOND,
};

const EXPORT_MAGIC: u64 = 0x4558_494e;

/// Everything observable about a store: valid paths, their references and referrers,
/// the entries of the store directory and of the staging directory.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    valid: Vec<String>,
    queries: Vec<Vec<u8>>,
    entries: BTreeSet<String>,
    staging: BTreeSet<String>,
    rows: Vec<String>,
}

fn snapshot(root: &Root) -> Snapshot {
    let valid = root.valid_paths();
    let mut queries = Vec::new();
    for path in &valid {
        for flag in ["--references", "--referrers", "--requisites", "--deriver"] {
            queries.push(root.arca_ok(&["store", "query", flag, path], b""));
        }
    }
    let list = |dir: &Path| -> BTreeSet<String> {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let db = root.db();
    let mut rows = sql(&db, "select * from ValidPaths order by id");
    rows.extend(sql(&db, "select * from Refs order by referrer, reference"));
    rows.extend(sql(&db, "select * from DerivationOutputs order by drv, id"));
    Snapshot {
        valid,
        queries,
        // The staging directory is made by the first writer that needs it: its
        // appearing is no change to the store (its contents are compared below).
        entries: list(&root.store())
            .into_iter()
            .filter(|name| name != ".arca-staging")
            .collect(),
        staging: staging_leftovers(&root.path).into_iter().collect(),
        rows,
    }
}

/// Adds the diamond derivations (from their fixture JSON) and `trees` random trees to
/// `root`; returns the tree paths.
fn populate(root: &Root, scratch: &Path, seeds: std::ops::Range<u64>) -> Vec<String> {
    for drv in DIAMOND {
        add_derivation(&root.path, drv);
    }
    let mut trees = Vec::new();
    for seed in seeds {
        let tree = scratch.join(format!("bad-input-tree-{seed}"));
        if !tree.exists() {
            // A directory with at least one regular file, so that there are contents
            // to corrupt, and a random tree in it.
            fs::create_dir(&tree).unwrap();
            random_tree(seed, &tree.join("random")).unwrap();
            fs::write(tree.join("zz-regular"), format!("file of tree {seed}\n")).unwrap();
        }
        trees.push(tree.to_str().unwrap().to_owned());
    }
    let args: Vec<&str> = ["store", "add-path"]
        .into_iter()
        .chain(trees.iter().map(String::as_str))
        .collect();
    lines(&root.arca_ok(&args, b""))
}

fn export(root: &Root, paths: &[&str]) -> Vec<u8> {
    let mut args = vec!["store", "export"];
    args.extend_from_slice(paths);
    root.arca_ok(&args, b"")
}

/// One entry (`1`, NAR, `NIXE`, metadata) of a single-path export of a path without
/// references or deriver, split into its NAR and its metadata.
fn split_single(export: &[u8], path: &str) -> Vec<u8> {
    let meta_len = 8 + padded(path.len()) + 8 + 8 + 8;
    let body = &export[..export.len() - 8]; // the terminating 0
    assert_eq!(&body[..8], &1u64.to_le_bytes());
    body[8..body.len() - meta_len].to_vec()
}

fn padded(len: usize) -> usize {
    8 + len.div_ceil(8) * 8
}

fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(bytes);
    out.resize(out.len() + (8 - bytes.len() % 8) % 8, 0);
    out
}

/// An export of one path with the given NAR and metadata, and the terminator.
fn archive(nar: &[u8], path: &str, references: &[&str], deriver: &str) -> Vec<u8> {
    let mut out = 1u64.to_le_bytes().to_vec();
    out.extend_from_slice(nar);
    out.extend_from_slice(&EXPORT_MAGIC.to_le_bytes());
    out.extend(string(path.as_bytes()));
    out.extend_from_slice(&(references.len() as u64).to_le_bytes());
    for reference in references {
        out.extend(string(reference.as_bytes()));
    }
    out.extend(string(deriver.as_bytes()));
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out
}

/// Imports `bytes` into `root`: must exit 1 with an `error: ` line containing one of
/// `keywords`, and leave `root` exactly as it was.
///
/// Problems with the error message are collected in `messages` (checked at the end of
/// each test by [`assert_messages`]) so that they do not hide problems with the store.
fn assert_refused(
    messages: &mut Vec<String>,
    root: &Root,
    case: &str,
    bytes: &[u8],
    keywords: &[&str],
) {
    let before = snapshot(root);
    let output = root.arca(&["store", "import"], bytes);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{case}: arca store import exited with {} (stderr: {stderr})",
        output.status
    );
    let error_line = stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("{case}: no `error: ` line in {stderr:?}"));
    let lower = error_line.to_lowercase();
    if !keywords.iter().any(|k| lower.contains(&k.to_lowercase())) {
        messages.push(format!(
            "{case}: the error does not name the problem (expected one of {keywords:?}): \
             {error_line}"
        ));
    }
    // Each cause once: `error: a: b: b` repeats what the chain of sources says.
    let parts: Vec<&str> = error_line.split(": ").collect();
    if !parts.windows(2).all(|pair| pair[0] != pair[1]) {
        messages.push(format!(
            "{case}: the error line repeats itself: {error_line}"
        ));
    }
    let after = snapshot(root);
    assert!(
        before == after,
        "{case}: the store changed:\nnew valid paths: {:?}\nnew entries: {:?}\nstaging: {:?}",
        after
            .valid
            .iter()
            .filter(|p| !before.valid.contains(p))
            .collect::<Vec<_>>(),
        after
            .entries
            .difference(&before.entries)
            .collect::<Vec<_>>(),
        after.staging
    );
    assert_arca_verify_clean(&root.path, &format!("{case}: after the refused import"));
}

fn assert_messages(messages: &[String]) {
    assert!(
        messages.is_empty(),
        "{} error message(s) fall short:\n{}",
        messages.len(),
        messages.join("\n")
    );
}

/// A source store with the diamond and some trees, and a target store holding some of
/// the same paths (so that "unchanged" covers valid paths with references).
fn setup() -> (tempfile::TempDir, Root, Root, Vec<String>) {
    let scratch = tempfile::tempdir().unwrap();
    let source = Root::new();
    let trees = populate(&source, scratch.path(), 300..306);
    let target = Root::new();
    populate(&target, scratch.path(), 300..301);
    (scratch, source, target, trees)
}

#[test]
fn truncated_exports_are_refused() {
    let mut messages = Vec::new();
    let (_scratch, source, target, trees) = setup();
    // Paths the target does not have: a tree, then one with a reference.
    let new_tree = trees[3].as_str();
    let full = export(&source, &[new_tree]);
    let nar_len = split_single(&full, new_tree).len();
    let keywords = ["truncated", "unexpected end"];
    for (case, cut) in [
        ("truncated right after the 1", 8),
        ("truncated inside the NAR", 8 + nar_len / 2),
        (
            "truncated one byte before the end of the NAR",
            8 + nar_len - 1,
        ),
        ("truncated right after the NAR", 8 + nar_len),
        ("truncated inside the path name", 8 + nar_len + 8 + 12),
        ("truncated before the signature flag", full.len() - 16),
        ("truncated before the final 0", full.len() - 8),
        ("truncated inside the final 0", full.len() - 3),
    ] {
        assert_refused(&mut messages, &target, case, &full[..cut], &keywords);
    }
    assert_refused(&mut messages, &target, "an empty archive", b"", &keywords);
    assert_messages(&messages);
}

#[test]
fn truncation_in_a_later_path_leaves_earlier_paths_out_too() {
    let mut messages = Vec::new();
    // The store must be unchanged even when the archive breaks after some paths were
    // complete: an import smaller than one commit batch (see `LocalStore::import_paths`)
    // is all or nothing; a larger one keeps the batches committed before the break.
    let (_scratch, source, target, trees) = setup();
    let paths: Vec<&str> = trees[2..5].iter().map(String::as_str).collect();
    let full = export(&source, &paths);
    let keywords = ["truncated", "unexpected end"];
    for (case, cut) in [
        ("truncated in the middle of the archive", full.len() / 2),
        (
            "truncated in the third quarter of the archive",
            full.len() * 3 / 4,
        ),
        ("truncated in the last path's metadata", full.len() - 40),
        ("truncated before the final 0", full.len() - 8),
    ] {
        assert_refused(&mut messages, &target, case, &full[..cut], &keywords);
    }
    assert_messages(&messages);
}

#[test]
fn corrupt_nars_are_refused() {
    let mut messages = Vec::new();
    let (_scratch, source, target, trees) = setup();
    let tree = trees[4].as_str();
    let full = export(&source, &[tree]);
    let keywords_nar = ["nar", "archive", "malformed", "corrupt", "tag", "padding"];
    // A NAR keyword made invalid.
    let mut bad_tag = full.clone();
    let at = bad_tag.windows(8).position(|w| w == b"contents").unwrap();
    bad_tag[at] ^= 0x20;
    assert_refused(
        &mut messages,
        &target,
        "a corrupt NAR tag",
        &bad_tag,
        &keywords_nar,
    );
    // The NAR magic.
    let mut bad_magic = full.clone();
    let at = bad_magic
        .windows(13)
        .position(|w| w == b"nix-archive-1")
        .unwrap();
    bad_magic[at + 12] = b'2';
    assert_refused(
        &mut messages,
        &target,
        "a corrupt NAR magic",
        &bad_magic,
        &keywords_nar,
    );
    // Non-zero padding after file contents: the file "zz-regular" holds a string whose
    // length is not a multiple of 8.
    let contents = format!("file of tree {}\n", 304);
    assert_ne!(contents.len() % 8, 0);
    let mut bad_padding = full.clone();
    let at = bad_padding
        .windows(contents.len())
        .position(|w| w == contents.as_bytes())
        .unwrap();
    bad_padding[at + contents.len()] = 0xff;
    assert_refused(
        &mut messages,
        &target,
        "non-zero NAR padding",
        &bad_padding,
        &keywords_nar,
    );
    // A byte flipped inside a derivation's contents makes it no derivation at all.
    let drv = DIAMOND[2];
    let full_drv = export(&source, &[DIAMOND[0], drv]);
    let mut bad_drv = full_drv.clone();
    let at = bad_drv.windows(7).rposition(|w| w == b"Derive(").unwrap();
    bad_drv[at] = b'X';
    let target_without_right = Root::empty();
    assert_refused(
        &mut messages,
        &target_without_right,
        "a derivation whose contents are not a derivation",
        &bad_drv,
        &["derivation", "drv", "parse", "corrupt"],
    );
    assert_messages(&messages);
}

#[test]
fn references_to_paths_not_valid_nor_earlier_are_refused() {
    let mut messages = Vec::new();
    let (_scratch, source, target, trees) = setup();
    let empty = Root::empty();
    // diamond-left refers to diamond-base: alone, into a store without base.
    let left_alone = export(&source, &[DIAMOND[1]]);
    assert_refused(
        &mut messages,
        &empty,
        "a reference to a path not valid",
        &left_alone,
        &["not valid", "missing", "reference"],
    );
    // Base *after* left (the wrong order) is refused too.
    let base = export(&source, &[DIAMOND[0]]);
    let mut wrong_order = left_alone[..left_alone.len() - 8].to_vec();
    wrong_order.extend_from_slice(&base);
    assert_refused(
        &mut messages,
        &empty,
        "a reference to a later path",
        &wrong_order,
        &["not valid", "missing", "reference"],
    );
    // A good path first, then the bad one: the good one must not stay behind either.
    let tree = export(&source, &[trees[1].as_str()]);
    let mut good_then_bad = tree[..tree.len() - 8].to_vec();
    good_then_bad.extend_from_slice(&left_alone);
    assert_refused(
        &mut messages,
        &empty,
        "a good path, then a reference to a path not valid",
        &good_then_bad,
        &["not valid", "missing", "reference"],
    );
    // Into a store that has base, the same archive is fine (the control).
    target.arca_ok(&["store", "import"], &left_alone);
    assert_messages(&messages);
}

#[test]
fn invalid_store_paths_in_the_metadata_are_refused() {
    let mut messages = Vec::new();
    let (_scratch, source, target, trees) = setup();
    let tree = trees[5].as_str();
    let nar = split_single(&export(&source, &[tree]), tree);
    // The control: the rebuilt archive with the true metadata is accepted.
    let scratch_root = Root::new();
    scratch_root.arca_ok(&["store", "import"], &archive(&nar, tree, &[], ""));
    let hash = "0123456789abcdfghijklmnpqrsvwxyz";
    let keywords = [
        "store path",
        "invalid",
        "illegal",
        "not in the nix store",
        "bad",
    ];
    for (case, path, references, deriver) in [
        (
            "a space in the name",
            format!("/nix/store/{hash}-bad name"),
            vec![],
            String::new(),
        ),
        (
            "an 'e' in the hash part",
            format!("/nix/store/{}-x", "e".repeat(32)),
            vec![],
            String::new(),
        ),
        (
            "a short hash part",
            "/nix/store/0123456789-x".to_owned(),
            vec![],
            String::new(),
        ),
        (
            "a path outside the store",
            format!("/tmp/store/{hash}-x"),
            vec![],
            String::new(),
        ),
        (
            "an empty name",
            format!("/nix/store/{hash}-"),
            vec![],
            String::new(),
        ),
        (
            "a path below a store path",
            format!("/nix/store/{hash}-x/y"),
            vec![],
            String::new(),
        ),
        (
            "an invalid reference",
            format!("/nix/store/{hash}-x"),
            vec![format!("/nix/store/{hash}-a b")],
            String::new(),
        ),
        (
            "an invalid deriver",
            format!("/nix/store/{hash}-x"),
            vec![],
            "not-a-path".to_owned(),
        ),
    ] {
        let references: Vec<&str> = references.iter().map(String::as_str).collect();
        assert_refused(
            &mut messages,
            &target,
            case,
            &archive(&nar, &path, &references, &deriver),
            &keywords,
        );
    }
    assert_messages(&messages);
}

#[test]
fn bad_markers_are_refused() {
    let mut messages = Vec::new();
    let (_scratch, source, target, trees) = setup();
    let tree = trees[2].as_str();
    let full = export(&source, &[tree]);
    let nar_len = split_single(&full, tree).len();
    let keywords = [
        "marker",
        "nixe",
        "expected",
        "malformed export",
        "signed",
        "signature",
    ];
    let mut bad_nixe = full.clone();
    bad_nixe[8 + nar_len] ^= 1;
    assert_refused(
        &mut messages,
        &target,
        "a corrupt NIXE marker",
        &bad_nixe,
        &keywords,
    );
    let mut bad_start = full.clone();
    bad_start[0] = 2;
    assert_refused(
        &mut messages,
        &target,
        "2 instead of 1 before a path",
        &bad_start,
        &keywords,
    );
    let mut signed = full.clone();
    let flag = full.len() - 16;
    signed[flag] = 1;
    assert_refused(
        &mut messages,
        &target,
        "a signature flag",
        &signed,
        &keywords,
    );
    // Garbage where the terminating 0 should be.
    let mut bad_end = full.clone();
    let end = full.len() - 8;
    bad_end[end] = 7;
    assert_refused(
        &mut messages,
        &target,
        "7 instead of the terminating 0",
        &bad_end,
        &keywords,
    );
    assert_messages(&messages);
}
