//! Substitution: copying paths' closures from binary caches into a store.
//!
//! [`plan`] finds, for every path of the closures the store lacks, the `.narinfo` to
//! trust: every missing path is looked up in every cache concurrently (up to
//! [`SubstituteOptions::lookups`] requests at a time), and the cache of lowest priority
//! number whose `.narinfo` passes the checks wins — its signatures (a trusted key's, or
//! a content address that gives the path, unless `require-sigs` is off), and that it
//! describes the path asked for. A path no cache can give is reported with why each
//! cache could not.
//!
//! [`fetch`] then copies what was planned, [`SubstituteOptions::downloads`] NARs at a
//! time, through the store's [`AddBatch`]: each NAR is downloaded, decompressed and
//! handed to the store as one stream, the store hashing it, checking its hash and size
//! against the `.narinfo` and unpacking it. The local store unpacks NARs ahead of the
//! paths they refer to and makes each path valid once its references are, so a chain
//! downloads as many paths at once as a wide closure; other stores are given a path
//! only after the paths it refers to. A path refused (a NAR gone, a hash mismatch, a
//! truncated stream) leaves nothing in the store; the next cache that has it (with the
//! same references) is tried, as Nix tries the next substituter; when none gives it,
//! only the paths that refer to it are given up: the others are fetched all the same,
//! and every path added stays (it is complete, valid and so are its references).
//! [`substitute`] then reports the first failure as its error.
//!
//! Nothing is remembered between calls: a path pushed to a cache a second after a miss
//! is found by the next lookup.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufReader;
use std::sync::Mutex;

use arca_store_core::{dependency_order, AddBatch, PublicKey, Store, StorePath};

use crate::cache::{BinaryCache, CacheError, Refusal};
use crate::narinfo::{NarInfo, SignatureCheck};
use crate::schedule::{for_each, in_dependency_order};

/// Whom to believe, and how much to do at once.
#[derive(Debug, Clone, Copy)]
pub struct SubstituteOptions<'a> {
    /// Nix's `trusted-public-keys`.
    pub trusted_keys: &'a [PublicKey],
    /// Nix's `require-sigs`: a path must be signed by a trusted key or be correctly
    /// content-addressed.
    pub require_sigs: bool,
    /// Narinfo requests in flight at once (all caches together).
    pub lookups: usize,
    /// NAR downloads at once (independent of `max-jobs`).
    pub downloads: usize,
}

impl<'a> SubstituteOptions<'a> {
    /// 32 lookups and 8 downloads at a time.
    pub fn new(trusted_keys: &'a [PublicKey], require_sigs: bool) -> SubstituteOptions<'a> {
        SubstituteOptions {
            trusted_keys,
            require_sigs,
            lookups: 32,
            downloads: 8,
        }
    }
}

/// A path a cache can give: which cache, and its checked `.narinfo`.
#[derive(Debug, Clone)]
pub struct Found {
    /// Index into the caches given to [`plan`].
    pub cache: usize,
    pub narinfo: NarInfo,
    /// The other caches whose `.narinfo` for the path passed the checks and names the
    /// same references, in priority order: tried in turn when fetching from `cache`
    /// fails (a NAR gone, a corrupt one, a cache down), as Nix tries the next
    /// substituter.
    pub alternatives: Vec<(usize, NarInfo)>,
}

/// What [`plan`] found.
#[derive(Debug, Default)]
pub struct Plan {
    /// Paths the store has already.
    pub present: BTreeSet<StorePath>,
    /// Paths to fetch, and from where.
    pub found: BTreeMap<StorePath, Found>,
    /// Paths no cache can give, with why not (one error per cache that has it but was
    /// refused; none when no cache has it at all).
    pub missing: BTreeMap<StorePath, Vec<Refusal>>,
}

impl Plan {
    /// Whether every path of `path`'s closure is present or found.
    pub fn substitutable(&self, path: &StorePath) -> bool {
        let mut seen = BTreeSet::new();
        let mut pending = vec![path];
        while let Some(path) = pending.pop() {
            if !seen.insert(path) || self.present.contains(path) {
                continue;
            }
            match self.found.get(path) {
                Some(found) => pending.extend(found.narinfo.info.references.iter()),
                None => return false,
            }
        }
        true
    }

