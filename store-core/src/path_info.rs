//! What a store knows about a valid path: Nix's `ValidPathInfo`.

use std::collections::BTreeSet;
use std::fmt;

use thiserror::Error;

use crate::hash::{Hash, HashAlgo, HashError};
use crate::store_path::{ContentAddressMethod, StoreDir, StorePath, StorePathError};

/// An assertion that a path's content determines its name (the `ca` column of the
/// registry, `CA:` of a narinfo): `text:sha256:<base32>` or `fixed:[r:]<algo>:<base32>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ContentAddress {
    /// A text path (`builtins.toFile`, `.drv` files): sha256 of the contents.
    Text(Hash),
    /// A fixed-output path (`nix-store --add`, `--add-fixed`, fixed-output derivations).
    Fixed {
        method: ContentAddressMethod,
        hash: Hash,
    },
}

/// How a dump added to a store is to be addressed (Nix's `ContentAddressMethodWithAlgo`,
/// what `AddToStore` names): `text:ALGO` (the dump is the text), `fixed:ALGO` (a file's
/// bytes) or `fixed:r:ALGO` (a NAR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressingMethod {
    Text(HashAlgo),
    Fixed(ContentAddressMethod, HashAlgo),
}

/// A method that is not `text:ALGO`, `fixed:ALGO` or `fixed:r:ALGO`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid content address method '{0}' (expected text:ALGO, fixed:ALGO or fixed:r:ALGO)")]
pub struct InvalidAddressingMethod(pub String);

impl AddressingMethod {
    /// `fixed:r:sha256`, what `nix-store --add` uses.
    pub const NIX_STORE_ADD: AddressingMethod =
        AddressingMethod::Fixed(ContentAddressMethod::Recursive, HashAlgo::Sha256);

    pub fn parse(text: &str) -> Result<AddressingMethod, InvalidAddressingMethod> {
        let invalid = || InvalidAddressingMethod(text.to_owned());
        let algo = |name: &str| HashAlgo::from_name(name).map_err(|_| invalid());
        if let Some(name) = text.strip_prefix("text:") {
            return Ok(AddressingMethod::Text(algo(name)?));
        }
        let body = text.strip_prefix("fixed:").ok_or_else(invalid)?;
        Ok(match body.strip_prefix("r:") {
            Some(name) => AddressingMethod::Fixed(ContentAddressMethod::Recursive, algo(name)?),
            None => AddressingMethod::Fixed(ContentAddressMethod::Flat, algo(body)?),
        })
    }
}

/// As Nix writes it: `text:sha256`, `fixed:sha1`, `fixed:r:sha256`.
impl fmt::Display for AddressingMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressingMethod::Text(algo) => write!(f, "text:{algo}"),
            AddressingMethod::Fixed(method, algo) => {
                write!(f, "fixed:{}{algo}", method.prefix())
            }
        }
    }
}

/// Why a content address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContentAddressError {
    #[error("content address '{0}' is neither 'text:…' nor 'fixed:…'")]
    UnknownKind(String),
    #[error("text content address '{0}' must use sha256")]
    TextNotSha256(String),
    #[error("invalid hash in content address '{text}'")]
    Hash { text: String, source: HashError },
}

impl ContentAddress {
    /// Parses the form Nix writes into the registry.
    pub fn parse(text: &str) -> Result<ContentAddress, ContentAddressError> {
        let hash = |body: &str| {
            Hash::parse(body, None).map_err(|source| ContentAddressError::Hash {
                text: text.to_owned(),
                source,
            })
        };
        if let Some(body) = text.strip_prefix("text:") {
            let hash = hash(body)?;
            if hash.algo() != HashAlgo::Sha256 {
                return Err(ContentAddressError::TextNotSha256(text.to_owned()));
            }
            Ok(ContentAddress::Text(hash))
        } else if let Some(body) = text.strip_prefix("fixed:") {
            let (method, body) = match body.strip_prefix("r:") {
                Some(rest) => (ContentAddressMethod::Recursive, rest),
                None => (ContentAddressMethod::Flat, body),
            };
            Ok(ContentAddress::Fixed {
                method,
                hash: hash(body)?,
            })
        } else {
            Err(ContentAddressError::UnknownKind(text.to_owned()))
        }
    }

    /// The store path this content address gives `name` with `references`.
    pub fn store_path(
        &self,
        store_dir: &StoreDir,
        name: &str,
        references: &BTreeSet<StorePath>,
        self_reference: bool,
    ) -> Result<StorePath, StorePathError> {
        match self {
            ContentAddress::Text(hash) => store_dir.make_text_path(name, hash, references),
            ContentAddress::Fixed { method, hash } => {
                store_dir.make_fixed_output_path(name, *method, hash, references, self_reference)
            }
        }
    }
}

/// `text:sha256:<base32>` / `fixed:r:sha256:<base32>`, as Nix writes it.
impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentAddress::Text(hash) => write!(f, "text:{hash}"),
            ContentAddress::Fixed { method, hash } => write!(f, "fixed:{}{hash}", method.prefix()),
        }
    }
}

