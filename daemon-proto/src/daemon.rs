//! `arca daemon`: listens on a Unix socket (or takes one from systemd), checks each
//! client's identity against `allowed-users` and `trusted-users` as Nix does, and serves
//! every connection on its own thread with its own store handle, so that a connection's
//! temporary roots live exactly as long as the connection, and a slow, stuck or
//! panicking client holds up nobody else.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arca_store_sqlite::{LocalStore, StoreOptions};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Group, Uid, User};

use crate::server::{serve, Peer};
use crate::wire::Limits;

/// Who may connect and who is trusted: user names, `@group`, or `*`, as Nix's
/// `allowed-users` and `trusted-users`.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Default `*`.
    pub allowed_users: Vec<String>,
    /// Default `root`.
    pub trusted_users: Vec<String>,
    pub limits: Limits,
    pub store: StoreOptions,
}

impl Default for DaemonOptions {
    fn default() -> DaemonOptions {
        DaemonOptions {
            allowed_users: vec!["*".into()],
            trusted_users: vec!["root".into()],
            limits: Limits::default(),
            store: StoreOptions::default(),
        }
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on '{path}': {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("cannot open the store at '{root}': {source}")]
    Store {
        root: PathBuf,
        source: arca_store_sqlite::StoreError,
    },
}

/// `ROOT/nix/var/nix/daemon-socket/socket`, where Nix clients look for the daemon.
pub fn default_socket(root: &Path) -> PathBuf {
    root.join("nix/var/nix/daemon-socket/socket")
}

/// The listening socket systemd passed (`LISTEN_FDS`/`LISTEN_PID`), if any.
pub fn systemd_listener() -> Option<UnixListener> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || fds != 1 {
        return None;
    }
    Some(UnixListener::from(crate::activation::take_listen_fd()?))
}

/// Binds `socket` (replacing a stale one), mode 0666 as Nix's: access is decided per
/// connection by identity, not by file permissions.
pub fn bind(socket: &Path) -> Result<UnixListener, DaemonError> {
    let listen_error = |source| DaemonError::Listen {
        path: socket.to_owned(),
        source,
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(listen_error)?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(listen_error(error)),
    }
    let listener = UnixListener::bind(socket).map_err(listen_error)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .map_err(listen_error)?;
    Ok(listener)
}

/// How long in-flight operations may take to finish after SIGTERM before the daemon
/// exits anyway (every operation is atomic: one cut short leaves nothing behind).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves connections from `listener`, each on its own thread, until SIGTERM or SIGINT:
/// then it stops accepting, ends idle connections, gives operations under way
/// [`SHUTDOWN_GRACE`] to finish, and returns.
pub fn run(root: &Path, listener: UnixListener, options: DaemonOptions) -> Result<(), DaemonError> {
    // Opened once up front so that a broken store is reported at start.
    LocalStore::open_with(root, options.store.clone()).map_err(|source| DaemonError::Store {
        root: root.to_owned(),
        source,
    })?;
    // Blocked here, before any thread starts, so that every thread inherits the mask
    // and only the waiting thread below receives them.
    let signals = {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        set
    };
    if let Err(error) = signals.thread_block() {
        tracing::warn!("cannot block SIGTERM for a clean shutdown: {error}");
    }
    let stopping = Arc::new(AtomicBool::new(false));
    let wake = listener
        .local_addr()
        .ok()
        .and_then(|address| address.as_pathname().map(Path::to_owned));
    {
        let stopping = Arc::clone(&stopping);
        let spawned = std::thread::Builder::new()
            .name("arca-daemon-signals".into())
            .spawn(move || {
                if signals.wait().is_ok() {
                    stopping.store(true, Ordering::SeqCst);
                    // Wake the accept loop.
                    if let Some(socket) = wake {
                        let _ = UnixStream::connect(socket);
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!("cannot watch for SIGTERM: {error}");
        }
    }
    let options = Arc::new(options);
    // Each connection's stream, to end idle ones at shutdown; a connection removes
    // its own entry when it ends, so descriptors do not pile up.
    let connections: Arc<Mutex<HashMap<u64, UnixStream>>> = Arc::default();
    let mut next_id = 0u64;
    let mut threads = Vec::new();
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!("accepting a connection failed: {error}");
                continue;
            }
        };
        let id = next_id;
        next_id += 1;
        if let Ok(clone) = stream.try_clone() {
            connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, clone);
        }
        let root = root.to_owned();
        let options = Arc::clone(&options);
        let registered = Arc::clone(&connections);
        match std::thread::Builder::new()
            .name("arca-daemon-connection".into())
            .spawn(move || {
                connection(&root, stream, &options);
                registered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            }) {
            Ok(thread) => threads.push(thread),
            Err(error) => tracing::warn!("cannot start a thread for a connection: {error}"),
        }
        threads.retain(|t| !t.is_finished());
    }
    // Shutting down: no new requests are read (a connection waiting for its next
    // operation ends at once); operations under way finish, within the grace period.
    tracing::info!("shutting down");
    for stream in connections
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
    {
        let _ = stream.shutdown(Shutdown::Read);
    }
    let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
    while threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// One connection: identity, access, then the protocol. Errors end only this connection.
