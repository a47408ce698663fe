//! `.narinfo`: what a binary cache says about one store path, as Nix 2.8 reads and writes
//! it (`nar-info.cc`).
//!
//! `Name: value` lines: `StorePath` (a full path, in the cache's store dir), `URL` (of the
//! NAR, relative to the cache), `Compression` (missing: bzip2), `FileHash` and `FileSize`
//! (of the compressed NAR), `NarHash`, `NarSize`, `References` (base names, one space
//! between), `Deriver` (a base name, or `unknown-deriver`), `System`, any number of `Sig`,
//! and `CA`. Printed in that order, as Nix prints them; parsed in any order. A line Nix
//! does not know is skipped, as Nix skips it.

use std::collections::BTreeSet;
use std::fmt;

use arca_store_core::{
    ContentAddress, Hash, HashAlgo, PathInfo, PublicKey, Signature, StoreDir, StorePath,
};

/// How a cache compresses a NAR (`Compression:`), with Nix's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Xz,
    Bzip2,
    Zstd,
    Gzip,
    Brotli,
}

impl Compression {
    /// Nix's name: `none`, `xz`, `bzip2`, `zstd`, `gzip`, `br`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::Brotli => "br",
        }
    }

    /// The extension Nix gives a NAR so compressed (`nar/HASH.nar.xz`; none for `none`).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Xz => ".xz",
            Compression::Bzip2 => ".bz2",
            Compression::Zstd => ".zst",
            Compression::Gzip => ".gz",
            Compression::Brotli => ".br",
        }
    }

    /// Every method Nix names.
    pub const ALL: [Compression; 6] = [
        Compression::None,
        Compression::Xz,
        Compression::Bzip2,
        Compression::Zstd,
        Compression::Gzip,
        Compression::Brotli,
    ];

    /// The method named `name`, if it is one of Nix's.
    pub fn from_name(name: &str) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `.narinfo`: the path's metadata (as [`PathInfo`]; no registration time, never
/// ultimate) and where and how its NAR is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub info: PathInfo,
    /// Where the NAR is, relative to the cache (`nar/FILEHASH.nar.xz`).
    pub url: String,
    pub compression: Compression,
    /// sha256 of the compressed NAR.
    pub file_hash: Option<Hash>,
    /// Size of the compressed NAR.
    pub file_size: Option<u64>,
    /// `System:` (Nix writes it for some paths; kept as given).
    pub system: Option<String>,
}

/// Why a `.narinfo` was refused. `whence` names it (a URL or file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarInfoError {
    /// The text breaks the format: says where and how.
    #[error("NAR info file '{whence}' is corrupt: {reason}")]
    Corrupt { whence: String, reason: String },
    /// Its path is not in this store directory (a cache for another store).
    #[error("NAR info file '{whence}' is for path '{path}', not in '{store_dir}'")]
    OtherStoreDir {
        whence: String,
        path: String,
        store_dir: String,
    },
    /// A compression method Nix does not have.
    #[error("NAR info file '{whence}' has unknown compression method '{method}'")]
    UnknownCompression { whence: String, method: String },
}

/// What the signatures of a `.narinfo` say, against a set of trusted keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Signed by these trusted keys (by name).
    Trusted(Vec<String>),
    /// Content-addressed, and its content address gives its path: needs no signature.
    ContentAddressed,
    /// No signature by a trusted key: the key names it carries (valid or not), and
    /// which were not trusted or did not verify.
    Untrusted {
        /// The names of the keys that signed it, as written in its `Sig:` lines.
        signed_by: Vec<String>,
        /// Those of them that name a trusted key but do not verify (a forged or
        /// tampered narinfo).
        forged: Vec<String>,
    },
}

/// The longest `.narinfo` accepted (a path with thousands of references fits easily;
/// a cache that sends more is refused rather than read without bound).
pub const MAX_NARINFO: usize = 4 << 20;

impl NarInfo {
    /// A `.narinfo` for `info`, its NAR stored at `url` as `compression` says.
    pub fn new(info: PathInfo, url: String, compression: Compression) -> NarInfo {
        NarInfo {
            info,
            url,
            compression,
            file_hash: None,
            file_size: None,
            system: None,
        }
    }

