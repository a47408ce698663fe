//! The goal graph and its scheduler: find what must be built, then build it in
//! dependency order with up to `max_jobs` builds at once here, and as many as their
//! slots allow on remote machines ([`crate::remote`]), each derivation once.
//!
//! While nothing is ready, derivations start early (`pick_early`): those whose unbuilt
//! inputs are all being built here or started early themselves, as long as fewer than
//! `max_jobs` jobs wait at gates (so a chain is prepared two links ahead of the build
//! running). Their jobs prepare the sandbox in the background (`SCHED_BATCH`, see
//! `arca_sandbox::background_thread`, as the committer runs)
//! and wait at a gate (`EarlyGate`) until the inputs are built and a build slot is free;
//! the worker that finishes the last input starts the builder then (`take_handovers` in
//! `finish`), before the job's own thread is awake. One whose input fails never runs and reports nothing of its own (the failure marks it
//! not built, as any dependent). Leftovers of finished builds (logs to compress,
//! directories to remove) go to a tidying thread at a low priority.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};

use arca_store_core::derivation::{Derivation, DerivationKind, OutputName};
use arca_store_core::{DrvOutput, Hash, Realisation, Store, StorePath};
use arca_store_sqlite::{LocalStore, PublishedPaths};

use crate::job::{Begun, Gate, Job, JobOutcome, Leftovers, Start};
use crate::pending::Pending;
use crate::remote::{Machines, Placement, RemoteFailure};
use crate::substitution::Substituters;
use arca_store_core::BuildEvent;

use crate::types::{BuildError, BuildOptions, BuildResult, BuildTarget};

/// Builds `targets` (and whatever they need that is not valid) in `store`, calling
/// `on_event` on the calling thread as things happen. Returns what became of every
/// derivation that was looked at; a failure of one derivation is a
/// [`BuildResult::Failed`] in the map, not an `Err` (which is kept for a failure to read
/// the targets themselves).
///
/// Every derivation is checked against Nix's invariants before anything is built from it
/// ([`LocalStore::check_derivation`]): a `.drv` claiming output paths its contents do not
/// give is an `Err`, whoever put it in the store.
pub fn build(
    store: &LocalStore,
    targets: &[BuildTarget],
    options: &BuildOptions,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<BTreeMap<StorePath, BuildResult>, BuildError> {
    run(store, targets, &BTreeMap::new(), options, on_event)
}

/// Builds one derivation that is not in the store, sent whole by a trusted party (Nix's
/// `BuildDerivation`, what remote-build clients send): its inputs must be valid already
/// (a basic derivation has only input sources) and its output paths are taken as given,
/// which is why only a caller that trusts the sender, or has checked that every output
/// is fixed (content-addressed, so verified by its hash), may call this.
/// `drv_path` names it in logs, events and as the outputs' deriver.
pub fn build_derivation(
    store: &LocalStore,
    drv_path: &StorePath,
    drv: &Derivation,
    options: &BuildOptions,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<BuildResult, BuildError> {
    let given = BTreeMap::from([(drv_path.clone(), drv.clone())]);
    let mut results = run(
        store,
        &[BuildTarget::all(drv_path.clone())],
        &given,
        options,
        on_event,
    )?;
    Ok(results
        .remove(drv_path)
        .expect("the target is in the results, built or not"))
}

fn run(
    store: &LocalStore,
    targets: &[BuildTarget],
    given: &BTreeMap<StorePath, Derivation>,
    options: &BuildOptions,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<BTreeMap<StorePath, BuildResult>, BuildError> {
    // A rebuild (check, repair) builds; anything else is substituted where it can be.
    let substituters = Substituters::new(&options.substitution);
    if !options.check && !options.repair && !options.substitution.substituters.is_empty() {
        crate::substitution::substitute_targets(store, targets, given, &substituters, on_event)?;
    }
    let graph = Graph::load(store, targets, given, options, &substituters, on_event)?;
    let mut results: BTreeMap<StorePath, BuildResult> = BTreeMap::new();
    for (drv, node) in &graph.nodes {
        if !node.needed {
            results.insert(drv.clone(), BuildResult::AlreadyValid(node.outputs.clone()));
        }
    }
    let to_build = graph.nodes.values().filter(|n| n.needed).count();
    on_event(BuildEvent::Planned { to_build });
    for (drv, _) in graph.nodes.iter().filter(|(_, node)| node.needed) {
        on_event(BuildEvent::Queued { drv: drv.clone() });
    }

    let state = Mutex::new(State::new(&graph));
    let wake = Condvar::new();
    let (events, receiver) = mpsc::channel::<BuildEvent>();
    let finished: Mutex<Vec<(StorePath, BuildResult)>> = Mutex::new(Vec::new());
    let pending = Pending::default();
    let realised = Mutex::new(
        graph
            .nodes
            .iter()
            .map(|(path, node)| (path.clone(), node.outputs.clone()))
            .collect(),
    );
    let (commits, commit_queue) = mpsc::channel::<Commit>();
    let (tidy, tidy_queue) = mpsc::channel::<Leftovers>();
    let machines = Machines::new(
        &options.machines,
        store.state_dir(),
        options.builders_use_substitutes,
    );
    // Twice the build slots: as many jobs again may wait at their gates (`pick_early`).
    let workers = (2 * local_slots(options) + machines.slots())
        .max(1)
        .min(to_build.max(1));
    let shared = Shared {
        machines: &machines,
        store,
        graph: &graph,
        options,
        state: &state,
        wake: &wake,
        finished: &finished,
        pending: &pending,
        realised: &realised,
    };
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let events = events.clone();
            let commits = commits.clone();
            let tidy = tidy.clone();
            scope.spawn(move || worker(&shared, &commits, &tidy, &forward_to(events)));
        }
        drop((commits, tidy));
        let committer_events = events.clone();
        scope.spawn(move || committer(&shared, &commit_queue, &forward_to(committer_events)));
        // What builds leave to clean up (logs to compress, directories to remove) is
        // done here, beside the builds rather than before the next.
        scope.spawn(move || {
            arca_sandbox::lower_thread_priority();
            for leftovers in tidy_queue {
                drop(leftovers);
            }
        });
        drop(events);
        for event in receiver {
            on_event(event);
        }
    });
    let state = state.into_inner().unwrap_or_else(|p| p.into_inner());
    for (drv, result) in finished.into_inner().unwrap_or_else(|p| p.into_inner()) {
        results.insert(drv, result);
    }
    for (drv, because_of) in state.not_built {
        results.insert(drv, BuildResult::NotBuilt { because_of });
    }
    Ok(results)
}

