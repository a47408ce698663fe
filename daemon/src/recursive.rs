//! Recursive Nix (Nix 2.8's experimental `recursive-nix`): a build that asks for it
//! (`requiredSystemFeatures = [ "recursive-nix" ]`) gets a daemon of its own, on a
//! socket in its build directory (`NIX_REMOTE`), serving a [`RestrictedStore`]: the
//! build's input closure and what it added or built through that daemon, nothing else.
//! Its clients are untrusted. What the build added becomes something its outputs may
//! refer to.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arca_build::{RecursiveNix, RecursiveSession};
use arca_daemon_proto::wire::Limits;
use arca_daemon_proto::{serve, Peer};
use arca_store_core::derivation::Derivation;
use arca_store_core::{
    AddressingMethod, BuildEvent, BuildMode, BuildOutcomes, Built, DerivedPath, GcOptions,
    GcProgress, GcReport, PathInfo, Settings, Store, StoreDir, StoreOpError, StoreOps, StorePath,
};
use arca_store_sqlite::{LocalStore, StoreError, StoreOptions};

use crate::local::LocalBackend;

/// Serves recursive-Nix daemons for builds of the store at `root`.
#[derive(Debug, Clone)]
pub struct RecursiveDaemon {
    pub root: PathBuf,
    pub store: StoreOptions,
    /// The settings its connections start from (as the build's own daemon's).
    pub settings: Settings,
    pub limits: Limits,
}

