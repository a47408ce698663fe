//! Tests against real Nix 2.8 output (`tests/fixtures/drvs/` and `testdata/` beside this
//! file, both `<base name>.drv` + `<base name>.drv.json` from `nix show-derivation`), error
//! cases, and round-trip properties.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;
use crate::hash::{Hash, HashAlgo};
use crate::store_path::{ContentAddressMethod, StoreDir, StorePath};

const FIXTURE_DIRS: [&str; 2] = [
    concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/drvs"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/src/derivation/testdata"),
];

struct Fixture {
    path: StorePath,
    text: Vec<u8>,
    json: String,
}

/// Every `.drv` of both fixture directories, by path.
fn fixtures() -> &'static BTreeMap<StorePath, Fixture> {
    static FIXTURES: OnceLock<BTreeMap<StorePath, Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(read_fixtures)
}

fn read_fixtures() -> BTreeMap<StorePath, Fixture> {
    let mut fixtures = BTreeMap::new();
    for dir in FIXTURE_DIRS {
        for entry in std::fs::read_dir(dir).unwrap() {
            let file = entry.unwrap().path();
            let base = file.file_name().unwrap().to_str().unwrap().to_owned();
            if !base.ends_with(".drv") {
                continue;
            }
            let fixture = Fixture {
                path: StorePath::from_base_name(&base).unwrap(),
                text: std::fs::read(&file).unwrap(),
                json: std::fs::read_to_string(json_file(&file)).unwrap(),
            };
            fixtures.insert(fixture.path.clone(), fixture);
        }
    }
    assert!(
        fixtures.len() >= 40,
        "expected the fixture directories to hold .drv files"
    );
    fixtures
}

fn json_file(drv_file: &Path) -> PathBuf {
    let mut name = drv_file.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

fn store() -> StoreDir {
    StoreDir::default()
}

fn parse_fixture(fixture: &Fixture) -> Derivation {
    Derivation::parse_drv_file(&store(), &fixture.path, &fixture.text)
        .unwrap_or_else(|e| panic!("{}: {e}", fixture.path))
}

/// A loader over the fixtures, counting loads.
fn loader<'a>(
    fixtures: &'a BTreeMap<StorePath, Fixture>,
    loads: &'a mut HashMap<StorePath, usize>,
) -> impl FnMut(&StorePath) -> Result<Derivation, String> + 'a {
    move |path| {
        *loads.entry(path.clone()).or_default() += 1;
        let fixture = fixtures
            .get(path)
            .ok_or_else(|| format!("no fixture {path}"))?;
        Ok(parse_fixture(fixture))
    }
}

#[test]
fn prints_every_fixture_byte_for_byte() {
    for fixture in fixtures().values() {
        let drv = parse_fixture(fixture);
        assert_eq!(
            drv.to_aterm(&store()).as_bytes(),
            &fixture.text[..],
            "{}",
            fixture.path
        );
    }
}

#[test]
fn computes_every_fixture_drv_path() {
    for fixture in fixtures().values() {
        let drv = parse_fixture(fixture);
        assert_eq!(derivation_path(&store(), &drv).unwrap(), fixture.path);
    }
}

#[test]
fn computes_every_fixture_output_paths_from_blanked_outputs() {
    let fixtures = fixtures();
    let mut loads = HashMap::new();
    let mut cache = ModuloHashCache::new();
    for fixture in fixtures.values() {
        let expected = parse_fixture(fixture);
        let mut drv = expected.clone();
        for (name, output) in &mut drv.outputs {
            if matches!(output, DerivationOutput::InputAddressed { .. }) {
                *output = DerivationOutput::Deferred;
            }
            drv.env.remove(name.as_str());
        }
        cache
            .compute_output_paths(&store(), &mut drv, loader(fixtures, &mut loads))
            .unwrap_or_else(|e| panic!("{}: {e}", fixture.path));
        assert_eq!(drv, expected, "{}", fixture.path);
    }
    // The cache loads each input derivation once, however many derivations use it.
    assert!(loads.values().all(|&n| n == 1), "{loads:?}");
}

