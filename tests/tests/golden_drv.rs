//! Golden `.drv` files from real Nix 2.8 (`tests/fixtures/drvs/`, `drvs.json`): the ATerm
//! parser and printer reproduce every file byte for byte, the JSON serializer reproduces
//! `nix show-derivation` byte for byte, output paths computed from a derivation with its
//! outputs blanked (as `nix-instantiate` computes them) equal Nix's, the `.drv` paths
//! follow, and hashDerivationModulo makes the two `fod-dependent` derivations share their
//! output path. Also `arca derivation show`. Needs no Nix.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::PathBuf;

use arca_store_core::derivation::{
    compute_output_paths, derivation_path, hash_derivation_modulo, parse_show_derivation_json,
    show_derivations_json, DrvHash, ModuloHashCache,
};
use arca_store_core::{Derivation, DerivationOutput, Hash, StorePath};
use arca_tests::golden::{fixture_json, parse_store_path, store, text};
use arca_tests::{arca, fixture};
use serde_json::Value;

/// One `.drv` of the fixtures.
struct Drv {
    base: String,
    path: StorePath,
    bytes: Vec<u8>,
    json_file: PathBuf,
    entry: Value,
}

fn drvs() -> Vec<Drv> {
    let manifest = fixture_json("drvs.json");
    let drvs: Vec<Drv> = manifest["drvs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(base, entry)| Drv {
            base: base.clone(),
            path: parse_store_path(text(entry, "path")),
            bytes: std::fs::read(fixture(text(entry, "file"))).unwrap(),
            json_file: fixture(text(entry, "show_derivation_file")),
            entry: entry.clone(),
        })
        .collect();
    assert!(drvs.len() >= 30, "drvs.json has lost .drv files");
    drvs
}

fn parse(drv: &Drv) -> Derivation {
    Derivation::parse_drv_file(&store(), &drv.path, &drv.bytes)
        .unwrap_or_else(|e| panic!("{}: Nix's .drv rejected: {e}", drv.base))
}

/// Loads an input `.drv` from the fixtures by its store path.
fn load(path: &StorePath) -> Result<Derivation, String> {
    let file = fixture(&format!("drvs/{}", path.as_str()));
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    Derivation::parse_drv_file(&store(), path, &bytes).map_err(|e| e.to_string())
}

#[test]
fn parse_then_print_gives_back_every_drv_byte_for_byte() {
    for drv in drvs() {
        let parsed = parse(&drv);
        let printed = parsed.to_aterm(&store());
        assert!(
            printed.as_bytes() == drv.bytes.as_slice(),
            "{}: printed ATerm differs from Nix's file\n nix:  {}\n arca: {printed}",
            drv.base,
            String::from_utf8_lossy(&drv.bytes)
        );
        assert_eq!(
            Derivation::name_from_drv_path(&drv.path),
            Some(parsed.name.as_str()),
            "{}: name",
            drv.base
        );
    }
}

#[test]
fn parsed_drvs_have_the_outputs_and_references_nix_reports() {
    for drv in drvs() {
        let parsed = parse(&drv);
        // Floating, impure and deferred outputs have no path (null in the manifest).
        let outputs: BTreeMap<String, Option<String>> = parsed
            .outputs
            .iter()
            .map(|(name, output)| (name.to_string(), output.path().map(|p| store().display(p))))
            .collect();
        let expected: BTreeMap<String, Option<String>> =
            serde_json::from_value(drv.entry["outputs"].clone()).unwrap();
        assert_eq!(outputs, expected, "{}: outputs", drv.base);
        let references: BTreeSet<String> = parsed
            .input_srcs
            .iter()
            .chain(parsed.input_drvs.keys())
            .map(|path| store().display(path))
            .collect();
        let expected: BTreeSet<String> =
            serde_json::from_value(drv.entry["references"].clone()).unwrap();
        assert_eq!(references, expected, "{}: references", drv.base);
        // And the `.drv` path follows from the text and those references.
        assert_eq!(
            derivation_path(&store(), &parsed).unwrap(),
            drv.path,
            "{}: derivation_path",
            drv.base
        );
    }
}

