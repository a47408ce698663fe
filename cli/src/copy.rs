//! `arca copy --to URL PATH...` copies closures from the store to a binary cache;
//! `arca copy --from URL PATH...` copies them from a cache into the store, trusting what
//! the settings `trusted-public-keys` and `require-sigs` say (issue #16; so far `file://`
//! caches: written uncompressed, read uncompressed, xz or bzip2).

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context};
use arca_cache::{Compression, FileCache, PullOptions};
use arca_store_core::{SecretKey, Settings, StoreOps};

use crate::store::OnStore;
use crate::store_commands::parse_paths;
use crate::GlobalArgs;

/// Copy store paths and their closures to or from a binary cache (== `nix copy`).
#[derive(clap::Args)]
pub struct CopyArgs {
    /// Copy to this cache: `file://DIR`, with Nix's parameters `secret-key=FILE` (sign
    /// what is written) and `compression=none`.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "from",
        required_unless_present = "from"
    )]
    to: Option<String>,
    /// Copy from this cache (`file://DIR`) into the store; the paths must be signed by a
    /// key of `trusted-public-keys` unless `require-sigs` is false.
    #[arg(long, value_name = "URL")]
    from: Option<String>,
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
}

/// A cache URL, parsed.
struct CacheUrl {
    dir: PathBuf,
    secret_key: Option<PathBuf>,
    compression: Compression,
}

fn parse_url(url: &str) -> anyhow::Result<CacheUrl> {
    let Some(rest) = url.strip_prefix("file://") else {
        bail!("cache '{url}': only file:// caches are supported so far");
    };
    let (dir, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !dir.starts_with('/') {
        bail!("cache '{url}': the directory must be absolute");
    }
    let mut parsed = CacheUrl {
        dir: PathBuf::from(dir),
        secret_key: None,
        // Nix's default is xz, which Arca does not write yet: say so rather than differ.
        compression: Compression::Xz,
    };
    for parameter in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        match name {
            "secret-key" => parsed.secret_key = Some(PathBuf::from(value)),
            "compression" => {
                parsed.compression = Compression::from_name(value).with_context(|| {
                    format!("cache '{url}': unknown compression method '{value}'")
                })?
            }
            other => bail!("cache '{url}': unknown parameter '{other}'"),
        }
    }
    Ok(parsed)
}

pub fn copy(args: CopyArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    match (&args.to, &args.from) {
        (Some(to), None) => {
            let push = Push {
                to: to.clone(),
                paths: args.paths,
            };
            crate::store::on_store(global, push)
        }
        (None, Some(from)) => {
            let pull = Pull {
                from: from.clone(),
                paths: args.paths,
                settings: global.settings()?,
            };
            crate::store::on_store(global, pull)
        }
        _ => bail!("give one of --to and --from"),
    }
}

/// `copy --from`.
struct Pull {
    from: String,
    paths: Vec<String>,
    settings: Settings,
}

impl OnStore for Pull {
    type Output = ();

    fn run<S: StoreOps>(self, store: &S) -> anyhow::Result<()> {
        let url = parse_url(&self.from)?;
        if url.secret_key.is_some() {
            bail!(
                "cache '{}': secret-key is for writing to a cache",
                self.from
            );
        }
        let store_dir = store.store_dir();
        let paths = self
            .paths
            .iter()
            .map(|p| {
                store_dir
                    .parse_path(p)
                    .with_context(|| format!("'{p}' is not a store path"))
            })
            .collect::<anyhow::Result<BTreeSet<_>>>()?;
        let cache = FileCache::open(&url.dir, store_dir)?;
        let options = PullOptions {
            trusted_keys: &self.settings.trusted_public_keys,
            require_sigs: self.settings.require_sigs,
        };
        let report = cache.pull(store, &paths, options)?;
        eprintln!(
            "copied {} paths from '{}' ({} there already)",
            report.added.len(),
            self.from,
            report.present.len()
        );
        Ok(())
    }
}

/// `copy --to`.
struct Push {
    to: String,
    paths: Vec<String>,
}

impl OnStore for Push {
    type Output = ();

    fn run<S: StoreOps>(self, store: &S) -> anyhow::Result<()> {
        let url = parse_url(&self.to)?;
        let key = match &url.secret_key {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read secret key file '{}'", file.display()))?;
                Some(
                    SecretKey::parse(text.trim())
                        .with_context(|| format!("secret key file '{}'", file.display()))?,
                )
            }
            None => None,
        };
        let paths: BTreeSet<_> = parse_paths(store, &self.paths)?;
        let cache = FileCache::open(&url.dir, store.store_dir())?;
        let report = cache.push(store, &paths, url.compression, key.as_ref())?;
        eprintln!(
            "copied {} paths to '{}' ({} there already)",
            report.pushed.len(),
            self.to,
            report.present.len()
        );
        Ok(())
    }
}
