//! Interop of the local store with real Nix 2.8, both ways:
//!
//! - a root filled by Arca (random trees with `store add-path`, flat files with
//!   `store add-file`, an import of a Nix export of fixture derivations, derivations added
//!   from `nix show-derivation` JSON with their output paths blanked) verifies clean under
//!   `nix-store --verify --check-contents`, and Nix's `-q --references/--referrers/
//!   --requisites/--deriver/--outputs` and `nix path-info --json` print exactly what Arca
//!   prints, byte for byte;
//! - a root filled by Nix (`--add`, `--add-fixed`, `--import`, `nix-instantiate`) verifies
//!   clean in Arca and Arca answers every query as Nix does;
//! - exports go both ways and are byte-identical for the same path set;
//! - `store add-path` gives `nix-store --add`'s paths, and re-adding writes nothing.
//!
//! Needs real Nix; skipped loudly without it (an error in CI).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use arca_tests::golden::fixture_json;
use arca_tests::store::{
    assert_arca_verify_clean, derivation_json, lines, run, sql, staging_leftovers, Root,
};
use arca_tests::{make_trees, nix, nix_available, workspace_root, NIX_CONFIG};
use serde_json::Value;

/// Fixture derivations, by `.nix` file, instantiated by Nix for the tests, in an order
/// where each one's input derivations come first. (`input-sources.nix` and
/// `builder-in-store.nix` are left out: their `.drv` depends on `src-dir/run.sh` being
/// executable, which a checkout does not preserve.)
const FIXTURES: &[&str] = &[
    "diamond.nix",
    "chain.nix",
    "multiple-outputs.nix",
    "non-default-output.nix",
    "drvpath-context.nix",
    "coercions.nix",
    "fod-dependent-a.nix",
    "env-like-outputs.nix",
];

const QUERIES: &[&str] = &[
    "references",
    "referrers",
    "requisites",
    "deriver",
    "outputs",
];

/// The lines `nix-store --verify --check-contents` prints on a healthy store.
const NIX_VERIFY_PROGRESS: &[&str] = &[
    "reading the Nix store...",
    "checking path existence...",
    "checking link hashes...",
    "checking store hashes...",
];

/// What the tests ask of a [`Root`] beyond Arca: real Nix on it, and the checks that
/// both verify it clean.
trait NixRoot {
    /// `local?root=ROOT`, the root as a Nix store URI.
    fn uri(&self) -> String;
    /// Runs `nix-store --store local?root=ROOT ARGS` (panics on failure).
    fn nix_store(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8>;
    fn instantiate(&self, file: &str) -> String;
    /// `nix-store --verify --check-contents` must succeed and report nothing.
    fn assert_nix_verifies_clean(&self);
    /// `arca store verify --check-contents` (also with `--json`) must succeed and report
    /// nothing.
    fn assert_arca_verifies_clean(&self);
    /// Nothing left in the staging directory.
    fn assert_no_staging_leftovers(&self);
}

impl NixRoot for Root {
    fn uri(&self) -> String {
        format!("local?root={}", self.path.display())
    }

    fn nix_store(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        let uri = self.uri();
        let mut all: Vec<&OsStr> = vec!["--store".as_ref(), uri.as_ref()];
        all.extend(args.iter().map(|a| OsStr::new(*a)));
        nix("nix-store", &all, stdin)
    }

    /// `nix-instantiate` of a fixture into this root: the `.drv` path.
    fn instantiate(&self, file: &str) -> String {
        let uri = self.uri();
        let nix_file = workspace_root().join("tests/oracle/drvs").join(file);
        let out = nix(
            "nix-instantiate",
            &["--store".as_ref(), uri.as_ref(), nix_file.as_os_str()],
            None,
        );
        let text = String::from_utf8(out).unwrap();
        let line = text.trim();
        line.split('!').next().unwrap().to_owned()
    }