#[test]
fn show_derivation_json_is_byte_identical_to_nix() {
    for drv in drvs() {
        let parsed = parse(&drv);
        let ours = show_derivations_json(&store(), [(&drv.path, &parsed)]);
        let theirs = std::fs::read(&drv.json_file).unwrap();
        let ours_value: Value = serde_json::from_str(&ours)
            .unwrap_or_else(|e| panic!("{}: our JSON does not parse: {e}", drv.base));
        let theirs_value: Value = serde_json::from_slice(&theirs).unwrap();
        assert_eq!(ours_value, theirs_value, "{}: JSON value", drv.base);
        assert!(
            ours.as_bytes() == theirs.as_slice(),
            "{}: JSON bytes differ\n nix:  {:?}\n arca: {ours:?}",
            drv.base,
            String::from_utf8_lossy(&theirs)
        );
    }
}

#[test]
fn show_derivation_json_reads_back_to_the_same_derivation() {
    for drv in drvs() {
        let parsed = parse(&drv);
        let json = std::fs::read_to_string(&drv.json_file).unwrap();
        let read = parse_show_derivation_json(&store(), &json)
            .unwrap_or_else(|e| panic!("{}: Nix's JSON rejected: {e}", drv.base));
        assert_eq!(read.len(), 1, "{}", drv.base);
        assert_eq!(read[0].0, drv.path, "{}: path", drv.base);
        assert_eq!(read[0].1, parsed, "{}: JSON and ATerm disagree", drv.base);
    }
}

#[test]
fn case_manifests_agree_with_the_drv_files() {
    let manifest = fixture_json("drvs.json");
    let cases = manifest["cases"].as_object().unwrap();
    assert!(cases.len() >= 25, "drvs.json has lost cases");
    for (case, entry) in cases {
        let path = parse_store_path(text(entry, "drv_path"));
        let drv = load(&path).unwrap_or_else(|e| panic!("case {case}: {e}"));
        // `nix-instantiate` printed the path (with `!output` when the first output is
        // not `out`, which the sorted `.drv` cannot tell).
        let shown = text(entry, "instantiate_output");
        let printed = shown.split('!').next().unwrap();
        assert_eq!(printed, store().display(&path), "case {case}");
        let outputs: BTreeMap<String, Option<String>> = drv
            .outputs
            .iter()
            .map(|(name, output)| (name.to_string(), output.path().map(|p| store().display(p))))
            .collect();
        let expected: BTreeMap<String, Option<String>> =
            serde_json::from_value(entry["outputs"].clone()).unwrap();
        assert_eq!(outputs, expected, "case {case}: outputs");
        let srcs: Vec<String> = drv.input_srcs.iter().map(|p| store().display(p)).collect();
        let expected: Vec<String> = serde_json::from_value(entry["input_srcs"].clone()).unwrap();
        assert_eq!(srcs, expected, "case {case}: inputSrcs");
        let input_drvs: BTreeMap<String, Vec<String>> = drv
            .input_drvs
            .iter()
            .map(|(p, outs)| {
                (
                    store().display(p),
                    outs.iter().map(|o| o.to_string()).collect(),
                )
            })
            .collect();
        let expected: BTreeMap<String, Vec<String>> =
            serde_json::from_value(entry["input_drvs"].clone()).unwrap();
        assert_eq!(input_drvs, expected, "case {case}: inputDrvs");
        let ours = show_derivations_json(&store(), [(&path, &drv)]);
        let ours: Value = serde_json::from_str(&ours).unwrap();
        assert_eq!(
            ours, entry["show_derivation"],
            "case {case}: show_derivation"
        );
    }
}

/// The derivation as `nix-instantiate` has it before naming its outputs: input-addressed
/// outputs deferred and every env entry named after an output empty. Fixed outputs keep
/// their hash but get a wrong path, which must be recomputed.
fn blank_outputs(drv: &Derivation) -> Derivation {
    let mut blank = drv.clone();
    let wrong = parse_store_path("/nix/store/00000000000000000000000000000000-wrong");
    for (name, output) in blank.outputs.iter_mut() {
        match output {
            DerivationOutput::Fixed { path, .. } => *path = wrong.clone(),
            DerivationOutput::InputAddressed { .. } => *output = DerivationOutput::Deferred,
            // Floating and impure outputs have no path to blank.
            _ => {}
        }
        blank.env.insert(name.to_string(), String::new());
    }
    blank
}

