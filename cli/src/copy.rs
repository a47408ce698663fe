//! `arca copy --to URL PATH...` copies closures from the store to a binary cache or
//! another store; `arca copy --from URL PATH...` copies them from a cache or a store into
//! the store, trusting what the settings `trusted-public-keys` and `require-sigs` say.
//! Cache URLs are Nix's: `file://DIR`, `http(s)://…`, `s3://BUCKET`, with their
//! parameters ([`arca_cache::url`]); any other URL names a store, as `--store` does
//! (`ssh://HOST`, `ssh-ng://HOST`, `unix://SOCKET`, `local?root=ROOT`, …).
//!
//! `--to` also takes outputs of derivations, `DRV^OUT1,OUT2` (or `DRV^*`, or Nix 2.8's
//! `DRV!OUT`): it copies their paths' closures and then, as `nix copy` does, the
//! realisations the store records for them (content-addressed derivations' outputs) and
//! those they depend on, dependencies first — so that another machine can substitute
//! a floating output without building it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use anyhow::{bail, Context};
use arca_cache::{BinaryCache, OpenMode, SubstituteOptions};
use arca_store_core::copy::{copy_closure, CopyOptions, Trust};
use arca_store_core::derivation::ModuloHashCache;
use arca_store_core::{DerivedPath, DrvOutput, Realisation, Settings, StoreOps, StorePath};

use crate::store::OnStore;
use crate::store_commands::parse_path_arg;
use crate::GlobalArgs;

/// Copy store paths and their closures to or from a binary cache or a store (== `nix
/// copy`).
#[derive(clap::Args)]
pub struct CopyArgs {
    /// Copy to this cache: `file://DIR`, `http(s)://…` or `s3://BUCKET`, with Nix's
    /// parameters (`secret-key=FILE` signs what is written, `compression=xz|zstd|none`,
    /// `write-nar-listing=true` writes each path's `.ls`, and for S3 `endpoint`,
    /// `region`, `scheme`, `profile`); or to this store
    /// (`ssh://[USER@]HOST`, `ssh-ng://…`, `unix://SOCKET`, `local?root=ROOT`, …).
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "from",
        required_unless_present = "from"
    )]
    to: Option<String>,
    /// Copy from this cache or store into the store; the paths must be signed by a key
    /// of `trusted-public-keys` (or be content-addressed) unless `require-sigs` is false
    /// or `--no-check-sigs` is given.
    #[arg(long, value_name = "URL")]
    from: Option<String>,
    /// Between stores: let the destination take the paths without signatures (Nix's
    /// `--no-check-sigs`; a daemon takes that only from a trusted client).
    #[arg(long)]
    no_check_sigs: bool,
    /// With --to: also copy the build logs of the paths' derivers (to `log/DRV`).
    #[arg(long, requires = "to")]
    logs: bool,
    /// With --from: only look the closures up in the cache and say what would be
    /// fetched (and what the cache lacks); nothing is added.
    #[arg(long, requires = "from")]
    dry_run: bool,
    /// How many paths to copy at once.
    #[arg(long, short = 'j', value_name = "N", default_value_t = 8)]
    jobs: usize,
    /// Store paths; with --to also `DRV^OUTPUTS` (`DRV^*` for every output), which
    /// copies the outputs and their realisations.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
}

pub fn copy(args: CopyArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let settings = global.settings()?;
    crate::store::on_store(global, Copy { args, settings })
}

struct Copy {
    args: CopyArgs,
    settings: Settings,
}

impl OnStore for Copy {
    type Output = ();

