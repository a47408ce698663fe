//! Store paths and the store directory, and the ways Nix computes a path from content.
//!
//! A store path is `<store dir>/<hash part>-<name>`: 32 nix-base32 characters encoding 160
//! bits, a dash, and a name. The hash part is the XOR-fold of a sha256 over a
//! *fingerprint* `<type>:sha256:<base16 inner hash>:<store dir>:<name>`, so the same
//! content in another store directory gets another path.

use std::collections::BTreeSet;
use std::fmt;

use thiserror::Error;

use crate::base32;
use crate::hash::{Hash, HashAlgo};

/// Characters in a store path's hash part.
pub const HASH_PART_LEN: usize = 32;
/// Nix's limit on the length of a store path name.
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a store path (or a store directory), or a path cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    #[error("store path '{0}' is too short to be valid")]
    TooShort(String),
    #[error(
        "store path '{path}' contains illegal nix-base32 character {character:?} in its hash part"
    )]
    InvalidHashPart { path: String, character: char },
    #[error("store path '{0}' has no '-' between its hash part and its name")]
    MissingDash(String),
    #[error("store path name '{0}' is empty")]
    EmptyName(String),
    #[error("store path name '{name}' is longer than {MAX_NAME_LEN} characters")]
    NameTooLong { name: String },
    #[error("store path name '{name}' contains the forbidden character {character:?}")]
    InvalidNameCharacter { name: String, character: char },
    #[error("store path name '{0}' is not allowed")]
    ReservedName(String),
    #[error("path '{path}' is not in the Nix store '{store_dir}'")]
    NotInStore { path: String, store_dir: String },
    #[error("store directory '{0}' must be an absolute path without a trailing '/'")]
    InvalidStoreDir(String),
    #[error("{what} must be made from a sha256 hash, got {algo}")]
    NotSha256 { what: &'static str, algo: HashAlgo },
    #[error("a flat or non-sha256 fixed-output path cannot have references")]
    FixedOutputWithReferences,
}

/// Checks a store path name by Nix's rules: 1 to 211 characters from `A-Z a-z 0-9 + - . _ ?
/// =`. Nix 2.8 accepts names starting with `.`; the names `.` and `..` are refused because
/// newer Nix refuses them and they are never what a caller means.
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName(name.to_owned()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong {
            name: name.to_owned(),
        });
    }
    if let Some(character) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c)))
    {
        return Err(StorePathError::InvalidNameCharacter {
            name: name.to_owned(),
            character,
        });
    }
    if name == "." || name == ".." {
        return Err(StorePathError::ReservedName(name.to_owned()));
    }
    Ok(())
}

/// A valid store path, held as its base name `<hash part>-<name>` (without the store
/// directory, which is a property of the store, not of the path).
///
/// Ordering is that of the base name's bytes, which is Nix's ordering of the full paths
/// within one store directory (and so the order of `.drv` input lists and fingerprints).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    base_name: String,
}

impl StorePath {
    /// Parses `<32 nix-base32 characters>-<name>`.
    pub fn from_base_name(base_name: &str) -> Result<StorePath, StorePathError> {
        let bytes = base_name.as_bytes();
        if bytes.len() < HASH_PART_LEN + 2 {
            return Err(StorePathError::TooShort(base_name.to_owned()));
        }
        if let Some(character) = base_name
            .chars()
            .take(HASH_PART_LEN)
            .find(|&c| !c.is_ascii() || !base32::is_base32_char(c as u8))
        {
            return Err(StorePathError::InvalidHashPart {
                path: base_name.to_owned(),
                character,
            });
        }
        if bytes[HASH_PART_LEN] != b'-' {
            return Err(StorePathError::MissingDash(base_name.to_owned()));
        }
        validate_name(&base_name[HASH_PART_LEN + 1..])?;
        Ok(StorePath {
            base_name: base_name.to_owned(),
        })
    }

    /// Builds a path from the 20-byte digest of its fingerprint and a name.
    pub fn from_hash(digest: &[u8; 20], name: &str) -> Result<StorePath, StorePathError> {
        validate_name(name)?;
        Ok(StorePath {
            base_name: format!("{}-{name}", base32::encode(digest)),
        })
    }

