//! Signatures of store paths as Nix writes them: `NAME:BASE64`, the name of the key that
//! signed and an ed25519 signature in standard padded base64 (what `nix store sign` and
//! binary caches' `.narinfo` `Sig:` lines hold, and what the registry keeps,
//! space-separated, in `ValidPaths.sigs`).
//!
//! [`SecretKey`] and [`PublicKey`] are Nix's key files (`nix-store
//! --generate-binary-cache-key`): `NAME:BASE64` of the 64-byte ed25519 secret key
//! (seed and public key, as libsodium keeps it) or of the 32-byte public key. A path's
//! signature is over its *fingerprint* ([`crate::PathInfo::fingerprint`]).

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE64;
use thiserror::Error;

/// A signature of a store path: the signing key's name and the 64 bytes of an ed25519
/// signature. Built only by [`Signature::parse`] or [`Signature::new`], so the name
/// never holds `:` or whitespace (the registry separates signatures by spaces: a name
/// with one would read back as two signatures).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature {
    key_name: String,
    bytes: [u8; Signature::LENGTH],
}

/// Why a signature was refused; each variant names the signature's text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    #[error("signature '{0}' has no key name before ':'")]
    MissingKeyName(String),
    #[error("signature '{0}' has a key name with whitespace or ':'")]
    InvalidKeyName(String),
    #[error("signature '{0}' is not valid base64")]
    InvalidBase64(String),
    #[error(
        "signature '{text}' is {actual} bytes long, not {} (ed25519)",
        Signature::LENGTH
    )]
    WrongLength { text: String, actual: usize },
}

impl Signature {
    /// The length of an ed25519 signature.
    pub const LENGTH: usize = 64;

    /// `key_name` must be non-empty, without `:` and without whitespace.
    pub fn new(
        key_name: &str,
        bytes: [u8; Signature::LENGTH],
    ) -> Result<Signature, SignatureError> {
        if !is_key_name(key_name) {
            let text = format!("{key_name}:{}", BASE64.encode(&bytes));
            return Err(if key_name.is_empty() {
                SignatureError::MissingKeyName(text)
            } else {
                SignatureError::InvalidKeyName(text)
            });
        }
        Ok(Signature {
            key_name: key_name.to_owned(),
            bytes,
        })
    }

    /// Parses `NAME:BASE64`, the base64 decoding to exactly 64 bytes.
    pub fn parse(text: &str) -> Result<Signature, SignatureError> {
        let Some((key_name, encoded)) = text.split_once(':') else {
            return Err(SignatureError::MissingKeyName(text.to_owned()));
        };
        if key_name.is_empty() {
            return Err(SignatureError::MissingKeyName(text.to_owned()));
        }
        if !is_key_name(key_name) {
            return Err(SignatureError::InvalidKeyName(text.to_owned()));
        }
        // Strict: padding as Nix writes it, no whitespace, no trailing bits, so that
        // printing a parsed signature gives back its text.
        let decoded = BASE64
            .decode(encoded.as_bytes())
            .map_err(|_| SignatureError::InvalidBase64(text.to_owned()))?;
        let bytes = <[u8; Signature::LENGTH]>::try_from(decoded.as_slice()).map_err(|_| {
            SignatureError::WrongLength {
                text: text.to_owned(),
                actual: decoded.len(),
            }
        })?;
        Ok(Signature {
            key_name: key_name.to_owned(),
            bytes,
        })
    }

    /// The name of the key that made the signature (`cache.nixos.org-1`).
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    pub fn bytes(&self) -> &[u8; Signature::LENGTH] {
        &self.bytes
    }
}

fn is_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c == ':' || c.is_whitespace())
}

/// `NAME:BASE64`, as parsed.
impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, BASE64.encode(&self.bytes))
    }
}

/// Why a key file's text was refused (the text itself is never printed: it may be a
/// secret).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("the key has no name before ':' (or the name has whitespace)")]
    BadName,
    #[error("the key of '{0}' is not valid base64")]
    InvalidBase64(String),
    #[error("the key of '{name}' is {actual} bytes long, not {expected} (ed25519)")]
    WrongLength {
        name: String,
        actual: usize,
        expected: usize,
    },
    #[error("the secret key of '{0}' does not match its public half")]
    Mismatched(String),
}

