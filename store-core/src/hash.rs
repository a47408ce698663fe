//! Cryptographic hashes as Nix uses them: the algorithm travels with the bytes, and every
//! textual form Nix prints or accepts (base16, nix-base32, base64, SRI, `algo:` prefixed)
//! is a method, not a convention.

use std::fmt;
use std::io;

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};
use sha2::Digest;
use thiserror::Error;

use crate::base32;

/// The hash algorithms of Nix's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgo {
    /// Every algorithm, in Nix's order.
    pub const ALL: [HashAlgo; 4] = [
        HashAlgo::Md5,
        HashAlgo::Sha1,
        HashAlgo::Sha256,
        HashAlgo::Sha512,
    ];

    /// The name Nix uses (`md5`, `sha1`, `sha256`, `sha512`).
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    /// Parses an algorithm name as Nix spells it.
    pub fn from_name(name: &str) -> Result<HashAlgo, HashError> {
        HashAlgo::ALL
            .into_iter()
            .find(|algo| algo.name() == name)
            .ok_or_else(|| HashError::UnknownAlgorithm(name.to_owned()))
    }

    /// Digest size in bytes.
    pub fn size(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The textual encodings of a hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Lowercase hexadecimal.
    Base16,
    /// nix-base32 (see [`crate::base32`]).
    Base32,
    /// Standard padded base64.
    Base64,
    /// Subresource-integrity form `algo-<base64>`.
    Sri,
}

/// Why a hash could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    #[error("unknown hash algorithm '{0}'")]
    UnknownAlgorithm(String),
    #[error("hash '{0}' does not say its algorithm and none was given")]
    MissingAlgorithm(String),
    #[error("hash '{text}' is a {found} hash, expected {expected}")]
    AlgorithmMismatch {
        text: String,
        expected: HashAlgo,
        found: HashAlgo,
    },
    #[error(
        "hash '{text}' has the wrong length for a {algo} hash in base16, nix-base32 or base64"
    )]
    WrongLength { text: String, algo: HashAlgo },
    #[error("invalid base16 in hash '{0}'")]
    InvalidBase16(String),
    #[error("invalid nix-base32 in hash '{text}'")]
    InvalidBase32 {
        text: String,
        source: base32::Base32Error,
    },
    #[error("invalid base64 in hash '{0}'")]
    InvalidBase64(String),
    #[error("{algo} digest must be {expected} bytes, got {actual}")]
    WrongDigestSize {
        algo: HashAlgo,
        expected: usize,
        actual: usize,
    },
}

/// A digest together with the algorithm that made it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash {
    algo: HashAlgo,
    // Large enough for sha512; only the first `algo.size()` bytes are meaningful and the
    // rest stay zero, so derived equality and ordering are those of the digest.
    bytes: [u8; 64],
}

impl Hash {
    /// Builds a hash from raw digest bytes, checking their length.
    pub fn from_bytes(algo: HashAlgo, digest: &[u8]) -> Result<Hash, HashError> {
        if digest.len() != algo.size() {
            return Err(HashError::WrongDigestSize {
                algo,
                expected: algo.size(),
                actual: digest.len(),
            });
        }
        let mut bytes = [0u8; 64];
        bytes[..digest.len()].copy_from_slice(digest);
        Ok(Hash { algo, bytes })
    }