/// An event sink for a worker thread: events go to the caller's thread, which hands them
/// to `on_event` (a closed channel means the run is over; nothing is left to tell).
fn forward_to(events: mpsc::Sender<BuildEvent>) -> impl Fn(BuildEvent) + Sync {
    move |event| {
        let _ = events.send(event);
    }
}

/// One derivation in the graph.
struct Node {
    drv: Derivation,
    kind: DerivationKind,
    /// The output paths known before building: all of them for a derivation whose
    /// paths follow from it, those with a realisation otherwise.
    outputs: BTreeMap<OutputName, StorePath>,
    /// Whether it must be built (some wanted output invalid, or `--check`/`--repair`).
    needed: bool,
    /// Needed input derivations.
    dependencies: BTreeSet<StorePath>,
    /// The hash naming its outputs in realisations (with `ca-derivations`, for a
    /// derivation that is not impure).
    static_hash: Option<Hash>,
}

impl Node {
    /// Whether it is resolved before it is built (Nix's `inputsRealised`): a deferred
    /// or impure derivation, or a content-addressed one with input derivations (a
    /// fixed-output one only with `ca-derivations`).
    fn resolves(&self, options: &BuildOptions) -> bool {
        !self.drv.input_drvs.is_empty()
            && match self.kind {
                DerivationKind::InputAddressed => false,
                DerivationKind::Fixed => options.ca_derivations,
                DerivationKind::DeferredInputAddressed
                | DerivationKind::Floating
                | DerivationKind::Impure => true,
            }
    }
}

struct Graph {
    nodes: BTreeMap<StorePath, Node>,
}

impl Graph {
    /// Reads every derivation reachable from the targets and marks what must be built:
    /// a derivation is needed when an output wanted of it is not valid; only then are
    /// its inputs looked at (a valid output needs nothing built below it).
    /// Derivations in `given` are taken as they are, neither read nor checked.
    fn load(
        store: &LocalStore,
        targets: &[BuildTarget],
        given: &BTreeMap<StorePath, Derivation>,
        options: &BuildOptions,
        substituters: &Substituters<'_>,
        on_event: &mut dyn FnMut(BuildEvent),
    ) -> Result<Graph, BuildError> {
        let mut nodes: BTreeMap<StorePath, Node> = BTreeMap::new();
        // Derivations read from the store, to be checked once all are parsed.
        let mut checked: Vec<StorePath> = Vec::new();
        let mut wanted: BTreeMap<StorePath, BTreeSet<OutputName>> = BTreeMap::new();
        let mut pending: VecDeque<(StorePath, Option<BTreeSet<OutputName>>, bool)> = targets
            .iter()
            .map(|t| (t.drv.clone(), t.outputs.clone(), true))
            .collect();
        while let Some((drv_path, outputs, is_target)) = pending.pop_front() {
            if !nodes.contains_key(&drv_path) {
                // Rooted before looking: what is seen valid stays valid (no collector
                // deletes it) until this build is over.
                store.add_temp_root(&drv_path)?;
                let drv = match given.get(&drv_path) {
                    Some(drv) => drv.clone(),
                    None => {
                        checked.push(drv_path.clone());
                        store.read_derivation(&drv_path)?
                    }
                };
                let display = || store.store_dir().full(&drv_path);
                let kind = drv.kind().map_err(|error| BuildError::Unsupported {
                    drv: display(),
                    reason: error.to_string(),
                })?;
                let experimental = |feature: &str| {
                    BuildError::Unsupported {
                    drv: display(),
                    reason: format!("experimental Nix feature '{feature}' is disabled; use '--extra-experimental-features {feature}' to override"),
                }
                };
                if !kind.has_known_output_paths() && !options.ca_derivations {
                    return Err(experimental("ca-derivations"));
                }
                if kind == DerivationKind::Impure && !options.impure_derivations {
                    return Err(experimental("impure-derivations"));
                }
                let static_hash = if options.ca_derivations && kind != DerivationKind::Impure {
                    Some(store.static_output_hash(&drv)?.hash)
                } else {
                    None
                };
                let known = if kind.has_known_output_paths() {
                    Job {
                        pending: &Pending::default(),
                        store,
                        drv_path: &drv_path,
                        drv: &drv,
                        options,
                        emit: &|_| {},
                        wait_for_locks: true,
                        gate: None,
                        gate_passed: Default::default(),
                        background: Default::default(),
                    }
                    .outputs()?
                } else {
                    let known = realised_outputs(store, &drv, static_hash.as_ref())?;
                    match &static_hash {
                        Some(hash)
                            if known.len() < drv.outputs.len()
                                && !options.check
                                && !options.repair
                                && !options.substitution.substituters.is_empty()
                                && crate::environment::substitutes_allowed(&drv) =>
                        {
                            let substituted = crate::substitution::substitute_realisations(
                                store,
                                &drv,
                                hash,
                                substituters,
                                on_event,
                            );
                            if substituted.is_empty() {
                                known
                            } else {
                                substituted
                            }
                        }
                        _ => known,
                    }
                };
                store.add_temp_roots(known.values())?;
                nodes.insert(
                    drv_path.clone(),
                    Node {
                        drv,
                        kind,
                        outputs: known,
                        needed: false,
                        dependencies: BTreeSet::new(),
                        static_hash,
                    },
                );
            }
            let node = nodes.get_mut(&drv_path).expect("inserted above");
            let names: BTreeSet<OutputName> =
                outputs.unwrap_or_else(|| node.drv.outputs.keys().cloned().collect());
            let seen = wanted.entry(drv_path.clone()).or_default();
            let new: Vec<OutputName> = names
                .into_iter()
                .filter(|n| seen.insert(n.clone()))
                .collect();
            if new.is_empty() || node.needed {
                continue;
            }
            // `--check` and `--repair` apply to the targets themselves, like Nix.
            let mut needed = is_target && (options.check || options.repair)
                || node.kind == DerivationKind::Impure;
            for name in &new {
                match node.outputs.get(name) {
                    Some(path) if store.is_valid_path(path)? => {}
                    Some(_) => needed = true,
                    None if node.drv.outputs.contains_key(name) => needed = true,
                    None => {
                        return Err(BuildError::Unsupported {
                            drv: store.store_dir().full(&drv_path),
                            reason: format!("it has no output '{name}'"),
                        })
                    }
                }
            }
            if needed {
                node.needed = true;
                for (input, input_outputs) in &node.drv.input_drvs {
                    node.dependencies.insert(input.clone());
                    pending.push_back((input.clone(), Some(input_outputs.clone()), false));
                }
            }
        }
        // However it reached the store (a store made by an older Arca or by Nix
        // included), a `.drv` claiming paths its contents do not give is never built.
        // Input derivations the graph has parsed are not read again.
        for drv_path in &checked {
            store.check_derivation_using(drv_path, &nodes[drv_path].drv, |input| {
                match nodes.get(input) {
                    Some(node) => Ok(node.drv.clone()),
                    None => store.read_derivation(input),
                }
            })?;
        }
        // A pure derivation that is not fixed-output may not depend on an impure one.
        for (path, node) in nodes.iter().filter(|(_, n)| n.needed) {
            if matches!(node.kind, DerivationKind::Fixed | DerivationKind::Impure) {
                continue;
            }
            for input in node.drv.input_drvs.keys() {
                if nodes
                    .get(input)
                    .is_some_and(|n| n.kind == DerivationKind::Impure)
                {
                    return Err(BuildError::DependsOnImpure {
                        drv: store.store_dir().full(path),
                        input: store.store_dir().full(input),
                    });
                }
            }
        }
        // With `ca-derivations`, valid outputs of derivations whose paths are known get
        // the realisations they lack (built before the feature was on), as in Nix.
        if options.ca_derivations {
            for node in nodes
                .values()
                .filter(|n| !n.needed && n.kind.has_known_output_paths())
            {
                let Some(hash) = &node.static_hash else {
                    continue;
                };
                for (name, path) in &node.outputs {
                    let id = DrvOutput {
                        drv_hash: hash.clone(),
                        output: name.clone(),
                    };
                    if store.is_valid_path(path)? && store.query_realisation(&id)?.is_none() {
                        store.register_realisation(&Realisation::new(id, path.clone()))?;
                    }
                }
            }
        }
        // Inputs whose wanted outputs are all valid need not be waited for.
        let needed: BTreeSet<StorePath> = nodes
            .iter()
            .filter(|(_, n)| n.needed)
            .map(|(p, _)| p.clone())
            .collect();
        for node in nodes.values_mut() {
            node.dependencies.retain(|d| needed.contains(d));
        }
        Ok(Graph { nodes })
    }
}

