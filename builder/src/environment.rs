//! The environment a builder sees, exactly as Nix 2.8 sets it (`initEnv`): the
//! derivation's own variables over a fixed base, `passAsFile` variables turned into files
//! in the build directory, and the build directory in every temporary-directory variable;
//! or, with structured attributes, `.attrs.json` and `.attrs.sh` instead of the
//! derivation's variables.

use std::collections::{BTreeMap, BTreeSet};

use arca_store_core::derivation::{Derivation, OutputName};
use arca_store_core::{Hash, HashAlgo, StoreDir, StorePath};

use crate::structured_attrs::structured_attrs;

/// Where the build directory is inside the sandbox.
pub const SANDBOX_BUILD_DIR: &str = "/build";

/// What a builder starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildEnvironment {
    /// Every variable, sorted by name (Nix keeps them in a sorted map too).
    pub vars: BTreeMap<String, String>,
    /// Files to create in the build directory first: (file name, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// The structured attributes (with `outputs` filled in), when the derivation has them.
    pub structured: Option<serde_json::Value>,
}

/// Computes the environment of `drv`'s builder, whose outputs are `outputs` and whose
/// build directory it sees at `build_top` ([`SANDBOX_BUILD_DIR`] in the sandbox, the
/// host path without one). `impure`
/// answers `impureEnvVars` of a fixed-output or impure derivation from the caller's environment
/// (unset variables become empty, as in Nix). Fails only on malformed structured
/// attributes.
pub fn build_environment(
    drv: &Derivation,
    outputs: &BTreeMap<OutputName, StorePath>,
    store_dir: &StoreDir,
    build_top: &str,
    cores: u32,
    impure: &dyn Fn(&str) -> Option<String>,
) -> Result<BuildEnvironment, String> {
    let mut vars = BTreeMap::new();
    // Defaults a derivation may override.
    vars.insert("PATH".to_string(), "/path-not-set".to_string());
    vars.insert("HOME".to_string(), "/homeless-shelter".to_string());
    vars.insert("NIX_STORE".to_string(), store_dir.as_str().to_string());
    vars.insert("NIX_BUILD_CORES".to_string(), cores.to_string());

    let pass_as_file: BTreeSet<&str> = drv
        .env
        .get("passAsFile")
        .map(|names| names.split_whitespace().collect())
        .unwrap_or_default();
    let mut files = Vec::new();
    let structured = match drv.env.get("__json") {
        Some(json) => {
            let attrs = structured_attrs(json, outputs, store_dir)?;
            // Nix 2.8 sets these to the build directory's host path even in the
            // sandbox, where a builder cannot open it (fixed in later Nix); the path
            // the builder sees is what works.
            vars.insert(
                "NIX_ATTRS_JSON_FILE".to_string(),
                format!("{build_top}/.attrs.json"),
            );
            vars.insert(
                "NIX_ATTRS_SH_FILE".to_string(),
                format!("{build_top}/.attrs.sh"),
            );
            files.push((".attrs.json".to_string(), attrs.json.into_bytes()));
            files.push((".attrs.sh".to_string(), attrs.shell.into_bytes()));
            Some(attrs.value)
        }
        None => None,
    };
    // With structured attributes, none of the derivation's variables is passed.
    let plain = if structured.is_some() {
        BTreeMap::new()
    } else {
        drv.env.clone()
    };
    for (name, value) in &plain {
        if pass_as_file.contains(name.as_str()) {
            let file = format!(
                ".attr-{}",
                Hash::digest(HashAlgo::Sha256, name.as_bytes()).to_base32()
            );
            vars.insert(format!("{name}Path"), format!("{build_top}/{file}"));
            files.push((file, value.clone().into_bytes()));
        } else {
            vars.insert(name.clone(), value.clone());
        }
    }
    for name in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
        vars.insert(name.to_string(), build_top.to_string());
    }
    if drv.has_network_access() {
        if let Some(names) = drv.env.get("impureEnvVars") {
            for name in names.split_whitespace() {
                vars.insert(name.to_string(), impure(name).unwrap_or_default());
            }
        }
    }
    vars.insert("NIX_LOG_FD".to_string(), "2".to_string());
    vars.insert("TERM".to_string(), "xterm-256color".to_string());
    // `builtins.placeholder` strings become the outputs' paths, in the variables and in
    // the files made from them, as in Nix.
    let rewrites = placeholder_rewrites(outputs, store_dir);
    for value in vars.values_mut() {
        *value = rewrite(value, &rewrites);
    }
    for (_, contents) in &mut files {
        if let Ok(text) = std::str::from_utf8(contents) {
            *contents = rewrite(text, &rewrites).into_bytes();
        }
    }
    Ok(BuildEnvironment {
        vars,
        files,
        structured,
    })
}

/// Each output's placeholder ([`OutputName::placeholder`]) and its path.
pub fn placeholder_rewrites(
    outputs: &BTreeMap<OutputName, StorePath>,
    store_dir: &StoreDir,
) -> Vec<(String, String)> {
    outputs
        .iter()
        .map(|(name, path)| (name.placeholder(), store_dir.display(path)))
        .collect()
}

