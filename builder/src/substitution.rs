//! Substituting before building, as Nix's goals do: the missing outputs of every
//! derivation wanted are looked up in the substituters (all of them, concurrently), and
//! a derivation whose missing outputs can all be substituted is not built — nor are its
//! inputs looked at. The inputs of the others are wanted in turn, level by level, until
//! nothing more can be substituted; then everything found is fetched at once, up to
//! [`Substitution::downloads`] NARs at a time. What remains missing is built by the
//! scheduler afterwards.
//!
//! A derivation with `allowSubstitutes = false` is never substituted (Nix 2.8;
//! `preferLocalBuild` says nothing about substitution there, and says nothing here).
//! Outputs whose paths are not known before building (floating content-addressed
//! derivations) are substituted through their realisations when the substituters have
//! them, signed by a trusted key (`substitute_realisations`), and built otherwise. The
//! substituters are opened once per build ([`Substituters`]), when first needed; one
//! that cannot be opened is skipped with a warning, as Nix disables it; one that fails
//! while being asked makes the build go on without substitution, with a warning. A
//! failed fetch (a NAR gone, a hash mismatch, a cut stream) leaves nothing in the store;
//! with `fallback` the derivations whose outputs could not be fetched are built instead
//! (their inputs substituted where possible), without it the build fails saying what
//! went wrong.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};

use arca_cache::{BinaryCache, OpenMode, SubstituteOptions};
use arca_store_core::derivation::{Derivation, OutputName};
use arca_store_core::{BuildEvent, PublicKey, Store, StorePath};
use arca_store_sqlite::LocalStore;

use crate::environment::substitutes_allowed;
use crate::types::{BuildError, BuildTarget};

/// Where and how builds substitute: Nix's `substituters`, `trusted-public-keys`,
/// `require-sigs` and `fallback`.
#[derive(Debug, Clone)]
pub struct Substitution {
    /// Cache URLs (`file://`, `http(s)://`, `s3://`); none: no substitution.
    pub substituters: Vec<String>,
    /// Keys whose signatures make a path trusted.
    pub trusted_keys: Vec<PublicKey>,
    /// Whether a path needs a trusted signature (or a content address that checks out).
    pub require_sigs: bool,
    /// Build what cannot be fetched instead of failing.
    pub fallback: bool,
    /// NAR downloads at once (independent of `max-jobs`).
    pub downloads: usize,
}

impl Default for Substitution {
    fn default() -> Self {
        Substitution {
            substituters: Vec::new(),
            trusted_keys: Vec::new(),
            require_sigs: true,
            fallback: false,
            downloads: 16,
        }
    }
}

/// Substitutes what of `paths` (and their closures) is not valid, as Nix's
/// `substitutePaths` and `ensurePath` do for store paths that are not derivation
/// outputs asked for by a build: what no cache has, or fails to give, stays invalid
/// (said as a warning through `on_event`). The paths added.
pub fn substitute_paths(
    store: &LocalStore,
    paths: &BTreeSet<StorePath>,
    substitution: &Substitution,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Vec<StorePath> {
    let substituters = Substituters::new(substitution);
    fetch_closures(store, &substituters, paths, on_event)
}

/// The substituters of one build: opened once, when first asked for, so that a build
/// that looks many derivations up reads each cache's `nix-cache-info` once and keeps
/// its connections.
pub(crate) struct Substituters<'a> {
    pub(crate) substitution: &'a Substitution,
    opened: OnceCell<Vec<BinaryCache>>,
}

impl<'a> Substituters<'a> {
    pub(crate) fn new(substitution: &'a Substitution) -> Substituters<'a> {
        Substituters {
            substitution,
            opened: OnceCell::new(),
        }
    }

    /// The substituters that open; a warning for each that does not (the first time),
    /// as Nix disables it.
    fn caches(&self, store: &LocalStore, on_event: &mut dyn FnMut(BuildEvent)) -> &[BinaryCache] {
        self.opened.get_or_init(|| {
            let mut caches = Vec::new();
            for url in &self.substitution.substituters {
                match BinaryCache::open(url, store.store_dir(), OpenMode::Read) {
                    Ok(cache) => caches.push(cache),
                    Err(error) => on_event(BuildEvent::Message {
                        text: format!(
                            "warning: disabling substituter '{url}': {}\n",
                            crate::error_chain(&error)
                        ),
                    }),
                }
            }
            caches
        })
    }

    fn options(&self) -> SubstituteOptions<'a> {
        let mut options = SubstituteOptions::new(
            &self.substitution.trusted_keys,
            self.substitution.require_sigs,
        );
        options.downloads = self.substitution.downloads.max(1);
        options
    }
}