    /// Hashes `data` in one go.
    pub fn digest(algo: HashAlgo, data: &[u8]) -> Hash {
        let mut hasher = Hasher::new(algo);
        hasher.update(data);
        hasher.finish()
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.algo.size()]
    }

    pub fn to_base16(&self) -> String {
        data_encoding::HEXLOWER.encode(self.as_bytes())
    }

    pub fn to_base32(&self) -> String {
        base32::encode(self.as_bytes())
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.as_bytes())
    }

    /// `sha256-<base64>`.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, self.to_base64())
    }

    /// Encodes the hash; `typed` prefixes `algo:` (ignored for SRI, which always names it).
    pub fn encode(&self, encoding: Encoding, typed: bool) -> String {
        let body = match encoding {
            Encoding::Base16 => self.to_base16(),
            Encoding::Base32 => self.to_base32(),
            Encoding::Base64 => self.to_base64(),
            Encoding::Sri => return self.to_sri(),
        };
        if typed {
            format!("{}:{body}", self.algo)
        } else {
            body
        }
    }

    /// Parses every form Nix accepts: SRI (`sha256-…`), typed (`sha256:…` followed by
    /// base16, nix-base32 or base64, told apart by length), or a bare encoding when `algo`
    /// is given. When both the text and `algo` name an algorithm they must agree.
    pub fn parse(text: &str, algo: Option<HashAlgo>) -> Result<Hash, HashError> {
        let check = |found: HashAlgo| match algo {
            Some(expected) if expected != found => Err(HashError::AlgorithmMismatch {
                text: text.to_owned(),
                expected,
                found,
            }),
            _ => Ok(found),
        };
        if let Some((name, rest)) = text.split_once(':') {
            let found = check(HashAlgo::from_name(name)?)?;
            return Hash::parse_bare(text, rest, found);
        }
        if let Some((name, rest)) = text.split_once('-') {
            if let Ok(found) = HashAlgo::from_name(name) {
                let found = check(found)?;
                return Hash::decode_base64(text, rest, found);
            }
        }
        match algo {
            Some(algo) => Hash::parse_bare(text, text, algo),
            None => Err(HashError::MissingAlgorithm(text.to_owned())),
        }
    }

    /// Parses lowercase or uppercase base16 of an `algo` digest.
    pub fn from_base16(algo: HashAlgo, text: &str) -> Result<Hash, HashError> {
        let digest = HEXLOWER_PERMISSIVE
            .decode(text.as_bytes())
            .map_err(|_| HashError::InvalidBase16(text.to_owned()))?;
        Hash::from_bytes(algo, &digest)
    }

    fn parse_bare(whole: &str, body: &str, algo: HashAlgo) -> Result<Hash, HashError> {
        let size = algo.size();
        if body.len() == size * 2 {
            let digest = HEXLOWER_PERMISSIVE
                .decode(body.as_bytes())
                .map_err(|_| HashError::InvalidBase16(whole.to_owned()))?;
            Hash::from_bytes(algo, &digest)
        } else if body.len() == base32::encoded_len(size) {
            let digest = base32::decode(body, size).map_err(|source| HashError::InvalidBase32 {
                text: whole.to_owned(),
                source,
            })?;
            Hash::from_bytes(algo, &digest)
        } else if body.len() == BASE64.encode_len(size) {
            Hash::decode_base64(whole, body, algo)
        } else {
            Err(HashError::WrongLength {
                text: whole.to_owned(),
                algo,
            })
        }
    }

    fn decode_base64(whole: &str, body: &str, algo: HashAlgo) -> Result<Hash, HashError> {
        let digest = BASE64
            .decode(body.as_bytes())
            .map_err(|_| HashError::InvalidBase64(whole.to_owned()))?;
        Hash::from_bytes(algo, &digest).map_err(|_| HashError::WrongLength {
            text: whole.to_owned(),
            algo,
        })
    }

    /// Folds the digest into `len` bytes by XOR (`out[i % len] ^= h[i]`), as Nix does to
    /// make the 160-bit hash part of a store path from a sha256.
    pub fn compress(&self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        if len == 0 {
            return out;
        }
        for (i, byte) in self.as_bytes().iter().enumerate() {
            out[i % len] ^= byte;
        }
        out
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({}:{})", self.algo, self.to_base16())
    }
}

/// `algo:base32`, the form Nix prints in most places (`nix-store -q --hash`, narinfo).
impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.to_base32())
    }
}

/// An incremental hasher for any [`HashAlgo`]; also an [`io::Write`] sink so that a NAR
/// can be hashed as it is written.
#[derive(Clone)]
pub struct Hasher {
    state: HasherState,
}

