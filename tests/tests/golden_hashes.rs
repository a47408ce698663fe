//! Golden hash vectors from real Nix 2.8 (`tests/fixtures/hashes.json`): every digest in
//! every encoding, parsing of every encoding back to the same hash, the XOR-folded
//! (truncated) form, and `arca hash convert` against the `nix-hash --to-*` / `nix hash
//! to-*` conversions Nix was seen to perform or refuse. Needs no Nix: fixtures only.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;

use arca_store_core::{base32, Encoding, Hash, HashAlgo, Hasher};
use arca_tests::arca;
use arca_tests::golden::{fixture_json, text};
use serde_json::Value;

fn decode_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd-length hex '{hex}'");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("input_hex is hex"))
        .collect()
}

/// Every vector as (name, input bytes, {algo: {encoding: text}}).
fn vectors() -> Vec<(String, Vec<u8>, BTreeMap<HashAlgo, Value>)> {
    let manifest = fixture_json("hashes.json");
    let vectors = manifest["vectors"].as_array().expect("vectors is a list");
    assert!(vectors.len() >= 14, "hashes.json has lost vectors");
    vectors
        .iter()
        .map(|vector| {
            let name = text(vector, "name").to_owned();
            let input = decode_hex(text(vector, "input_hex"));
            assert_eq!(
                input.len() as u64,
                vector["length"].as_u64().unwrap(),
                "{name}: length"
            );
            if let Some(input_text) = vector["input_text"].as_str() {
                assert_eq!(input, input_text.as_bytes(), "{name}: input_text");
            }
            let hashes: BTreeMap<HashAlgo, Value> = vector["hashes"]
                .as_object()
                .expect("hashes is an object")
                .iter()
                .map(|(algo, forms)| {
                    (
                        HashAlgo::from_name(algo).expect("known algorithm"),
                        forms.clone(),
                    )
                })
                .collect();
            assert_eq!(
                hashes.keys().copied().collect::<Vec<_>>(),
                HashAlgo::ALL.to_vec(),
                "{name}: every algorithm is in the fixture"
            );
            (name, input, hashes)
        })
        .collect()
}

#[test]
fn digest_of_every_vector_matches_nix_in_every_algorithm_and_encoding() {
    for (name, input, hashes) in vectors() {
        for (algo, forms) in &hashes {
            let hash = Hash::digest(*algo, &input);
            let context = format!("vector {name}, {algo}");
            assert_eq!(hash.algo(), *algo, "{context}");
            assert_eq!(hash.as_bytes().len(), algo.size(), "{context}: size");
            assert_eq!(hash.to_base16(), text(forms, "base16"), "{context}: base16");
            assert_eq!(hash.to_base32(), text(forms, "base32"), "{context}: base32");
            assert_eq!(hash.to_base64(), text(forms, "base64"), "{context}: base64");
            assert_eq!(hash.to_sri(), text(forms, "sri"), "{context}: sri");
            // `encode` agrees with the named methods, typed and untyped.
            assert_eq!(hash.encode(Encoding::Base16, false), text(forms, "base16"));
            assert_eq!(hash.encode(Encoding::Base32, false), text(forms, "base32"));
            assert_eq!(hash.encode(Encoding::Base64, false), text(forms, "base64"));
            assert_eq!(hash.encode(Encoding::Sri, false), text(forms, "sri"));
            assert_eq!(hash.encode(Encoding::Sri, true), text(forms, "sri"));
            assert_eq!(
                hash.encode(Encoding::Base32, true),
                format!("{algo}:{}", text(forms, "base32")),
                "{context}: typed base32"
            );
            // nix-base32 module directly.
            assert_eq!(base32::encode(hash.as_bytes()), text(forms, "base32"));
            assert_eq!(
                base32::decode(text(forms, "base32"), algo.size()).unwrap(),
                hash.as_bytes(),
                "{context}: base32::decode"
            );
        }
    }
}

#[test]
fn streaming_hasher_in_odd_chunks_equals_one_shot_digest_and_nix() {
    for (name, input, hashes) in vectors() {
        for (algo, forms) in &hashes {
            for chunk in [1usize, 3, 7, 64, 65] {
                let mut hasher = Hasher::new(*algo);
                for piece in input.chunks(chunk) {
                    hasher.write_all(piece).unwrap();
                }
                hasher.flush().unwrap();
                assert_eq!(
                    hasher.finish().to_base16(),
                    text(forms, "base16"),
                    "vector {name}, {algo}, chunks of {chunk}"
                );
            }
        }
    }
}

