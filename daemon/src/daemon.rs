//! `arca daemon`: listens on a Unix socket (or takes one from systemd), checks each
//! client's identity against `allowed-users` and `trusted-users` as Nix does, and serves
//! every connection on its own thread with its own store handle, so that a connection's
//! temporary roots live exactly as long as the connection, and a slow, stuck or
//! panicking client holds up nobody else.
//!
//! Unlike Nix's daemon (a process per connection, without limits), it bounds what
//! clients can hold: [`DaemonOptions::max_connections`] in all,
//! [`DaemonOptions::max_connections_per_user`] per untrusted user, and
//! [`DaemonOptions::idle_timeout`] for a connection that sends nothing.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arca_daemon_proto::wire::Limits;
use arca_daemon_proto::{refuse, serve, serve_socket, Peer};
use arca_store_core::Settings;
use arca_store_sqlite::{LocalStore, StoreOptions};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Group, Uid, User};

use crate::local::LocalBackend;

/// The daemon's settings (among them who may connect and who is trusted: user names,
/// `@group`, or `*`, as Nix's `allowed-users` and `trusted-users`), and how much clients
/// may hold.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The daemon's settings (`nix.conf`); each connection starts from a copy that its
    /// client's `SetOptions` may change as far as its trust allows.
    pub settings: Settings,
    pub limits: Limits,
    pub store: StoreOptions,
    /// Most connections served at once, trusted or not (default 1024). Each holds a
    /// thread and a store handle; one more is refused.
    pub max_connections: usize,
    /// Most connections one untrusted user (by uid) may hold at once (default 64; a Nix
    /// client uses one per process). Trusted users are exempt: they can act as root
    /// anyway, and remote builders and CI runners legitimately open many.
    pub max_connections_per_user: usize,
    /// How long a connection may keep the daemon waiting for its handshake or its next
    /// operation before it is closed (default one hour; `None`: forever, as Nix). Only
    /// that wait counts, never an operation under way (a build may be silent for hours).
    /// A Nix client kept idle longer (`nix repl` left open) sees its next operation fail
    /// once, then reconnects. Not applied to [`serve_stdio`] (ssh has its own).
    pub idle_timeout: Option<Duration>,
}