/// The outputs of a derivation whose paths are not known in advance that have a
/// realisation (whose paths are valid, then).
fn realised_outputs(
    store: &LocalStore,
    drv: &Derivation,
    static_hash: Option<&Hash>,
) -> Result<BTreeMap<OutputName, StorePath>, BuildError> {
    let mut known = BTreeMap::new();
    let Some(hash) = static_hash else {
        return Ok(known);
    };
    for name in drv.outputs.keys() {
        let id = DrvOutput {
            drv_hash: hash.clone(),
            output: name.clone(),
        };
        if let Some(realisation) = store.query_realisation(&id)? {
            known.insert(name.clone(), realisation.out_path);
        }
    }
    Ok(known)
}

/// The scheduler's shared state.
struct State {
    /// Needed derivations not finished, with how many of their dependencies are pending.
    waiting: BTreeMap<StorePath, usize>,
    ready: VecDeque<StorePath>,
    dependents: BTreeMap<StorePath, Vec<StorePath>>,
    running: usize,
    /// Of those, the ones building here (at most `max_jobs`).
    local_running: usize,
    /// Ready derivations whose outputs another process was building when last tried:
    /// others are started first, and only when every ready one is busy does a worker
    /// wait for one of them (so that several clients building the same graph build its
    /// independent parts in parallel, as Nix's do). Forgotten when a build ends.
    busy: BTreeSet<StorePath>,
    /// Stop starting builds (a failure without `--keep-going`).
    stopped: bool,
    not_built: BTreeMap<StorePath, Option<StorePath>>,
    /// Local builds past their start (a job that started early: past its gate), which
    /// a dependent may start early beside.
    building_here: BTreeSet<StorePath>,
    /// Jobs started before the builds of their inputs were over (see `pick_early`):
    /// still `waiting` until those builds are, but never put in `ready`.
    early: BTreeSet<StorePath>,
    /// Of those, the ones waiting at their gates with their builders' start
    /// ([`Gate::pass_and_start`]), which the build that ends their wait runs.
    handovers: BTreeMap<StorePath, Start>,
    /// What running a handed-over start came to, for the job's thread to pick up.
    begun: BTreeMap<StorePath, Result<Begun, BuildError>>,
}

impl State {
    fn new(graph: &Graph) -> State {
        let mut waiting = BTreeMap::new();
        let mut ready = VecDeque::new();
        let mut dependents: BTreeMap<StorePath, Vec<StorePath>> = BTreeMap::new();
        for (path, node) in graph.nodes.iter().filter(|(_, n)| n.needed) {
            for dependency in &node.dependencies {
                dependents
                    .entry(dependency.clone())
                    .or_default()
                    .push(path.clone());
            }
            if node.dependencies.is_empty() {
                ready.push_back(path.clone());
            } else {
                waiting.insert(path.clone(), node.dependencies.len());
            }
        }
        State {
            waiting,
            ready,
            dependents,
            running: 0,
            local_running: 0,
            busy: BTreeSet::new(),
            stopped: false,
            not_built: BTreeMap::new(),
            building_here: BTreeSet::new(),
            early: BTreeSet::new(),
            handovers: BTreeMap::new(),
            begun: BTreeMap::new(),
        }
    }

    fn succeeded(&mut self, drv: &StorePath) {
        for dependent in self.dependents.remove(drv).unwrap_or_default() {
            if let Some(count) = self.waiting.get_mut(&dependent) {
                *count -= 1;
                if *count == 0 {
                    self.waiting.remove(&dependent);
                    // A job that started early passes its gate now.
                    if !self.early.contains(&dependent) {
                        self.ready.push_back(dependent);
                    }
                }
            }
        }
    }