#[test]
fn computes_output_paths_with_a_plain_resolver() {
    let fixtures = fixtures();
    let mut cache = ModuloHashCache::new();
    let mut loads = HashMap::new();
    for fixture in fixtures.values() {
        let expected = parse_fixture(fixture);
        let mut drv = expected.clone();
        // Fill the cache with the inputs first, then resolve from it alone.
        for input in drv.input_drvs.keys() {
            cache
                .hash_of_path(&store(), input, loader(fixtures, &mut loads))
                .unwrap();
        }
        compute_output_paths(&mut drv, &store(), |path| {
            cache.get(path).cloned().ok_or("not hashed")
        })
        .unwrap();
        assert_eq!(drv, expected, "{}", fixture.path);
    }
}

#[test]
fn shows_every_fixture_json_byte_for_byte() {
    for fixture in fixtures().values() {
        let drv = parse_fixture(fixture);
        assert_eq!(
            show_derivations_json(&store(), [(&fixture.path, &drv)]),
            fixture.json,
            "{}",
            fixture.path
        );
    }
}

#[test]
fn reads_every_fixture_json_back() {
    for fixture in fixtures().values() {
        let parsed = parse_show_derivation_json(&store(), &fixture.json).unwrap();
        assert_eq!(parsed, vec![(fixture.path.clone(), parse_fixture(fixture))]);
    }
}

#[test]
fn shows_several_derivations_sorted_by_path_like_nix() {
    // `nix show-derivation a b` prints one object with the paths in store order.
    let fixtures = fixtures();
    let mut chosen: Vec<_> = fixtures.values().take(3).collect();
    chosen.reverse();
    let drvs: Vec<_> = chosen
        .iter()
        .map(|f| (f.path.clone(), parse_fixture(f)))
        .collect();
    let shown = show_derivations_json(&store(), drvs.iter().map(|(p, d)| (p, d)));
    let value: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(
        parse_show_derivation_json(&store(), &shown).unwrap().len(),
        3
    );
}

fn fixture_named<'a>(fixtures: &'a BTreeMap<StorePath, Fixture>, name: &str) -> Vec<&'a Fixture> {
    fixtures
        .values()
        .filter(|f| f.path.name() == name)
        .collect()
}

#[test]
fn merges_inputs_with_equal_hash_modulo_like_nix() {
    // `merged` depends on two different fixed-output .drv files with the same output path;
    // their hashes modulo are equal, and Nix merges them into one input entry.
    let fixtures = fixtures();
    let merged = fixture_named(fixtures, "merged.drv")[0];
    let inputs = fixture_named(fixtures, "fixed-rec.drv");
    assert_eq!(inputs.len(), 2);
    let mut cache = ModuloHashCache::new();
    let mut loads = HashMap::new();
    let hashes: Vec<_> = inputs
        .iter()
        .map(|f| {
            cache
                .hash_of_path(&store(), &f.path, loader(fixtures, &mut loads))
                .unwrap()
        })
        .collect();
    assert_eq!(hashes[0], hashes[1]);
    let expected = parse_fixture(merged);
    let mut drv = expected.clone();
    cache
        .compute_output_paths(&store(), &mut drv, loader(fixtures, &mut loads))
        .unwrap();
    assert_eq!(drv, expected);
}

#[test]
fn fixed_output_hash_does_not_load_inputs() {
    let fixtures = fixtures();
    let fixed = fixture_named(fixtures, "fixed-with-deps.drv")[0];
    assert!(!parse_fixture(fixed).input_drvs.is_empty());
    let mut loads = HashMap::new();
    ModuloHashCache::new()
        .hash_of_path(&store(), &fixed.path, loader(fixtures, &mut loads))
        .unwrap();
    assert_eq!(
        loads.len(),
        1,
        "only the fixed-output .drv itself: {loads:?}"
    );
}

#[test]
fn fixed_output_hash_modulo_is_nix_descriptor() {
    let fixtures = fixtures();
    let fixed = parse_fixture(fixture_named(fixtures, "fixed-with-deps.drv")[0]);
    let DerivationOutput::Fixed { path, hash, .. } = &fixed.outputs["out"] else {
        panic!("fixed-with-deps is fixed-output");
    };
    let descriptor = format!(
        "fixed:out:r:sha256:{}:{}",
        hash.to_base16(),
        store().display(path)
    );
    let got = hash_derivation_modulo(&fixed, &store(), |_| -> Result<DrvHash, Infallible> {
        unreachable!("a fixed-output derivation's inputs are not hashed")
    })
    .unwrap()
    .hash;
    assert_eq!(got, Hash::digest(HashAlgo::Sha256, descriptor.as_bytes()));
}

// --- Parse errors ---------------------------------------------------------------------