#[test]
fn truncated_base32_is_the_20_byte_xor_fold_for_long_hashes_only() {
    for (name, input, hashes) in vectors() {
        for (algo, forms) in &hashes {
            let hash = Hash::digest(*algo, &input);
            // `nix-hash --truncate` folds only digests longer than 20 bytes.
            let expected = if algo.size() > 20 {
                base32::encode(&hash.compress(20))
            } else {
                hash.to_base32()
            };
            assert_eq!(
                expected,
                text(forms, "truncated_base32"),
                "vector {name}, {algo}: truncated base32"
            );
        }
    }
}

#[test]
fn every_encoding_of_every_vector_parses_back_to_the_same_hash() {
    for (name, input, hashes) in vectors() {
        for (algo, forms) in &hashes {
            let expected = Hash::digest(*algo, &input);
            let context = format!("vector {name}, {algo}");
            for encoding in ["base16", "base32", "base64"] {
                let body = text(forms, encoding);
                // Bare, with the algorithm given.
                assert_eq!(
                    Hash::parse(body, Some(*algo)).unwrap(),
                    expected,
                    "{context}: bare {encoding}"
                );
                // Typed `algo:body`, with and without the algorithm given.
                let typed = format!("{algo}:{body}");
                assert_eq!(
                    Hash::parse(&typed, None).unwrap(),
                    expected,
                    "{context}: {typed}"
                );
                assert_eq!(
                    Hash::parse(&typed, Some(*algo)).unwrap(),
                    expected,
                    "{context}: {typed} with --type"
                );
                // A bare hash does not say its algorithm.
                assert!(
                    Hash::parse(body, None).is_err(),
                    "{context}: bare {encoding} without an algorithm must be refused"
                );
            }
            let sri = text(forms, "sri");
            assert_eq!(Hash::parse(sri, None).unwrap(), expected, "{context}: sri");
            assert_eq!(
                Hash::parse(sri, Some(*algo)).unwrap(),
                expected,
                "{context}: sri"
            );
            // A form naming another algorithm than the one given is refused.
            let other = HashAlgo::ALL
                .into_iter()
                .find(|other| other != algo)
                .unwrap();
            assert!(
                Hash::parse(sri, Some(other)).is_err(),
                "{context}: sri parsed as {other}"
            );
            assert!(
                Hash::parse(&format!("{algo}:{}", text(forms, "base16")), Some(other)).is_err(),
                "{context}: typed base16 parsed as {other}"
            );
            // Uppercase base16 is accepted (Nix accepts it too).
            assert_eq!(
                Hash::from_base16(*algo, &text(forms, "base16").to_uppercase()).unwrap(),
                expected,
                "{context}: uppercase base16"
            );
        }
    }
}

/// What `arca hash convert` is expected to do for one Nix conversion.
enum Expect {
    Output(String),
    Failure,
}

