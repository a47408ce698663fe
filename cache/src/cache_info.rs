//! `nix-cache-info`: what a binary cache says about itself, as Nix 2.8 reads and writes
//! it (`binary-cache-store.cc`): `StoreDir: /nix/store`, `WantMassQuery: 1`,
//! `Priority: N`, one per line; other lines are ignored, as Nix ignores them.

use std::fmt;

/// A cache's `nix-cache-info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    /// The store directory its paths belong to (a cache for another one is refused).
    pub store_dir: String,
    /// Whether clients may ask it about many paths at once.
    pub want_mass_query: bool,
    /// Its priority among substituters (lower is tried first); `None` when unsaid.
    pub priority: Option<u32>,
}

/// Why a `nix-cache-info` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheInfoError {
    #[error("binary cache '{cache}' is for Nix stores with prefix '{theirs}', not '{ours}'")]
    OtherStoreDir {
        cache: String,
        theirs: String,
        ours: String,
    },
    #[error("binary cache '{cache}' has a bad priority '{value}'")]
    BadPriority { cache: String, value: String },
    #[error("binary cache '{cache}' has no StoreDir in its nix-cache-info")]
    NoStoreDir { cache: String },
}

impl CacheInfo {
    /// What Nix writes for a new cache of `store_dir`: only `StoreDir`.
    pub fn new(store_dir: &str) -> CacheInfo {
        CacheInfo {
            store_dir: store_dir.to_owned(),
            want_mass_query: false,
            priority: None,
        }
    }

    /// Parses `text` as Nix does, checking it is a cache for `store_dir` (`cache` names
    /// the cache in errors). Values are trimmed; unknown lines and lines without a colon
    /// are skipped.
    pub fn parse(text: &str, store_dir: &str, cache: &str) -> Result<CacheInfo, CacheInfoError> {
        let mut info = CacheInfo::new("");
        let mut seen_store_dir = false;
        for line in text.lines() {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name {
                "StoreDir" => {
                    if value != store_dir {
                        return Err(CacheInfoError::OtherStoreDir {
                            cache: cache.to_owned(),
                            theirs: value.to_owned(),
                            ours: store_dir.to_owned(),
                        });
                    }
                    info.store_dir = value.to_owned();
                    seen_store_dir = true;
                }
                "WantMassQuery" => info.want_mass_query = value == "1",
                "Priority" => {
                    info.priority =
                        Some(value.parse().map_err(|_| CacheInfoError::BadPriority {
                            cache: cache.to_owned(),
                            value: value.to_owned(),
                        })?)
                }
                _ => {}
            }
        }
        if !seen_store_dir {
            return Err(CacheInfoError::NoStoreDir {
                cache: cache.to_owned(),
            });
        }
        Ok(info)
    }
}

impl fmt::Display for CacheInfo {
    /// The file's text: `StoreDir`, then `WantMassQuery: 1` and `Priority` when set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StoreDir: {}", self.store_dir)?;
        if self.want_mass_query {
            writeln!(f, "WantMassQuery: 1")?;
        }
        if let Some(priority) = self.priority {
            writeln!(f, "Priority: {priority}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_nixos_org_s_info_parses_and_another_store_dir_is_refused() {
        let text = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";
        let info = CacheInfo::parse(text, "/nix/store", "https://cache.nixos.org").unwrap();
        assert!(info.want_mass_query);
        assert_eq!(info.priority, Some(40));
        assert_eq!(info.to_string(), text);
        let error =
            CacheInfo::parse("StoreDir: /gnu/store\n", "/nix/store", "file:///c").unwrap_err();
        assert_eq!(
            error.to_string(),
            "binary cache 'file:///c' is for Nix stores with prefix '/gnu/store', not '/nix/store'"
        );
        assert!(CacheInfo::parse("WantMassQuery: 1\n", "/nix/store", "c").is_err());
        assert!(
            CacheInfo::parse("StoreDir: /nix/store\nPriority: x\n", "/nix/store", "c").is_err()
        );
    }
}