    /// Why `path` (or a path of its closure) cannot be substituted, if it cannot: the
    /// refusal of the cache of best priority, else "not in any cache".
    pub fn why_not(&self, path: &StorePath, caches: &[BinaryCache]) -> Option<CacheError> {
        let mut seen = BTreeSet::new();
        let mut pending = vec![path];
        while let Some(path) = pending.pop() {
            if !seen.insert(path) || self.present.contains(path) {
                continue;
            }
            if let Some(found) = self.found.get(path) {
                pending.extend(found.narinfo.info.references.iter());
                continue;
            }
            let mut reasons = self.missing.get(path).into_iter().flatten();
            let store_dir = caches
                .first()
                .map(|c| c.store_dir().clone())
                .unwrap_or_default();
            return Some(match reasons.next() {
                Some(reason) => CacheError::Refused(reason.clone()),
                None => CacheError::NotInCache {
                    path: store_dir.display(path),
                    caches: caches.iter().map(|c| c.url().to_owned()).collect(),
                },
            });
        }
        None
    }
}

/// Plans substituting the closures of `paths` into `store` from `caches` (see the
/// module docs). A cache that cannot be reached at all is an error; a `.narinfo` that
/// fails a check is a refusal recorded in [`Plan::missing`].
pub fn plan<S: Store + Sync + ?Sized>(
    store: &S,
    caches: &[BinaryCache],
    paths: &BTreeSet<StorePath>,
    options: SubstituteOptions<'_>,
) -> Result<Plan, CacheError> {
    let mut order: Vec<usize> = (0..caches.len()).collect();
    order.sort_by_key(|&i| caches[i].priority());
    let mut plan = Plan::default();
    let mut level: BTreeSet<StorePath> = paths.clone();
    while !level.is_empty() {
        let mut lookups = Vec::new();
        for path in std::mem::take(&mut level) {
            let valid = store
                .is_valid_path(&path)
                .map_err(|error| CacheError::Store {
                    path: store.store_dir().display(&path),
                    source: Box::new(error),
                })?;
            if valid {
                plan.present.insert(path);
            } else {
                lookups.extend(order.iter().map(|&cache| (path.clone(), cache)));
            }
        }
        let answers = for_each(&lookups, options.lookups, |(path, cache)| {
            check(&caches[*cache], path, options)
        });
        // The answers come in priority order for each path.
        let mut decided: BTreeSet<StorePath> = BTreeSet::new();
        for ((path, cache), answer) in lookups.into_iter().zip(answers) {
            if decided.contains(&path) {
                // Another cache that has it is a fallback, if it agrees on references
                // (the order of the fetch depends on them); an error here is not fatal.
                if let (Ok(Answer::Hit(narinfo)), Some(found)) = (answer, plan.found.get_mut(&path))
                {
                    if narinfo.info.references == found.narinfo.info.references {
                        found.alternatives.push((cache, *narinfo));
                    }
                }
                continue;
            }
            match answer? {
                Answer::Hit(narinfo) => {
                    level.extend(
                        narinfo
                            .info
                            .references
                            .iter()
                            .filter(|r| {
                                **r != path
                                    && !plan.found.contains_key(*r)
                                    && !plan.present.contains(*r)
                                    && !plan.missing.contains_key(*r)
                            })
                            .cloned(),
                    );
                    plan.missing.remove(&path);
                    plan.found.insert(
                        path.clone(),
                        Found {
                            cache,
                            narinfo: *narinfo,
                            alternatives: Vec::new(),
                        },
                    );
                    decided.insert(path);
                }
                Answer::Miss => {
                    plan.missing.entry(path).or_default();
                }
                Answer::Refused(reason) => {
                    plan.missing.entry(path).or_default().push(reason);
                }
            }
        }
        level.retain(|path| !decided.contains(path));
    }
    Ok(plan)
}

enum Answer {
    Hit(Box<NarInfo>),
    Miss,
    Refused(Refusal),
}

/// Looks `path` up in `cache` and checks what it says.
fn check(
    cache: &BinaryCache,
    path: &StorePath,
    options: SubstituteOptions<'_>,
) -> Result<Answer, CacheError> {
    let narinfo = match cache.narinfo(path) {
        Ok(Some(narinfo)) => narinfo,
        Ok(None) => return Ok(Answer::Miss),
        Err(CacheError::Refused(refusal)) => return Ok(Answer::Refused(refusal)),
        Err(error) => return Err(error),
    };
    if options.require_sigs {
        if let SignatureCheck::Untrusted { signed_by, forged } =
            narinfo.check_signatures(cache.store_dir(), options.trusted_keys)
        {
            return Ok(Answer::Refused(Refusal::Untrusted {
                path: cache.store_dir().display(path),
                cache: cache.url().to_owned(),
                signed_by,
                forged,
                trusted: options
                    .trusted_keys
                    .iter()
                    .map(|key| key.name().to_owned())
                    .collect(),
            }));
        }
    }
    Ok(Answer::Hit(Box::new(narinfo)))
}

/// What [`fetch`] did.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Paths added to the store, in the order they were.
    pub added: Vec<StorePath>,
    /// Paths that failed, and why (nothing of them is in the store); the paths that
    /// refer to them were not tried.
    pub failed: Vec<(StorePath, CacheError)>,
}

