//! Fuzz body for the `.drv` (ATerm) parser.
//!
//! Input: optionally a first line holding the derivation's name (a `.drv` text never
//! contains a raw newline, Nix escapes them), then the `.drv` text. The name matters
//! because fixed-output paths are checked against it; without one, `fuzz` is used.

use arca_store_core::derivation::{
    compute_output_paths, derivation_path, hash_derivation_modulo, parse_show_derivation_json,
    show_derivations_json, Derivation, DrvHash,
};
use arca_store_core::hash::{Hash, HashAlgo};
use arca_store_core::store_path::StoreDir;

/// Never panics; whatever parses prints to a text that parses to the same derivation and
/// prints identically again, and survives the JSON form and output path computation.
pub fn fuzz_drv_parse(data: &[u8]) {
    let (name, text) = split_name(data);
    let store_dir = StoreDir::default();
    let Ok(drv) = Derivation::parse(&store_dir, name, text) else {
        return;
    };

    let printed = drv.to_aterm(&store_dir);
    let reparsed = Derivation::parse(&store_dir, name, printed.as_bytes())
        .unwrap_or_else(|e| panic!("printed derivation does not parse: {e}\n{printed}"));
    assert_eq!(reparsed, drv, "printed derivation parses differently");
    assert_eq!(
        reparsed.to_aterm(&store_dir),
        printed,
        "printing is not stable"
    );

    // The JSON form carries the same derivation (when the name gives a valid .drv path).
    if let Ok(path) = derivation_path(&store_dir, &drv) {
        let json = show_derivations_json(&store_dir, [(&path, &drv)]);
        let back = parse_show_derivation_json(&store_dir, &json)
            .unwrap_or_else(|e| panic!("shown JSON does not parse: {e}\n{json}"));
        assert_eq!(back, vec![(path, drv.clone())], "JSON round trip differs");
    }

    // Hashing and output path computation may refuse, but must not panic.
    let any_input = |_: &_| {
        Ok::<_, std::convert::Infallible>(DrvHash {
            hash: Hash::digest(HashAlgo::Sha256, b""),
            deferred: false,
        })
    };
    let _ = hash_derivation_modulo(&drv, &store_dir, any_input);
    let mut computed = drv;
    if compute_output_paths(&mut computed, &store_dir, any_input).is_ok() {
        let again = Derivation::parse(&store_dir, name, computed.to_aterm(&store_dir).as_bytes());
        assert_eq!(
            again.as_ref(),
            Ok(&computed),
            "computed derivation does not re-parse"
        );
    }
}

fn split_name(data: &[u8]) -> (&str, &[u8]) {
    if let Some(newline) = data.iter().position(|&b| b == b'\n') {
        if let Ok(name) = std::str::from_utf8(&data[..newline]) {
            return (name, &data[newline + 1..]);
        }
    }
    ("fuzz", data)
}
