//! Realisations (Nix's `ca-derivations`): which store path an output of a derivation
//! came to be, for derivations whose output paths are not known in advance.
//!
//! A [`DrvOutput`] names an output by the derivation's static output hash (its hash
//! modulo with outputs masked, [`crate::derivation::ModuloHashCache::static_output_hash`])
//! and the output's name: `sha256:<base16>!out`. A [`Realisation`] maps it to a path,
//! with the realisations of inputs that path refers to (`dependentRealisations`) and
//! signatures over its JSON form without them ([`Realisation::fingerprint`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

use crate::derivation::OutputName;
use crate::hash::Hash;
use crate::signature::SecretKey;
use crate::store_path::StorePath;

/// An output of a derivation, named by the derivation's static output hash.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DrvOutput {
    pub drv_hash: Hash,
    pub output: OutputName,
}

/// A realisation or its id that is not what Nix writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RealisationError {
    #[error("invalid derivation output id '{0}' (expected HASH!OUTPUT)")]
    InvalidId(String),
    #[error("invalid realisation JSON: {0}")]
    InvalidJson(String),
}

impl DrvOutput {
    /// Parses `algo:base16!output` (any encoding Nix accepts for the prefixed hash).
    pub fn parse(text: &str) -> Result<DrvOutput, RealisationError> {
        let invalid = || RealisationError::InvalidId(text.to_owned());
        let (hash, output) = text.rsplit_once('!').ok_or_else(invalid)?;
        if !hash.contains(':') {
            return Err(invalid());
        }
        Ok(DrvOutput {
            drv_hash: Hash::parse(hash, None).map_err(|_| invalid())?,
            output: OutputName::new(output).map_err(|_| invalid())?,
        })
    }
}

/// `sha256:<base16>!<output>`, as Nix prints it.
impl fmt::Display for DrvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}!{}",
            self.drv_hash.algo(),
            self.drv_hash.to_base16(),
            self.output
        )
    }
}

/// Where an output of a derivation came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realisation {
    pub id: DrvOutput,
    pub out_path: StorePath,
    /// `NAME:BASE64` signatures over [`Realisation::fingerprint`].
    pub signatures: BTreeSet<String>,
    /// The realisations of input derivations' outputs that `out_path` refers to.
    pub dependent_realisations: BTreeMap<DrvOutput, StorePath>,
}

impl Realisation {
    pub fn new(id: DrvOutput, out_path: StorePath) -> Realisation {
        Realisation {
            id,
            out_path,
            signatures: BTreeSet::new(),
            dependent_realisations: BTreeMap::new(),
        }
    }

    fn json_object(&self, with_signatures: bool) -> Map<String, Value> {
        // serde_json's map is sorted by key, as nlohmann's (Nix's) is.
        let mut object = Map::new();
        let dependent: Map<String, Value> = self
            .dependent_realisations
            .iter()
            .map(|(id, path)| (id.to_string(), Value::String(path.as_str().to_owned())))
            .collect();
        object.insert("dependentRealisations".into(), Value::Object(dependent));
        object.insert("id".into(), Value::String(self.id.to_string()));
        object.insert(
            "outPath".into(),
            Value::String(self.out_path.as_str().to_owned()),
        );
        if with_signatures {
            let signatures = self.signatures.iter().cloned().map(Value::String).collect();
            object.insert("signatures".into(), Value::Array(signatures));
        }
        object
    }

    /// The JSON Nix sends and stores (keys sorted, paths as base names).
    pub fn to_json(&self) -> String {
        Value::Object(self.json_object(true)).to_string()
    }

    /// What a signature of the realisation signs: its JSON without `signatures`.
    pub fn fingerprint(&self) -> String {
        Value::Object(self.json_object(false)).to_string()
    }

    /// Signs the realisation with `key`, keeping the signatures it has.
    pub fn sign(&mut self, key: &SecretKey) {
        let signature = key.sign(&self.fingerprint());
        self.signatures.insert(signature.to_string());
    }

    /// The names of the keys among `trusted` whose signatures of the realisation verify
    /// (each counted once).
    pub fn trusted_signers(&self, trusted: &[crate::PublicKey]) -> BTreeSet<String> {
        crate::signature::trusted_signers(&self.signatures, &self.fingerprint(), trusted)
    }

