//! Golden store paths from real Nix 2.8: `nix-store --add` (source paths), `nix-store
//! --add-fixed [--recursive] ALGO` (fixed-output paths), the store path name rules, and
//! the text paths of `.drv` files and `builtins.toFile` sources with their references.
//! Reads `tests/fixtures/{trees,drvs}.json` and the committed source NARs; needs no Nix.

use std::collections::BTreeSet;

use arca_store_core::store_path::validate_name;
use arca_store_core::{ContentAddressMethod, Hash, HashAlgo, StorePath, StorePathError};
use arca_tests::fixture;
use arca_tests::golden::{fixture_json, fixture_trees, parse_store_path, store, text};
use serde_json::Value;

fn references(value: &Value) -> BTreeSet<StorePath> {
    value
        .as_array()
        .expect("references is a list")
        .iter()
        .map(|path| parse_store_path(path.as_str().unwrap()))
        .collect()
}

/// A NAR string: u64 little-endian length, bytes, zero padding to 8.
fn nar_str(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
    out.resize(out.len() + (8 - bytes.len() % 8) % 8, 0);
}

/// The NAR of a lone non-executable regular file, built by hand (independent of
/// `arca-nar`, which `golden_nar.rs` tests).
fn regular_file_nar(contents: &[u8]) -> Vec<u8> {
    let mut nar = Vec::new();
    for token in ["nix-archive-1", "(", "type", "regular", "contents"] {
        nar_str(&mut nar, token.as_bytes());
    }
    nar_str(&mut nar, contents);
    nar_str(&mut nar, b")");
    nar
}

/// The contents of a NAR holding one regular file (hand-parsed, strict enough for the
/// fixtures: panics on anything else).
fn regular_file_contents(nar: &[u8]) -> Vec<u8> {
    let mut pos = 0;
    let mut next = |nar: &[u8]| -> Vec<u8> {
        let len = u64::from_le_bytes(nar[pos..pos + 8].try_into().unwrap()) as usize;
        let bytes = nar[pos + 8..pos + 8 + len].to_vec();
        pos += 8 + len + (8 - len % 8) % 8;
        bytes
    };
    for token in ["nix-archive-1", "(", "type", "regular"] {
        assert_eq!(next(nar), token.as_bytes(), "a single-file NAR");
    }
    let mut token = next(nar);
    if token == b"executable" {
        assert_eq!(next(nar), b"");
        token = next(nar);
    }
    assert_eq!(token, b"contents");
    let contents = next(nar);
    assert_eq!(next(nar), b")");
    contents
}

/// Every tree of trees.json, whose store directory must be `/nix/store`.
fn trees() -> Vec<(String, Value)> {
    let manifest = fixture_json("trees.json");
    assert_eq!(text(&manifest, "store_dir"), "/nix/store");
    fixture_trees()
}

fn manifest_hash(forms: &Value, algo: HashAlgo) -> Hash {
    Hash::from_base16(algo, text(&forms[algo.name()], "base16")).unwrap()
}

#[test]
fn make_source_path_of_every_tree_equals_nix_store_add() {
    for (key, tree) in trees() {
        let nar_sha256 = manifest_hash(&tree["nar_hash"], HashAlgo::Sha256);
        let path = store()
            .make_source_path(
                text(&tree, "add_name"),
                &nar_sha256,
                &BTreeSet::new(),
                false,
            )
            .unwrap();
        assert_eq!(
            store().display(&path),
            text(&tree, "store_path"),
            "tree {key}"
        );
        assert_eq!(
            parse_store_path(text(&tree, "store_path")),
            path,
            "tree {key}: parse"
        );
        assert_eq!(
            format!("fixed:r:sha256:{}", nar_sha256.to_base32()),
            text(&tree, "store_path_ca"),
            "tree {key}: ca"
        );
    }
}

