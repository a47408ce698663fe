//! Builds on other machines: Nix's remote builders (the `builders` setting, machines
//! files), reached over ssh — `ssh://` machines speak the serve protocol
//! (`nix-store --serve --write`, `arca --serve --write`), `ssh-ng://` ones the worker
//! protocol (`nix-daemon --stdio`, `arca --stdio`).
//!
//! The scheduler asks [`Machines::place`] where each ready derivation goes: the machine
//! with the lowest load over speed factor among those whose systems and features fit
//! and that have a free slot, or this one (its `max-jobs` slots, speed factor 1; it wins
//! ties: nothing needs copying). A derivation that asks for `preferLocalBuild` stays
//! here when this machine can build it. Slots are Nix's lock files,
//! `STATE/current-load/URI-N`, locked while a build runs, so every Arca and Nix
//! process of this store sees the same load.
//!
//! A remote build ([`Machines::build`]) copies what the machine lacks of the inputs'
//! closure (one validity query, then references first; with `builders-use-substitutes`
//! the machine first substitutes what it can from its own substituters), sends the derivation whole
//! (`BuildDerivation`, its inputs as input sources), streams the build's log back as
//! events naming the machine, and copies back the outputs (the machine keeps them, so a
//! later step there needs nothing sent up again). A machine that cannot be reached, or
//! whose connection breaks, is marked down with one warning and its step goes
//! elsewhere; only a build that fails there fails the step. Connections are kept for the
//! next step on the same machine.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use arca_daemon_proto::ssh::{SshStore, SshStoreUrl};
use arca_store_core::copy::{copy_closure, CopyOptions, Trust};
use arca_store_core::derivation::{Derivation, OutputName};
use arca_store_core::machines::Machine;
use arca_store_core::{
    BuildEvent, BuildMode, CopyDirection, PathInfo, Settings, Store, StoreDir, StoreOpError,
    StoreOps, StorePath,
};
use arca_store_sqlite::{LocalStore, StoreError};
use nix::fcntl::{Flock, FlockArg};

/// Evaluates `$body` with `$remote` bound to the connection's client, whichever
/// protocol it speaks (the two are different types; the body is generic code).
macro_rules! on_remote {
    ($store:expr, |$remote:ident| $body:expr) => {
        match $store {
            SshStore::Serve($remote) => $body,
            SshStore::Worker($remote) => $body,
        }
    };
}

/// `machine`'s store URL with its ssh key and host key as parameters.
fn store_url(machine: &Machine) -> Result<SshStoreUrl, String> {
    if !SshStoreUrl::is_ssh(&machine.uri) {
        return Err("only ssh:// and ssh-ng:// machines are supported".into());
    }
    let mut url = SshStoreUrl::parse(&machine.uri).map_err(|e| e.to_string())?;
    if url.ssh_key.is_none() {
        url.ssh_key.clone_from(&machine.ssh_key);
    }
    if url.host_key.is_none() {
        url.host_key.clone_from(&machine.host_key);
    }
    Ok(url)
}

/// Where a step runs.
#[derive(Debug)]
pub(crate) enum Placement {
    /// Here.
    Local,
    /// On machine `index`, holding its slot lock (released when dropped).
    Remote { index: usize, slot: Flock<File> },
    /// Not now: every fitting slot is taken.
    Wait,
    /// Nowhere: the message lists the machines and why each does not fit.
    Nowhere(String),
}

/// A step's remote build failed.
#[derive(Debug)]
pub(crate) enum RemoteFailure {
    /// The machine failed (unreachable, connection broken; said once, as a warning):
    /// try elsewhere.
    MachineDown,
    /// The build failed there.
    Build(String),
    /// Copying the outputs back failed here.
    Local(String),
}

/// The remote machines of a run and their connections.
pub(crate) struct Machines {
    machines: Vec<MachineState>,
    /// `STATE/current-load`: the slot lock files.
    load_dir: PathBuf,
    this_system: String,
    use_substitutes: bool,
}

struct MachineState {
    machine: Machine,
    down: AtomicBool,
    idle: Mutex<Vec<Connection>>,
}

/// An open connection to a machine, with the remote program's standard error.
struct Connection {
    store: SshStore,
    /// Lines of the remote program's standard error (builds' logs over `ssh://`).
    lines: mpsc::Receiver<String>,
}