/// `text` with every occurrence of each `(from, to)` replaced, in order (Nix's
/// `rewriteStrings`).
pub fn rewrite(text: &str, rewrites: &[(String, String)]) -> String {
    let mut text = text.to_string();
    for (from, to) in rewrites {
        if text.contains(from.as_str()) {
            text = text.replace(from.as_str(), to);
        }
    }
    text
}

/// Whether a binary cache may be asked for the outputs of `drv` (`allowSubstitutes`,
/// default true), as substitution (a later feature) must honour.
pub fn substitutes_allowed(drv: &Derivation) -> bool {
    drv.env.get("allowSubstitutes").is_none_or(|v| v == "1")
}

/// The derivation's `requiredSystemFeatures` (a list with structured attributes, else
/// words).
pub fn required_system_features(drv: &Derivation) -> BTreeSet<String> {
    match drv.env.get("__json") {
        Some(json) => serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|attrs| {
                attrs.get("requiredSystemFeatures")?.as_array().map(|list| {
                    list.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
            })
            .unwrap_or_default(),
        None => drv
            .env
            .get("requiredSystemFeatures")
            .map(|words| words.split_ascii_whitespace().map(String::from).collect())
            .unwrap_or_default(),
    }
}

/// Whether `drv` asks to be built locally rather than on a remote builder
/// (`preferLocalBuild`).
pub fn prefers_local_build(drv: &Derivation) -> bool {
    drv.env.get("preferLocalBuild").is_some_and(|v| v == "1")
}

/// A Boolean attribute of `drv` as Nix reads it (`getBoolAttr`): with structured
/// attributes, a JSON `true`; otherwise the variable is `1` (Nix passes `true` as `1`,
/// `false` as the empty string).
pub(crate) fn bool_attr(drv: &Derivation, name: &str) -> bool {
    match drv.env.get("__json") {
        Some(json) => serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|attrs| attrs.get(name).and_then(serde_json::Value::as_bool))
            .unwrap_or(false),
        None => drv.env.get(name).is_some_and(|v| v == "1"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_store_core::derivation::{DerivationOutput, OutputName};
    use arca_store_core::StorePath;

    fn drv(env: &[(&str, &str)]) -> Derivation {
        let out = StorePath::from_base_name("vv6zc7aa5dmqwl4lhir98z10a6kd88hn-probe").unwrap();
        Derivation {
            name: "probe".into(),
            outputs: [(
                OutputName::out(),
                DerivationOutput::InputAddressed { path: out },
            )]
            .into(),
            input_drvs: Default::default(),
            input_srcs: Default::default(),
            system: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            args: vec![],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn environment_matches_what_nix_gives_a_builder() {
        let env = build_environment(
            &drv(&[
                ("name", "probe"),
                ("out", "/nix/store/x-probe"),
                ("system", "x86_64-linux"),
            ]),
            &BTreeMap::new(),
            &StoreDir::default(),
            SANDBOX_BUILD_DIR,
            2,
            &|_| None,
        )
        .unwrap();
        let expected: BTreeMap<String, String> = [
            ("HOME", "/homeless-shelter"),
            ("NIX_BUILD_CORES", "2"),
            ("NIX_BUILD_TOP", "/build"),
            ("NIX_LOG_FD", "2"),
            ("NIX_STORE", "/nix/store"),
            ("PATH", "/path-not-set"),
            ("PWD", "/build"),
            ("TEMP", "/build"),
            ("TEMPDIR", "/build"),
            ("TERM", "xterm-256color"),
            ("TMP", "/build"),
            ("TMPDIR", "/build"),
            ("name", "probe"),
            ("out", "/nix/store/x-probe"),
            ("system", "x86_64-linux"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env.vars, expected);
        assert!(env.files.is_empty());
    }

    #[test]
    fn substitution_flags_follow_nix_booleans() {
        // Nix passes `true` as "1" and `false` as "" in a derivation's environment.
        assert!(substitutes_allowed(&drv(&[])));
        assert!(!substitutes_allowed(&drv(&[("allowSubstitutes", "")])));
        assert!(prefers_local_build(&drv(&[("preferLocalBuild", "1")])));
        assert!(!prefers_local_build(&drv(&[])));
    }

    #[test]
    fn pass_as_file_moves_values_into_files_named_by_hash() {
        let env = build_environment(
            &drv(&[
                ("passAsFile", "big"),
                ("big", "lots of text"),
                ("PATH", "/bin"),
            ]),
            &BTreeMap::new(),
            &StoreDir::default(),
            "/tmp/nix-build-x-0",
            1,
            &|_| None,
        )
        .unwrap();
        assert!(!env.vars.contains_key("big"));
        let file = format!(
            ".attr-{}",
            Hash::digest(HashAlgo::Sha256, b"big").to_base32()
        );
        assert_eq!(env.vars["bigPath"], format!("/tmp/nix-build-x-0/{file}"));
        assert_eq!(env.files, vec![(file, b"lots of text".to_vec())]);
        assert_eq!(
            env.vars["PATH"], "/bin",
            "the derivation overrides the default PATH"
        );
    }
}