#[test]
fn make_fixed_output_path_of_every_tree_equals_nix_store_add_fixed() {
    let mut seen = BTreeSet::new();
    for (key, tree) in trees() {
        let fixed = tree["fixed"].as_object().unwrap();
        for (kind, expected) in fixed {
            let (method_name, algo_name) = kind.split_once(':').unwrap();
            let algo = HashAlgo::from_name(algo_name).unwrap();
            let (method, hash, prefix) = match method_name {
                "recursive" => (
                    ContentAddressMethod::Recursive,
                    manifest_hash(&tree["nar_hash"], algo),
                    "r:",
                ),
                "flat" => (
                    ContentAddressMethod::Flat,
                    manifest_hash(&tree["flat_hash"], algo),
                    "",
                ),
                other => panic!("unknown method {other}"),
            };
            seen.insert(kind.clone());
            let path = store()
                .make_fixed_output_path(
                    text(&tree, "add_name"),
                    method,
                    &hash,
                    &BTreeSet::new(),
                    false,
                )
                .unwrap();
            assert_eq!(
                store().display(&path),
                text(expected, "path"),
                "tree {key}, {kind}"
            );
            assert_eq!(
                format!("fixed:{prefix}{algo}:{}", hash.to_base32()),
                text(expected, "ca"),
                "tree {key}, {kind}: ca"
            );
        }
        // Recursive sha256 is `nix-store --add`.
        assert_eq!(
            text(&fixed["recursive:sha256"], "path"),
            text(&tree, "store_path"),
            "tree {key}"
        );
    }
    assert_eq!(
        seen.len(),
        8,
        "flat and recursive in four algorithms: {seen:?}"
    );
}

#[test]
fn fixed_output_paths_other_than_recursive_sha256_refuse_references() {
    let some_ref = parse_store_path("/nix/store/q08jdnslwmh8s254bj9fdacl84hzw6hc-ok");
    let refs: BTreeSet<StorePath> = [some_ref].into();
    let hash = Hash::digest(HashAlgo::Sha1, b"x");
    assert_eq!(
        store().make_fixed_output_path("x", ContentAddressMethod::Flat, &hash, &refs, false),
        Err(StorePathError::FixedOutputWithReferences)
    );
    let hash = Hash::digest(HashAlgo::Sha256, b"x");
    assert_eq!(
        store().make_fixed_output_path("x", ContentAddressMethod::Flat, &hash, &refs, false),
        Err(StorePathError::FixedOutputWithReferences)
    );
}

#[test]
fn name_rules_accept_and_reject_exactly_as_nix_does() {
    let manifest = fixture_json("trees.json");
    let rules = manifest["name_rules"].as_array().unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for rule in rules {
        let name = text(rule, "name");
        let nar = regular_file_nar(text(rule, "contents").as_bytes());
        let nar_sha256 = Hash::digest(HashAlgo::Sha256, &nar);
        let made = store().make_source_path(name, &nar_sha256, &BTreeSet::new(), false);
        if rule["valid"].as_bool().unwrap() {
            valid += 1;
            assert_eq!(
                validate_name(name),
                Ok(()),
                "name {name:?} is valid for Nix"
            );
            let path = made.unwrap_or_else(|e| panic!("name {name:?}: {e}"));
            assert_eq!(store().display(&path), text(rule, "store_path"), "{name:?}");
            assert_eq!(path.name(), name);
            assert_eq!(parse_store_path(text(rule, "store_path")), path);
            continue;
        }
        invalid += 1;
        let error = text(rule, "error");
        let ours = validate_name(name).expect_err(&format!("Nix refused {name:?}: {error}"));
        assert!(made.is_err(), "make_source_path accepted {name:?}");
        // The base name Nix printed does not parse as a store path either.
        let base_name = error
            .split('\'')
            .nth(1)
            .expect("Nix's error quotes the path");
        assert!(
            StorePath::from_base_name(base_name).is_err(),
            "{base_name:?} parsed"
        );
        if error.contains("longer than 211 characters") {
            assert!(
                matches!(ours, StorePathError::NameTooLong { .. }),
                "{name:?}: expected NameTooLong, got {ours:?}"
            );
        } else if let Some(rest) = error.split("contains illegal character '").nth(1) {
            // Nix names the offending byte: a character, or `\xNN` for the first byte
            // of a non-ASCII one.
            let shown = rest.strip_suffix('\'').unwrap();
            let expected_byte = match shown.strip_prefix("\\x") {
                Some(hex) => u8::from_str_radix(hex, 16).unwrap(),
                None => {
                    assert_eq!(shown.len(), 1, "{shown:?}");
                    shown.as_bytes()[0]
                }
            };
            match ours {
                StorePathError::InvalidNameCharacter { character, .. } => {
                    let mut buf = [0u8; 4];
                    assert_eq!(
                        character.encode_utf8(&mut buf).as_bytes()[0],
                        expected_byte,
                        "{name:?}: the first illegal character"
                    );
                }
                other => panic!("{name:?}: expected InvalidNameCharacter, got {other:?}"),
            }
        } else {
            panic!("unrecognised Nix error {error:?}");
        }
    }
    assert!(
        valid >= 5 && invalid >= 5,
        "name rules cover both: {valid}/{invalid}"
    );
}