impl Machines {
    /// `use_substitutes`: machines substitute what they lack of a step's inputs before
    /// it is sent (`builders-use-substitutes`).
    pub(crate) fn new(machines: &[Machine], state_dir: &Path, use_substitutes: bool) -> Machines {
        Machines {
            machines: machines
                .iter()
                .map(|machine| MachineState {
                    machine: machine.clone(),
                    down: AtomicBool::new(false),
                    idle: Mutex::new(Vec::new()),
                })
                .collect(),
            load_dir: state_dir.join("current-load"),
            this_system: arca_store_core::settings::host_system(),
            use_substitutes,
        }
    }

    /// Slots on all machines.
    pub(crate) fn slots(&self) -> usize {
        self.machines.iter().map(|m| m.machine.max_jobs).sum()
    }

    pub(crate) fn uri(&self, index: usize) -> &str {
        &self.machines[index].machine.uri
    }

    /// Where `drv` should run now (see the module docs): `local_slots` is this
    /// machine's `max-jobs`, `local_running` how many of them are taken, `remote_ok`
    /// whether the derivation may leave (floating content-addressed ones are built here).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn place(
        &self,
        drv: &Derivation,
        drv_path: &StorePath,
        store_dir: &StoreDir,
        local_slots: usize,
        local_running: usize,
        local_features: &BTreeSet<String>,
        remote_ok: bool,
    ) -> Placement {
        let local_free = local_running < local_slots;
        let here = |free: bool| {
            if free {
                Placement::Local
            } else {
                Placement::Wait
            }
        };
        if self.machines.is_empty() {
            // Without machines this one builds everything (and says why it cannot).
            return here(local_free);
        }
        let features = crate::environment::required_system_features(drv);
        let local_fits = local_slots > 0
            && (drv.system == self.this_system || drv.system == "builtin")
            && features.is_subset(local_features);
        if local_fits && (crate::environment::prefers_local_build(drv) || !remote_ok) {
            return here(local_free);
        }
        if !remote_ok {
            return Placement::Nowhere(self.nowhere(
                drv,
                drv_path,
                store_dir,
                &features,
                local_slots,
            ));
        }
        let _ = std::fs::create_dir_all(&self.load_dir);
        let mut best: Option<(usize, Flock<File>, u64, u32)> = None;
        let mut any_fits = local_fits;
        for (index, state) in self.machines.iter().enumerate() {
            if state.down.load(Ordering::Relaxed)
                || state.machine.fits(&drv.system, &features).is_err()
            {
                continue;
            }
            any_fits = true;
            let (free, load) = self.probe_slots(&state.machine);
            let Some(free) = free else { continue };
            let speed = state.machine.speed_factor;
            let better = match &best {
                None => true,
                // Nix's order: load / speed (compared without division), then the
                // faster machine, then the less loaded one.
                Some((_, _, best_load, best_speed)) => {
                    let ours = u128::from(load) * u128::from(*best_speed);
                    let theirs = u128::from(*best_load) * u128::from(speed);
                    ours < theirs
                        || (ours == theirs
                            && (speed > *best_speed || (speed == *best_speed && load < *best_load)))
                }
            };
            if better {
                best = Some((index, free, load, speed));
            }
        }
        if local_fits && local_free {
            // Here counts as a machine of speed 1; it wins ties (nothing to copy).
            let here_wins = best.as_ref().is_none_or(|(_, _, load, speed)| {
                local_running as u128 * u128::from(*speed) <= u128::from(*load)
            });
            if here_wins {
                return Placement::Local;
            }
        }
        match best {
            Some((index, slot, _, _)) => Placement::Remote { index, slot },
            None if any_fits => Placement::Wait,
            None => {
                Placement::Nowhere(self.nowhere(drv, drv_path, store_dir, &features, local_slots))
            }
        }
    }

    /// Tries each slot lock of `machine`: a free one (locked now, for the caller), and
    /// how many are taken (by any process, this one included).
    fn probe_slots(&self, machine: &Machine) -> (Option<Flock<File>>, u64) {
        let mut free = None;
        let mut load = 0;
        for slot in 0..machine.max_jobs {
            let path = self
                .load_dir
                .join(format!("{}-{slot}", escape_uri(&machine.uri)));
            let Ok(file) = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                // The first free one is kept; the others are let go at once.
                Ok(locked) if free.is_none() => free = Some(locked),
                Ok(_) => {}
                Err(_) => load += 1,
            }
        }
        (free, load)
    }

    /// Nix's message for a derivation no machine fits.
    fn nowhere(
        &self,
        drv: &Derivation,
        drv_path: &StorePath,
        store_dir: &StoreDir,
        features: &BTreeSet<String>,
        local_slots: usize,
    ) -> String {
        let mut text = format!(
            "Failed to find a machine for remote build!\nderivation: {}\nrequired (system, features): ({}, {})\n{} available machines:\n(systems, maxjobs, supportedFeatures, mandatoryFeatures)",
            store_dir.display(drv_path),
            drv.system,
            features.iter().cloned().collect::<Vec<_>>().join(", "),
            self.machines.len()
        );
        let join = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
        for state in &self.machines {
            let m = &state.machine;
            let why = if state.down.load(Ordering::Relaxed) {
                "it is down".to_owned()
            } else {
                m.fits(&drv.system, features).err().unwrap_or_default()
            };
            text.push_str(&format!(
                "\n({}, {}, {}, {}): {}: {why}",
                m.systems.join(", "),
                m.max_jobs,
                join(&m.supported_features),
                join(&m.mandatory_features),
                m.uri
            ));
        }
        if local_slots == 0 {
            text.push_str("\n(this machine builds nothing: max-jobs is 0)");
        }
        text
    }

    /// Builds `drv` (named `drv_path`) on machine `index`: copies the closure of
    /// `inputs` there, builds, copies the outputs back into `store`. `emit` hears the
    /// log. The outputs, by name.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        &self,
        index: usize,
        store: &LocalStore,
        drv_path: &StorePath,
        drv: &Derivation,
        inputs: &BTreeSet<StorePath>,
        settings: &Settings,
        emit: &(dyn Fn(BuildEvent) + Sync),
    ) -> Result<BTreeMap<OutputName, StorePath>, RemoteFailure> {
        let state = &self.machines[index];
        let uri = &state.machine.uri;
        let down = |reason: String| {
            if !state.down.swap(true, Ordering::Relaxed) {
                emit(BuildEvent::Message {
                    text: format!("warning: cannot build on '{uri}': {reason}\n"),
                });
            }
            RemoteFailure::MachineDown
        };
        let connection = match state.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            Some(connection) => connection,
            None => connect(&state.machine).map_err(down)?,
        };
        // Over ssh-ng:// the daemon hears this run's limits (Nix forwards none); over
        // ssh:// they travel with the build request.
        if let SshStore::Worker(client) = &connection.store {
            if let Err(error) = client.apply_settings(settings) {
                return Err(down(format!(
                    "setting the build options: {}",
                    error.chain()
                )));
            }
        }
        let local = LocalOps(store);
        // The derivation as a basic one: its inputs' closure as input sources (as Nix's
        // build hook sends it), no input derivations.
        let mut basic = drv.clone();
        if !basic.input_drvs.is_empty() {
            basic.input_drvs.clear();
            basic.input_srcs = local
                .closure_graph(inputs, false)
                .map_err(|e| RemoteFailure::Local(e.chain()))?
                .into_keys()
                .collect();
        }
        let copy = CopyOptions {
            trust: Trust::All,
            substitute: self.use_substitutes,
        };
        let copied = |direction| {
            move |path: &StorePath| {
                emit(BuildEvent::Copied {
                    path: path.clone(),
                    machine: uri.clone(),
                    direction,
                })
            }
        };
        let sent = on_remote!(&connection.store, |remote| copy_closure(
            &local,
            remote,
            inputs,
            copy,
            &mut copied(CopyDirection::ToMachine)
        ));
        if let Err(error) = sent {
            return Err(down(format!("copying the inputs: {}", error.chain())));
        }
        let forward = |line: String, log: bool| {
            emit(if log {
                BuildEvent::Log {
                    drv: drv_path.clone(),
                    line,
                }
            } else {
                BuildEvent::Message {
                    text: format!("{line}\n"),
                }
            })
        };
        let serve = matches!(connection.store, SshStore::Serve(_));
        let built = std::thread::scope(|scope| {
            let build = scope.spawn(|| {
                let mut on_event = |event: &BuildEvent| {
                    if let BuildEvent::Log { line, .. } = event {
                        forward(line.clone(), true);
                    }
                };
                on_remote!(&connection.store, |remote| remote.build_derivation(
                    drv_path,
                    &basic,
                    BuildMode::Normal,
                    settings,
                    &mut on_event
                ))
            });
            // The remote program's stderr: over ssh:// the build's log.
            while !build.is_finished() {
                if let Ok(line) = connection.lines.recv_timeout(Duration::from_millis(20)) {
                    forward(line, serve);
                }
            }
            while let Ok(line) = connection.lines.try_recv() {
                forward(line, serve);
            }
            build
                .join()
                .unwrap_or_else(|_| Err(StoreOpError::new("the remote build panicked")))
        });
        let built = match built {
            Ok(Ok(built)) => built,
            Ok(Err(message)) => {
                state
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(connection);
                return Err(RemoteFailure::Build(message));
            }
            Err(error) => return Err(down(format!("building: {}", error.chain()))),
        };
        let mut outputs: BTreeMap<OutputName, StorePath> = drv
            .outputs
            .iter()
            .filter_map(|(name, output)| Some((name.clone(), output.path()?.clone())))
            .collect();
        for realisation in built.outputs {
            outputs
                .entry(realisation.id.output)
                .or_insert(realisation.out_path);
        }
        let wanted: BTreeSet<StorePath> = outputs.values().cloned().collect();
        let copied = on_remote!(&connection.store, |remote| copy_closure(
            remote,
            &local,
            &wanted,
            CopyOptions::new(Trust::All),
            &mut copied(CopyDirection::FromMachine)
        ));
        if let Err(error) = copied {
            return Err(down(format!("copying the outputs back: {}", error.chain())));
        }
        state
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(connection);
        Ok(outputs)
    }
}