    /// Marks everything depending on `failed` (transitively) as not built.
    fn failed(&mut self, failed: &StorePath, keep_going: bool) {
        let mut pending = vec![failed.clone()];
        while let Some(path) = pending.pop() {
            for dependent in self.dependents.remove(&path).unwrap_or_default() {
                if self.waiting.remove(&dependent).is_some() {
                    self.not_built
                        .insert(dependent.clone(), Some(failed.clone()));
                    pending.push(dependent);
                }
            }
        }
        if !keep_going {
            self.stopped = true;
            for path in self
                .ready
                .drain(..)
                .chain(std::mem::take(&mut self.waiting).into_keys())
            {
                self.not_built.entry(path).or_insert(None);
            }
        }
    }
}

/// What every worker (and the committer) shares.
#[derive(Clone, Copy)]
struct Shared<'a> {
    store: &'a LocalStore,
    /// Remote machines and their connections.
    machines: &'a Machines,
    graph: &'a Graph,
    options: &'a BuildOptions,
    state: &'a Mutex<State>,
    wake: &'a Condvar,
    finished: &'a Mutex<Vec<(StorePath, BuildResult)>>,
    pending: &'a Pending,
    /// The output paths of every derivation of the graph known so far (given, realised
    /// or built in this run): what resolving a derivation replaces its inputs with.
    realised: &'a Mutex<BTreeMap<StorePath, BTreeMap<OutputName, StorePath>>>,
}

/// A built derivation whose outputs wait for the group commit.
struct Commit {
    drv: StorePath,
    outputs: BTreeMap<OutputName, StorePath>,
    published: PublishedPaths,
    /// The static output hash of the derivation it was resolved to, if it was.
    resolved_hash: Option<Hash>,
}

/// What a derivation is built as: itself, or the derivation it resolves to.
struct Resolved {
    path: StorePath,
    drv: Derivation,
    /// The resolved derivation's static output hash (`ca-derivations`).
    static_hash: Option<Hash>,
    /// Its outputs, when they are all there already (realised before).
    valid: Option<BTreeMap<OutputName, StorePath>>,
}

/// Resolves `node` (Nix's `tryResolve`, then `writeDerivation`): its inputs' outputs
/// replace its input derivations and their placeholders; the resolved `.drv` is written
/// to the store once those outputs are registered.
fn resolve(shared: &Shared<'_>, drv_path: &StorePath, node: &Node) -> Result<Resolved, BuildError> {
    let store = shared.store;
    let resolved = {
        let realised = shared.realised.lock().unwrap_or_else(|p| p.into_inner());
        node.drv
            .try_resolve(store.store_dir(), |input, output| {
                realised.get(input)?.get(output).cloned()
            })
            .map_err(|error| BuildError::Unsupported {
                drv: store.store_dir().full(drv_path),
                reason: format!("it cannot be resolved: {error}"),
            })?
    };
    shared.pending.wait_until_registered(&resolved.input_srcs);
    let path = store.add_derivation(&resolved)?;
    store.add_temp_root(&path)?;
    let kind = resolved.kind().map_err(|error| BuildError::Unsupported {
        drv: store.store_dir().full(&path),
        reason: error.to_string(),
    })?;
    let static_hash = if shared.options.ca_derivations && kind != DerivationKind::Impure {
        Some(store.static_output_hash(&resolved)?.hash)
    } else {
        None
    };
    let valid = if kind.has_known_output_paths() || kind == DerivationKind::Impure {
        None
    } else {
        let known = realised_outputs(store, &resolved, static_hash.as_ref())?;
        (known.len() == resolved.outputs.len()).then_some(known)
    };
    Ok(Resolved {
        path,
        drv: resolved,
        static_hash,
        valid,
    })
}

/// Records the realisations of `node`'s outputs (with `ca-derivations`, unless it is
/// impure), as Nix's `registerOutputs` and `resolvedFinished`: under the static hash of
/// the derivation built (the resolved one, if it was resolved), and under the node's
/// own, with the realisations of its inputs that each output refers to. Every path
/// must be valid.
fn register_realisations(
    shared: &Shared<'_>,
    node: &Node,
    outputs: &BTreeMap<OutputName, StorePath>,
    resolved_hash: Option<&Hash>,
) -> Result<(), BuildError> {
    let store = shared.store;
    let options = shared.options;
    if !options.ca_derivations {
        return Ok(());
    }
    let sign = |realisation: &mut Realisation| {
        for key in &options.signing_keys {
            realisation.sign(key);
        }
    };
    let mut hashes = Vec::new();
    if let Some(hash) = resolved_hash {
        hashes.push((hash, false));
    }
    if let Some(hash) = &node.static_hash {
        let dependents = resolved_hash.is_some() && node.kind != DerivationKind::Fixed;
        hashes.push((hash, dependents));
    }
    for (hash, dependents) in hashes {
        for (name, path) in outputs {
            let id = DrvOutput {
                drv_hash: hash.clone(),
                output: name.clone(),
            };
            let mut realisation = Realisation::new(id, path.clone());
            if dependents {
                realisation.dependent_realisations = dependent_realisations(shared, node, path)?;
            }
            sign(&mut realisation);
            store.register_realisation(&realisation)?;
        }
    }
    Ok(())
}

/// The realisations of `node`'s inputs (and theirs, transitively) whose paths `path`
/// refers to (Nix's `drvOutputReferences`).
fn dependent_realisations(
    shared: &Shared<'_>,
    node: &Node,
    path: &StorePath,
) -> Result<BTreeMap<DrvOutput, StorePath>, BuildError> {
    let store = shared.store;
    let mut roots = Vec::new();
    for (input, outputs) in &node.drv.input_drvs {
        let Some(hash) = shared
            .graph
            .nodes
            .get(input)
            .and_then(|n| n.static_hash.as_ref())
        else {
            continue;
        };
        for output in outputs {
            let id = DrvOutput {
                drv_hash: hash.clone(),
                output: output.clone(),
            };
            let realisation =
                store
                    .query_realisation(&id)?
                    .ok_or_else(|| BuildError::Unsupported {
                        drv: store.store_dir().full(input),
                        reason: format!("output '{output}' of it isn't built"),
                    })?;
            roots.push(realisation);
        }
    }
    let references = store
        .query_path_info(path)?
        .map(|info| info.references)
        .unwrap_or_default();
    Ok(store
        .realisation_closure(roots)?
        .into_values()
        .filter(|realisation| references.contains(&realisation.out_path))
        .map(|realisation| (realisation.id, realisation.out_path))
        .collect())
}

