//! Signatures of store paths as Nix writes them: `NAME:BASE64`, the name of the key that
//! signed and an ed25519 signature in standard padded base64 (what `nix store sign` and
//! binary caches' `.narinfo` `Sig:` lines hold, and what the registry keeps,
//! space-separated, in `ValidPaths.sigs`).
//!
//! Only the form is checked here: whether a signature is valid for a path is a question
//! for whoever holds the public keys.

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

impl FromStr for Signature {
    type Err = SignatureError;

    fn from_str(text: &str) -> Result<Signature, SignatureError> {
        Signature::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Made by Nix 2.8: `nix-store --generate-binary-cache-key test-1 sk pk`, then
    /// `nix store sign --key-file sk` of `nix-store --add` of a file holding "hello\n",
    /// then `nix path-info --sigs`.
    const NIX_MADE: &str = "test-1:uGSbsJe/iJ0qEs8Tu75m8bR0semMlugtLNlPIwOj3sG4jZkGWPTDihb/wg2W7to0//LUnbdDPb6DKYxrhU0QDQ==";

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