    /// The 32-character nix-base32 hash part.
    pub fn hash_part(&self) -> &str {
        &self.base_name[..HASH_PART_LEN]
    }

    /// The name after the dash.
    pub fn name(&self) -> &str {
        &self.base_name[HASH_PART_LEN + 1..]
    }

    /// `<hash part>-<name>`.
    pub fn as_str(&self) -> &str {
        &self.base_name
    }

    /// True for paths of derivations (`….drv`).
    pub fn is_derivation(&self) -> bool {
        self.name().ends_with(".drv")
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base_name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({})", self.base_name)
    }
}

/// How a fixed-output path's content was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ContentAddressMethod {
    /// The hash is of the file's bytes (`nix-store --add-fixed`).
    Flat,
    /// The hash is of the NAR serialisation (`nix-store --add`, `--add-fixed --recursive`).
    Recursive,
}

impl ContentAddressMethod {
    /// The prefix Nix puts before the algorithm in `.drv` files and fingerprints: `r:`
    /// for recursive, nothing for flat.
    pub fn prefix(self) -> &'static str {
        match self {
            ContentAddressMethod::Flat => "",
            ContentAddressMethod::Recursive => "r:",
        }
    }
}

/// A store path with the store directory it is in: what an error carries, so that it
/// prints the full path (`/nix/store/…`, as Nix's messages do) and its receiver can
/// still match on the [`StorePath`] itself.
/// One pointer wide, so that error enums carrying several stay small.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FullStorePath(Box<(StoreDir, StorePath)>);

impl FullStorePath {
    /// The store path.
    pub fn path(&self) -> &StorePath {
        &self.0 .1
    }

    /// The store directory it is in.
    pub fn store_dir(&self) -> &StoreDir {
        &self.0 .0
    }
}

impl fmt::Display for FullStorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.store_dir(), self.path().as_str())
    }
}

/// The logical store directory, `/nix/store` unless configured otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreDir(String);

