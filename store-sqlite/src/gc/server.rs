//! The running collector's shared state (live set, pending deletions) and the socket
//! through which processes hand it new temporary roots while it runs.

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use arca_store_core::{StoreDir, StorePath};

use super::roots::{GcRoot, GcRootKind};
use super::temp_roots::GC_SOCKET;
use crate::error::{IoContext, StoreError};
use crate::registry::PathGraph;

/// Which derivation/output relations keep paths alive besides references.
#[derive(Debug, Clone, Copy)]
pub(super) struct Keep {
    pub outputs: bool,
    pub derivations: bool,
}

/// The state a collector shares with the threads serving its socket.
#[derive(Debug)]
pub(super) struct Collector {
    keep: Keep,
    state: Mutex<State>,
    /// Signalled whenever pending deletions finish.
    settled: Condvar,
}

#[derive(Debug, Default)]
struct State {
    graph: Option<Arc<PathGraph>>,
    live: Vec<bool>,
    deleted: Vec<bool>,
    pending: Vec<bool>,
    /// Roots that arrived before the graph was loaded.
    early: Vec<StorePath>,
    /// Hash parts of every temporary root (they protect invalid entries too: an output
    /// being built, its lock file).
    temp_hash_parts: HashSet<String>,
}

impl Collector {
    pub(super) fn new(keep: Keep) -> Collector {
        Collector {
            keep,
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs the registry snapshot and marks everything `roots` keep alive, together
    /// with the roots that came over the socket so far.
    pub(super) fn install(&self, graph: &Arc<PathGraph>, roots: &[GcRoot]) {
        let mut state = self.lock();
        state.live = vec![false; graph.len()];
        state.deleted = vec![false; graph.len()];
        state.pending = vec![false; graph.len()];
        state.graph = Some(Arc::clone(graph));
        for root in roots {
            if root.kind == GcRootKind::Temporary {
                state
                    .temp_hash_parts
                    .insert(root.path.hash_part().to_owned());
            }
            if let Some(index) = graph.index_of(&root.path) {
                self.mark_live(&mut state, graph, index);
            }
        }
        for root in std::mem::take(&mut state.early) {
            if let Some(index) = graph.index_of(&root) {
                self.mark_live(&mut state, graph, index);
            }
        }
    }

    /// A temporary root from the socket: alive from now on, with what it needs. If its
    /// deletion is under way, waits for it to finish first (the sender then sees the
    /// path invalid).
    fn add_root(&self, root: StorePath) {
        let mut state = self.lock();
        state.temp_hash_parts.insert(root.hash_part().to_owned());
        let Some(graph) = state.graph.clone() else {
            state.early.push(root);
            return;
        };
        let Some(index) = graph.index_of(&root) else {
            return; // not valid at the snapshot: nothing of ours to keep
        };
        while state.pending[index as usize] {
            state = self.settled.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        self.mark_live(&mut state, &graph, index);
    }

    /// Marks `start` and everything it keeps alive, except what is already deleted.
    fn mark_live(&self, state: &mut State, graph: &PathGraph, start: u32) {
        let mut stack = vec![start];
        while let Some(index) = stack.pop() {
            let i = index as usize;
            if state.live[i] || state.deleted[i] {
                continue;
            }
            state.live[i] = true;
            stack.extend_from_slice(graph.references(index));
            if self.keep.derivations {
                // A live output keeps the derivation that built it.
                if let Some(deriver) = graph.derivers[i] {
                    if graph.outputs(deriver).contains(&index) {
                        stack.push(deriver);
                    }
                }
            }
            if self.keep.outputs && graph.paths[i].is_derivation() {
                // A live derivation keeps its outputs.
                stack.extend_from_slice(graph.outputs(index));
            }
        }
    }

    /// The live paths' indices, ascending.
    pub(super) fn live_indices(&self) -> Vec<u32> {
        let state = self.lock();
        (0..state.live.len() as u32)
            .filter(|&i| state.live[i as usize])
            .collect()
    }

    pub(super) fn is_live(&self, index: u32) -> bool {
        self.lock().live[index as usize]
    }

    pub(super) fn is_deleted(&self, index: u32) -> bool {
        self.lock().deleted[index as usize]
    }

    pub(super) fn is_temp_hash_part(&self, hash_part: &str) -> bool {
        self.lock().temp_hash_parts.contains(hash_part)
    }

    /// Of `candidates`, the ones still dead, now marked pending.
    pub(super) fn begin_batch(&self, candidates: &[u32]) -> Vec<u32> {
        let mut state = self.lock();
        let batch: Vec<u32> = candidates
            .iter()
            .copied()
            .filter(|&i| !state.live[i as usize])
            .collect();
        for &i in &batch {
            state.pending[i as usize] = true;
        }
        batch
    }

    /// Ends a batch: `gone` are deleted; the rest of `batch` stays.
    pub(super) fn end_batch(&self, batch: &[u32], gone: &[u32]) {
        let mut state = self.lock();
        for &i in batch {
            state.pending[i as usize] = false;
        }
        for &i in gone {
            state.deleted[i as usize] = true;
        }
        drop(state);
        self.settled.notify_all();
    }
}

/// The socket server of a running collector.
pub(super) struct Server {
    socket: PathBuf,
    stopping: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<UnixStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `<state>/gc-socket/socket` (replacing a stale socket: the caller holds
    /// the collector lock, so no other collector uses it).
    pub(super) fn start(
        state_dir: &Path,
        store_dir: StoreDir,
        collector: &Arc<Collector>,
    ) -> Result<Server, StoreError> {
        let socket = state_dir.join(GC_SOCKET);
        // Bound under a temporary name and renamed over the socket path, so the path
        // never goes missing: a client finding no socket would not wait for us.
        let temporary = temporary_socket(&socket);
        let listener = UnixListener::bind(&temporary).at(&temporary)?;
        // Any user's process may hand in roots, as with Nix.
        fs::set_permissions(&temporary, fs::Permissions::from_mode(0o666)).at(&temporary)?;
        fs::rename(&temporary, &socket).at(&socket)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let acceptor = {
            let stopping = Arc::clone(&stopping);
            let connections = Arc::clone(&connections);
            let collector = Arc::clone(collector);
            std::thread::Builder::new()
                .name("gc-roots".into())
                .spawn(move || accept(&listener, &stopping, &connections, &collector, &store_dir))
                .at(&socket)?
        };
        Ok(Server {
            socket,
            stopping,
            connections,
            acceptor: Some(acceptor),
        })
    }

    /// Stops accepting and closes every connection (their senders start over and find
    /// no collector).
    pub(super) fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor.
        let _ = UnixStream::connect(&self.socket);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // The socket file stays: connecting to it is refused from now on, which makes
        // clients retry and find the lock free (a missing file would not).
        for connection in self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

fn accept(
    listener: &UnixListener,
    stopping: &AtomicBool,
    connections: &Mutex<Vec<UnixStream>>,
    collector: &Arc<Collector>,
    store_dir: &StoreDir,
) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(clone);
        let collector = Arc::clone(collector);
        let store_dir = store_dir.clone();
        // Detached: it ends when its client hangs up or `stop` shuts the stream down.
        let _ = std::thread::Builder::new()
            .name("gc-roots-client".into())
            .spawn(move || serve(stream, &collector, &store_dir));
    }
}

/// Serves one client: each line is a store path; each is answered with `1` once it is
/// safe.
fn serve(stream: UnixStream, collector: &Collector, store_dir: &StoreDir) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        // A store path line is short; anything longer is not a client of ours.
        match (&mut reader).take(4096).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Ok(root) = store_dir.parse_path(line.trim_end_matches('\n')) {
            collector.add_root(root);
        }
        if writer.write_all(b"1").is_err() {
            return;
        }
    }
}

/// `<socket>.<pid>-<n>`: where a socket is bound before it is renamed into place.
fn temporary_socket(socket: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut name = socket.as_os_str().to_owned();
    name.push(format!(
        ".{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    PathBuf::from(name)
}

/// Makes sure `<state>/gc-socket/socket` exists, without replacing one a running
/// collector serves: a socket nobody listens on is created under a temporary name and
/// linked into place only if the name is free.
pub(super) fn ensure_socket_file(state_dir: &Path) -> Result<(), StoreError> {
    let socket = state_dir.join(GC_SOCKET);
    let dir = socket.parent().expect("the socket path has a parent");
    fs::create_dir_all(dir).at(dir)?;
    if fs::symlink_metadata(&socket).is_ok() {
        return Ok(());
    }
    let temporary = temporary_socket(&socket);
    let listener = UnixListener::bind(&temporary).at(&temporary)?;
    drop(listener);
    let _ = fs::set_permissions(&temporary, fs::Permissions::from_mode(0o666));
    let linked = fs::hard_link(&temporary, &socket);
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error).at(&socket),
    }
}