fn split_key(text: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let (name, encoded) = text.trim().split_once(':').ok_or(KeyError::BadName)?;
    if !is_key_name(name) {
        return Err(KeyError::BadName);
    }
    let bytes = BASE64
        .decode(encoded.as_bytes())
        .map_err(|_| KeyError::InvalidBase64(name.to_owned()))?;
    Ok((name, bytes))
}

/// A signing key, as in a Nix secret key file (`secret-key-files`).
pub struct SecretKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// Parses `NAME:BASE64` of the 64 bytes libsodium writes (seed, then public key).
    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        let (name, bytes) = split_key(text)?;
        let bytes = <[u8; 64]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength {
            name: name.to_owned(),
            actual: bytes.len(),
            expected: 64,
        })?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes)
            .map_err(|_| KeyError::Mismatched(name.to_owned()))?;
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }

    /// The key named `name` whose ed25519 seed is `seed` (32 bytes; give random ones to
    /// make a new key, as `nix key generate-secret` does).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<SecretKey, KeyError> {
        if !is_key_name(name) {
            return Err(KeyError::BadName);
        }
        Ok(SecretKey {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        })
    }

    /// `NAME:BASE64` of the 64 bytes (seed, then public key), as Nix writes secret key
    /// files. Deliberately not `Display`: a secret is not printed by accident.
    pub fn to_file_text(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(&self.key.to_keypair_bytes())
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs `fingerprint` (a path's, see [`crate::PathInfo::fingerprint`]).
    pub fn sign(&self, fingerprint: &str) -> Signature {
        use ed25519_dalek::Signer;
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(fingerprint.as_bytes()).to_bytes(),
        }
    }

    /// The public half, named alike.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }
}

/// A key that checks signatures, as in Nix's `trusted-public-keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    /// Parses `NAME:BASE64` of the 32-byte public key.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let (name, bytes) = split_key(text)?;
        let bytes = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength {
            name: name.to_owned(),
            actual: bytes.len(),
            expected: 32,
        })?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| KeyError::InvalidBase64(name.to_owned()))?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `signature` is this key's (same name) and valid for `fingerprint`.
    pub fn verify(&self, fingerprint: &str, signature: &Signature) -> bool {
        signature.key_name == self.name
            && self
                .key
                .verify_strict(
                    fingerprint.as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&signature.bytes),
                )
                .is_ok()
    }
}

/// `NAME:BASE64`, as Nix writes public key files.
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl FromStr for Signature {
    type Err = SignatureError;

    fn from_str(text: &str) -> Result<Signature, SignatureError> {
        Signature::parse(text)
    }
}