    /// Reads Nix's JSON form (`dependentRealisations` may be missing).
    pub fn from_json(text: &str) -> Result<Realisation, RealisationError> {
        let invalid = |what: &str| RealisationError::InvalidJson(what.to_owned());
        let value: Value =
            serde_json::from_str(text).map_err(|error| invalid(&error.to_string()))?;
        let object = value.as_object().ok_or_else(|| invalid("not an object"))?;
        let string = |key: &str| {
            object
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(&format!("'{key}' is missing or not a string")))
        };
        let path = |text: &str| {
            StorePath::from_base_name(text).map_err(|error| invalid(&format!("'{text}': {error}")))
        };
        let id = DrvOutput::parse(string("id")?)?;
        let out_path = path(string("outPath")?)?;
        let mut signatures = BTreeSet::new();
        if let Some(list) = object.get("signatures") {
            for signature in list
                .as_array()
                .ok_or_else(|| invalid("'signatures' is not a list"))?
            {
                let text = signature
                    .as_str()
                    .ok_or_else(|| invalid("a signature is not a string"))?;
                signatures.insert(text.to_owned());
            }
        }
        let mut dependent_realisations = BTreeMap::new();
        if let Some(map) = object.get("dependentRealisations") {
            let map = map
                .as_object()
                .ok_or_else(|| invalid("'dependentRealisations' is not an object"))?;
            for (id, target) in map {
                let target = target
                    .as_str()
                    .ok_or_else(|| invalid("a dependent realisation is not a string"))?;
                dependent_realisations.insert(DrvOutput::parse(id)?, path(target)?);
            }
        }
        Ok(Realisation {
            id,
            out_path,
            signatures,
            dependent_realisations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashAlgo;

    fn id() -> DrvOutput {
        DrvOutput {
            drv_hash: Hash::digest(HashAlgo::Sha256, b"drv"),
            output: OutputName::out(),
        }
    }

    #[test]
    fn ids_print_and_parse_as_nix_writes_them() {
        let text = id().to_string();
        assert!(
            text.starts_with("sha256:") && text.ends_with("!out"),
            "{text}"
        );
        assert_eq!(text.len(), "sha256:".len() + 64 + "!out".len());
        assert_eq!(DrvOutput::parse(&text).unwrap(), id());
        for bad in [
            "",
            "sha256:00!out",
            "nohash!out",
            "sha256:abc",
            &text.replace("!out", "!"),
        ] {
            assert!(DrvOutput::parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_realisation_round_trips_through_json(
            seeds in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..4),
            output in "[a-z][a-z0-9]{0,7}",
            signatures in proptest::collection::btree_set("[a-z]{1,5}:[A-Za-z0-9+/]{4}", 0..3),
        ) {
            let path = |seed: u8| {
                let hash = crate::base32::encode(&[seed; 20]);
                StorePath::from_base_name(&format!("{hash}-p{seed}")).unwrap()
            };
            let id = |seed: u8| DrvOutput {
                drv_hash: Hash::digest(HashAlgo::Sha256, &[seed]),
                output: OutputName::new(&output).unwrap(),
            };
            let mut realisation = Realisation::new(id(seeds[0]), path(seeds[0]));
            realisation.signatures = signatures;
            for seed in &seeds[1..] {
                realisation.dependent_realisations.insert(id(*seed), path(*seed));
            }
            let parsed = Realisation::from_json(&realisation.to_json()).unwrap();
            proptest::prop_assert_eq!(&parsed, &realisation);
            proptest::prop_assert_eq!(DrvOutput::parse(&realisation.id.to_string()).unwrap(), realisation.id.clone());
        }
    }

    #[test]
    fn json_round_trips_with_sorted_keys() {
        let path = StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-dep").unwrap();
        let mut realisation = Realisation::new(id(), path.clone());
        realisation.dependent_realisations.insert(id(), path);
        let json = realisation.to_json();
        assert!(json.starts_with("{\"dependentRealisations\":{"), "{json}");
        assert_eq!(Realisation::from_json(&json).unwrap(), realisation);
        assert_eq!(
            realisation.fingerprint(),
            json.replace(",\"signatures\":[]", "")
        );
        assert!(Realisation::from_json("{\"id\":\"x\"}").is_err());
        assert!(Realisation::from_json("[]").is_err());
    }
}