fn worker(
    shared: &Shared<'_>,
    commits: &mpsc::Sender<Commit>,
    tidy: &mpsc::Sender<Leftovers>,
    emit: &(dyn Fn(BuildEvent) + Sync),
) {
    let Shared {
        store,
        graph,
        options,
        state,
        wake,
        pending,
        ..
    } = *shared;
    loop {
        let (drv_path, wait_for_locks, placement, early) = {
            let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if guard.stopped && guard.running == 0 {
                    wake.notify_all();
                    return;
                }
                if !guard.stopped {
                    if let Some(next) = pick(shared, &mut guard) {
                        guard.running += 1;
                        if matches!(next.2, Placement::Local) {
                            guard.building_here.insert(next.0.clone());
                            // An idle worker may start one of its dependents early.
                            wake.notify_all();
                        }
                        break (next.0, next.1, next.2, false);
                    }
                    if let Some(next) = pick_early(shared, &mut guard) {
                        // A build slot is taken at its gate.
                        guard.running += 1;
                        guard.early.insert(next.clone());
                        break (next, false, Placement::Local, true);
                    }
                }
                if guard.running == 0 && guard.ready.is_empty() {
                    // Nothing runs and nothing is ready: all done (what still waits
                    // depends on a failure and was marked already).
                    wake.notify_all();
                    return;
                }
                guard = if guard.ready.is_empty() || guard.stopped {
                    wake.wait(guard).unwrap_or_else(|p| p.into_inner())
                } else {
                    // Ready work waits for a slot, which another process may free:
                    // look again now and then.
                    wake.wait_timeout(guard, std::time::Duration::from_millis(100))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                };
            }
        };
        match placement {
            Placement::Local => {}
            Placement::Remote { index, slot } => {
                build_remotely(shared, emit, drv_path, index, slot);
                continue;
            }
            Placement::Nowhere(message) => {
                let drv = store.store_dir().full(&drv_path);
                fail(
                    shared,
                    emit,
                    &drv_path,
                    BuildError::NoMachine { drv, message },
                );
                continue;
            }
            // `pick` places every derivation it hands out.
            Placement::Wait => {}
        }
        let node = &graph.nodes[&drv_path];
        let resolved = if node.resolves(options) {
            match resolve(shared, &drv_path, node) {
                Ok(resolved) => Some(resolved),
                Err(error) => {
                    release_local_slot(shared);
                    fail(shared, emit, &drv_path, error);
                    continue;
                }
            }
        } else {
            None
        };
        let gate = EarlyGate {
            shared,
            drv: &drv_path,
        };
        let job = Job {
            store,
            drv_path: resolved.as_ref().map_or(&drv_path, |r| &r.path),
            drv: resolved.as_ref().map_or(&node.drv, |r| &r.drv),
            options,
            emit,
            pending,
            wait_for_locks,
            gate: early.then_some(&gate as &dyn Gate),
            gate_passed: Default::default(),
            // A job that starts early prepares ahead of need, yielding to running builds.
            background: std::cell::Cell::new(early.then(arca_sandbox::background_thread)),
        };
        let resolved_hash = resolved.as_ref().and_then(|r| r.static_hash.clone());
        let already = resolved.as_ref().and_then(|r| r.valid.clone());
        let found_realised = already.is_some();
        // A panic in one build must not leave the others waiting for it forever.
        let (result, leftovers) = match already {
            Some(outputs) => (
                Ok(JobOutcome::Built {
                    published: None,
                    outputs,
                }),
                Default::default(),
            ),
            None => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run()))
                .unwrap_or_else(|panic| {
                    let error = BuildError::Panicked {
                        drv: store.store_dir().full(&drv_path),
                        message: panic_message(&*panic),
                    };
                    (Err(error), Default::default())
                }),
        };
        let realised_now = |outputs: &BTreeMap<OutputName, StorePath>| {
            shared
                .realised
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(drv_path.clone(), outputs.clone());
        };
        let result = match result {
            Ok(JobOutcome::Built {
                published: Some(published),
                outputs,
            }) => {
                // Dependents may start now; the committer registers the outputs and
                // reports the build.
                pending.insert(published.infos());
                realised_now(&outputs);
                let _ = commits.send(Commit {
                    drv: drv_path.clone(),
                    outputs,
                    published,
                    resolved_hash,
                });
                None
            }
            Ok(JobOutcome::Built {
                published: None,
                outputs,
            }) if found_realised => {
                // Resolved to a derivation whose outputs were there already.
                match register_realisations(shared, node, &outputs, resolved_hash.as_ref()) {
                    Ok(()) => {
                        realised_now(&outputs);
                        Some(BuildResult::AlreadyValid(outputs))
                    }
                    Err(error) => Some(failed(emit, &drv_path, error)),
                }
            }
            Ok(JobOutcome::Built {
                published: None,
                outputs,
            }) => {
                emit(BuildEvent::Built {
                    drv: drv_path.clone(),
                    outputs: outputs.clone(),
                });
                realised_now(&outputs);
                Some(BuildResult::Built(outputs))
            }
            Ok(JobOutcome::Busy) if !early || job.gate_passed.get() => {
                // Back in the queue, tried again after the others.
                let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
                guard.running -= 1;
                guard.local_running -= 1;
                guard.building_here.remove(&drv_path);
                guard.early.remove(&drv_path);
                guard.busy.insert(drv_path.clone());
                guard.ready.push_back(drv_path);
                wake.notify_all();
                continue;
            }
            Ok(JobOutcome::Busy | JobOutcome::NotStarted) => {
                // Started early, and either an input failed (the failure marked this
                // one not built) or another process builds its outputs: it starts again
                // in the ordinary way once its inputs are built, if they are.
                let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
                guard.running -= 1;
                if job.gate_passed.get() {
                    guard.local_running -= 1;
                    guard.building_here.remove(&drv_path);
                }
                guard.early.remove(&drv_path);
                guard.busy.insert(drv_path.clone());
                if !guard.waiting.contains_key(&drv_path)
                    && !guard.not_built.contains_key(&drv_path)
                {
                    guard.ready.push_back(drv_path);
                }
                wake.notify_all();
                continue;
            }
            Ok(JobOutcome::AlreadyValid) => {
                let outputs = match &resolved {
                    None => Ok(node.outputs.clone()),
                    Some(_) => job.outputs(),
                };
                let registered = outputs.and_then(|outputs| {
                    register_realisations(shared, node, &outputs, resolved_hash.as_ref())?;
                    Ok(outputs)
                });
                match registered {
                    Ok(outputs) => {
                        realised_now(&outputs);
                        Some(BuildResult::AlreadyValid(outputs))
                    }
                    Err(error) => Some(failed(emit, &drv_path, error)),
                }
            }
            Err(error) => Some(failed(emit, &drv_path, error)),
        };
        // A job that started early holds a build slot only once past its gate.
        finish(shared, &drv_path, result, !early || job.gate_passed.get());
        // Whatever waited for this build may start on another worker meanwhile.
        if let Err(mpsc::SendError(leftovers)) = tidy.send(leftovers) {
            drop(leftovers);
        }
    }
}