impl Default for StoreDir {
    fn default() -> StoreDir {
        StoreDir("/nix/store".to_owned())
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StoreDir {
    /// Checks that `dir` is absolute and has no trailing slash (paths are hashed with the
    /// store dir as written, so `/nix/store/` would silently give other hashes).
    pub fn new(dir: &str) -> Result<StoreDir, StorePathError> {
        let ok = dir.starts_with('/')
            && dir.len() > 1
            && !dir.ends_with('/')
            && !dir
                .split('/')
                .skip(1)
                .any(|c| c.is_empty() || c == "." || c == "..");
        if ok {
            Ok(StoreDir(dir.to_owned()))
        } else {
            Err(StorePathError::InvalidStoreDir(dir.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full path of `path` in this store.
    pub fn display(&self, path: &StorePath) -> String {
        format!("{}/{}", self.0, path.as_str())
    }

    /// `path` with this store directory: what errors carry (see [`FullStorePath`]).
    pub fn full(&self, path: &StorePath) -> FullStorePath {
        FullStorePath(Box::new((self.clone(), path.clone())))
    }

    /// Parses a full path `<store dir>/<base name>` (nothing below it).
    pub fn parse_path(&self, full: &str) -> Result<StorePath, StorePathError> {
        let not_in_store = || StorePathError::NotInStore {
            path: full.to_owned(),
            store_dir: self.0.clone(),
        };
        let base_name = full
            .strip_prefix(self.0.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(not_in_store)?;
        let base_name = base_name.strip_suffix('/').unwrap_or(base_name);
        if base_name.contains('/') {
            return Err(not_in_store());
        }
        StorePath::from_base_name(base_name)
    }

    /// Splits a path inside the store into the store path and the rest below it
    /// (`/nix/store/…-hello/bin/hello` → (`…-hello`, `bin/hello`)).
    pub fn parse_path_prefix<'a>(
        &self,
        full: &'a str,
    ) -> Result<(StorePath, &'a str), StorePathError> {
        let rest = full
            .strip_prefix(self.0.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore {
                path: full.to_owned(),
                store_dir: self.0.clone(),
            })?;
        let (base_name, below) = rest.split_once('/').unwrap_or((rest, ""));
        Ok((StorePath::from_base_name(base_name)?, below))
    }

    /// Nix's `makeStorePath`: the path for a fingerprint of type `path_type` over the
    /// sha256 `inner` hash.
    pub fn make_store_path(
        &self,
        path_type: &str,
        inner: &Hash,
        name: &str,
    ) -> Result<StorePath, StorePathError> {
        if inner.algo() != HashAlgo::Sha256 {
            return Err(StorePathError::NotSha256 {
                what: "a store path",
                algo: inner.algo(),
            });
        }
        validate_name(name)?;
        let fingerprint = format!("{path_type}:sha256:{}:{}:{name}", inner.to_base16(), self.0);
        let digest = Hash::digest(HashAlgo::Sha256, fingerprint.as_bytes()).compress(20);
        let mut folded = [0u8; 20];
        folded.copy_from_slice(&digest);
        StorePath::from_hash(&folded, name)
    }

    /// `<kind>:<ref1>:<ref2>…[:self]`, the path type of content-addressed paths.
    fn path_type(
        &self,
        kind: &str,
        references: &BTreeSet<StorePath>,
        self_reference: bool,
    ) -> String {
        let mut path_type = kind.to_owned();
        for reference in references {
            path_type.push(':');
            path_type.push_str(&self.display(reference));
        }
        if self_reference {
            path_type.push_str(":self");
        }
        path_type
    }

    /// A text path (`builtins.toFile`, `.drv` files): the sha256 of the contents, with
    /// references but never a self-reference.
    pub fn make_text_path(
        &self,
        name: &str,
        content_hash: &Hash,
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StorePathError> {
        if content_hash.algo() != HashAlgo::Sha256 {
            return Err(StorePathError::NotSha256 {
                what: "a text path",
                algo: content_hash.algo(),
            });
        }
        self.make_store_path(
            &self.path_type("text", references, false),
            content_hash,
            name,
        )
    }

    /// A source path (`nix-store --add`): the sha256 of the NAR, with references and an
    /// optional self-reference.
    pub fn make_source_path(
        &self,
        name: &str,
        nar_hash: &Hash,
        references: &BTreeSet<StorePath>,
        self_reference: bool,
    ) -> Result<StorePath, StorePathError> {
        self.make_store_path(
            &self.path_type("source", references, self_reference),
            nar_hash,
            name,
        )
    }

    /// A fixed-output path. Recursive sha256 is a source path; anything else hashes the
    /// descriptor `fixed:out:[r:]<algo>:<base16>:` and may have no references.
    pub fn make_fixed_output_path(
        &self,
        name: &str,
        method: ContentAddressMethod,
        hash: &Hash,
        references: &BTreeSet<StorePath>,
        self_reference: bool,
    ) -> Result<StorePath, StorePathError> {
        if method == ContentAddressMethod::Recursive && hash.algo() == HashAlgo::Sha256 {
            return self.make_source_path(name, hash, references, self_reference);
        }
        if !references.is_empty() || self_reference {
            return Err(StorePathError::FixedOutputWithReferences);
        }
        let descriptor = format!(
            "fixed:out:{}{}:{}:",
            method.prefix(),
            hash.algo(),
            hash.to_base16()
        );
        let inner = Hash::digest(HashAlgo::Sha256, descriptor.as_bytes());
        self.make_store_path("output:out", &inner, name)
    }

    /// The path of output `output_name` of a derivation named `drv_name` (without `.drv`)
    /// whose hashDerivationModulo is `drv_hash`.
    pub fn make_output_path(
        &self,
        output_name: &str,
        drv_hash: &Hash,
        drv_name: &str,
    ) -> Result<StorePath, StorePathError> {
        let name = if output_name == "out" {
            drv_name.to_owned()
        } else {
            format!("{drv_name}-{output_name}")
        };
        self.make_store_path(&format!("output:{output_name}"), drv_hash, &name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(base_name: &str) -> StorePath {
        StorePath::from_base_name(base_name).unwrap()
    }

    #[test]
    fn parses_base_name_into_hash_part_and_name() {
        let p = path("7rjj86a15146cq1d3qy068lml7n8ykzm-hello-2.10");
        assert_eq!(p.hash_part(), "7rjj86a15146cq1d3qy068lml7n8ykzm");
        assert_eq!(p.name(), "hello-2.10");
        let dir = StoreDir::default();
        assert_eq!(dir.parse_path(&dir.display(&p)).unwrap(), p);
    }

    #[test]
    fn rejects_bad_hash_part_characters() {
        for bad in ["e", "o", "u", "t", "A", "_"] {
            let base = format!("{}{}-x", bad, "0".repeat(31));
            assert!(
                matches!(
                    StorePath::from_base_name(&base),
                    Err(StorePathError::InvalidHashPart { .. })
                ),
                "{base}"
            );
        }
    }

    #[test]
    fn name_rules_match_nix() {
        assert!(validate_name("a+b-c.d_e?f=g").is_ok());
        assert!(validate_name(".hidden").is_ok());
        assert!(validate_name(&"x".repeat(211)).is_ok());
        assert!(matches!(
            validate_name(&"x".repeat(212)),
            Err(StorePathError::NameTooLong { .. })
        ));
        assert!(matches!(
            validate_name(""),
            Err(StorePathError::EmptyName(_))
        ));
        assert!(matches!(
            validate_name("a b"),
            Err(StorePathError::InvalidNameCharacter { character: ' ', .. })
        ));
        assert!(matches!(
            validate_name("é"),
            Err(StorePathError::InvalidNameCharacter {
                character: 'é', ..
            })
        ));
        assert!(matches!(
            validate_name(".."),
            Err(StorePathError::ReservedName(_))
        ));
    }

    #[test]
    fn non_ascii_in_hash_part_is_an_error_not_a_panic() {
        let base = format!("é{}-x", "0".repeat(31));
        assert!(matches!(
            StorePath::from_base_name(&base),
            Err(StorePathError::InvalidHashPart {
                character: 'é', ..
            })
        ));
    }

    #[test]
    fn parse_path_refuses_other_directories_and_subpaths() {
        let dir = StoreDir::default();
        let base = "7rjj86a15146cq1d3qy068lml7n8ykzm-hello";
        assert!(dir.parse_path(&format!("/nix/store2/{base}")).is_err());
        assert!(dir.parse_path(&format!("/nix/store/{base}/bin")).is_err());
        let full = format!("/nix/store/{base}/bin/hello");
        let (p, rest) = dir.parse_path_prefix(&full).unwrap();
        assert_eq!((p.as_str(), rest), (base, "bin/hello"));
    }

    #[test]
    fn store_dir_must_be_canonical() {
        for bad in [
            "",
            "/",
            "nix/store",
            "/nix/store/",
            "/nix//store",
            "/nix/../store",
        ] {
            assert!(StoreDir::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_path_of_tofile_matches_nix() {
        // builtins.toFile "foo" "bar" in Nix 2.8 gives this path.
        let hash = Hash::digest(HashAlgo::Sha256, b"bar");
        let p = StoreDir::default()
            .make_text_path("foo", &hash, &BTreeSet::new())
            .unwrap();
        assert_eq!(p.as_str(), "vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo");
    }

    #[test]
    fn flat_sha1_fixed_output_path_matches_nix() {
        // `nix-store --add-fixed sha1 barfile`, barfile holding "bar".
        let hash = Hash::digest(HashAlgo::Sha1, b"bar");
        let p = StoreDir::default()
            .make_fixed_output_path(
                "barfile",
                ContentAddressMethod::Flat,
                &hash,
                &BTreeSet::new(),
                false,
            )
            .unwrap();
        assert_eq!(p.as_str(), "77immb8jp2shqmgaxspk8wf9z45fv5s4-barfile");
    }
}