    /// Parses `text` as Nix 2.8 does, for a cache of `store_dir`; `whence` names it in
    /// errors. Missing `Compression` means bzip2; `StorePath`, `URL`, `NarHash` and a
    /// non-zero `NarSize` are required.
    pub fn parse(store_dir: &StoreDir, text: &str, whence: &str) -> Result<NarInfo, NarInfoError> {
        let corrupt = |reason: String| NarInfoError::Corrupt {
            whence: whence.to_owned(),
            reason,
        };
        if text.len() > MAX_NARINFO {
            return Err(corrupt(format!("longer than {MAX_NARINFO} bytes")));
        }
        let base_name = |value: &str, field: &str| {
            StorePath::from_base_name(value)
                .map_err(|error| corrupt(format!("{field} '{value}': {error}")))
        };
        let hash = |value: &str, field: &str| {
            Hash::parse(value, None).map_err(|error| corrupt(format!("{field} '{value}': {error}")))
        };
        let number = |value: &str, field: &str| {
            value
                .parse::<u64>()
                .map_err(|_| corrupt(format!("{field} '{value}' is not a number")))
        };
        let mut path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references: Option<BTreeSet<StorePath>> = None;
        let mut deriver = None;
        let mut system = None;
        let mut signatures = BTreeSet::new();
        let mut ca = None;
        for line in text.split_inclusive('\n') {
            let Some(line) = line.strip_suffix('\n') else {
                return Err(corrupt("the last line has no newline".into()));
            };
            let Some((name, rest)) = line.split_once(':') else {
                return Err(corrupt(format!("line '{line}' has no ':'")));
            };
            // Nix takes the value from two characters after the colon.
            let value = rest.strip_prefix(' ').unwrap_or(rest);
            match name {
                "StorePath" => {
                    let parsed = store_dir.parse_path(value).map_err(|_| {
                        if value.starts_with('/') && !value.starts_with(&format!("{store_dir}/")) {
                            NarInfoError::OtherStoreDir {
                                whence: whence.to_owned(),
                                path: value.to_owned(),
                                store_dir: store_dir.to_string(),
                            }
                        } else {
                            corrupt(format!("StorePath '{value}' is not a store path"))
                        }
                    })?;
                    path = Some(parsed);
                }
                "URL" => url = Some(value.to_owned()),
                "Compression" => {
                    compression = Some(Compression::from_name(value).ok_or_else(|| {
                        NarInfoError::UnknownCompression {
                            whence: whence.to_owned(),
                            method: value.to_owned(),
                        }
                    })?)
                }
                "FileHash" => file_hash = Some(hash(value, "FileHash")?),
                "FileSize" => file_size = Some(number(value, "FileSize")?),
                "NarHash" => nar_hash = Some(hash(value, "NarHash")?),
                "NarSize" => nar_size = Some(number(value, "NarSize")?),
                "References" => {
                    if references.is_some() {
                        return Err(corrupt("two References lines".into()));
                    }
                    references = Some(
                        value
                            .split(' ')
                            .filter(|r| !r.is_empty())
                            .map(|r| base_name(r, "reference"))
                            .collect::<Result<_, _>>()?,
                    );
                }
                "Deriver" if value == "unknown-deriver" => {}
                "Deriver" => deriver = Some(base_name(value, "Deriver")?),
                "System" => system = Some(value.to_owned()),
                "Sig" => {
                    Signature::parse(value)
                        .map_err(|error| corrupt(format!("Sig '{value}': {error}")))?;
                    signatures.insert(value.to_owned());
                }
                "CA" => {
                    if ca.is_some() {
                        return Err(corrupt("two CA lines".into()));
                    }
                    ca = Some(
                        ContentAddress::parse(value)
                            .map_err(|error| corrupt(format!("CA '{value}': {error}")))?,
                    );
                }
                _ => {}
            }
        }
        let path = path.ok_or_else(|| corrupt("no StorePath".into()))?;
        let url = url
            .filter(|u| !u.is_empty())
            .ok_or_else(|| corrupt("no URL".into()))?;
        let nar_hash = nar_hash.ok_or_else(|| corrupt("no NarHash".into()))?;
        let nar_size = nar_size
            .filter(|&n| n != 0)
            .ok_or_else(|| corrupt("no NarSize, or 0".into()))?;
        let mut info = PathInfo::new(path, nar_hash, nar_size);
        info.references = references.unwrap_or_default();
        info.deriver = deriver;
        info.signatures = signatures;
        info.ca = ca;
        Ok(NarInfo {
            info,
            url,
            compression: compression.unwrap_or(Compression::Bzip2),
            file_hash,
            file_size,
            system,
        })
    }