#[derive(Clone)]
enum HasherState {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algo: HashAlgo) -> Hasher {
        let state = match algo {
            HashAlgo::Md5 => HasherState::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => HasherState::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => HasherState::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => HasherState::Sha512(sha2::Sha512::new()),
        };
        Hasher { state }
    }

    pub fn algo(&self) -> HashAlgo {
        match self.state {
            HasherState::Md5(_) => HashAlgo::Md5,
            HasherState::Sha1(_) => HashAlgo::Sha1,
            HasherState::Sha256(_) => HashAlgo::Sha256,
            HasherState::Sha512(_) => HashAlgo::Sha512,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            HasherState::Md5(h) => h.update(data),
            HasherState::Sha1(h) => h.update(data),
            HasherState::Sha256(h) => h.update(data),
            HasherState::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Hash {
        let algo = self.algo();
        let mut bytes = [0u8; 64];
        match self.state {
            HasherState::Md5(h) => bytes[..16].copy_from_slice(&h.finalize()),
            HasherState::Sha1(h) => bytes[..20].copy_from_slice(&h.finalize()),
            HasherState::Sha256(h) => bytes[..32].copy_from_slice(&h.finalize()),
            HasherState::Sha512(h) => bytes.copy_from_slice(&h.finalize()),
        }
        Hash { algo, bytes }
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.update(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A blake3 key for Arca's internal content-addressed bookkeeping (for example the
/// `.links` directory of the optimiser). Never written where Nix reads: Nix's formats use
/// [`Hash`](struct@Hash).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentKey([u8; 32]);

impl ContentKey {
    pub fn of(data: &[u8]) -> ContentKey {
        ContentKey(*blake3::hash(data).as_bytes())
    }

    /// Hashes everything `reader` yields.
    pub fn of_reader(reader: &mut impl io::Read) -> io::Result<ContentKey> {
        let mut hasher = blake3::Hasher::new();
        io::copy(reader, &mut hasher)?;
        Ok(ContentKey(*hasher.finalize().as_bytes()))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// nix-base32 of the key, safe as a file name.
    pub fn to_base32(&self) -> String {
        base32::encode(&self.0)
    }
}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentKey({})", self.to_base32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn digests_match_known_vectors() {
        assert_eq!(
            Hash::digest(HashAlgo::Md5, b"abc").to_base16(),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            Hash::digest(HashAlgo::Sha1, b"abc").to_base16(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            Hash::digest(HashAlgo::Sha256, b"abc").to_base16(),
            ABC_SHA256
        );
    }

    #[test]
    fn parses_every_encoding_of_the_same_hash() {
        let hash = Hash::digest(HashAlgo::Sha256, b"abc");
        let forms = [
            hash.to_base16(),
            hash.to_base32(),
            hash.to_base64(),
            hash.to_sri(),
            format!("sha256:{}", hash.to_base16()),
            format!("sha256:{}", hash.to_base32()),
            format!("sha256:{}", hash.to_base64()),
        ];
        for form in forms {
            assert_eq!(
                Hash::parse(&form, Some(HashAlgo::Sha256)).unwrap(),
                hash,
                "{form}"
            );
        }
        assert_eq!(Hash::parse(&hash.to_sri(), None).unwrap(), hash);
    }

    #[test]
    fn bare_hash_without_algorithm_is_rejected() {
        assert_eq!(
            Hash::parse(ABC_SHA256, None),
            Err(HashError::MissingAlgorithm(ABC_SHA256.to_owned()))
        );
    }

    #[test]
    fn conflicting_algorithms_are_rejected() {
        let text = format!("sha256:{ABC_SHA256}");
        assert!(matches!(
            Hash::parse(&text, Some(HashAlgo::Sha1)),
            Err(HashError::AlgorithmMismatch { .. })
        ));
    }

    #[test]
    fn wrong_length_names_the_hash() {
        assert!(matches!(
            Hash::parse("sha256:abcd", None),
            Err(HashError::WrongLength {
                algo: HashAlgo::Sha256,
                ..
            })
        ));
        assert!(matches!(
            Hash::parse("sha257:abcd", None),
            Err(HashError::UnknownAlgorithm(name)) if name == "sha257"
        ));
    }

    #[test]
    fn compress_folds_by_xor() {
        let hash = Hash::from_bytes(HashAlgo::Sha256, &[1u8; 32]).unwrap();
        // bytes 0..12 are hit twice (cancel out), bytes 12..20 once.
        let mut expected = vec![0u8; 12];
        expected.extend_from_slice(&[1u8; 8]);
        assert_eq!(hash.compress(20), expected);
    }

    #[test]
    fn hasher_as_writer_equals_one_shot() {
        use std::io::Write;
        let mut hasher = Hasher::new(HashAlgo::Sha512);
        hasher.write_all(b"a").unwrap();
        hasher.write_all(b"bc").unwrap();
        assert_eq!(hasher.finish(), Hash::digest(HashAlgo::Sha512, b"abc"));
    }

    proptest! {
        #[test]
        fn every_encoding_round_trips(data in proptest::collection::vec(any::<u8>(), 0..200),
                                      algo_index in 0usize..4) {
            let algo = HashAlgo::ALL[algo_index];
            let hash = Hash::digest(algo, &data);
            for encoding in [Encoding::Base16, Encoding::Base32, Encoding::Base64, Encoding::Sri] {
                for typed in [false, true] {
                    let text = hash.encode(encoding, typed);
                    prop_assert_eq!(&Hash::parse(&text, Some(algo)).unwrap(), &hash);
                }
            }
        }
    }
}