const SIMPLE: &str = r#"Derive([("out","/nix/store/q7h9fwmlpazsdirgpw3nsp169zjmdmzf-x","","")],[],[],"x86_64-linux","/bin/sh",["-c","a\"b"],[("a","1"),("b","2")])"#;

fn parse(text: &str) -> Result<Derivation, DerivationParseError> {
    Derivation::parse(&store(), "x", text.as_bytes())
}

fn parse_error(text: &str) -> DerivationParseError {
    parse(text).expect_err("the text is not a valid derivation")
}

#[test]
fn parses_a_minimal_derivation() {
    let drv = parse(SIMPLE).unwrap();
    assert_eq!(drv.args, ["-c", "a\"b"]);
    assert_eq!(drv.to_aterm(&store()), SIMPLE);
    assert_eq!(drv.kind().unwrap(), DerivationKind::InputAddressed);
}

#[test]
fn unescapes_unknown_escapes_to_the_character_like_nix() {
    let drv = parse(&SIMPLE.replace(r#""-c""#, r#""\a\n\t\r\\\"\é""#)).unwrap();
    assert_eq!(drv.args[0], "a\n\t\r\\\"é");
    // Printing escapes only what Nix escapes.
    assert!(drv.to_aterm(&store()).contains(r#"["a\n\t\r\\\"é","#));
}

#[test]
fn rejects_trailing_data() {
    let error = parse_error(&format!("{SIMPLE}\n"));
    assert_eq!(error.offset, SIMPLE.len());
    assert_eq!(error.kind, ParseErrorKind::TrailingData);
}

#[test]
fn reports_truncation_at_the_end_of_input() {
    for cut in 0..SIMPLE.len() {
        let error = parse_error(&SIMPLE[..cut]);
        assert!(error.offset <= cut, "{cut}: {error}");
    }
}

#[test]
fn rejects_unterminated_string() {
    let error = parse_error(r#"Derive([("out"#);
    assert_eq!(error.offset, 13);
    assert!(matches!(error.kind, ParseErrorKind::Expected { .. }));
    assert_eq!(
        error.to_string(),
        "derivation is malformed at byte 13: expected '\"' closing the string"
    );
}

#[test]
fn rejects_unsorted_or_repeated_env() {
    let error = parse_error(&SIMPLE.replace(r#"("a","1"),("b","2")"#, r#"("b","1"),("a","2")"#));
    assert!(
        matches!(error.kind, ParseErrorKind::NotSorted { what: "env", .. }),
        "{error}"
    );
    let error = parse_error(&SIMPLE.replace(r#"("b","2")"#, r#"("a","2")"#));
    assert!(
        matches!(error.kind, ParseErrorKind::NotSorted { what: "env", .. }),
        "{error}"
    );
}

#[test]
fn rejects_non_utf8_strings() {
    let mut text = SIMPLE.as_bytes().to_vec();
    let at = SIMPLE.find("a\\\"b").unwrap();
    text[at] = 0xff;
    let error = Derivation::parse(&store(), "x", &text).unwrap_err();
    assert_eq!(error.kind, ParseErrorKind::InvalidUtf8);
    assert_eq!(error.offset, at - 1);
}

#[test]
fn rejects_paths_outside_the_store() {
    let error = parse_error(&SIMPLE.replace("/nix/store/q7h9", "/nix/other/q7h9"));
    assert!(
        matches!(error.kind, ParseErrorKind::InvalidStorePath { .. }),
        "{error}"
    );
    assert_eq!(error.offset, 15);
}

#[test]
fn rejects_invalid_output_names() {
    let error = parse_error(&SIMPLE.replace(r#"("out""#, r#"("o/ut""#));
    assert!(
        matches!(error.kind, ParseErrorKind::InvalidOutputName { .. }),
        "{error}"
    );
}

#[test]
fn rejects_floating_with_path_and_inconsistent_outputs() {
    let floating_with_path = SIMPLE.replace(
        r#""/nix/store/q7h9fwmlpazsdirgpw3nsp169zjmdmzf-x","","""#,
        r#""/nix/store/q7h9fwmlpazsdirgpw3nsp169zjmdmzf-x","r:sha256","""#,
    );
    assert!(matches!(
        parse_error(&floating_with_path).kind,
        ParseErrorKind::FloatingOutputWithPath { .. }
    ));
    let hash_only = SIMPLE.replace(r#""","")"#, r#""","00")"#);
    assert!(matches!(
        parse_error(&hash_only).kind,
        ParseErrorKind::HashWithoutAlgo { .. }
    ));
    let bad_algo = SIMPLE.replace(r#""","")"#, r#""sha3","00")"#);
    assert!(matches!(
        parse_error(&bad_algo).kind,
        ParseErrorKind::UnknownHashAlgo { .. }
    ));
    let bad_hash = SIMPLE.replace(r#""","")"#, r#""sha256","00")"#);
    assert!(matches!(
        parse_error(&bad_hash).kind,
        ParseErrorKind::InvalidHash { .. }
    ));
}

#[test]
fn rejects_fixed_output_whose_path_is_not_its_hash() {
    let fixtures = fixtures();
    let fixed = fixture_named(fixtures, "flat-sha1.drv")[0];
    let text = String::from_utf8(fixed.text.clone()).unwrap();
    let DerivationOutput::Fixed { path, .. } = &parse_fixture(fixed).outputs["out"] else {
        panic!("flat-sha1 is fixed-output");
    };
    let wrong = text.replacen(path.hash_part(), "00000000000000000000000000000000", 1);
    let error = Derivation::parse(&store(), "flat-sha1", wrong.as_bytes()).unwrap_err();
    assert!(
        matches!(error.kind, ParseErrorKind::FixedOutputPathMismatch { .. }),
        "{error}"
    );
    // The path depends on the derivation's name, too.
    let error = Derivation::parse(&store(), "other", &fixed.text).unwrap_err();
    assert!(matches!(
        error.kind,
        ParseErrorKind::FixedOutputPathMismatch { .. }
    ));
}

#[test]
fn rejects_names_that_are_not_store_path_names() {
    for name in ["", "a/b", "."] {
        let error = Derivation::parse(&store(), name, SIMPLE.as_bytes()).unwrap_err();
        assert!(
            matches!(error.kind, ParseErrorKind::InvalidName { .. }),
            "{error}"
        );
    }
}

#[test]
fn rejects_drv_file_paths_without_drv_suffix() {
    let path = StorePath::from_base_name("q7h9fwmlpazsdirgpw3nsp169zjmdmzf-x").unwrap();
    let error = Derivation::parse_drv_file(&store(), &path, SIMPLE.as_bytes()).unwrap_err();
    assert!(matches!(error.kind, ParseErrorKind::NotADrvPath { .. }));
}

// --- Hash modulo errors ---------------------------------------------------------------

fn input_addressed(name: &str, inputs: &[(&StorePath, &str)]) -> Derivation {
    let mut drv = Derivation {
        name: name.to_owned(),
        outputs: BTreeMap::from([(OutputName::out(), DerivationOutput::Deferred)]),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::new(),
        system: "x86_64-linux".to_owned(),
        builder: "/bin/sh".to_owned(),
        args: vec![],
        env: BTreeMap::new(),
    };
    for (path, output) in inputs {
        drv.input_drvs
            .entry((*path).clone())
            .or_default()
            .insert(OutputName::new(output).unwrap());
    }
    drv
}

#[test]
fn deep_dependency_chains_do_not_overflow_the_stack() {
    // 20 000 derivations, each depending on the previous one: the cache walks them with
    // an explicit stack.
    let mut drvs = HashMap::new();
    let mut previous: Option<StorePath> = None;
    let mut cache = ModuloHashCache::new();
    for i in 0..20_000 {
        let inputs: Vec<_> = previous.iter().map(|p| (p, "out")).collect();
        let mut drv = input_addressed(&format!("chain-{i}"), &inputs);
        cache
            .compute_output_paths(&store(), &mut drv, |p: &StorePath| {
                drvs.get(p).cloned().ok_or("missing")
            })
            .unwrap();
        let path = derivation_path(&store(), &drv).unwrap();
        drvs.insert(path.clone(), drv);
        previous = Some(path);
    }
    let top = previous.unwrap();
    let expected = cache.get(&top).cloned();
    let mut fresh = ModuloHashCache::new();
    let hash = fresh
        .hash_of_path(&store(), &top, |p: &StorePath| {
            drvs.get(p).cloned().ok_or("missing")
        })
        .unwrap();
    assert_eq!(fresh.len(), 20_000);
    assert!(expected.is_none() || expected == Some(hash));
}

#[test]
fn reports_dependency_cycles() {
    let a = StorePath::from_base_name("00000000000000000000000000000000-a.drv").unwrap();
    let b = StorePath::from_base_name("11111111111111111111111111111111-b.drv").unwrap();
    let drvs = HashMap::from([
        (a.clone(), input_addressed("a", &[(&b, "out")])),
        (b.clone(), input_addressed("b", &[(&a, "out")])),
    ]);
    let error = ModuloHashCache::new()
        .hash_of_path(&store(), &a, |p: &StorePath| {
            drvs.get(p).cloned().ok_or("missing")
        })
        .unwrap_err();
    assert!(matches!(error, HashModuloError::Cycle { .. }), "{error}");
}

#[test]
fn reports_missing_input_outputs_and_load_failures() {
    let a = StorePath::from_base_name("00000000000000000000000000000000-a.drv").unwrap();
    let b = StorePath::from_base_name("11111111111111111111111111111111-b.drv").unwrap();
    let drvs = HashMap::from([(b.clone(), input_addressed("b", &[]))]);
    let load = |p: &StorePath| drvs.get(p).cloned().ok_or("missing");
    let mut drv = input_addressed("a", &[(&b, "dev")]);
    let error = ModuloHashCache::new()
        .compute_output_paths(&store(), &mut drv, load)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "input derivation '/nix/store/11111111111111111111111111111111-b.drv' has no output 'dev'"
    );
    let mut drv = input_addressed("a", &[(&a, "out")]);
    let error = ModuloHashCache::new()
        .compute_output_paths(&store(), &mut drv, load)
        .unwrap_err();
    assert!(
        matches!(
            error,
            HashModuloError::Input {
                source: "missing",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn refuses_derivations_nix_cannot_hash() {
    let none: fn(&StorePath) -> Result<DrvHash, Infallible> = |_| unreachable!("no inputs");
    let mut drv = input_addressed("a", &[]);
    drv.outputs.clear();
    assert!(matches!(
        hash_derivation_modulo(&drv, &store(), none),
        Err(HashModuloError::Invalid(
            InvalidDerivation::NoOutputs { .. }
        ))
    ));
    let hash = Hash::digest(HashAlgo::Sha256, b"");
    let fixed = DerivationOutput::fixed(
        &store(),
        "a",
        &OutputName::new("dev").unwrap(),
        ContentAddressMethod::Flat,
        hash,
    )
    .unwrap();
    drv.outputs
        .insert(OutputName::new("dev").unwrap(), fixed.clone());
    assert!(matches!(
        compute_output_paths(&mut drv, &store(), none),
        Err(HashModuloError::Invalid(
            InvalidDerivation::FixedOutputNotOut { .. }
        ))
    ));
    drv.outputs
        .insert(OutputName::out(), DerivationOutput::Deferred);
    assert!(matches!(
        hash_derivation_modulo(&drv, &store(), none),
        Err(HashModuloError::Invalid(
            InvalidDerivation::MixedOutputKinds { .. }
        ))
    ));
}

// --- JSON -----------------------------------------------------------------------------

#[test]
fn json_without_output_paths_gets_them_computed() {
    let fixtures = fixtures();
    let mut cache = ModuloHashCache::new();
    let mut loads = HashMap::new();
    for fixture in fixtures.values() {
        let expected = parse_fixture(fixture);
        let mut json: serde_json::Value = serde_json::from_str(&fixture.json).unwrap();
        let body = json
            .as_object_mut()
            .unwrap()
            .remove(&store().display(&fixture.path))
            .unwrap();
        let mut body: DerivationJson = serde_json::from_value(body).unwrap();
        for output in body.outputs.values_mut() {
            output.path = None;
        }
        for name in body.outputs.keys() {
            body.env.remove(name);
        }
        let mut drv = body
            .into_derivation(&store(), Some(&expected.name))
            .unwrap();
        cache
            .compute_output_paths(&store(), &mut drv, loader(fixtures, &mut loads))
            .unwrap();
        assert_eq!(drv, expected, "{}", fixture.path);
    }
}

#[test]
fn json_errors_name_the_derivation() {
    let json = r#"{"/nix/store/q7h9fwmlpazsdirgpw3nsp169zjmdmzf-x.drv": {
        "outputs": {"out": {"path": "/tmp/x"}}, "system": "s", "builder": "b"}}"#;
    let error = parse_show_derivation_json(&store(), json).unwrap_err();
    assert!(
        error.to_string().starts_with(
            "derivation '/nix/store/q7h9fwmlpazsdirgpw3nsp169zjmdmzf-x.drv' in JSON is invalid"
        ),
        "{error}"
    );
    let nameless = r#"{"outputs": {}, "system": "s", "builder": "b"}"#;
    let body: DerivationJson = serde_json::from_str(nameless).unwrap();
    assert!(matches!(
        body.into_derivation(&store(), None),
        Err(DerivationJsonError::MissingName)
    ));
}

// --- Properties -----------------------------------------------------------------------

fn arb_store_path() -> impl Strategy<Value = StorePath> {
    ("[0-9a-df-np-sv-z]{32}", "[a-zA-Z0-9+._?=-]{1,20}")
        .prop_filter_map("reserved name", |(hash, name)| {
            StorePath::from_base_name(&format!("{hash}-{name}")).ok()
        })
}

fn arb_output_name() -> impl Strategy<Value = OutputName> {
    "[a-z][a-z0-9_-]{0,7}".prop_map(|name| OutputName::new(&name).unwrap())
}

fn arb_hash() -> impl Strategy<Value = Hash> {
    (
        prop::sample::select(HashAlgo::ALL.to_vec()),
        prop::collection::vec(any::<u8>(), 64),
    )
        .prop_map(|(algo, bytes)| Hash::from_bytes(algo, &bytes[..algo.size()]).unwrap())
}

fn arb_derivation() -> impl Strategy<Value = Derivation> {
    let outputs = prop_oneof![
        prop::collection::btree_map(
            arb_output_name(),
            prop_oneof![
                arb_store_path().prop_map(|path| DerivationOutput::InputAddressed { path }),
                Just(DerivationOutput::Deferred),
            ],
            0..4,
        ),
        (arb_hash(), any::<bool>()).prop_map(|(hash, recursive)| {
            let method = if recursive {
                ContentAddressMethod::Recursive
            } else {
                ContentAddressMethod::Flat
            };
            let out = OutputName::out();
            let fixed = DerivationOutput::fixed(&store(), "drv-name", &out, method, hash).unwrap();
            BTreeMap::from([(out, fixed)])
        }),
    ];
    (
        outputs,
        prop::collection::btree_map(
            arb_store_path(),
            prop::collection::btree_set(arb_output_name(), 0..3),
            0..4,
        ),
        prop::collection::btree_set(arb_store_path(), 0..4),
        any::<String>(),
        any::<String>(),
        prop::collection::vec(any::<String>(), 0..4),
        prop::collection::btree_map(any::<String>(), any::<String>(), 0..6),
    )
        .prop_map(
            |(outputs, input_drvs, input_srcs, system, builder, args, env)| Derivation {
                name: "drv-name".to_owned(),
                outputs,
                input_drvs,
                input_srcs,
                system,
                builder,
                args,
                env,
            },
        )
}

proptest! {
    #[test]
    fn parse_inverts_print_for_generated_derivations(drv in arb_derivation()) {
        let text = drv.to_aterm(&store());
        let parsed = Derivation::parse(&store(), "drv-name", text.as_bytes()).unwrap();
        prop_assert_eq!(&parsed, &drv);
        prop_assert_eq!(parsed.to_aterm(&store()), text);
    }

    #[test]
    fn json_round_trips_generated_derivations(drv in arb_derivation()) {
        let path = derivation_path(&store(), &drv).unwrap();
        let text = show_derivations_json(&store(), [(&path, &drv)]);
        let parsed = parse_show_derivation_json(&store(), &text).unwrap();
        prop_assert_eq!(parsed, vec![(path, drv)]);
    }

    #[test]
    fn parser_never_panics_on_mutated_fixtures(
        index in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let fixtures: Vec<_> = fixtures().values().collect();
        let fixture = index.get(&fixtures);
        let mut text = fixture.text.clone();
        for (at, byte) in edits {
            let at = at.index(text.len());
            text[at] = byte;
        }
        if let Ok(drv) = Derivation::parse_drv_file(&store(), &fixture.path, &text) {
            // Escapes are many-to-one (a raw tab and `\t` read the same), so the printed
            // text need not be the input, but it must read back to the same derivation.
            let printed = drv.to_aterm(&store());
            let reparsed = Derivation::parse_drv_file(&store(), &fixture.path, printed.as_bytes());
            prop_assert_eq!(reparsed, Ok(drv));
        }
    }
}

#[test]
fn every_fixture_made_by_nix_passes_the_output_check() {
    let fixtures = fixtures();
    let mut loads = HashMap::new();
    let mut cache = ModuloHashCache::new();
    for fixture in fixtures.values() {
        let drv = parse_fixture(fixture);
        cache
            .check_outputs(&store(), &fixture.path, &drv, loader(fixtures, &mut loads))
            .unwrap_or_else(|e| panic!("{}: {e}", fixture.path));
    }
}

/// `bad` rewritten to claim `good`'s output path everywhere, as an attacker would
/// (Nix's `secure-drv-outputs` test).
#[test]
fn refuses_a_derivation_claiming_another_derivations_output() {
    let fixtures = fixtures();
    let good = parse_fixture(fixture_named(fixtures, "chain0.drv")[0]);
    let bad_fixture = fixture_named(fixtures, "dep1.drv")[0];
    let good_out = store().display(good.outputs["out"].path().unwrap());
    let bad_out = store().display(parse_fixture(bad_fixture).outputs["out"].path().unwrap());
    let forged_text = String::from_utf8(bad_fixture.text.clone())
        .unwrap()
        .replace(&bad_out, &good_out);
    let forged_path =
        StorePath::from_base_name("00000000000000000000000000000000-dep1.drv").unwrap();
    let forged =
        Derivation::parse_drv_file(&store(), &forged_path, forged_text.as_bytes()).unwrap();
    let mut loads = HashMap::new();
    let error = ModuloHashCache::new()
        .check_outputs(
            &store(),
            &forged_path,
            &forged,
            loader(fixtures, &mut loads),
        )
        .unwrap_err();
    assert!(
        matches!(&error, DerivationCheckError::IncorrectOutput { claimed, expected, .. }
            if *claimed == good_out && *expected == bad_out),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "derivation '{}' has incorrect output '{good_out}', should be '{bad_out}'",
            store().display(&forged_path)
        )
    );
}

#[test]
fn refuses_an_output_variable_that_is_not_the_output_path() {
    let fixtures = fixtures();
    for name in ["dep1.drv", "flat-sha256.drv"] {
        let fixture = fixture_named(fixtures, name)[0];
        let mut drv = parse_fixture(fixture);
        drv.env.insert("out".into(), "/nix/store/elsewhere".into());
        let mut loads = HashMap::new();
        let error = ModuloHashCache::new()
            .check_outputs(&store(), &fixture.path, &drv, loader(fixtures, &mut loads))
            .unwrap_err();
        assert!(
            matches!(&error, DerivationCheckError::IncorrectEnvironment { variable, .. } if variable == "out"),
            "{name}: {error}"
        );
        drv.env.remove("out");
        assert!(ModuloHashCache::new()
            .check_outputs(&store(), &fixture.path, &drv, loader(fixtures, &mut loads))
            .is_err());
    }
}

// --- Floating content-addressed and impure derivations (Nix's fixtures ca-*, impure) ---

#[test]
fn floating_and_impure_fixtures_have_their_kinds() {
    let fixtures = fixtures();
    let kind = |name: &str| {
        parse_fixture(fixture_named(fixtures, name)[0])
            .kind()
            .unwrap()
    };
    assert_eq!(kind("ca-floating.drv"), DerivationKind::Floating);
    assert_eq!(kind("ca-flat.drv"), DerivationKind::Floating);
    assert_eq!(
        kind("ca-dependent.drv"),
        DerivationKind::DeferredInputAddressed
    );
    assert_eq!(kind("impure.drv"), DerivationKind::Impure);
    let impure = parse_fixture(fixture_named(fixtures, "impure.drv")[0]);
    assert!(impure.has_network_access());
    assert!(!parse_fixture(fixture_named(fixtures, "ca-floating.drv")[0]).has_network_access());
}

#[test]
fn downstream_placeholders_are_the_ones_nix_writes() {
    // nix-instantiate put the placeholders of ca-floating's outputs into ca-dependent.
    let fixtures = fixtures();
    let floating = &fixture_named(fixtures, "ca-floating.drv")[0].path;
    let dependent = parse_fixture(fixture_named(fixtures, "ca-dependent.drv")[0]);
    assert_eq!(
        dependent.env["dep"],
        downstream_placeholder(floating, &OutputName::out())
    );
    assert_eq!(
        dependent.env["devDep"],
        downstream_placeholder(floating, &OutputName::new("dev").unwrap())
    );
}

#[test]
fn resolving_replaces_inputs_and_placeholders_and_fixes_deferred_paths() {
    let fixtures = fixtures();
    let floating = fixture_named(fixtures, "ca-floating.drv")[0].path.clone();
    let dependent = parse_fixture(fixture_named(fixtures, "ca-dependent.drv")[0]);
    let out = StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-ca-floating").unwrap();
    let dev =
        StorePath::from_base_name("a1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-ca-floating-dev").unwrap();
    let resolved = dependent
        .try_resolve(&store(), |input, output| {
            assert_eq!(input, &floating);
            Some(if output.as_str() == "out" {
                out.clone()
            } else {
                dev.clone()
            })
        })
        .unwrap();
    assert!(resolved.input_drvs.is_empty());
    assert_eq!(
        resolved.input_srcs,
        BTreeSet::from([out.clone(), dev.clone()])
    );
    assert_eq!(resolved.env["dep"], store().display(&out));
    assert_eq!(resolved.env["devDep"], store().display(&dev));
    // The output is input-addressed now, by the hash of the resolved derivation.
    assert_eq!(resolved.kind().unwrap(), DerivationKind::InputAddressed);
    let mut expected = resolved.clone();
    compute_output_paths(
        &mut expected,
        &store(),
        |_| -> Result<DrvHash, Infallible> {
            unreachable!("a resolved derivation has no input derivations")
        },
    )
    .unwrap();
    assert_eq!(resolved, expected);
    // A missing input output is an error naming it, not a half-resolved derivation.
    let error = dependent.try_resolve(&store(), |_, _| None).unwrap_err();
    assert!(error.to_string().contains("is not built"), "{error}");
}

#[test]
fn floating_and_impure_hashes_are_deferred() {
    let fixtures = fixtures();
    let mut loads = HashMap::new();
    let mut cache = ModuloHashCache::new();
    let hash = |cache: &mut ModuloHashCache, loads: &mut HashMap<_, _>, name: &str| {
        cache
            .hash_of_path(
                &store(),
                &fixture_named(fixtures, name)[0].path,
                loader(fixtures, loads),
            )
            .unwrap()
    };
    assert!(!hash(&mut cache, &mut loads, "ca-input.drv").deferred);
    assert!(hash(&mut cache, &mut loads, "ca-floating.drv").deferred);
    assert!(hash(&mut cache, &mut loads, "ca-dependent.drv").deferred);
    let impure = hash(&mut cache, &mut loads, "impure.drv");
    assert_eq!(
        impure,
        DrvHash {
            hash: impure_output_hash(),
            deferred: true
        }
    );
    // The static (masked) hash of a floating derivation differs from its hash modulo:
    // its output variables are placeholders, printed empty when masked.
    let floating = parse_fixture(fixture_named(fixtures, "ca-floating.drv")[0]);
    let masked = cache
        .static_output_hash(&store(), &floating, loader(fixtures, &mut loads))
        .unwrap();
    assert!(masked.deferred);
    assert_ne!(
        masked.hash,
        hash(&mut cache, &mut loads, "ca-floating.drv").hash
    );
}

#[test]
fn floating_outputs_print_and_parse_as_nix_writes_them() {
    let floating = DerivationOutput::Floating {
        method: ContentAddressMethod::Recursive,
        algo: HashAlgo::Sha256,
    };
    assert_eq!(floating.hash_algo_field(), "r:sha256");
    assert_eq!(floating.hash_field(), "");
    assert_eq!(floating.path(), None);
    let impure = DerivationOutput::Impure {
        method: ContentAddressMethod::Flat,
        algo: HashAlgo::Sha1,
    };
    assert_eq!(impure.hash_algo_field(), "sha1");
    assert_eq!(impure.hash_field(), "impure");
    // Floating outputs of two algorithms may not be mixed.
    let mut drv = parse_fixture(fixture_named(fixtures(), "ca-floating.drv")[0]);
    drv.outputs.insert(
        OutputName::new("dev").unwrap(),
        DerivationOutput::Floating {
            method: ContentAddressMethod::Recursive,
            algo: HashAlgo::Sha512,
        },
    );
    assert!(matches!(
        drv.kind(),
        Err(InvalidDerivation::FloatingAlgorithms { .. })
    ));
}