/// [`substitute_paths`] through the build's substituters.
fn fetch_closures(
    store: &LocalStore,
    substituters: &Substituters<'_>,
    paths: &BTreeSet<StorePath>,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Vec<StorePath> {
    let caches = substituters.caches(store, on_event);
    if caches.is_empty() {
        return Vec::new();
    }
    let options = substituters.options();
    let warn = |on_event: &mut dyn FnMut(BuildEvent), error: &arca_cache::CacheError| {
        on_event(BuildEvent::Message {
            text: format!("warning: {}\n", crate::error_chain(error)),
        })
    };
    let plan = match arca_cache::plan(store, caches, paths, options) {
        Ok(plan) => plan,
        Err(error) => {
            warn(on_event, &error);
            return Vec::new();
        }
    };
    let found: BTreeSet<StorePath> = paths
        .iter()
        .filter(|path| plan.found.contains_key(*path))
        .cloned()
        .collect();
    if found.is_empty() {
        return Vec::new();
    }
    match arca_cache::fetch(store, caches, &plan, &found, options) {
        Ok(fetched) => {
            for (_, error) in &fetched.failed {
                warn(on_event, error);
            }
            fetched.added
        }
        Err(error) => {
            warn(on_event, &error);
            Vec::new()
        }
    }
}

/// The outputs of a content-addressed derivation whose paths are not known before
/// building (static output hash `hash`) that the substituters have realisations for
/// (Nix's `DrvOutputSubstitutionGoal`): each output's `realisations/<id>.doi` is looked
/// up in the substituters in turn; when every output has one, their paths are
/// substituted (with their closures) and the realisations registered here. All outputs
/// or none: what comes back is empty unless all are valid now.
///
/// With `require-sigs`, a realisation counts only when a trusted key signed it (Nix
/// 2.8 takes any: a cache could otherwise say that an output is whatever
/// content-addressed path it likes). Nix signs realisations with its `secret-key-files`
/// as it builds, and `nix copy` carries those signatures.
pub(crate) fn substitute_realisations(
    store: &LocalStore,
    drv: &Derivation,
    hash: &arca_store_core::Hash,
    substituters: &Substituters<'_>,
    on_event: &mut dyn FnMut(BuildEvent),
) -> BTreeMap<OutputName, StorePath> {
    let substitution = substituters.substitution;
    let caches = substituters.caches(store, on_event);
    let mut found = BTreeMap::new();
    for name in drv.outputs.keys() {
        let id = arca_store_core::DrvOutput {
            drv_hash: hash.clone(),
            output: name.clone(),
        };
        match trusted_realisation(caches, &id, substitution, on_event) {
            Some(realisation) => {
                found.insert(name.clone(), realisation);
            }
            None => return BTreeMap::new(),
        }
    }
    let paths: BTreeSet<StorePath> = found.values().map(|r| r.out_path.clone()).collect();
    fetch_closures(store, substituters, &paths, on_event);
    let mut outputs = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (name, realisation) in found {
        let path = realisation.out_path.clone();
        if !register_with_dependents(
            store,
            caches,
            realisation,
            substitution,
            &mut seen,
            on_event,
        ) {
            return BTreeMap::new();
        }
        outputs.insert(name, path);
    }
    outputs
}

/// The realisation of `id` from the first substituter that has one it may take (see
/// [`substitute_realisations`]).
fn trusted_realisation(
    caches: &[BinaryCache],
    id: &arca_store_core::DrvOutput,
    substitution: &Substitution,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Option<arca_store_core::Realisation> {
    for cache in caches {
        match cache.realisation(id) {
            Ok(Some(candidate)) => {
                if substitution.require_sigs
                    && candidate
                        .trusted_signers(&substitution.trusted_keys)
                        .is_empty()
                {
                    on_event(BuildEvent::Message {
                        text: format!(
                            "warning: ignoring the realisation of '{id}' from '{}': it is not signed by a trusted key\n",
                            cache.url()
                        ),
                    });
                    continue;
                }
                return Some(candidate);
            }
            Ok(None) => {}
            Err(error) => on_event(BuildEvent::Message {
                text: format!("warning: {}\n", crate::error_chain(&error)),
            }),
        }
    }
    None
}

/// Records `realisation` here, after the realisations it depends on that are not
/// recorded yet (fetched from the substituters as it was; their paths are in its
/// closure, substituted with it). False, with a warning, if one cannot be had.
fn register_with_dependents(
    store: &LocalStore,
    caches: &[BinaryCache],
    realisation: arca_store_core::Realisation,
    substitution: &Substitution,
    seen: &mut BTreeSet<arca_store_core::DrvOutput>,
    on_event: &mut dyn FnMut(BuildEvent),
) -> bool {
    if !seen.insert(realisation.id.clone()) {
        return true;
    }
    let warn = |on_event: &mut dyn FnMut(BuildEvent), text: String| {
        on_event(BuildEvent::Message {
            text: format!("warning: {text}\n"),
        })
    };
    for (dependency, path) in &realisation.dependent_realisations {
        match store.query_realisation(dependency) {
            Ok(Some(known)) if known.out_path == *path => continue,
            Ok(Some(_)) => {
                warn(
                    on_event,
                    format!(
                        "the substituters' realisation of '{}' needs another '{dependency}' than the one recorded here",
                        realisation.id
                    ),
                );
                return false;
            }
            Ok(None) => {}
            Err(error) => {
                warn(on_event, crate::error_chain(&error));
                return false;
            }
        }
        let Some(fetched) = trusted_realisation(caches, dependency, substitution, on_event) else {
            return false;
        };
        if fetched.out_path != *path
            || !register_with_dependents(store, caches, fetched, substitution, seen, on_event)
        {
            return false;
        }
    }
    if !matches!(store.is_valid_path(&realisation.out_path), Ok(true)) {
        return false;
    }
    if let Err(error) = store.register_realisation(&realisation) {
        warn(on_event, crate::error_chain(&error));
        return false;
    }
    true
}

/// Substitutes what it can of `targets` (see the module docs).
pub(crate) fn substitute_targets(
    store: &LocalStore,
    targets: &[BuildTarget],
    given: &BTreeMap<StorePath, Derivation>,
    substituters: &Substituters<'_>,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<(), BuildError> {
    let store_dir = store.store_dir();
    let substitution = substituters.substitution;
    let caches = substituters.caches(store, on_event);
    if caches.is_empty() {
        return Ok(());
    }
    let options = substituters.options();
    // Derivations not to substitute: their outputs failed to fetch (with `fallback`).
    let mut build_instead: BTreeSet<StorePath> = BTreeSet::new();
    loop {
        let (planned, wanted) = match plan(store, caches, targets, given, &build_instead, options) {
            Ok(planned) => planned,
            // A cache that cannot be asked (down, unreachable, answering errors): build,
            // as Nix does when it disables a substituter.
            Err(BuildError::Substitution { source, .. }) => {
                on_event(BuildEvent::Message {
                    text: format!(
                        "warning: substituters could not be queried, building instead: {}\n",
                        crate::error_chain(&*source)
                    ),
                });
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let paths: BTreeSet<StorePath> = wanted.values().flatten().cloned().collect();
        for path in planned.found.keys() {
            let found = &planned.found[path];
            on_event(BuildEvent::Message {
                text: format!(
                    "copying path '{}' from '{}'...\n",
                    store_dir.display(path),
                    caches[found.cache].url()
                ),
            });
        }
        let fetched =
            arca_cache::fetch(store, caches, &planned, &paths, options).map_err(|error| {
                BuildError::Substitution {
                    drv: None,
                    source: Box::new(error),
                }
            })?;
        let Some((_, error)) = fetched.failed.into_iter().next() else {
            return Ok(());
        };
        let failed: Vec<StorePath> = wanted
            .iter()
            .filter(|(_, outputs)| {
                !outputs
                    .iter()
                    .all(|output| store.is_valid_path(output).unwrap_or(false))
            })
            .map(|(drv, _)| drv.clone())
            .collect();
        let drv = failed.first().map(|drv| store_dir.full(drv));
        if !substitution.fallback {
            return Err(BuildError::Substitution {
                drv,
                source: Box::new(error),
            });
        }
        on_event(BuildEvent::Message {
            text: format!(
                "warning: {}; building instead ('fallback' is set)\n",
                crate::error_chain(&error)
            ),
        });
        build_instead.extend(failed);
    }
}

/// Finds which derivations' missing outputs can be substituted, top-down: the plan and,
/// for each derivation to substitute, its missing outputs.
fn plan(
    store: &LocalStore,
    caches: &[BinaryCache],
    targets: &[BuildTarget],
    given: &BTreeMap<StorePath, Derivation>,
    build_instead: &BTreeSet<StorePath>,
    options: SubstituteOptions<'_>,
) -> Result<(arca_cache::Plan, BTreeMap<StorePath, BTreeSet<StorePath>>), BuildError> {
    let mut level: BTreeMap<StorePath, Option<BTreeSet<OutputName>>> = BTreeMap::new();
    for target in targets {
        let outputs = level
            .entry(target.drv.clone())
            .or_insert(Some(BTreeSet::new()));
        match (&target.outputs, outputs.as_mut()) {
            (Some(wanted), Some(outputs)) => outputs.extend(wanted.iter().cloned()),
            _ => *outputs = None,
        }
    }
    let mut seen: BTreeSet<StorePath> = BTreeSet::new();
    let mut merged = arca_cache::Plan::default();
    let mut substituted: BTreeMap<StorePath, BTreeSet<StorePath>> = BTreeMap::new();
    // Missing input sources of the derivations to build.
    let mut sources: BTreeSet<StorePath> = BTreeSet::new();
    while !level.is_empty() {
        // Each derivation of this level: its missing output paths, and its inputs.
        let mut missing: BTreeMap<StorePath, (BTreeSet<StorePath>, Derivation)> = BTreeMap::new();
        for (drv_path, outputs) in std::mem::take(&mut level) {
            if !seen.insert(drv_path.clone()) {
                continue;
            }
            let drv = match given.get(&drv_path) {
                Some(drv) => drv.clone(),
                None => match store.read_derivation(&drv_path) {
                    Ok(drv) => drv,
                    // Not here to substitute: the scheduler reports it.
                    Err(_) => continue,
                },
            };
            let mut paths = BTreeSet::new();
            let mut known = true;
            for (name, output) in &drv.outputs {
                if outputs
                    .as_ref()
                    .is_some_and(|wanted| !wanted.contains(name))
                {
                    continue;
                }
                match output.path() {
                    Some(path) if !store.is_valid_path(path)? => {
                        paths.insert(path.clone());
                    }
                    Some(_) => {}
                    None => known = false,
                }
            }
            if paths.is_empty() && known {
                continue;
            }
            missing.insert(drv_path, (paths, drv));
        }
        let candidates: BTreeSet<StorePath> = missing
            .iter()
            .filter(|(drv_path, (_, drv))| {
                !build_instead.contains(*drv_path) && substitutes_allowed(drv)
            })
            .flat_map(|(_, (paths, _))| paths.iter().cloned())
            .collect();
        let planned = if candidates.is_empty() {
            arca_cache::Plan::default()
        } else {
            arca_cache::plan(store, caches, &candidates, options).map_err(|error| {
                BuildError::Substitution {
                    drv: None,
                    source: Box::new(error),
                }
            })?
        };
        for (drv_path, (paths, drv)) in missing {
            let can = !build_instead.contains(&drv_path)
                && substitutes_allowed(&drv)
                && !paths.is_empty()
                && drv.outputs.values().all(|output| output.path().is_some())
                && paths.iter().all(|path| planned.substitutable(path));
            if can {
                substituted.insert(drv_path, paths);
            } else {
                for (input, outputs) in &drv.input_drvs {
                    if let Some(wanted) = level
                        .entry(input.clone())
                        .or_insert_with(|| Some(BTreeSet::new()))
                    {
                        wanted.extend(outputs.iter().cloned());
                    }
                }
                // Its sources too, when they are missing.
                for source in &drv.input_srcs {
                    if !store.is_valid_path(source)? {
                        sources.insert(source.clone());
                    }
                }
            }
        }
        merged.present.extend(planned.present);
        merged.found.extend(planned.found);
        merged.missing.extend(planned.missing);
    }
    sources.retain(|source| !merged.found.contains_key(source));
    if !sources.is_empty() {
        let planned = arca_cache::plan(store, caches, &sources, options).map_err(|error| {
            BuildError::Substitution {
                drv: None,
                source: Box::new(error),
            }
        })?;
        let found: BTreeSet<StorePath> = sources
            .into_iter()
            .filter(|source| planned.substitutable(source))
            .collect();
        merged.present.extend(planned.present);
        merged.found.extend(planned.found);
        if !found.is_empty() {
            // Keyed by the source itself: it is its own "output".
            for source in found {
                substituted.insert(source.clone(), BTreeSet::from([source]));
            }
        }
    }
    Ok((merged, substituted))
}