/// The names of the keys among `trusted` whose signatures (of `signatures`, Nix's
/// `NAME:BASE64` texts) of `fingerprint` verify, each counted once: how many trusted
/// keys vouch for a path or a realisation.
pub fn trusted_signers<'s>(
    signatures: impl IntoIterator<Item = &'s String>,
    fingerprint: &str,
    trusted: &[PublicKey],
) -> std::collections::BTreeSet<String> {
    signatures
        .into_iter()
        .filter_map(|text| Signature::parse(text).ok())
        .filter(|signature| {
            trusted
                .iter()
                .any(|key| key.name() == signature.key_name() && key.verify(fingerprint, signature))
        })
        .map(|signature| signature.key_name().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Made by Nix 2.8: `nix-store --generate-binary-cache-key test-1 sk pk`, then
    /// `nix store sign --key-file sk` of `nix-store --add` of a file holding "hello\n",
    /// then `nix path-info --sigs`.
    #[test]
    fn a_seeded_key_writes_and_reads_back_as_nix_s_files() {
        let key = SecretKey::from_seed("cache-1", &[7; 32]).unwrap();
        let text = key.to_file_text();
        assert!(text.starts_with("cache-1:"));
        let back = SecretKey::parse(&text).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert_eq!(back.to_file_text(), text);
        assert!(matches!(
            SecretKey::from_seed("bad name", &[7; 32]),
            Err(KeyError::BadName)
        ));
    }

    const NIX_MADE: &str = "test-1:uGSbsJe/iJ0qEs8Tu75m8bR0semMlugtLNlPIwOj3sG4jZkGWPTDihb/wg2W7to0//LUnbdDPb6DKYxrhU0QDQ==";

    /// Made by Nix 2.8: `nix-store --generate-binary-cache-key test-1 sk pk`, then
    /// `nix store sign --key-file sk` of `nix-store --add` of a file holding "hello\n".
    const NIX_SECRET: &str = "test-1:DkzsuQqkRPVwSXVlGs/IycoKxQV8Q+XPOp1dO19hr2Zh4jHqU9L4YDfAzSiqNqVxTjm+WZgJSrOapRMUtm0BWw==";
    const NIX_PUBLIC: &str = "test-1:YeIx6lPS+GA3wM0oqjalcU45vlmYCUqzmqUTFLZtAVs=";
    const NIX_FINGERPRINT: &str = "1;/nix/store/xp0dpr9yz5h0fk5c5lpj7zzqjbdh3w8c-f;sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;120;";
    const NIX_SIGNATURE: &str = "test-1:2z7+79uVnpemoD+CGzkh8DkCSWthNyWf6l7OPnTcX/4fWEwvsoILlqcjVNJtn3WZEnuMxVhJqMzje+CTV2pADQ==";

    #[test]
    fn signs_and_verifies_byte_for_byte_as_nix() {
        let secret = SecretKey::parse(NIX_SECRET).unwrap();
        assert_eq!(secret.public_key().to_string(), NIX_PUBLIC);
        let signature = secret.sign(NIX_FINGERPRINT);
        assert_eq!(signature.to_string(), NIX_SIGNATURE);
        let public = PublicKey::parse(NIX_PUBLIC).unwrap();
        assert!(public.verify(NIX_FINGERPRINT, &signature));
        assert!(!public.verify(&NIX_FINGERPRINT.replace("120", "121"), &signature));
        let renamed = Signature::new("test-2", *signature.bytes()).unwrap();
        assert!(!public.verify(NIX_FINGERPRINT, &renamed));
    }

    #[test]
    fn bad_keys_are_refused_without_printing_them() {
        assert_eq!(SecretKey::parse("nokey").unwrap_err(), KeyError::BadName);
        let short = SecretKey::parse("k:AAAA").unwrap_err();
        assert_eq!(
            short.to_string(),
            "the key of 'k' is 3 bytes long, not 64 (ed25519)"
        );
        // The public half of another key.
        let mut bytes = BASE64
            .decode(NIX_SECRET.split_once(':').unwrap().1.as_bytes())
            .unwrap();
        bytes[40] ^= 1;
        let error = SecretKey::parse(&format!("x:{}", BASE64.encode(&bytes))).unwrap_err();
        assert_eq!(error, KeyError::Mismatched("x".into()));
        assert!(PublicKey::parse(NIX_SECRET).is_err());
    }

    #[test]
    fn parses_and_prints_a_signature_nix_made() {
        let signature = Signature::parse(NIX_MADE).unwrap();
        assert_eq!(signature.key_name(), "test-1");
        assert_eq!(signature.to_string(), NIX_MADE);
        assert_eq!(NIX_MADE.parse::<Signature>().unwrap(), signature);
    }

    #[test]
    fn rejects_what_would_read_back_as_other_signatures() {
        let encoded = NIX_MADE.split_once(':').unwrap().1;
        let cases = [
            ("x y z", "no ':'"),
            (&*format!(":{encoded}"), "empty name"),
            (&*format!("a b:{encoded}"), "space in the name"),
            (&*format!("a\tb:{encoded}"), "tab in the name"),
            (&*format!("test-1:{encoded} other:{encoded}"), "two in one"),
            (&*format!("a:b:{encoded}"), "two ':'"),
            ("test-1:c2lnbmF0dXJl", "9 bytes"),
            (
                &*format!("test-1:{}", encoded.trim_end_matches('=')),
                "no padding",
            ),
            ("test-1:not base64!", "not base64"),
        ];
        for (text, case) in cases {
            let error = Signature::parse(text).expect_err(case);
            assert!(error.to_string().contains(text), "{case}: {error}");
        }
        assert!(matches!(
            Signature::parse("test-1:c2lnbmF0dXJl"),
            Err(SignatureError::WrongLength { actual: 9, .. })
        ));
        assert!(matches!(
            Signature::new("a b", [0; Signature::LENGTH]),
            Err(SignatureError::InvalidKeyName(_))
        ));
    }

    proptest! {
        #[test]
        fn parse_of_display_round_trips(name in "[a-zA-Z0-9._-]{1,40}",
                                        bytes in proptest::collection::vec(any::<u8>(), 64)) {
            let bytes = <[u8; Signature::LENGTH]>::try_from(bytes.as_slice()).unwrap();
            let signature = Signature::new(&name, bytes).unwrap();
            prop_assert_eq!(Signature::parse(&signature.to_string()).unwrap(), signature);
        }
    }
}