/// Maps a recorded Nix conversion to `arca hash convert` arguments, or `None` when the
/// case has no arca equivalent with the same semantics.
///
/// - `nix-hash --to-base16|--to-base32 [--type T] H` and `nix hash to-X [--type T] H` map
///   to `arca hash convert --to X [--type T] H`.
/// - Skipped: `nix-hash --to-base32 <algo>:<hex>` **without** `--type` where `<algo>` is
///   not md5. Nix 2.8 fails these only because `nix-hash`'s default `--type` is md5
///   ("should have type 'md5'"), a quirk: arca reads the algorithm from the prefix and
///   succeeds (as `nix hash to-*` does). The md5-prefixed case, where the quirk does not
///   bite, is kept. Likewise a bare hash without `--type` would be md5 for `nix-hash` but
///   is an error for arca (none is in the fixtures today; it would be skipped too).
fn to_arca(cmd: &[&str], ok: bool, output: Option<&str>) -> Option<(Vec<String>, Expect)> {
    let mut type_flag: Option<&str> = None;
    let mut hashes = Vec::new();
    let to = match cmd {
        ["nix-hash", rest @ ..] => {
            let mut to = None;
            let mut args = rest.iter();
            while let Some(arg) = args.next() {
                match *arg {
                    "--to-base16" => to = Some("base16"),
                    "--to-base32" => to = Some("base32"),
                    "--type" => type_flag = Some(args.next().expect("--type has a value")),
                    flag if flag.starts_with("--") => panic!("unmapped nix-hash flag {flag}"),
                    hash => hashes.push(hash),
                }
            }
            if type_flag.is_none() {
                let prefix = hashes[0]
                    .split_once(':')
                    .or_else(|| hashes[0].split_once('-'))
                    .map(|(prefix, _)| prefix);
                if prefix != Some("md5") {
                    return None; // nix-hash's implicit `--type md5`: a Nix quirk.
                }
            }
            to.expect("nix-hash conversion names its target")
        }
        ["nix", "hash", sub, rest @ ..] => {
            let to = sub
                .strip_prefix("to-")
                .unwrap_or_else(|| panic!("unmapped `nix hash {sub}`"));
            let mut args = rest.iter();
            while let Some(arg) = args.next() {
                match *arg {
                    "--type" => type_flag = Some(args.next().expect("--type has a value")),
                    flag if flag.starts_with("--") => panic!("unmapped nix hash flag {flag}"),
                    hash => hashes.push(hash),
                }
            }
            to
        }
        _ => panic!("unmapped conversion command {cmd:?}"),
    };
    assert_eq!(hashes.len(), 1, "one hash per recorded conversion: {cmd:?}");
    let mut args = vec![
        "hash".to_owned(),
        "convert".to_owned(),
        "--to".to_owned(),
        to.to_owned(),
    ];
    if let Some(algo) = type_flag {
        args.push("--type".to_owned());
        args.push(algo.to_owned());
    }
    args.push(hashes[0].to_owned());
    let expect = if ok {
        Expect::Output(output.expect("ok conversions have an output").to_owned())
    } else {
        Expect::Failure
    };
    Some((args, expect))
}

fn run_arca(args: &[String]) -> std::process::Output {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    arca(&args)
}

#[test]
fn arca_hash_convert_agrees_with_every_nix_conversion() {
    let manifest = fixture_json("hashes.json");
    let conversions = manifest["conversions"]
        .as_array()
        .expect("conversions is a list");
    // Successful conversions that share `--to`/`--type` are run in one process (convert
    // takes many hashes and prints one line each); failures run one per process.
    let mut batches: BTreeMap<Vec<String>, Vec<(String, String)>> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    let mut targets = std::collections::BTreeSet::new();
    for conversion in conversions {
        let cmd: Vec<&str> = conversion["cmd"]
            .as_array()
            .unwrap()
            .iter()
            .map(|arg| arg.as_str().unwrap())
            .collect();
        let ok = conversion["ok"].as_bool().unwrap();
        match to_arca(&cmd, ok, conversion["output"].as_str()) {
            None => skipped.push(cmd.join(" ")),
            Some((mut args, Expect::Output(output))) => {
                targets.insert(args[3].clone());
                let hash = args.pop().unwrap();
                batches.entry(args).or_default().push((hash, output));
            }
            Some((args, Expect::Failure)) => failures.push((args, cmd.join(" "))),
        }
    }
    assert_eq!(
        targets.into_iter().collect::<Vec<_>>(),
        ["base16", "base32", "base64", "sri"],
        "the mapped conversions cover every target encoding"
    );
    assert!(
        skipped
            .iter()
            .all(|cmd| cmd.starts_with("nix-hash --to-base32 sha")),
        "only nix-hash's implicit-md5 quirk is skipped, got {skipped:?}"
    );
    assert!(failures.len() >= 3, "failure cases are covered");
    for (args, cases) in &batches {
        let mut all = args.clone();
        all.extend(cases.iter().map(|(hash, _)| hash.clone()));
        let output = run_arca(&all);
        assert!(
            output.status.success(),
            "arca {all:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).expect("hashes are ASCII");
        let expected: String = cases.iter().map(|(_, out)| format!("{out}\n")).collect();
        assert_eq!(stdout, expected, "arca {all:?}");
    }
    for (args, nix_cmd) in &failures {
        let output = run_arca(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "arca {args:?} (Nix refused `{nix_cmd}`) must fail with exit 1; stdout {:?}, stderr {stderr:?}",
            String::from_utf8_lossy(&output.stdout)
        );
        assert!(output.stdout.is_empty(), "arca {args:?} printed a result");
        let hash = args.last().unwrap();
        assert!(
            stderr.starts_with("error: ") && stderr.lines().count() == 1,
            "arca {args:?}: one `error: ` line expected, got {stderr:?}"
        );
        assert!(
            stderr.contains(hash.as_str()),
            "arca {args:?}: the error names the hash at fault, got {stderr:?}"
        );
    }
}