impl Default for DaemonOptions {
    fn default() -> DaemonOptions {
        DaemonOptions {
            settings: Settings::default(),
            limits: Limits::default(),
            store: StoreOptions::default(),
            max_connections: 1024,
            max_connections_per_user: 64,
            idle_timeout: Some(Duration::from_secs(60 * 60)),
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
/// connection by identity, not by file permissions. SIGTERM and SIGINT are blocked in
/// the calling thread first, so that one sent as soon as the socket exists (before
/// [`run`] watches for it) is kept for [`run`] rather than killing the process.
pub fn bind(socket: &Path) -> Result<UnixListener, DaemonError> {
    block_shutdown_signals();
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
    let listener = arca_daemon_proto::long_path::at_short_path(socket, |p| UnixListener::bind(p))
        .map_err(listen_error)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .map_err(listen_error)?;
    Ok(listener)
}

/// Blocks SIGTERM and SIGINT in the calling thread (a clean shutdown waits for them in a
/// thread of its own); the set.
fn block_shutdown_signals() -> SigSet {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(error) = signals.thread_block() {
        tracing::warn!("cannot block SIGTERM for a clean shutdown: {error}");
    }
    signals
}

/// How long in-flight operations may take to finish after SIGTERM before the daemon
/// exits anyway (every operation is atomic: one cut short leaves nothing behind).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves connections from `listener`, each on its own thread, until SIGTERM or SIGINT:
/// then it stops accepting, ends idle connections, gives operations under way
/// 10 s (`SHUTDOWN_GRACE`) to finish, and returns.
///
/// A client is identified and counted here, before any thread is started for it: one
/// that is not allowed, or over a limit, costs no thread of its own.
pub fn run(root: &Path, listener: UnixListener, options: DaemonOptions) -> Result<(), DaemonError> {
    // Opened once up front so that a broken store is reported at start.
    LocalStore::open_with(root, options.store.clone()).map_err(|source| DaemonError::Store {
        root: root.to_owned(),
        source,
    })?;
    // Blocked here (if `bind` has not already), before any thread starts, so that every
    // thread inherits the mask and only the waiting thread below receives them.
    let signals = block_shutdown_signals();
    let stopping = Arc::new(AtomicBool::new(false));
    // Shutting the listening socket down wakes the accept loop (with an error), even
    // when its path was deleted or the socket came from systemd.
    let wake = listener.try_clone().ok();
    {
        let stopping = Arc::clone(&stopping);
        let spawned = std::thread::Builder::new()
            .name("arca-daemon-signals".into())
            .spawn(move || {
                if signals.wait().is_ok() {
                    stopping.store(true, Ordering::SeqCst);
                    // Wake the accept loop.
                    if let Some(listener) = wake {
                        let _ = nix::sys::socket::shutdown(
                            listener.as_raw_fd(),
                            nix::sys::socket::Shutdown::Both,
                        );
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!("cannot watch for SIGTERM: {error}");
        }
    }
    let options = Arc::new(options);
    let connections = Arc::new(Connections::default());
    let refusals = Refusals::start();
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
        let client = match identify(&stream, &options) {
            Ok(client) => client,
            Err(reason) => {
                tracing::warn!("refused a connection: {reason}");
                continue; // closing is the refusal, as with Nix
            }
        };
        let slot = match connections.admit(&stream, &client, &options) {
            Ok(slot) => slot,
            Err(reason) => {
                tracing::warn!("refused a connection: {reason}");
                refusals.send(stream, reason);
                continue;
            }
        };
        let root = root.to_owned();
        let options = Arc::clone(&options);
        // Threads are detached: each one's stack and descriptors go back when it ends
        // (a kept `JoinHandle` would hold the stack until joined). The slot moves into
        // the thread and is released when it ends, also by a panic, or here if the
        // thread cannot start (the closure is dropped).
        let spawned = std::thread::Builder::new()
            .name("arca-daemon-connection".into())
            .spawn(move || {
                let _slot = slot;
                connection(&root, stream, client.peer, &options);
            });
        if let Err(error) = spawned {
            tracing::warn!("cannot start a thread for a connection: {error}");
        }
    }
    // Shutting down: no new requests are read (a connection waiting for its next
    // operation ends at once); operations under way finish, within the grace period.
    tracing::info!("shutting down");
    connections.stop_reading();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while !connections.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One admitted connection: the store, then the protocol. Errors end only this
/// connection.
fn connection(root: &Path, stream: UnixStream, peer: Peer, options: &DaemonOptions) {
    let store = match LocalStore::open_with(root, options.store.clone()) {
        Ok(store) => store,
        Err(error) => {
            tracing::warn!("cannot open the store for a connection: {error}");
            return;
        }
    };
    if let Err(error) = serve_socket(
        &LocalBackend::new(&store),
        &stream,
        peer,
        options.limits,
        &options.settings,
        options.idle_timeout,
    ) {
        tracing::info!("connection ended: {error}");
    }
}

/// The connections being served: each one's stream (to end idle ones at shutdown) and
/// how many each user holds. A connection is counted from [`Connections::admit`] until
/// its [`Slot`] is dropped.
#[derive(Default)]
struct Connections {
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    streams: HashMap<u64, UnixStream>,
    per_user: HashMap<u32, usize>,
}

/// A connection's place in [`Connections`], given back when dropped, whichever way its
/// thread ends (return, error, panic) or if it never starts.
struct Slot {
    connections: Arc<Connections>,
    id: u64,
    uid: u32,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, Open> {
        // A panic while the lock is held cannot leave the maps half-updated (each update
        // is one insert or remove), so a poisoned lock is still good.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts `stream` in if the limits allow it; otherwise the reason, for the client.
    fn admit(
        self: &Arc<Self>,
        stream: &UnixStream,
        client: &Client,
        options: &DaemonOptions,
    ) -> Result<Slot, String> {
        let mut open = self.lock();
        if open.streams.len() >= options.max_connections {
            return Err(format!(
                "the daemon already serves {} connections, its limit (max-connections)",
                open.streams.len()
            ));
        }
        let held = open.per_user.get(&client.uid).copied().unwrap_or(0);
        if !client.peer.trusted && held >= options.max_connections_per_user {
            return Err(format!(
                "user '{}' already has {held} connections to the daemon, the limit for an \
                 untrusted user (max-connections-per-user)",
                client.name
            ));
        }
        let clone = stream
            .try_clone()
            .map_err(|error| format!("cannot keep track of a connection: {error}"))?;
        let id = open.next_id;
        open.next_id += 1;
        open.streams.insert(id, clone);
        *open.per_user.entry(client.uid).or_default() += 1;
        Ok(Slot {
            connections: Arc::clone(self),
            id,
            uid: client.uid,
        })
    }

    /// Ends every connection's input: one waiting for its next operation ends now.
    fn stop_reading(&self) {
        for stream in self.lock().streams.values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
    }

    fn is_empty(&self) -> bool {
        self.lock().streams.is_empty()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.connections.lock();
        open.streams.remove(&self.id);
        if let Some(held) = open.per_user.get_mut(&self.uid) {
            *held -= 1;
            if *held == 0 {
                open.per_user.remove(&self.uid);
            }
        }
    }
}

/// How long a refused client may take over each step of its handshake before it is
/// simply closed.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Refused connections waiting to be told why; more are closed without a word.
const REFUSAL_QUEUE: usize = 16;

/// Tells refused clients why, one at a time on one thread, so that a flood of them
/// costs a bounded queue, not a thread each. When the queue is full (or the thread
/// could not start), a refused connection is closed without a word.
struct Refusals {
    queue: Option<SyncSender<(UnixStream, String)>>,
}

impl Refusals {
    fn start() -> Refusals {
        let (queue, refused) = mpsc::sync_channel::<(UnixStream, String)>(REFUSAL_QUEUE);
        let spawned = std::thread::Builder::new()
            .name("arca-daemon-refusals".into())
            .spawn(move || {
                for (stream, reason) in refused {
                    let timeouts = stream
                        .set_read_timeout(Some(REFUSAL_TIMEOUT))
                        .and_then(|()| stream.set_write_timeout(Some(REFUSAL_TIMEOUT)));
                    if timeouts.is_ok() {
                        // The client may be gone or not speak the protocol: nothing to do.
                        let _ = refuse(&stream, &stream, &reason);
                    }
                }
            });
        match spawned {
            Ok(_) => Refusals { queue: Some(queue) },
            Err(error) => {
                tracing::warn!("cannot start the thread that answers refused clients: {error}");
                Refusals { queue: None }
            }
        }
    }

    fn send(&self, stream: UnixStream, reason: String) {
        if let Some(queue) = &self.queue {
            // Full or gone: dropping the stream closes it.
            let _ = queue.try_send((stream, reason));
        }
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
        &LocalBackend::new(&store),
        io::stdin().lock(),
        io::stdout().lock(),
        Peer { trusted },
        options.limits,
        &options.settings,
    ) {
        tracing::info!("connection ended: {error}");
    }
    Ok(())
}

/// Who is on the other end of a connection.
struct Client {
    uid: u32,
    /// The user's name, or the uid when it has none.
    name: String,
    peer: Peer,
}

/// The peer's uid and gid by `SO_PEERCRED`, checked against the user lists.
fn identify(stream: &UnixStream, options: &DaemonOptions) -> Result<Client, String> {
    let credentials =
        getsockopt(&stream.as_fd(), PeerCredentials).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let uid = Uid::from_raw(credentials.uid());
    let gid = Gid::from_raw(credentials.gid());
    let user = User::from_uid(uid).ok().flatten();
    let name = user
        .as_ref()
        .map_or_else(|| uid.to_string(), |u| u.name.clone());
    let settings = &options.settings;
    let trusted = matches(&settings.trusted_users, &name, gid);
    if !trusted && !matches(&settings.allowed_users, &name, gid) {
        return Err(format!("user '{name}' is not in allowed-users"));
    }
    Ok(Client {
        uid: uid.as_raw(),
        name,
        peer: Peer { trusted },
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(uid: u32, trusted: bool) -> Client {
        Client {
            uid,
            name: format!("user{uid}"),
            peer: Peer { trusted },
        }
    }

    fn limits(total: usize, per_user: usize) -> DaemonOptions {
        DaemonOptions {
            max_connections: total,
            max_connections_per_user: per_user,
            ..DaemonOptions::default()
        }
    }

    fn stream() -> UnixStream {
        UnixStream::pair().unwrap().0
    }

    #[test]
    fn an_untrusted_user_over_their_limit_is_refused_others_are_not() {
        let connections = Arc::new(Connections::default());
        let options = limits(100, 3);
        let alice = client(1000, false);
        let held: Vec<Slot> = (0..3)
            .map(|_| connections.admit(&stream(), &alice, &options).unwrap())
            .collect();
        let Err(reason) = connections.admit(&stream(), &alice, &options) else {
            panic!("a fourth connection is admitted");
        };
        assert!(
            reason.contains("user1000") && reason.contains("max-connections-per-user"),
            "{reason}"
        );
        // Another user, and a trusted one (exempt), are still admitted.
        connections
            .admit(&stream(), &client(1001, false), &options)
            .unwrap();
        let root = client(0, true);
        let _trusted: Vec<Slot> = (0..5)
            .map(|_| connections.admit(&stream(), &root, &options).unwrap())
            .collect();
        // A slot given back makes room again.
        drop(held);
        connections.admit(&stream(), &alice, &options).unwrap();
    }

    #[test]
    fn the_total_limit_applies_to_everyone() {
        let connections = Arc::new(Connections::default());
        let options = limits(2, 64);
        let root = client(0, true);
        let _held = [
            connections.admit(&stream(), &root, &options).unwrap(),
            connections
                .admit(&stream(), &client(1000, false), &options)
                .unwrap(),
        ];
        let Err(reason) = connections.admit(&stream(), &root, &options) else {
            panic!("a third connection is admitted");
        };
        assert!(reason.contains("max-connections"), "{reason}");
    }

    #[test]
    fn a_slot_is_given_back_when_its_thread_panics() {
        let connections = Arc::new(Connections::default());
        let options = limits(1, 1);
        let slot = connections
            .admit(&stream(), &client(1000, false), &options)
            .unwrap();
        let thread = std::thread::spawn(move || {
            let _slot = slot;
            panic!("a connection's thread panics");
        });
        assert!(thread.join().is_err());
        assert!(connections.is_empty());
        assert!(connections.lock().per_user.is_empty());
        connections
            .admit(&stream(), &client(1000, false), &options)
            .unwrap();
    }
}