/// The next ready derivation that can start now, and where: those whose outputs no
/// other process was building first; a derivation no machine fits is handed out to be
/// failed. Counts a local slot taken.
fn pick(shared: &Shared<'_>, state: &mut State) -> Option<(StorePath, bool, Placement)> {
    let options = shared.options;
    let local_slots = local_slots(options);
    let local_running = state.local_running;
    let (free, busy): (Vec<usize>, Vec<usize>) =
        (0..state.ready.len()).partition(|&i| !state.busy.contains(&state.ready[i]));
    for index in free.into_iter().chain(busy) {
        let drv_path = &state.ready[index];
        let node = &shared.graph.nodes[drv_path];
        // A machine gets what it can build from the derivation alone: outputs known
        // in advance, nothing to resolve first.
        let remote_ok = !node.resolves(options)
            && matches!(
                node.kind,
                DerivationKind::InputAddressed | DerivationKind::Fixed
            );
        let placement = shared.machines.place(
            &node.drv,
            drv_path,
            shared.store.store_dir(),
            local_slots,
            local_running,
            &options.system_features,
            remote_ok,
        );
        if matches!(placement, Placement::Wait) {
            continue;
        }
        let wait_for_locks = state.busy.contains(drv_path);
        let drv_path = state.ready.remove(index)?;
        if matches!(placement, Placement::Local) {
            state.local_running += 1;
        }
        return Some((drv_path, wait_for_locks, placement));
    }
    None
}

/// A derivation to start early while nothing is ready: one whose inputs are all built but
/// for some being built here now (or started early themselves), whose outputs are known,
/// and whose job can prepare its sandbox meanwhile ([`Job::may_start_early`]). Its job
/// waits at a gate ([`EarlyGate`]) just before the builder would run, and takes a build
/// slot there; at most `max-jobs` jobs wait so. A chain of builds then pays for each
/// sandbox while the builds before it run.
fn pick_early(shared: &Shared<'_>, state: &mut State) -> Option<StorePath> {
    let options = shared.options;
    if !state.ready.is_empty()
        || !options.machines.is_empty()
        || state
            .early
            .iter()
            .filter(|path| !state.building_here.contains(*path))
            .count()
            >= local_slots(options)
    {
        return None;
    }
    let started =
        |path: &StorePath| state.building_here.contains(path) || state.early.contains(path);
    for running in state.building_here.iter().chain(&state.early) {
        for dependent in state.dependents.get(running).into_iter().flatten() {
            let Some(&unbuilt) = state.waiting.get(dependent) else {
                continue;
            };
            if state.early.contains(dependent) || state.busy.contains(dependent) {
                continue;
            }
            let node = &shared.graph.nodes[dependent];
            let building = node
                .dependencies
                .iter()
                .filter(|dependency| started(dependency))
                .count();
            if building == unbuilt
                && node.kind == DerivationKind::InputAddressed
                && !node.resolves(options)
                && Job::may_start_early(&node.drv, options, shared.store)
            {
                return Some(dependent.clone());
            }
        }
    }
    None
}

/// The gate of a job that started early ([`pick_early`]).
struct EarlyGate<'s, 'a> {
    shared: &'s Shared<'a>,
    drv: &'s StorePath,
}