#[test]
fn output_paths_computed_from_blanked_drvs_equal_nix_instantiate() {
    let mut cache = ModuloHashCache::new();
    let mut fixed = 0;
    for drv in drvs() {
        let original = parse(&drv);
        fixed += usize::from(original.is_fixed_output());
        // Through the closure-walking cache.
        let mut computed = blank_outputs(&original);
        cache
            .compute_output_paths(&store(), &mut computed, load)
            .unwrap_or_else(|e| panic!("{}: {e}", drv.base));
        assert_eq!(
            computed, original,
            "{}: computed derivation (cached)",
            drv.base
        );
        assert!(
            computed.to_aterm(&store()).as_bytes() == drv.bytes.as_slice(),
            "{}: computed derivation prints differently",
            drv.base
        );
        // Through the plain function, resolving inputs by hand.
        let mut computed = blank_outputs(&original);
        compute_output_paths(&mut computed, &store(), |input| {
            ModuloHashCache::new().hash_of_path(&store(), input, load)
        })
        .unwrap_or_else(|e| panic!("{}: {e}", drv.base));
        assert_eq!(computed, original, "{}: computed derivation", drv.base);
    }
    assert!(fixed >= 8, "fixed-output derivations are covered ({fixed})");
}

#[test]
fn fod_dependent_pair_shares_output_paths_through_hash_derivation_modulo() {
    let manifest = fixture_json("drvs.json");
    let facts = manifest["facts"].as_array().unwrap();
    let fact = facts
        .iter()
        .find(|fact| fact["cases"][0] == "fod-dependent-a")
        .expect("the fod-dependent fact is recorded");
    // The two fixed-output inputs: different .drv files, one hash modulo.
    let fods: Vec<StorePath> = fact["drvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| parse_store_path(p.as_str().unwrap()))
        .collect();
    assert_eq!(fods.len(), 2);
    assert_ne!(fods[0], fods[1]);
    let fod_drvs: Vec<Derivation> = fods.iter().map(|p| load(p).unwrap()).collect();
    assert_ne!(
        fod_drvs[0], fod_drvs[1],
        "the fixed-output .drv files differ"
    );
    let no_inputs =
        |_: &StorePath| -> Result<DrvHash, String> { panic!("a FOD hash needs no inputs") };
    let fod_hashes: Vec<Hash> = fod_drvs
        .iter()
        .map(|d| hash_derivation_modulo(d, &store(), no_inputs).unwrap().hash)
        .collect();
    assert_eq!(fod_hashes[0], fod_hashes[1], "FOD hashes modulo");

    // The two dependent derivations: different .drv paths, equal hash modulo and outputs.
    let manifest_cases = manifest["cases"].as_object().unwrap();
    let mut dependents = Vec::new();
    for case in fact["cases"].as_array().unwrap() {
        let entry = &manifest_cases[case.as_str().unwrap()];
        let path = parse_store_path(text(entry, "drv_path"));
        dependents.push((path.clone(), load(&path).unwrap()));
    }
    assert_ne!(dependents[0].0, dependents[1].0);
    let mut cache = ModuloHashCache::new();
    let hashes: Vec<Hash> = dependents
        .iter()
        .map(|(path, _)| cache.hash_of_path(&store(), path, load).unwrap().hash)
        .collect();
    assert_eq!(hashes[0], hashes[1], "hash modulo of the dependents");
    let expected: BTreeMap<String, String> =
        serde_json::from_value(fact["outputs"].clone()).unwrap();
    for (path, drv) in &dependents {
        let mut computed = blank_outputs(drv);
        cache
            .compute_output_paths(&store(), &mut computed, load)
            .unwrap();
        let outputs: BTreeMap<String, String> = computed
            .outputs
            .iter()
            .map(|(name, o)| (name.to_string(), store().display(o.path().unwrap())))
            .collect();
        assert_eq!(outputs, expected, "{path}: outputs");
    }
}

// ---- `arca derivation show` ------------------------------------------------------------

/// `arca derivation show` prints Nix's JSON for each `.drv`, given as a file path. Then all
/// at once, which must give one object with every derivation (sorted by path, as Nix).
#[test]
fn arca_derivation_show_prints_nix_show_derivation_json() {
    let all = drvs();
    for drv in &all {
        let file = fixture(text(&drv.entry, "file"));
        let output = arca(&["derivation".as_ref(), "show".as_ref(), file.as_os_str()]);
        assert!(
            output.status.success(),
            "arca derivation show {}: {}",
            drv.base,
            String::from_utf8_lossy(&output.stderr)
        );
        let theirs = std::fs::read(&drv.json_file).unwrap();
        assert!(
            output.stdout == theirs,
            "arca derivation show {}: differs from nix show-derivation\n nix:  {:?}\n arca: {:?}",
            drv.base,
            String::from_utf8_lossy(&theirs),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let files: Vec<PathBuf> = all
        .iter()
        .map(|d| fixture(text(&d.entry, "file")))
        .collect();
    let mut args: Vec<&OsStr> = vec!["derivation".as_ref(), "show".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let output = arca(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ours: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut expected = serde_json::Map::new();
    for drv in &all {
        let theirs: Value =
            serde_json::from_slice(&std::fs::read(&drv.json_file).unwrap()).unwrap();
        expected.extend(theirs.as_object().unwrap().clone());
    }
    assert_eq!(
        ours,
        Value::Object(expected),
        "arca derivation show of every .drv"
    );
}

/// The store form: `arca --store ROOT derivation show /nix/store/<drv>` reads the `.drv`
/// through the store, which must have it as a valid path, as Nix's `show-derivation`
/// requires (a file merely lying in `ROOT/nix/store` is refused, naming it); that file
/// given by its own name is read as it is, keyed by the path its contents give.
#[test]
fn arca_derivation_show_reads_drvs_from_a_store_root() {
    let all = drvs();
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("nix/store");
    std::fs::create_dir_all(&store_dir).unwrap();
    for drv in &all {
        std::fs::write(store_dir.join(&drv.base), &drv.bytes).unwrap();
    }
    for drv in &all {
        let logical = store().display(&drv.path);
        let output = arca(&[
            "--store".as_ref(),
            root.path().as_os_str(),
            "derivation".as_ref(),
            "show".as_ref(),
            logical.as_ref(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{logical}: {stderr}");
        assert!(
            stderr.contains(&format!("path '{logical}' is not valid")),
            "{logical}: {stderr}"
        );
        let physical = store_dir.join(&drv.base);
        let output = arca(&["derivation".as_ref(), "show".as_ref(), physical.as_os_str()]);
        assert!(
            output.status.success(),
            "arca derivation show {}: {}",
            physical.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let theirs = std::fs::read(&drv.json_file).unwrap();
        assert!(
            output.stdout == theirs,
            "arca derivation show {}: differs from nix show-derivation",
            physical.display()
        );
    }
    // A .drv that is not in that store: a failed operation naming it.
    let missing = "/nix/store/00000000000000000000000000000000-missing.drv";
    let output = arca(&[
        "--store".as_ref(),
        root.path().as_os_str(),
        "derivation".as_ref(),
        "show".as_ref(),
        missing.as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "missing drv: {stderr:?}");
    assert!(output.stdout.is_empty(), "missing drv: printed on stdout");
    assert!(
        stderr.starts_with("error: ") && stderr.lines().count() == 1 && stderr.contains(missing),
        "missing drv: one `error: ` line naming it expected, got {stderr:?}"
    );
}

/// A `.drv` whose bytes are not a derivation is a failed operation naming the file.
#[test]
fn arca_derivation_show_of_a_corrupt_drv_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let drv = drvs().into_iter().next().unwrap();
    let corrupt = dir.path().join(&drv.base);
    std::fs::write(&corrupt, &drv.bytes[..drv.bytes.len() / 2]).unwrap();
    let output = arca(&["derivation".as_ref(), "show".as_ref(), corrupt.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "corrupt drv: {stderr:?}");
    assert!(output.stdout.is_empty(), "corrupt drv: printed on stdout");
    assert!(
        stderr.starts_with("error: ")
            && stderr.lines().count() == 1
            && stderr.contains(corrupt.to_str().unwrap()),
        "corrupt drv: one `error: ` line naming it expected, got {stderr:?}"
    );
}