impl RecursiveNix for RecursiveDaemon {
    fn start(
        &self,
        socket: &Path,
        inputs: BTreeSet<StorePath>,
    ) -> io::Result<Box<dyn RecursiveSession>> {
        let listener =
            arca_daemon_proto::long_path::at_short_path(socket, |p| UnixListener::bind(p))?;
        // The builder may run as another user (a build user of a root daemon).
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
        let allowed = Arc::new(Allowed {
            inputs,
            added: Mutex::new(BTreeSet::new()),
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let wake = listener.try_clone()?;
        let thread = {
            let allowed = Arc::clone(&allowed);
            let stopping = Arc::clone(&stopping);
            let daemon = self.clone();
            std::thread::Builder::new()
                .name("arca-recursive-nix".into())
                .spawn(move || daemon.accept(listener, allowed, stopping))?
        };
        Ok(Box::new(Session {
            allowed,
            stopping,
            wake,
            thread: Some(thread),
        }))
    }
}

impl RecursiveDaemon {
    fn accept(self, listener: UnixListener, allowed: Arc<Allowed>, stopping: Arc<AtomicBool>) {
        for stream in listener.incoming() {
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            let Ok(stream) = stream else { continue };
            let allowed = Arc::clone(&allowed);
            let daemon = self.clone();
            let _ = std::thread::Builder::new()
                .name("arca-recursive-nix-connection".into())
                .spawn(move || {
                    let Ok(inner) = LocalStore::open_with(&daemon.root, daemon.store.clone())
                    else {
                        return;
                    };
                    let store = RestrictedStore {
                        inner: LocalBackend::new(&inner),
                        allowed: &allowed,
                    };
                    let Ok(output) = stream.try_clone() else {
                        return;
                    };
                    let peer = Peer { trusted: false };
                    let _ = serve(
                        &store,
                        &stream,
                        output,
                        peer,
                        daemon.limits,
                        &daemon.settings,
                    );
                });
        }
    }
}

/// One build's running daemon; dropping it stops accepting connections.
struct Session {
    allowed: Arc<Allowed>,
    stopping: Arc<AtomicBool>,
    wake: UnixListener,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecursiveSession for Session {
    fn added(&self) -> BTreeSet<StorePath> {
        self.allowed.added().clone()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stopping`.
        let _ = nix::sys::socket::shutdown(self.wake.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a restricted store shows: the build's inputs and what it added.
#[derive(Debug)]
struct Allowed {
    inputs: BTreeSet<StorePath>,
    added: Mutex<BTreeSet<StorePath>>,
}

impl Allowed {
    fn added(&self) -> MutexGuard<'_, BTreeSet<StorePath>> {
        self.added.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn contains(&self, path: &StorePath) -> bool {
        self.inputs.contains(path) || self.added().contains(path)
    }

    fn add(&self, path: StorePath) {
        if !self.inputs.contains(&path) {
            self.added().insert(path);
        }
    }
}

/// The store a recursive build sees, as Nix 2.8's `RestrictedStore`: a path outside its
/// inputs and what it added is not valid, cannot be dumped, built or substituted;
/// whatever it adds or builds becomes visible to it.
pub struct RestrictedStore<'a> {
    inner: LocalBackend<'a>,
    allowed: &'a Allowed,
}

/// A path outside what the build may see: not valid, as far as it can tell.
fn unknown(store_dir: &StoreDir, path: &StorePath) -> StoreError {
    StoreError::InvalidPath(store_dir.display(path))
}

impl Store for RestrictedStore<'_> {
    type Error = StoreError;
    type Batch<'a>
        = arca_store_core::OneByOne<'a, Self>
    where
        Self: 'a;

    fn add_batch(&self) -> Self::Batch<'_> {
        arca_store_core::OneByOne::new(self)
    }

    fn store_dir(&self) -> &StoreDir {
        self.inner.store_dir()
    }

    fn is_valid_path(&self, path: &StorePath) -> Result<bool, StoreError> {
        Ok(self.allowed.contains(path) && self.inner.is_valid_path(path)?)
    }

    fn query_path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, StoreError> {
        if !self.allowed.contains(path) {
            return Ok(None);
        }
        self.inner.query_path_info(path)
    }

    fn query_referrers(&self, _path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        Ok(BTreeSet::new())
    }

    fn query_valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        if !self.allowed.contains(path) {
            return Ok(BTreeSet::new());
        }
        let derivers = self.inner.query_valid_derivers(path)?;
        Ok(derivers
            .into_iter()
            .filter(|d| self.allowed.contains(d))
            .collect())
    }

    fn query_derivation_outputs(
        &self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>, StoreError> {
        if !self.allowed.contains(drv) {
            return Err(unknown(self.store_dir(), drv));
        }
        self.inner.query_derivation_outputs(drv)
    }

    fn query_path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>, StoreError> {
        Ok(self
            .inner
            .query_path_from_hash_part(hash_part)?
            .filter(|path| self.allowed.contains(path)))
    }

    fn add_nar(&self, info: &PathInfo, nar: &mut dyn Read) -> Result<(), StoreError> {
        self.inner.add_nar(info, nar)?;
        self.allowed.add(info.path.clone());
        Ok(())
    }

    fn add_text(
        &self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError> {
        if let Some(reference) = references.iter().find(|r| !self.allowed.contains(r)) {
            return Err(unknown(self.store_dir(), reference));
        }
        let path = self.inner.add_text(name, contents, references)?;
        self.allowed.add(path.clone());
        Ok(path)
    }

    fn nar_from_path(&self, path: &StorePath, out: &mut dyn Write) -> Result<(), StoreError> {
        if !self.allowed.contains(path) {
            return Err(unknown(self.store_dir(), path));
        }
        self.inner.nar_from_path(path, out)
    }
}

impl StoreOps for RestrictedStore<'_> {
    fn query_all_valid_paths(&self) -> Result<BTreeSet<StorePath>, StoreOpError> {
        let mut paths = self.allowed.inputs.clone();
        paths.extend(self.allowed.added().iter().cloned());
        let mut valid = BTreeSet::new();
        for path in paths {
            if self.inner.is_valid_path(&path).map_err(refuse)? {
                valid.insert(path);
            }
        }
        Ok(valid)
    }

    fn add_dump(
        &self,
        name: &str,
        method: AddressingMethod,
        references: &BTreeSet<StorePath>,
        dump: &mut dyn Read,
    ) -> Result<StorePath, StoreOpError> {
        if let Some(reference) = references.iter().find(|r| !self.allowed.contains(r)) {
            return Err(refuse(unknown(self.store_dir(), reference)));
        }
        let path = self.inner.add_dump(name, method, references, dump)?;
        self.allowed.add(path.clone());
        Ok(path)
    }

    fn add_nar_checked(
        &self,
        info: &PathInfo,
        nar: &mut dyn BufRead,
        trusted: bool,
    ) -> Result<(), StoreOpError> {
        if let Some(reference) = info
            .references
            .iter()
            .find(|r| **r != info.path && !self.allowed.contains(r))
        {
            return Err(refuse(unknown(self.store_dir(), reference)));
        }
        self.inner.add_nar_checked(info, nar, trusted)?;
        self.allowed.add(info.path.clone());
        Ok(())
    }

    fn build_paths(
        &self,
        targets: &[DerivedPath],
        mode: BuildMode,
        settings: &Settings,
        events: &mut dyn FnMut(&BuildEvent),
    ) -> Result<BuildOutcomes, StoreOpError> {
        if mode != BuildMode::Normal {
            return Err(StoreOpError::new("unsupported build mode"));
        }
        for target in targets {
            if !self.allowed.contains(&target.path) {
                return Err(refuse(unknown(self.store_dir(), &target.path)));
            }
        }
        let outcomes = self.inner.build_paths(targets, mode, settings, events)?;
        // The outputs, with their closures, become visible to the build.
        let mut outputs: BTreeSet<StorePath> = outcomes
            .iter()
            .filter_map(|(_, outcome)| outcome.as_ref().ok())
            .flat_map(|built| built.outputs.iter().map(|r| r.out_path.clone()))
            .collect();
        // `.drv`s sent as opaque paths by old clients stand for their outputs too.
        for target in targets.iter().filter(|t| t.path.is_derivation()) {
            if let Ok(map) = self.inner.query_derivation_outputs(&target.path) {
                outputs.extend(map.into_values());
            }
        }
        for path in self.inner.query_closure(&outputs).map_err(refuse)? {
            self.allowed.add(path);
        }
        Ok(outcomes)
    }

    fn ensure_path(&self, path: &StorePath) -> Result<(), StoreOpError> {
        if !self.allowed.contains(path) {
            return Err(refuse(unknown(self.store_dir(), path)));
        }
        self.inner.ensure_path(path)
    }

    fn add_temp_root(&self, path: &StorePath) -> Result<(), StoreOpError> {
        self.inner.add_temp_root(path).map_err(refuse)
    }

    /// A build's result links are not roots of the store (they are in its build
    /// directory, gone with it): accepted and ignored, as in Nix.
    fn add_indirect_root(&self, _link: &Path) -> Result<(), StoreOpError> {
        Ok(())
    }

    /// Nothing is collected from inside a build; the request succeeds, as in Nix.
    fn collect_garbage(
        &self,
        _options: &GcOptions,
        _progress: &(dyn Fn(GcProgress) + Sync),
    ) -> Result<GcReport, StoreOpError> {
        Ok(GcReport::default())
    }

    fn query_missing(
        &self,
        targets: &[DerivedPath],
    ) -> Result<(BTreeSet<StorePath>, BTreeSet<StorePath>), StoreOpError> {
        let (allowed, unknown): (Vec<DerivedPath>, Vec<DerivedPath>) = targets
            .iter()
            .cloned()
            .partition(|target| self.allowed.contains(&target.path));
        let (will_build, mut missing) = self.inner.query_missing(&allowed)?;
        missing.extend(unknown.into_iter().map(|target| target.path));
        Ok((will_build, missing))
    }

    fn build_derivation(
        &self,
        _drv_path: &StorePath,
        _drv: &Derivation,
        _mode: BuildMode,
        _settings: &Settings,
        _events: &mut dyn FnMut(&BuildEvent),
    ) -> Result<Result<Built, String>, StoreOpError> {
        Err(StoreOpError::new(
            "building sent derivations is not allowed in a recursive Nix build",
        ))
    }
}

fn refuse(error: impl std::fmt::Display) -> StoreOpError {
    StoreOpError::new(error.to_string())
}