fn connection(root: &Path, stream: UnixStream, options: &DaemonOptions) {
    let peer = match identify(&stream, options) {
        Ok(peer) => peer,
        Err(reason) => {
            tracing::warn!("refused a connection: {reason}");
            return; // closing is the refusal, as with Nix
        }
    };
    let store = match LocalStore::open_with(root, options.store.clone()) {
        Ok(store) => store,
        Err(error) => {
            tracing::warn!("cannot open the store for a connection: {error}");
            return;
        }
    };
    let Ok(output) = stream.try_clone() else {
        return;
    };
    if let Err(error) = serve(&store, &stream, output, peer, options.limits) {
        tracing::info!("connection ended: {error}");
    }
}

/// Serves one client on stdin/stdout (`arca daemon --stdio`, for ssh), as a trusted
/// peer if `trusted`.
pub fn serve_stdio(root: &Path, trusted: bool, options: &DaemonOptions) -> Result<(), DaemonError> {
    let store = LocalStore::open_with(root, options.store.clone()).map_err(|source| {
        DaemonError::Store {
            root: root.to_owned(),
            source,
        }
    })?;
    if let Err(error) = serve(
        &store,
        io::stdin().lock(),
        io::stdout().lock(),
        Peer { trusted },
        options.limits,
    ) {
        tracing::info!("connection ended: {error}");
    }
    Ok(())
}

/// The peer's uid and gid by `SO_PEERCRED`, checked against the user lists.
fn identify(stream: &UnixStream, options: &DaemonOptions) -> Result<Peer, String> {
    let credentials =
        getsockopt(&stream.as_fd(), PeerCredentials).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let uid = Uid::from_raw(credentials.uid());
    let gid = Gid::from_raw(credentials.gid());
    let user = User::from_uid(uid).ok().flatten();
    let name = user
        .as_ref()
        .map_or_else(|| uid.to_string(), |u| u.name.clone());
    let trusted = matches(&options.trusted_users, &name, gid);
    if !trusted && !matches(&options.allowed_users, &name, gid) {
        return Err(format!("user '{name}' is not in allowed-users"));
    }
    Ok(Peer { trusted })
}

/// Whether a user matches a Nix user list (`name`, `@group`, `*`).
fn matches(list: &[String], name: &str, gid: Gid) -> bool {
    list.iter().any(|entry| {
        if entry == "*" || entry == name {
            return true;
        }
        let Some(group) = entry.strip_prefix('@') else {
            return false;
        };
        let Ok(Some(group)) = Group::from_name(group) else {
            return false;
        };
        group.gid == gid || group.mem.iter().any(|member| member == name)
    })
}