    fn run<S: StoreOps>(self, store: &S) -> anyhow::Result<()> {
        let Copy { args, settings } = self;
        let Targets {
            paths,
            realisations,
        } = match &args.to {
            Some(_) => targets(store, &args.paths)?,
            // Pulled paths need not be in the store yet: only parsed.
            None => Targets {
                paths: args
                    .paths
                    .iter()
                    .map(|p| {
                        store
                            .store_dir()
                            .parse_path(p)
                            .with_context(|| format!("'{p}' is not a store path"))
                    })
                    .collect::<anyhow::Result<_>>()?,
                realisations: Vec::new(),
            },
        };
        if let Some(url) = args.to.as_ref().or(args.from.as_ref()) {
            if !crate::store::is_cache_url(url) {
                let between = Between {
                    here: store,
                    paths: &paths,
                    realisations: &realisations,
                    outward: args.to.is_some(),
                    trust: if args.no_check_sigs || !settings.require_sigs {
                        Trust::All
                    } else {
                        Trust::SignedBy(&settings.trusted_public_keys)
                    },
                    url,
                };
                return crate::store::on_store_url(url, &settings, between);
            }
        }
        match (&args.to, &args.from) {
            (Some(to), None) => {
                let cache = BinaryCache::open(to, store.store_dir(), OpenMode::Write)?;
                let report = cache.push(store, &paths, args.jobs)?;
                for realisation in &realisations {
                    cache
                        .register_realisation(realisation)
                        .map_err(|error| anyhow::anyhow!(error.chain()))?;
                }
                let mut logs = 0;
                if args.logs {
                    for path in report.pushed.iter().chain(&report.present) {
                        logs += push_log(store, &cache, path)?;
                    }
                }
                eprintln!(
                    "copied {} paths to '{}' ({} there already{}{})",
                    report.pushed.len(),
                    cache.url(),
                    report.present.len(),
                    if realisations.is_empty() {
                        String::new()
                    } else {
                        format!(", {} realisations", realisations.len())
                    },
                    if args.logs {
                        format!(", {logs} build logs")
                    } else {
                        String::new()
                    }
                );
            }
            (None, Some(from)) => {
                let cache = BinaryCache::open(from, store.store_dir(), OpenMode::Read)?;
                let mut options =
                    SubstituteOptions::new(&settings.trusted_public_keys, settings.require_sigs);
                options.downloads = args.jobs.max(1);
                let caches = [cache];
                if args.dry_run {
                    let plan = arca_cache::plan(store, &caches, &paths, options)?;
                    let size: u64 = plan.found.values().map(|f| f.narinfo.info.nar_size).sum();
                    eprintln!(
                        "{} paths would be fetched ({:.2} MiB unpacked), {} are present, {} are not in '{from}'",
                        plan.found.len(),
                        size as f64 / f64::from(1 << 20),
                        plan.present.len(),
                        plan.missing.len()
                    );
                    let mut out = std::io::stdout().lock();
                    for path in plan.found.keys() {
                        writeln!(out, "{}", store.store_dir().display(path))?;
                    }
                    return Ok(());
                }
                let added = arca_cache::substitute(store, &caches, &paths, options)?;
                eprintln!("copied {} paths from '{from}'", added.len());
            }
            _ => bail!("give one of --to and --from"),
        }
        Ok(())
    }
}

/// A copy between this store and the store `url`.
struct Between<'a, S> {
    here: &'a S,
    paths: &'a BTreeSet<StorePath>,
    /// Recorded there after the paths (`--to` only).
    realisations: &'a [Realisation],
    /// From here to there (`--to`), or back (`--from`).
    outward: bool,
    trust: Trust<'a>,
    url: &'a str,
}

impl<S: StoreOps> OnStore for Between<'_, S> {
    type Output = ();

    fn run<T: StoreOps>(self, there: &T) -> anyhow::Result<()> {
        let store_dir = self.here.store_dir().clone();
        let mut say = |path: &StorePath| {
            let (direction, url) = if self.outward {
                ("to", self.url)
            } else {
                ("from", self.url)
            };
            eprintln!(
                "copying path '{}' {direction} '{url}'...",
                store_dir.display(path)
            );
        };
        let copied = if self.outward {
            copy_closure(
                self.here,
                there,
                self.paths,
                CopyOptions::new(self.trust),
                &mut say,
            )
        } else {
            copy_closure(
                there,
                self.here,
                self.paths,
                CopyOptions::new(self.trust),
                &mut say,
            )
        }
        .map_err(|error| anyhow::anyhow!(error.chain()))?;
        for realisation in self.realisations {
            there
                .register_realisation(realisation)
                .map_err(|error| anyhow::anyhow!(error.chain()))?;
        }
        eprintln!(
            "copied {} paths {} '{}'",
            copied.len(),
            if self.outward { "to" } else { "from" },
            self.url
        );
        Ok(())
    }
}

/// Pushes the build log of `path`'s deriver, if the store has one; how many were pushed.
fn push_log<S: StoreOps>(
    store: &S,
    cache: &BinaryCache,
    path: &arca_store_core::StorePath,
) -> anyhow::Result<usize> {
    let Some(info) = store.query_path_info(path)? else {
        return Ok(0);
    };
    let Some(deriver) = info.deriver else {
        return Ok(0);
    };
    let Some(mut log) = store
        .read_build_log(&deriver)
        .map_err(|e| anyhow::anyhow!(e.chain()))?
    else {
        return Ok(0);
    };
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut log, &mut text)
        .with_context(|| format!("cannot read the build log of '{deriver}'"))?;
    cache.put_log(&deriver, &text)?;
    Ok(1)
}

/// What the arguments of `--to` name.
struct Targets {
    paths: BTreeSet<StorePath>,
    /// The realisations of the outputs named, and those they depend on, dependencies
    /// first.
    realisations: Vec<Realisation>,
}

