//! `arca copy --to URL PATH...`: copies closures from the store to a binary cache (issue
//! #16; so far `file://` caches, NARs uncompressed).

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context};
use arca_cache::{Compression, FileCache};
use arca_store_core::{SecretKey, StoreOps};

use crate::store::OnStore;
use crate::store_commands::parse_paths;
use crate::GlobalArgs;

/// Copy store paths and their closures to a binary cache (== `nix copy --to`).
#[derive(clap::Args)]
pub struct CopyArgs {
    /// The cache: `file://DIR`, with Nix's parameters `secret-key=FILE` (sign what is
    /// written) and `compression=none`.
    #[arg(long, value_name = "URL")]
    to: String,
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
    crate::store::on_store(global, args)
}

impl OnStore for CopyArgs {
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