/// Opens a connection to `machine`; its standard error is read line by line into the
/// connection's channel. The reason it failed, with what the remote program said.
fn connect(machine: &Machine) -> Result<Connection, String> {
    let url = store_url(machine)?;
    let (lines_in, lines) = mpsc::channel();
    let spawn_reader = |stderr: Option<ChildStderr>| {
        if let Some(stderr) = stderr {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if lines_in.send(line).is_err() {
                        break;
                    }
                }
            });
        }
    };
    match url.open_with_stderr(Stdio::piped()) {
        Ok((store, stderr)) => {
            spawn_reader(stderr);
            Ok(Connection { store, lines })
        }
        Err(error) => Err(crate::error_chain(&error)),
    }
}

/// A URI as a file name, as Nix's `escapeUri` (`/` becomes `_`).
fn escape_uri(uri: &str) -> String {
    uri.replace('/', "_")
}

/// The local store as a [`StoreOps`] for copying to and from machines: it takes what
/// it is sent (the outputs of builds it asked for; inputs it had).
struct LocalOps<'a>(&'a LocalStore);

impl Store for LocalOps<'_> {
    type Error = StoreError;
    type Batch<'a>
        = arca_store_sqlite::LocalAddBatch<'a>
    where
        Self: 'a;

    fn add_batch(&self) -> Self::Batch<'_> {
        self.0.add_batch()
    }

    fn store_dir(&self) -> &StoreDir {
        self.0.store_dir()
    }

    fn is_valid_path(&self, path: &StorePath) -> Result<bool, StoreError> {
        self.0.is_valid_path(path)
    }

    fn query_path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, StoreError> {
        self.0.query_path_info(path)
    }

    fn query_referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        self.0.query_referrers(path)
    }

    fn query_valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        self.0.query_valid_derivers(path)
    }

    fn query_derivation_outputs(
        &self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>, StoreError> {
        self.0.query_derivation_outputs(drv)
    }

    fn query_path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>, StoreError> {
        self.0.query_path_from_hash_part(hash_part)
    }

    fn add_nar(&self, info: &PathInfo, nar: &mut dyn Read) -> Result<(), StoreError> {
        self.0.add_nar(info, nar)
    }

    fn add_text(
        &self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError> {
        self.0.add_text(name, contents, references)
    }

    fn nar_from_path(
        &self,
        path: &StorePath,
        out: &mut dyn std::io::Write,
    ) -> Result<(), StoreError> {
        self.0.nar_from_path(path, out)
    }
}

impl StoreOps for LocalOps<'_> {
    fn add_dump(
        &self,
        _: &str,
        _: arca_store_core::AddressingMethod,
        _: &BTreeSet<StorePath>,
        _: &mut dyn Read,
    ) -> Result<StorePath, StoreOpError> {
        Err(StoreOpError::new("not used by remote builds"))
    }

    fn add_nar_checked(
        &self,
        info: &PathInfo,
        nar: &mut dyn BufRead,
        _trusted: bool,
    ) -> Result<(), StoreOpError> {
        self.0.add_nar(info, nar).map_err(StoreOpError::from_error)
    }
}