    /// The text Nix 2.8 writes for it (`NarInfo::to_string`), byte for byte.
    pub fn to_text(&self, store_dir: &StoreDir) -> String {
        let hash = |h: &Hash| format!("{}:{}", h.algo(), h.to_base32());
        let info = &self.info;
        let mut text = format!(
            "StorePath: {}\nURL: {}\nCompression: {}\n",
            store_dir.display(&info.path),
            self.url,
            self.compression
        );
        if let Some(file_hash) = &self.file_hash {
            text.push_str(&format!("FileHash: {}\n", hash(file_hash)));
        }
        if let Some(file_size) = self.file_size {
            text.push_str(&format!("FileSize: {file_size}\n"));
        }
        text.push_str(&format!(
            "NarHash: {}\nNarSize: {}\n",
            hash(&info.nar_hash),
            info.nar_size
        ));
        let references: Vec<&str> = info.references.iter().map(StorePath::as_str).collect();
        text.push_str(&format!("References: {}\n", references.join(" ")));
        if let Some(deriver) = &info.deriver {
            text.push_str(&format!("Deriver: {}\n", deriver.as_str()));
        }
        if let Some(system) = &self.system {
            text.push_str(&format!("System: {system}\n"));
        }
        for signature in &info.signatures {
            text.push_str(&format!("Sig: {signature}\n"));
        }
        if let Some(ca) = &info.ca {
            text.push_str(&format!("CA: {ca}\n"));
        }
        text
    }

    /// Checks the signatures against `trusted` keys, as Nix does before substituting: a
    /// signature counts when its key is trusted and it verifies over the path's
    /// fingerprint; a content-addressed path whose content address gives its path needs
    /// none.
    pub fn check_signatures(&self, store_dir: &StoreDir, trusted: &[PublicKey]) -> SignatureCheck {
        let fingerprint = self.info.fingerprint(store_dir);
        let mut good = Vec::new();
        let mut signed_by = Vec::new();
        let mut forged = Vec::new();
        for text in &self.info.signatures {
            let Ok(signature) = Signature::parse(text) else {
                continue;
            };
            let name = signature.key_name().to_owned();
            let keys = trusted.iter().filter(|key| key.name() == name);
            let mut named_trusted = false;
            let mut verified = false;
            for key in keys {
                named_trusted = true;
                verified |= key.verify(&fingerprint, &signature);
            }
            if verified {
                good.push(name.clone());
            } else if named_trusted {
                forged.push(name.clone());
            }
            signed_by.push(name);
        }
        if !good.is_empty() {
            SignatureCheck::Trusted(good)
        } else if self.info.is_content_addressed_correctly(store_dir) {
            SignatureCheck::ContentAddressed
        } else {
            SignatureCheck::Untrusted { signed_by, forged }
        }
    }

    /// The `.narinfo` file name of `path` in a cache: its hash part and `.narinfo`.
    pub fn file_name(path: &StorePath) -> String {
        format!("{}.narinfo", path.hash_part())
    }

    /// Whether the compressed NAR's hash is sha256, as Nix requires of what it writes.
    pub fn file_hash_is_sha256(&self) -> bool {
        self.file_hash
            .as_ref()
            .is_none_or(|h| h.algo() == HashAlgo::Sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path(index: u8, name: &str) -> StorePath {
        let hash: String = (0..32)
            .map(|i| b"0123456789abcdfghijklmnpqrsvwxyz"[(i * 7 + usize::from(index)) % 32] as char)
            .collect();
        StorePath::from_base_name(&format!("{hash}-{name}")).unwrap()
    }

    proptest! {
        /// Whatever Arca prints parses back to the same value and prints the same again.
        #[test]
        fn printed_narinfos_parse_back(
            refs in proptest::collection::btree_set(0u8..32, 0..6),
            nar_size in 1u64..u64::MAX,
            file in proptest::option::of((any::<[u8; 32]>(), any::<u64>())),
            compression in 0usize..6,
            deriver in any::<bool>(),
            system in proptest::option::of("[a-z0-9_-]{1,12}"),
            seed in any::<[u8; 32]>(),
        ) {
            let store_dir = StoreDir::default();
            let mut info = PathInfo::new(
                path(200, "p"),
                Hash::digest(HashAlgo::Sha256, &seed),
                nar_size,
            );
            info.references = refs.iter().map(|&i| path(i, "r")).collect();
            info.deriver = deriver.then(|| path(100, "d.drv"));
            let compression = Compression::ALL[compression];
            let url = format!("nar/x.nar{}", compression.extension());
            let mut narinfo = NarInfo::new(info, url, compression);
            if let Some((hash, size)) = file {
                narinfo.file_hash = Some(Hash::digest(HashAlgo::Sha256, &hash));
                narinfo.file_size = Some(size);
            }
            narinfo.system = system;
            let text = narinfo.to_text(&store_dir);
            let parsed = NarInfo::parse(&store_dir, &text, "test").unwrap();
            prop_assert_eq!(&parsed, &narinfo);
            prop_assert_eq!(parsed.to_text(&store_dir), text);
        }
    }
}