/// Everything registered about a valid path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    /// The derivation that built it, if known.
    pub deriver: Option<StorePath>,
    /// sha256 of the path's NAR serialisation.
    pub nar_hash: Hash,
    pub nar_size: u64,
    /// Paths whose hash parts occur in the contents (may include `path` itself).
    pub references: BTreeSet<StorePath>,
    /// Seconds since the epoch.
    pub registration_time: i64,
    /// Whether this store built the path itself (trusted without signatures).
    pub ultimate: bool,
    /// Signatures `keyname:base64`, as Nix stores them (space-separated in the registry).
    pub signatures: BTreeSet<String>,
    pub ca: Option<ContentAddress>,
}

impl PathInfo {
    /// A path info with no deriver, signatures or content address, registered "now" by
    /// whoever stores it (`registration_time` 0 means "fill in on registration").
    pub fn new(path: StorePath, nar_hash: Hash, nar_size: u64) -> PathInfo {
        PathInfo {
            path,
            deriver: None,
            nar_hash,
            nar_size,
            references: BTreeSet::new(),
            registration_time: 0,
            ultimate: false,
            signatures: BTreeSet::new(),
            ca: None,
        }
    }

    /// What a signature of the path signs (Nix's `fingerprint`):
    /// `1;PATH;sha256:NAR-HASH-BASE32;NAR-SIZE;REF,REF,...` with full paths.
    pub fn fingerprint(&self, store_dir: &StoreDir) -> String {
        let references: Vec<String> = self
            .references
            .iter()
            .map(|r| store_dir.display(r))
            .collect();
        format!(
            "1;{};{}:{};{};{}",
            store_dir.display(&self.path),
            self.nar_hash.algo(),
            self.nar_hash.to_base32(),
            self.nar_size,
            references.join(",")
        )
    }

    /// Signs the path with `key`, keeping the signatures it has.
    pub fn sign(&mut self, store_dir: &StoreDir, key: &crate::SecretKey) {
        let signature = key.sign(&self.fingerprint(store_dir));
        self.signatures.insert(signature.to_string());
    }

    /// The names of the keys among `trusted` whose signatures of the path verify (each
    /// key counted once), as `nix store verify --sigs-needed` counts them.
    pub fn trusted_signers(
        &self,
        store_dir: &StoreDir,
        trusted: &[crate::PublicKey],
    ) -> std::collections::BTreeSet<String> {
        crate::signature::trusted_signers(&self.signatures, &self.fingerprint(store_dir), trusted)
    }

    /// Whether the path refers to itself.
    pub fn has_self_reference(&self) -> bool {
        self.references.contains(&self.path)
    }

    /// Checks the content address against the path: a path claiming to be
    /// content-addressed must have exactly the path its content address gives.
    pub fn is_content_addressed_correctly(&self, store_dir: &StoreDir) -> bool {
        let Some(ca) = &self.ca else { return false };
        let mut others = self.references.clone();
        let self_reference = others.remove(&self.path);
        // A text path cannot refer to itself (its hash would have to contain itself):
        // Nix hashes a claimed self-reference with the others, which never gives the
        // path, so nobody can register one.
        if self_reference && matches!(ca, ContentAddress::Text(_)) {
            return false;
        }
        ca.store_path(store_dir, self.path.name(), &others, self_reference)
            .is_ok_and(|computed| computed == self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addressing_methods_print_and_parse_as_nix_writes_them() {
        for text in [
            "text:sha256",
            "fixed:sha1",
            "fixed:r:sha256",
            "fixed:md5",
            "fixed:r:sha512",
        ] {
            assert_eq!(AddressingMethod::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            AddressingMethod::parse("fixed:r:sha256").unwrap(),
            AddressingMethod::NIX_STORE_ADD
        );
        for bad in [
            "",
            "fixed",
            "fixed:r:",
            "text:sha3",
            "nar:sha256",
            "fixed:r:r:sha256",
        ] {
            assert!(AddressingMethod::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_addresses_round_trip_through_nix_text() {
        for text in [
            "fixed:r:sha256:02byc4k807gr42alg40vwhdxicrgcini00pappn2d6cscskmp7jl",
            "text:sha256:02byc4k807gr42alg40vwhdxicrgcini00pappn2d6cscskmp7jl",
            "fixed:sha1:1my6wkpxsz0sxyvp04vr6mn4s7bhzw9a",
        ] {
            let ca = ContentAddress::parse(text).unwrap();
            assert_eq!(ca.to_string(), text);
        }
        assert!(matches!(
            ContentAddress::parse("source:sha256:x"),
            Err(ContentAddressError::UnknownKind(_))
        ));
    }

    #[test]
    fn nix_store_add_content_address_gives_its_path() {
        // `nix-store --add` of a small tree in Nix 2.8 registered exactly this.
        let path = StorePath::from_base_name("s5w08jzmjzm7qbq2xi0v5y4yxcd23d5n-d").unwrap();
        let nar_hash = Hash::from_base16(
            HashAlgo::Sha256,
            "549e5ba7669a9926ecbdea02106d642fb3d81be41b90479520f91d8026617e09",
        )
        .unwrap();
        let mut info = PathInfo::new(path, nar_hash, 480);
        info.ca = Some(
            ContentAddress::parse(
                "fixed:r:sha256:02byc4k807gr42alg40vwhdxicrgcini00pappn2d6cscskmp7jl",
            )
            .unwrap(),
        );
        assert!(info.is_content_addressed_correctly(&StoreDir::default()));
    }
}