/// Store paths (symlinks to them followed) and `DRV^OUTPUTS`: the outputs' paths, which
/// must be known (built), and their recorded realisations with their dependencies.
fn targets<S: StoreOps>(store: &S, arguments: &[String]) -> anyhow::Result<Targets> {
    let store_dir = store.store_dir();
    let mut paths = BTreeSet::new();
    let mut wanted = Vec::new();
    let mut hashes = ModuloHashCache::new();
    for argument in arguments {
        let Some((drv, outputs)) = argument.split_once(['^', '!']) else {
            let path = parse_path_arg(store_dir, argument)?;
            if !store.is_valid_path(&path)? {
                bail!("path '{}' is not valid", store_dir.display(&path));
            }
            paths.insert(path);
            continue;
        };
        let drv = parse_path_arg(store_dir, drv)?;
        let target =
            DerivedPath::parse(store_dir, &format!("{}!{outputs}", store_dir.display(&drv)))
                .with_context(|| format!("bad output name in '{argument}'"))?;
        if !drv.is_derivation() {
            bail!("'{}' is not a derivation", store_dir.display(&drv));
        }
        let derivation = store
            .read_derivation(&drv)
            .map_err(|error| anyhow::anyhow!(error.chain()))?;
        let drv_hash = hashes
            .static_output_hash(store_dir, &derivation, |input| store.read_derivation(input))
            .map_err(|error| {
                anyhow::anyhow!(
                    "cannot hash derivation '{}': {error}",
                    store_dir.display(&drv)
                )
            })?
            .hash;
        let known = store
            .query_derivation_output_map(&drv, true)
            .map_err(|error| anyhow::anyhow!(error.chain()))?;
        for name in derivation.outputs.keys().filter(|name| target.wants(name)) {
            let Some(Some(path)) = known.get(name.as_str()) else {
                bail!(
                    "output '{name}' of '{}' is not built",
                    store_dir.display(&drv)
                );
            };
            paths.insert(path.clone());
            wanted.push(DrvOutput {
                drv_hash: drv_hash.clone(),
                output: name.clone(),
            });
        }
        if let Some(missing) = target
            .outputs
            .iter()
            .flatten()
            .find(|name| !derivation.outputs.contains_key(*name))
        {
            bail!(
                "derivation '{}' has no output '{missing}'",
                store_dir.display(&drv)
            );
        }
    }
    let realisations = realisation_closure(store, wanted)?;
    Ok(Targets {
        paths,
        realisations,
    })
}

/// The recorded realisations of `wanted` (those not recorded are skipped: an
/// input-addressed output needs none) and of everything they depend on, which must be
/// recorded; dependencies before dependents.
fn realisation_closure<S: StoreOps>(
    store: &S,
    wanted: Vec<DrvOutput>,
) -> anyhow::Result<Vec<Realisation>> {
    let query = |id: &DrvOutput| {
        store
            .query_realisation(id)
            .map_err(|error| anyhow::anyhow!(error.chain()))
    };
    let mut found: BTreeMap<DrvOutput, Realisation> = BTreeMap::new();
    let mut emitted = BTreeSet::new();
    let mut expanding = BTreeSet::new();
    let mut ordered = Vec::new();
    // Depth first, a realisation emitted once all it depends on is.
    let mut stack: Vec<(DrvOutput, bool)> = Vec::new();
    for id in wanted {
        if let Some(top) = query(&id)? {
            found.insert(id.clone(), top);
            stack.push((id, false));
        }
    }
    while let Some((id, expanded)) = stack.pop() {
        if emitted.contains(&id) {
            continue;
        }
        let Some(realisation) = found.get(&id) else {
            continue;
        };
        if expanded {
            emitted.insert(id.clone());
            ordered.push(realisation.clone());
            continue;
        }
        // Expanded already but not emitted: an ancestor of itself (a cycle, which
        // recorded realisations never form); not followed again.
        if !expanding.insert(id.clone()) {
            continue;
        }
        let dependencies: Vec<DrvOutput> =
            realisation.dependent_realisations.keys().cloned().collect();
        stack.push((id.clone(), true));
        for dependency in dependencies {
            if emitted.contains(&dependency) {
                continue;
            }
            if !found.contains_key(&dependency) {
                let Some(realisation) = query(&dependency)? else {
                    bail!(
                        "incomplete realisation closure: '{dependency}' is a dependency of '{id}' but is not recorded"
                    );
                };
                found.insert(dependency.clone(), realisation);
            }
            stack.push((dependency, false));
        }
    }
    Ok(ordered)
}