#[test]
fn name_length_boundary_is_211() {
    assert_eq!(validate_name(&"n".repeat(211)), Ok(()));
    assert!(matches!(
        validate_name(&"n".repeat(212)),
        Err(StorePathError::NameTooLong { .. })
    ));
    assert!(matches!(
        validate_name(""),
        Err(StorePathError::EmptyName(_))
    ));
}

#[test]
fn every_drv_path_is_the_text_path_of_its_bytes_and_references() {
    let manifest = fixture_json("drvs.json");
    assert_eq!(text(&manifest, "store_dir"), "/nix/store");
    let drvs = manifest["drvs"].as_object().unwrap();
    assert!(drvs.len() >= 30, "drvs.json has lost .drv files");
    for (base, drv) in drvs {
        let bytes = std::fs::read(fixture(text(drv, "file"))).unwrap();
        assert_eq!(bytes.len() as u64, drv["size"].as_u64().unwrap(), "{base}");
        let sha256 = Hash::digest(HashAlgo::Sha256, &bytes);
        assert_eq!(sha256.to_base16(), text(drv, "sha256"), "{base}: sha256");
        let expected = parse_store_path(text(drv, "path"));
        assert_eq!(expected.as_str(), base, "{base}: key is the base name");
        assert!(expected.is_derivation());
        let refs = references(&drv["references"]);
        let path = store()
            .make_text_path(expected.name(), &sha256, &refs)
            .unwrap();
        assert_eq!(path, expected, "{base}: text path");
        assert_eq!(
            text(drv, "ca"),
            format!("text:sha256:{}", sha256.to_base32()),
            "{base}: ca"
        );
        // Its registered NAR is that of a plain file holding the bytes.
        let nar = regular_file_nar(&bytes);
        assert_eq!(
            nar.len() as u64,
            drv["nar_size"].as_u64().unwrap(),
            "{base}"
        );
        assert_eq!(
            Hash::digest(HashAlgo::Sha256, &nar).to_sri(),
            text(drv, "nar_hash"),
            "{base}: nar hash"
        );
        // Without its references the path would differ (they are in the fingerprint).
        if !refs.is_empty() {
            let bare = store()
                .make_text_path(expected.name(), &sha256, &BTreeSet::new())
                .unwrap();
            assert_ne!(bare, expected, "{base}: references are hashed");
        }
    }
}

#[test]
fn every_input_source_path_matches_its_content_address() {
    let manifest = fixture_json("drvs.json");
    let sources = manifest["sources"].as_object().unwrap();
    let (mut text_paths, mut source_paths) = (0, 0);
    for (base, source) in sources {
        let nar = std::fs::read(fixture(text(source, "nar"))).unwrap();
        assert_eq!(
            nar.len() as u64,
            source["nar_size"].as_u64().unwrap(),
            "{base}"
        );
        let nar_sha256 = Hash::digest(HashAlgo::Sha256, &nar);
        assert_eq!(nar_sha256.to_sri(), text(source, "nar_hash"), "{base}");
        let expected = parse_store_path(text(source, "path"));
        assert_eq!(expected.as_str(), base);
        let refs = references(&source["references"]);
        let ca = text(source, "ca");
        let path = if let Some(body) = ca.strip_prefix("text:sha256:") {
            text_paths += 1;
            let contents = regular_file_contents(&nar);
            let sha256 = Hash::digest(HashAlgo::Sha256, &contents);
            assert_eq!(sha256.to_base32(), body, "{base}: ca");
            store()
                .make_text_path(expected.name(), &sha256, &refs)
                .unwrap()
        } else if let Some(body) = ca.strip_prefix("fixed:r:sha256:") {
            source_paths += 1;
            assert_eq!(nar_sha256.to_base32(), body, "{base}: ca");
            store()
                .make_source_path(expected.name(), &nar_sha256, &refs, false)
                .unwrap()
        } else {
            panic!("{base}: unexpected ca {ca}");
        };
        assert_eq!(path, expected, "{base}");
    }
    assert!(
        text_paths >= 3 && source_paths >= 2,
        "{text_paths}/{source_paths}"
    );
    // At least one text source has references (`refers.txt`).
    assert!(sources
        .values()
        .any(|s| !s["references"].as_array().unwrap().is_empty()));
}