impl Gate for EarlyGate<'_, '_> {
    fn pass(&self) -> bool {
        let slots = local_slots(self.shared.options);
        let mut guard = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if guard.not_built.contains_key(self.drv) {
                return false;
            }
            if !guard.waiting.contains_key(self.drv) && guard.local_running < slots {
                take_slot(&mut guard, self.drv);
                self.shared.wake.notify_all();
                return true;
            }
            guard = self
                .shared
                .wake
                .wait(guard)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn pass_and_start(&self, start: Start) -> Option<Result<Begun, BuildError>> {
        let Shared {
            state,
            wake,
            store,
            pending,
            options,
            ..
        } = *self.shared;
        let slots = local_slots(options);
        let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
        guard.handovers.insert(self.drv.clone(), start);
        loop {
            if let Some(begun) = guard.begun.remove(self.drv) {
                return Some(begun);
            }
            if guard.not_built.contains_key(self.drv) {
                let start = guard.handovers.remove(self.drv);
                drop(guard);
                // Killing the prepared sandbox waits for it: not under the lock.
                drop(start);
                return None;
            }
            // Not handed over yet (this thread registered it after the last input was
            // built, or no slot was free then): started here.
            if !guard.waiting.contains_key(self.drv) && guard.local_running < slots {
                if let Some(start) = guard.handovers.remove(self.drv) {
                    take_slot(&mut guard, self.drv);
                    wake.notify_all();
                    drop(guard);
                    return Some(start(store, pending));
                }
            }
            guard = wake.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Takes a build slot for `drv`, a job that started early, as it passes its gate. Its
/// own dependents may start early then: the caller wakes the workers.
fn take_slot(state: &mut State, drv: &StorePath) {
    state.local_running += 1;
    state.building_here.insert(drv.clone());
}

/// Takes the handed-over starts ([`Gate::pass_and_start`]) of jobs whose inputs are all
/// built now, with a build slot for each while there are free ones.
fn take_handovers(shared: &Shared<'_>, state: &mut State) -> Vec<(StorePath, Start)> {
    let slots = local_slots(shared.options);
    let mut taken = Vec::new();
    let ready: Vec<StorePath> = state
        .handovers
        .keys()
        .filter(|drv| !state.waiting.contains_key(*drv) && !state.not_built.contains_key(*drv))
        .cloned()
        .collect();
    for drv in ready {
        if state.local_running >= slots {
            break;
        }
        if let Some(start) = state.handovers.remove(&drv) {
            take_slot(state, &drv);
            taken.push((drv, start));
        }
    }
    taken
}

/// Builds at once here: `max_jobs`, where 0 means none only when there are machines to
/// build on (without them, 0 builds one at a time, as Arca always has: Nix refuses to
/// build, but Nix clients send `max-jobs 0` expecting every build to be avoided by
/// substitution, and what could not be substituted is built rather than failed).
fn local_slots(options: &BuildOptions) -> usize {
    if options.machines.is_empty() {
        options.max_jobs.max(1)
    } else {
        options.max_jobs
    }
}

/// Gives back the local slot of a build that ends before its job ran.
fn release_local_slot(shared: &Shared<'_>) {
    let mut guard = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    guard.local_running -= 1;
}

/// Builds `drv_path` on machine `index` (holding `slot` until done): its outputs
/// copied back and registered here, or the step failed; when the machine failed rather
/// than the build, the step goes back to the ready queue for another machine.
fn build_remotely(
    shared: &Shared<'_>,
    emit: &(dyn Fn(BuildEvent) + Sync),
    drv_path: StorePath,
    index: usize,
    slot: nix::fcntl::Flock<std::fs::File>,
) {
    let Shared {
        store,
        graph,
        options,
        state,
        wake,
        ..
    } = *shared;
    let node = &graph.nodes[&drv_path];
    let full = store.store_dir().full(&drv_path);
    // Its inputs: the sources and the wanted outputs of its input derivations.
    let mut inputs = node.drv.input_srcs.clone();
    {
        let realised = shared.realised.lock().unwrap_or_else(|p| p.into_inner());
        for (input, wanted) in &node.drv.input_drvs {
            if let Some(outputs) = realised.get(input) {
                inputs.extend(
                    outputs
                        .iter()
                        .filter(|(name, _)| wanted.is_empty() || wanted.contains(*name))
                        .map(|(_, path)| path.clone()),
                );
            }
        }
    }
    // What the machine is told of this run's limits.
    let settings = arca_store_core::Settings {
        timeout: options.timeout.map_or(0, |t| t.as_secs()),
        max_silent_time: options.max_silent_time.map_or(0, |t| t.as_secs()),
        max_log_size: options.max_log_size.unwrap_or(0),
        keep_failed: options.keep_failed,
        ..Default::default()
    };
    emit(BuildEvent::Started {
        drv: drv_path.clone(),
        machine: Some(shared.machines.uri(index).to_owned()),
    });
    let outcome = shared
        .machines
        .build(index, store, &drv_path, &node.drv, &inputs, &settings, emit);
    drop(slot);
    let result = match outcome {
        Ok(outputs) => {
            emit(BuildEvent::Built {
                drv: drv_path.clone(),
                outputs: outputs.clone(),
            });
            shared
                .realised
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(drv_path.clone(), outputs.clone());
            BuildResult::Built(outputs)
        }
        Err(RemoteFailure::MachineDown) => {
            // Elsewhere, then: the machine is marked down.
            let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
            guard.running -= 1;
            guard.ready.push_front(drv_path);
            wake.notify_all();
            return;
        }
        Err(RemoteFailure::Build(message) | RemoteFailure::Local(message)) => failed(
            emit,
            &drv_path,
            BuildError::Remote {
                drv: full,
                machine: shared.machines.uri(index).to_owned(),
                message,
            },
        ),
    };
    finish(shared, &drv_path, Some(result), false);
}

/// Records how `drv_path` ended (`None`: the committer reports it) and lets what it
/// held go: its place among the running (and a local slot when `local`), its
/// dependents (ready now, or never to be built after a failure).
fn finish(shared: &Shared<'_>, drv_path: &StorePath, result: Option<BuildResult>, local: bool) {
    let ok = !matches!(result, Some(BuildResult::Failed(_)));
    if let Some(result) = result {
        shared
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((drv_path.clone(), result));
    }
    let mut guard = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    guard.running -= 1;
    if local {
        guard.local_running -= 1;
    }
    guard.building_here.remove(drv_path);
    guard.early.remove(drv_path);
    // A job that started early and ended without passing its gate (a panic) must not
    // be started again when its inputs are built.
    guard.waiting.remove(drv_path);
    // Other processes may have finished too: try every ready one again.
    guard.busy.clear();
    if ok {
        guard.succeeded(drv_path);
    } else {
        guard.failed(drv_path, shared.options.keep_going);
    }
    // Builders of prepared sandboxes that waited for this build start here and now,
    // before their own threads are even awake.
    let handed = take_handovers(shared, &mut guard);
    if handed.is_empty() {
        shared.wake.notify_all();
        return;
    }
    drop(guard);
    let begun: Vec<_> = handed
        .into_iter()
        .map(|(drv, start)| {
            let store_dir = shared.store.store_dir();
            tracing::debug!(
                "starting the builder of '{}', prepared early, as '{}' is built",
                store_dir.display(&drv),
                store_dir.display(drv_path)
            );
            let run = || start(shared.store, shared.pending);
            let begun = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(
                |panic| {
                    Err(BuildError::Panicked {
                        drv: shared.store.store_dir().full(&drv),
                        message: panic_message(&*panic),
                    })
                },
            );
            (drv, begun)
        })
        .collect();
    let mut guard = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    guard.begun.extend(begun);
    shared.wake.notify_all();
}

/// What a caught panic says.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Reports `drv` failed.
fn failed(emit: &(dyn Fn(BuildEvent) + Sync), drv: &StorePath, error: BuildError) -> BuildResult {
    emit(BuildEvent::Failed {
        drv: drv.clone(),
        message: error_chain(&error),
    });
    BuildResult::Failed(error)
}

/// Reports `drv` failed before it was started, and wakes whoever waits.
fn fail(
    shared: &Shared<'_>,
    emit: &(dyn Fn(BuildEvent) + Sync),
    drv: &StorePath,
    error: BuildError,
) {
    let result = failed(emit, drv, error);
    finish(shared, drv, Some(result), false);
}

/// How long the committer gathers published outputs before flushing them.
const COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);

/// The group commit: registers published outputs in batches (whatever queued up while the
/// last batch was being flushed), one `syncfs` and one transaction per batch, in the
/// order the builds finished (dependencies first). Ends when every worker is done.
fn committer(
    shared: &Shared<'_>,
    queue: &mpsc::Receiver<Commit>,
    emit: &(dyn Fn(BuildEvent) + Sync),
) {
    // Registering is not what a dependent waits for (built outputs are usable before).
    let _background = arca_sandbox::background_thread();
    let Shared {
        store,
        options,
        state,
        wake,
        finished,
        pending,
        ..
    } = *shared;
    let keep_going = options.keep_going;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        // Gather what finishes within a short window: fewer flushes, and fewer journal
        // commits for the running builds to wait behind.
        // Only while builds are running: with nothing in flight, nothing more is coming
        // soon, and the last builds of a run must not wait.
        let window = std::time::Instant::now() + COMMIT_WINDOW;
        loop {
            batch.extend(queue.try_iter());
            let busy = state.lock().unwrap_or_else(|p| p.into_inner()).running > 0;
            let Some(left) = window.checked_duration_since(std::time::Instant::now()) else {
                break;
            };
            if !busy {
                break;
            }
            match queue.recv_timeout(left.min(std::time::Duration::from_millis(1))) {
                Ok(commit) => batch.push(commit),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // Each commit's references must be valid already, or come from an earlier
        // commit of the batch (or itself): one that fails the check fails alone, with
        // what depends on it, and never takes the others down with it.
        let all_paths: Vec<StorePath> = batch
            .iter()
            .flat_map(|commit| commit.published.infos().map(|info| info.path.clone()))
            .collect();
        let mut accepted: BTreeSet<StorePath> = BTreeSet::new();
        let mut good = Vec::with_capacity(batch.len());
        let mut failures = Vec::new();
        for commit in batch {
            match store.check_published(&commit.published, &accepted) {
                Ok(()) => {
                    accepted.extend(commit.published.infos().map(|info| info.path.clone()));
                    good.push(commit);
                }
                Err(error) => failures.push((commit, error.to_string())),
            }
        }
        let mut jobs = Vec::with_capacity(good.len());
        let mut merged: Option<PublishedPaths> = None;
        for Commit {
            drv,
            outputs,
            published,
            resolved_hash,
        } in good
        {
            match &mut merged {
                Some(all) => all.merge(published),
                None => merged = Some(published),
            }
            jobs.push((drv, outputs, resolved_hash));
        }
        let registered = match merged {
            Some(published) => store
                .register_published(published)
                .map_err(|e| e.to_string()),
            None => Ok(()),
        };
        let mut failed = Vec::new();
        let mut finished_now = Vec::new();
        let register_error = |drv: &StorePath, message: String| BuildError::Register {
            drv: store.store_dir().full(drv),
            message,
        };
        for (drv, outputs, resolved_hash) in jobs {
            match &registered {
                Ok(()) => {
                    let node = &shared.graph.nodes[&drv];
                    if let Err(error) =
                        register_realisations(shared, node, &outputs, resolved_hash.as_ref())
                    {
                        failed.push((drv, error));
                        continue;
                    }
                    if let Some(hook) = &options.post_build_hook {
                        if let Err(error) = run_post_build_hook(store, hook, &drv, &outputs, emit) {
                            failed.push((drv, error));
                            continue;
                        }
                    }
                    emit(BuildEvent::Built {
                        drv: drv.clone(),
                        outputs: outputs.clone(),
                    });
                    finished_now.push((drv, BuildResult::Built(outputs)));
                }
                Err(message) => failed.push((drv.clone(), register_error(&drv, message.clone()))),
            }
        }
        for (commit, message) in failures {
            failed.push((commit.drv.clone(), register_error(&commit.drv, message)));
            // Dropping `commit.published` removes its outputs and releases their locks.
        }
        // Only now: a dependent must not look for a failed output in the registry before
        // it has left the overlay, nor for a good one before it is registered.
        pending.remove(all_paths.iter());
        for (drv, error) in failed {
            emit(BuildEvent::Failed {
                drv: drv.clone(),
                message: error_chain(&error),
            });
            let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
            guard.failed(&drv, keep_going);
            drop(guard);
            wake.notify_all();
            finished_now.push((drv, BuildResult::Failed(error)));
        }
        finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(finished_now);
    }
}

/// Runs the `post-build-hook` after `drv`'s outputs became valid, as Nix does: with the
/// caller's environment plus `DRV_PATH` and `OUT_PATHS` (the output paths,
/// space-separated), its output passed on as the build's log lines. It failing fails
/// the build (the outputs stay valid).
fn run_post_build_hook(
    store: &LocalStore,
    hook: &std::path::Path,
    drv: &StorePath,
    outputs: &BTreeMap<OutputName, StorePath>,
    emit: &(dyn Fn(BuildEvent) + Sync),
) -> Result<(), BuildError> {
    let store_dir = store.store_dir();
    let out_paths: BTreeSet<String> = outputs.values().map(|p| store_dir.display(p)).collect();
    let mut spec = arca_sandbox::HostSpec::new(hook, [hook.as_os_str().to_owned()]);
    spec.env = std::env::vars_os()
        .filter(|(name, _)| name != "DRV_PATH" && name != "OUT_PATHS")
        .collect();
    spec.env
        .push(("DRV_PATH".into(), store_dir.display(drv).into()));
    spec.env.push((
        "OUT_PATHS".into(),
        out_paths.into_iter().collect::<Vec<_>>().join(" ").into(),
    ));
    spec.cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let failed = |reason: String| BuildError::PostBuildHook {
        drv: store_dir.full(drv),
        hook: hook.to_path_buf(),
        reason,
    };
    let mut lines = crate::log::LineSplitter::new(|line: String| {
        emit(BuildEvent::Log {
            drv: drv.clone(),
            line,
        })
    });
    let report = arca_sandbox::run_on_host(&spec, &mut lines).map_err(|e| failed(e.to_string()))?;
    lines.finish();
    if report.outcome.success() {
        Ok(())
    } else {
        Err(failed(report.outcome.to_string()))
    }
}

/// An error and its causes, `: `-separated: a failure in one message.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