/// Fetches the closures of `paths` as `plan` found them (every one must be
/// [`Plan::substitutable`], else the error says why not and nothing is fetched) into
/// `store`. A path that fails does not stop the others, only those that need it.
pub fn fetch<S: Store + Sync + ?Sized>(
    store: &S,
    caches: &[BinaryCache],
    plan: &Plan,
    paths: &BTreeSet<StorePath>,
    options: SubstituteOptions<'_>,
) -> Result<Fetched, CacheError> {
    let mut graph = BTreeMap::new();
    let mut pending: Vec<&StorePath> = paths.iter().collect();
    while let Some(path) = pending.pop() {
        if graph.contains_key(path) || plan.present.contains(path) {
            continue;
        }
        let Some(found) = plan.found.get(path) else {
            return Err(plan
                .why_not(path, caches)
                .unwrap_or_else(|| CacheError::InvalidPath(store.store_dir().display(path))));
        };
        pending.extend(found.narinfo.info.references.iter());
        graph.insert(path.clone(), found.narinfo.info.references.clone());
    }
    let batch = store.add_batch();
    // One path from the cache of best priority, then the others that have it: a failed
    // add leaves nothing behind, so the next one starts clean. The first failure is the
    // one reported when all fail.
    let add = |path: &StorePath| -> Result<(), CacheError> {
        let found = &plan.found[path];
        let sources = std::iter::once((found.cache, &found.narinfo)).chain(
            found
                .alternatives
                .iter()
                .map(|(cache, narinfo)| (*cache, narinfo)),
        );
        let mut first_error = None;
        for (index, narinfo) in sources {
            let cache = &caches[index];
            let added = cache.nar(narinfo).and_then(|nar| {
                batch
                    .add_nar(&narinfo.info, &mut BufReader::with_capacity(1 << 16, nar))
                    .map_err(|error| CacheError::Add {
                        path: store.store_dir().display(path),
                        cache: cache.url().to_owned(),
                        source: Box::new(error),
                    })
            });
            match added {
                Ok(()) => return Ok(()),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        batch.abandon(path);
        Err(first_error.unwrap_or_else(|| CacheError::InvalidPath(store.store_dir().display(path))))
    };
    let mut failed = if batch.ahead_of_references() {
        fetch_ahead(&graph, options.downloads, add, |path| batch.abandon(path))
    } else {
        in_dependency_order(&graph, options.downloads, true, add).failed
    };
    let finished = batch.finish().map_err(|error| CacheError::Store {
        path: "the paths substituted".to_owned(),
        source: Box::new(error),
    })?;
    failed.extend(finished.failed.into_iter().map(|(path, source)| {
        let error = CacheError::Add {
            path: store.store_dir().display(&path),
            cache: caches[plan.found[&path].cache].url().to_owned(),
            source,
        };
        (path, error)
    }));
    Ok(Fetched {
        added: finished.valid,
        failed,
    })
}

/// Runs `add` on every path of `graph` on up to `jobs` threads, handing the paths out
/// references first but without waiting for them (the store makes each path valid once
/// its references are); a path whose reference failed is not tried but given to
/// `abandon`, as `add` does with the paths it fails.
fn fetch_ahead(
    graph: &BTreeMap<StorePath, BTreeSet<StorePath>>,
    jobs: usize,
    add: impl Fn(&StorePath) -> Result<(), CacheError> + Sync,
    abandon: impl Fn(&StorePath) + Sync,
) -> Vec<(StorePath, CacheError)> {
    let keys: BTreeSet<StorePath> = graph.keys().cloned().collect();
    let order = dependency_order(&keys, |path| {
        Ok::<_, std::convert::Infallible>(graph.get(path).cloned().unwrap_or_default())
    })
    .unwrap_or_else(|never| match never {});
    let given_up: Mutex<BTreeSet<StorePath>> = Mutex::new(BTreeSet::new());
    let results = for_each(&order, jobs, |path| {
        let needs_lost = graph[path].iter().any(|r| {
            r != path
                && given_up
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(r)
        });
        let result = if needs_lost {
            abandon(path);
            Err(None)
        } else {
            add(path).map_err(Some)
        };
        if result.is_err() {
            given_up
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(path.clone());
        }
        result
    });
    order
        .into_iter()
        .zip(results)
        .filter_map(|(path, result)| match result {
            Err(Some(error)) => Some((path, error)),
            _ => None,
        })
        .collect()
}

/// Copies the closures of `paths` from `caches` into `store` ([`plan`], then [`fetch`]);
/// a path that cannot be substituted is an error saying why, and nothing is fetched.
pub fn substitute<S: Store + Sync + ?Sized>(
    store: &S,
    caches: &[BinaryCache],
    paths: &BTreeSet<StorePath>,
    options: SubstituteOptions<'_>,
) -> Result<Vec<StorePath>, CacheError> {
    let plan = plan(store, caches, paths, options)?;
    for path in paths {
        if let Some(reason) = plan.why_not(path, caches) {
            return Err(reason);
        }
    }
    let fetched = fetch(store, caches, &plan, paths, options)?;
    match fetched.failed.into_iter().next() {
        Some((_, error)) => Err(error),
        None => Ok(fetched.added),
    }
}