    fn assert_nix_verifies_clean(&self) {
        let uri = self.uri();
        let output = run(
            Command::new("nix-store")
                .env("NIX_CONFIG", NIX_CONFIG)
                .args(["--store", &uri, "--verify", "--check-contents"]),
            b"",
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "nix-store --verify --check-contents failed on the Arca store: {stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "nix-store --verify printed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let unexpected: Vec<&str> = stderr
            .lines()
            .filter(|line| !NIX_VERIFY_PROGRESS.contains(line))
            .collect();
        assert!(
            unexpected.is_empty(),
            "nix-store --verify --check-contents reported problems:\n{}",
            unexpected.join("\n")
        );
    }

    fn assert_arca_verifies_clean(&self) {
        assert_arca_verify_clean(&self.path, "arca store verify");
        let json = self.arca_ok(&["store", "verify", "--check-contents", "--json"], b"");
        let report: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(report["problems"], Value::Array(vec![]), "{report}");
        assert_eq!(
            report["checked"].as_u64().unwrap() as usize,
            self.valid_paths().len(),
            "verify checked every valid path"
        );
    }

    fn assert_no_staging_leftovers(&self) {
        let left = staging_leftovers(&self.path);
        assert!(
            left.is_empty(),
            "leftovers in {}: {left:?}",
            self.store().join(".arca-staging").display()
        );
    }
}

fn make_flat_files(dir: &Path, count: usize) -> Vec<PathBuf> {
    (0..count)
        .map(|index| {
            let path = dir.join(format!("flat-{index}.txt"));
            let mut contents = format!("flat file {index}\n").repeat(index * 37 + 1);
            contents.push_str("end\n");
            fs::write(&path, contents).unwrap();
            path
        })
        .collect()
}

fn path_strs(paths: &[PathBuf]) -> Vec<&str> {
    paths.iter().map(|p| p.to_str().unwrap()).collect()
}

/// The `.drv.json` fixture of `drv` (as `nix show-derivation` prints it) with the output
/// paths and the env entries named after outputs blanked.
fn blanked_derivation_json(drv: &str, keyed: bool) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&derivation_json(drv)).unwrap();
    let object = value[drv].as_object_mut().expect("keyed by its drv path");
    let output_names: Vec<String> = object["outputs"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut blanked_any = false;
    for name in &output_names {
        let output = &mut object.get_mut("outputs").unwrap()[name];
        if output.get("hash").is_none() {
            output["path"] = Value::String(String::new());
            blanked_any = true;
        }
        if let Some(entry) = object.get_mut("env").unwrap().get_mut(name) {
            *entry = Value::String(String::new());
        }
    }
    assert!(blanked_any, "{drv} has input-addressed outputs to blank");
    let result = if keyed { value } else { value[drv].take() };
    serde_json::to_vec_pretty(&result).unwrap()
}

/// Instantiates every fixture in a fresh Nix root; returns it and the top `.drv`s,
/// checked against the recorded fixtures.
fn nix_source_root() -> (Root, Vec<String>) {
    let source = Root::new();
    let manifest = fixture_json("drvs.json");
    let mut tops = Vec::new();
    for file in FIXTURES {
        let drv = source.instantiate(file);
        let case = file.strip_suffix(".nix").unwrap();
        assert_eq!(
            manifest["cases"][case]["drv_path"].as_str(),
            Some(drv.as_str()),
            "Nix instantiates {file} as the recorded fixture"
        );
        tops.push(drv);
    }
    (source, tops)
}

/// What Arca put into its root, to be checked.
struct ArcaContents {
    trees: Vec<String>,
    flat_files: Vec<String>,
    imported: Vec<String>,
    added_drvs: Vec<String>,
}

/// Fills `root` with Arca only: trees, flat files, an import of the closures of the
/// fixture derivations minus the top ones, and the top ones through `derivation add`.
fn populate_with_arca(root: &Root, scratch: &Path) -> ArcaContents {
    let trees = make_trees(scratch, 0..16);
    let tree_paths = lines(&root.arca_ok(
        &[&["store", "add-path"][..], &path_strs(&trees)].concat(),
        b"",
    ));
    assert_eq!(tree_paths.len(), trees.len(), "one path per tree");

    let mut flat_paths = Vec::new();
    for file in make_flat_files(scratch, 4) {
        let printed = lines(&root.arca_ok(&["store", "add-file", file.to_str().unwrap()], b""));
        assert_eq!(printed.len(), 1);
        flat_paths.push(printed[0].clone());
    }

    let (source, tops) = nix_source_root();
    let mut closure = BTreeSet::new();
    for top in &tops {
        closure.extend(lines(&source.nix_store(&["-qR", top], None)));
    }
    for top in &tops {
        closure.remove(top);
    }
    let to_export: Vec<&str> = closure.iter().map(String::as_str).collect();
    let export = source.nix_store(&[&["--export"][..], &to_export].concat(), None);
    let imported = lines(&root.arca_ok(&["store", "import"], &export));
    assert_eq!(
        imported.iter().cloned().collect::<BTreeSet<_>>(),
        closure,
        "arca store import prints every path of the archive"
    );

    let mut added_drvs = Vec::new();
    for (index, top) in tops.iter().enumerate() {
        // Alternate between the keyed shape `nix show-derivation` prints and a bare object.
        let json = blanked_derivation_json(top, index % 2 == 0);
        let output = root.arca(&["derivation", "add"], &json);
        assert!(
            output.status.success(),
            "arca derivation add of {top} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            top,
            "arca derivation add computes Nix's .drv path from blanked JSON"
        );
        added_drvs.push(top.clone());
    }
    ArcaContents {
        trees: tree_paths,
        flat_files: flat_paths,
        imported: imported.into_iter().collect(),
        added_drvs,
    }
}

/// Nix and Arca answer every query on every valid path of `root` with the same bytes.
fn assert_queries_agree(root: &Root) {
    let paths = root.valid_paths();
    assert!(!paths.is_empty());
    let mut differences = Vec::new();
    for path in &paths {
        for query in QUERIES {
            let flag = format!("--{query}");
            let theirs = root.nix_store(&["-q", &flag, path], None);
            let ours = root.arca(&["store", "query", &flag, path], b"");
            if !ours.status.success() || ours.stdout != theirs {
                differences.push(format!(
                    "{flag} {path}:\n  nix:  {:?}\n  arca: {:?} {}",
                    String::from_utf8_lossy(&theirs),
                    String::from_utf8_lossy(&ours.stdout),
                    String::from_utf8_lossy(&ours.stderr).trim()
                ));
            }
        }
    }
    // Several paths at once: the union, dependencies first.
    let drvs: Vec<&str> = paths
        .iter()
        .map(String::as_str)
        .filter(|p| p.ends_with(".drv"))
        .collect();
    for flag in ["--requisites", "--referrers", "--references"] {
        let theirs = root.nix_store(&[&["-q", flag][..], &drvs].concat(), None);
        let ours = root.arca(&[&["store", "query", flag][..], &drvs].concat(), b"");
        if ours.stdout != theirs {
            differences.push(format!(
                "{flag} of all {} derivations at once:\n  nix:  {:?}\n  arca: {:?} {}",
                drvs.len(),
                String::from_utf8_lossy(&theirs),
                String::from_utf8_lossy(&ours.stdout),
                String::from_utf8_lossy(&ours.stderr).trim()
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} queries differ from Nix's answers:\n{}",
        differences.len(),
        paths.len() * QUERIES.len() + 3,
        differences.join("\n")
    );
}

/// `nix path-info --json` of `paths` in `root` (with `--derivation` for `.drv`s, which
/// Nix 2.8 would otherwise take for their outputs; without it for other paths, where
/// Nix would look for a deriver).
fn nix_path_info(root: &Root, paths: &[&str], derivations: bool) -> Vec<u8> {
    let uri = root.uri();
    let mut args: Vec<&OsStr> = vec![
        "path-info".as_ref(),
        "--store".as_ref(),
        uri.as_ref(),
        "--json".as_ref(),
    ];
    if derivations {
        args.push("--derivation".as_ref());
    }
    args.extend(paths.iter().map(OsStr::new));
    nix("nix", &args, None)
}

/// The valid paths of `root` split into (`.drv`s, others).
fn split_derivations(paths: &[String]) -> (Vec<&str>, Vec<&str>) {
    paths
        .iter()
        .map(String::as_str)
        .partition(|p| p.ends_with(".drv"))
}

/// `nix path-info --json` and `arca path-info --json` print the same bytes.
fn assert_path_info_agrees(root: &Root) {
    let paths = root.valid_paths();
    let (drvs, others) = split_derivations(&paths);
    for (group, derivations) in [(drvs, true), (others, false)] {
        if group.is_empty() {
            continue;
        }
        let theirs = String::from_utf8(nix_path_info(root, &group, derivations)).unwrap();
        let ours =
            String::from_utf8(root.arca_ok(&[&["path-info", "--json"][..], &group].concat(), b""))
                .unwrap();
        if theirs.trim_end() != ours.trim_end() {
            // Name the first path that differs, for a readable failure.
            let theirs_json: Vec<Value> = serde_json::from_str(&theirs).unwrap();
            let ours_json: Vec<Value> = serde_json::from_str(&ours).unwrap();
            for (nix_entry, arca_entry) in theirs_json.iter().zip(&ours_json) {
                assert_eq!(
                    arca_entry.to_string(),
                    nix_entry.to_string(),
                    "arca path-info --json (left) differs from nix path-info --json (right)"
                );
            }
            assert_eq!(ours_json.len(), theirs_json.len(), "number of entries");
            panic!("path-info --json differs in formatting only:\nnix:  {theirs}\narca: {ours}");
        }
    }
}

#[test]
fn arca_filled_store_verifies_in_nix_and_queries_agree() {
    if !nix_available("arca_filled_store_verifies_in_nix_and_queries_agree") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let root = Root::new();
    let contents = populate_with_arca(&root, scratch.path());

    let valid: BTreeSet<String> = root.valid_paths().into_iter().collect();
    for path in contents
        .trees
        .iter()
        .chain(&contents.flat_files)
        .chain(&contents.imported)
        .chain(&contents.added_drvs)
    {
        assert!(valid.contains(path), "{path} is registered");
    }
    // The added derivations have their DerivationOutputs rows, as Nix's would.
    for drv in &contents.added_drvs {
        let rows = sql(
            &root.db(),
            &format!(
                "select d.id || ' ' || d.path from DerivationOutputs d join ValidPaths v \
                 on d.drv = v.id where v.path = '{drv}' order by d.id"
            ),
        );
        let drv_json: Value = serde_json::from_slice(&derivation_json(drv)).unwrap();
        let expected: Vec<String> = drv_json[drv.as_str()]["outputs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, output)| format!("{name} {}", output["path"].as_str().unwrap()))
            .collect();
        assert_eq!(rows, expected, "DerivationOutputs rows of {drv}");
    }

    root.assert_no_staging_leftovers();
    root.assert_nix_verifies_clean();
    assert_path_info_agrees(&root);
    assert_queries_agree(&root);
}

#[test]
fn nix_filled_store_verifies_in_arca_and_queries_agree() {
    if !nix_available("nix_filled_store_verifies_in_arca_and_queries_agree") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let root = Root::new();
    let trees = make_trees(scratch.path(), 500..512);
    let added = lines(&root.nix_store(&[&["--add"][..], &path_strs(&trees)].concat(), None));
    assert_eq!(added.len(), trees.len());
    for file in make_flat_files(scratch.path(), 3) {
        root.nix_store(&["--add-fixed", "sha256", file.to_str().unwrap()], None);
    }
    // Derivations instantiated right here, and others imported from another Nix root.
    for file in ["diamond.nix", "non-default-output.nix", "coercions.nix"] {
        root.instantiate(file);
    }
    let other = Root::new();
    let mut closure = Vec::new();
    for file in ["chain.nix", "env-like-outputs.nix", "fod-dependent-b.nix"] {
        let drv = other.instantiate(file);
        closure.extend(lines(&other.nix_store(&["-qR", &drv], None)));
    }
    let closure_args: Vec<&str> = closure.iter().map(String::as_str).collect();
    let export = other.nix_store(&[&["--export"][..], &closure_args].concat(), None);
    root.nix_store(&["--import"], Some(&export));

    let valid = root.valid_paths();
    assert!(valid.len() > 20, "Nix filled the root: {valid:?}");
    root.assert_arca_verifies_clean();
    root.assert_no_staging_leftovers();
    assert_path_info_agrees(&root);
    assert_queries_agree(&root);
    // Arca opening the root must not bother Nix.
    root.assert_nix_verifies_clean();
}

#[test]
fn exports_are_identical_and_import_both_ways() {
    if !nix_available("exports_are_identical_and_import_both_ways") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let arca_root = Root::new();
    populate_with_arca(&arca_root, scratch.path());
    let all = arca_root.valid_paths();
    let all_args: Vec<&str> = all.iter().map(String::as_str).collect();

    // Arca's export of everything imports into an empty Nix root.
    let arca_export = arca_root.arca_ok(&[&["store", "export"][..], &all_args].concat(), b"");
    let nix_root = Root::new();
    let imported = lines(&nix_root.nix_store(&["--import"], Some(&arca_export)));
    assert_eq!(
        imported.iter().cloned().collect::<BTreeSet<_>>(),
        all.iter().cloned().collect::<BTreeSet<_>>(),
        "nix-store --import takes every path of Arca's export"
    );
    nix_root.assert_nix_verifies_clean();

    // Nix's export of the same path set is the same bytes (same order, same metadata).
    let nix_export = nix_root.nix_store(&[&["--export"][..], &all_args].concat(), None);
    assert!(
        nix_export == arca_export,
        "arca store export ({} bytes) differs from nix-store --export ({} bytes) of the \
         same {} paths; first difference at byte {:?}",
        arca_export.len(),
        nix_export.len(),
        all.len(),
        arca_export
            .iter()
            .zip(&nix_export)
            .position(|(a, b)| a != b)
    );
    // Subsets too (a single path, and one derivation's closure): same bytes.
    let some_drv = all.iter().find(|p| p.ends_with(".drv")).unwrap();
    let closure = lines(&nix_root.nix_store(&["-qR", some_drv], None));
    for subset in [vec![all[0].clone()], closure] {
        let args: Vec<&str> = subset.iter().map(String::as_str).collect();
        let ours = arca_root.arca_ok(&[&["store", "export"][..], &args].concat(), b"");
        let theirs = nix_root.nix_store(&[&["--export"][..], &args].concat(), None);
        assert!(ours == theirs, "exports of {subset:?} differ");
    }

    // Nix's export imports into an empty Arca root, which then agrees with Nix.
    let arca_again = Root::new();
    let printed = lines(&arca_again.arca_ok(&["store", "import"], &nix_export));
    assert_eq!(printed.len(), all.len());
    arca_again.assert_arca_verifies_clean();
    arca_again.assert_no_staging_leftovers();
    arca_again.assert_nix_verifies_clean();
    // Same metadata as Nix has for its own import of the same archive, but for the
    // registration time.
    let strip_time = |json: Vec<u8>| -> Vec<Value> {
        let mut entries: Vec<Value> = serde_json::from_slice(&json).unwrap();
        for entry in &mut entries {
            entry.as_object_mut().unwrap().remove("registrationTime");
        }
        entries
    };
    let (drvs, others) = split_derivations(&all);
    let mut theirs = strip_time(nix_path_info(&nix_root, &drvs, true));
    theirs.extend(strip_time(nix_path_info(&nix_root, &others, false)));
    let mut ours =
        strip_time(arca_again.arca_ok(&[&["path-info", "--json"][..], &drvs].concat(), b""));
    ours.extend(strip_time(
        arca_again.arca_ok(&[&["path-info", "--json"][..], &others].concat(), b""),
    ));
    assert_eq!(
        ours, theirs,
        "metadata after import: Arca (left), Nix (right)"
    );
    // Re-importing what is already there adds nothing and succeeds.
    let again = lines(&arca_again.arca_ok(&["store", "import"], &arca_export));
    assert_eq!(again.len(), all.len());
    assert_eq!(arca_again.valid_paths(), all);
    arca_again.assert_no_staging_leftovers();
}

/// Inode, mtime and ctime of every file under `path` (ctime changes on any chmod,
/// chown, utime or write, so an unchanged ctime means nothing touched the file).
fn snapshot(path: &Path) -> BTreeMap<PathBuf, (u64, i64, i64, i64, i64)> {
    let mut result = BTreeMap::new();
    let mut pending = vec![path.to_owned()];
    while let Some(current) = pending.pop() {
        let metadata = fs::symlink_metadata(&current).unwrap();
        result.insert(
            current.clone(),
            (
                metadata.ino(),
                metadata.mtime(),
                metadata.mtime_nsec(),
                metadata.ctime(),
                metadata.ctime_nsec(),
            ),
        );
        if metadata.is_dir() {
            for entry in fs::read_dir(&current).unwrap() {
                pending.push(entry.unwrap().path());
            }
        }
    }
    result
}

fn store_listing(root: &Root) -> BTreeSet<String> {
    fs::read_dir(root.store())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn add_path_gives_nix_paths_and_readding_writes_nothing() {
    if !nix_available("add_path_gives_nix_paths_and_readding_writes_nothing") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let trees = make_trees(scratch.path(), 2000..2040);
    let files = make_flat_files(scratch.path(), 5);
    let arca_root = Root::new();
    let nix_root = Root::new();

    let ours = lines(&arca_root.arca_ok(
        &[&["store", "add-path"][..], &path_strs(&trees)].concat(),
        b"",
    ));
    let theirs = lines(&nix_root.nix_store(&[&["--add"][..], &path_strs(&trees)].concat(), None));
    assert_eq!(
        ours, theirs,
        "store add-path and nix-store --add give the same paths"
    );
    for file in &files {
        let ours = arca_root.arca_ok(&["store", "add-file", file.to_str().unwrap()], b"");
        let theirs = nix_root.nix_store(&["--add-fixed", "sha256", file.to_str().unwrap()], None);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "store add-file and nix-store --add-fixed sha256 agree on {}",
            file.display()
        );
    }
    // Same NAR hashes, sizes, references and content addresses as Nix registered.
    let columns = "select path, hash, narSize, coalesce(ca, '') from ValidPaths order by path";
    assert_eq!(sql(&arca_root.db(), columns), sql(&nix_root.db(), columns));

    // Re-adding: same paths, no file touched, no registration changed, nothing left over.
    let before_files: Vec<_> = ours
        .iter()
        .map(|p| snapshot(&arca_root.path.join(p.trim_start_matches('/'))))
        .collect();
    let registrations = "select path, registrationTime, id from ValidPaths order by path";
    let before_rows = sql(&arca_root.db(), registrations);
    let before_listing = store_listing(&arca_root);
    let again = lines(&arca_root.arca_ok(
        &[&["store", "add-path"][..], &path_strs(&trees)].concat(),
        b"",
    ));
    assert_eq!(again, ours);
    for file in &files {
        arca_root.arca_ok(&["store", "add-file", file.to_str().unwrap()], b"");
    }
    let after_files: Vec<_> = ours
        .iter()
        .map(|p| snapshot(&arca_root.path.join(p.trim_start_matches('/'))))
        .collect();
    assert!(
        before_files == after_files,
        "re-adding valid paths touched their files (inode, mtime or ctime changed)"
    );
    assert_eq!(sql(&arca_root.db(), registrations), before_rows);
    assert_eq!(store_listing(&arca_root), before_listing);
    arca_root.assert_no_staging_leftovers();
    arca_root.assert_arca_verifies_clean();
}
