//! The client side: [`DaemonClient`] implements the [`Store`] trait over a connection
//! to `arca daemon` or `nix-daemon`, so code written against `Store` works on a store
//! it cannot write directly.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;

use arca_store_core::{
    AddressingMethod, BuildMode, BuildOutcomes, Built, ContentAddress, DerivedPath, Hash, HashAlgo,
    PathInfo, Realisation, Store, StoreDir, StorePath,
};

use crate::protocol::{self, minor, stderr, Op};
use crate::wire::{
    FramedReader, FramedWriter, Limits, TeeBufRead, WireError, WireReader, WireWriter,
};

/// What went wrong talking to a daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    // The cause is the source (printed once, after this, by whoever prints the chain).
    #[error("daemon connection")]
    Wire(#[from] WireError),
    #[error("daemon connection")]
    Io(#[from] io::Error),
    #[error("the daemon does not speak Nix's worker protocol (magic {0:#x})")]
    BadMagic(u64),
    #[error("the daemon's protocol version {0}.{1} is older than 1.21")]
    TooOld(u64, u64),
    /// The daemon refused the operation; its message.
    #[error("{0}")]
    Daemon(String),
    #[error("the daemon sent an invalid reply: {0}")]
    BadReply(String),
}

/// What a daemon reports while an operation runs, as far as a build's log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonLog {
    /// A line of text for the terminal (`STDERR_NEXT`).
    Message(String),
    /// A build started (Nix's `actBuild` activity): the `.drv` path.
    BuildStarted { drv: String },
    /// A line of a builder's output (`resBuildLogLine`).
    BuildLine { drv: String, line: String },
}

/// Nix's activity type `actBuild` and result type `resBuildLogLine`.
const ACT_BUILD: u64 = 105;
const RES_BUILD_LOG_LINE: u64 = 101;

/// The two halves of a byte stream to a daemon: a socket's, or a process's stdout and
/// stdin (`ssh-ng://`).
pub type Reader = Box<dyn Read + Send>;
pub type Writer = Box<dyn Write + Send>;

struct Connection {
    from: WireReader<BufReader<Reader>>,
    to: WireWriter<BufWriter<Writer>>,
    version: u64,
}

/// A store behind a daemon socket. One connection, used by one operation at a time
/// (callers on several threads take turns).
pub struct DaemonClient {
    store_dir: StoreDir,
    connection: Mutex<Connection>,
    /// What carries the stream, kept as long as the client (an ssh process, ended when
    /// the client is dropped).
    _transport: Option<Box<dyn Send + Sync>>,
    daemon_version: Option<String>,
    /// Where the daemon's build logs are, for reading them directly from a daemon that
    /// cannot send them (Nix's): `/nix/var/log/nix/drvs` unless set.
    log_dir: std::path::PathBuf,
}

impl std::fmt::Debug for DaemonClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonClient")
            .field("store_dir", &self.store_dir)
            .field("daemon_version", &self.daemon_version)
            .finish_non_exhaustive()
    }
}

impl DaemonClient {
    /// Connects to the daemon listening on `socket` and does the handshake.
    pub fn connect(socket: &Path) -> Result<DaemonClient, ClientError> {
        let stream = crate::long_path::at_short_path(socket, |p| UnixStream::connect(p))?;
        DaemonClient::handshake(stream, StoreDir::default())
    }

    /// The handshake over an open stream, offering the newest protocol.
    pub fn handshake(stream: UnixStream, store_dir: StoreDir) -> Result<DaemonClient, ClientError> {
        DaemonClient::handshake_at(stream, store_dir, protocol::MAX_VERSION)
    }

    /// The handshake offering protocol `offered` (to speak as an older client would).
    pub fn handshake_at(
        stream: UnixStream,
        store_dir: StoreDir,
        offered: u64,
    ) -> Result<DaemonClient, ClientError> {
        let reader = Box::new(stream.try_clone()?);
        DaemonClient::handshake_over(reader, Box::new(stream), store_dir, offered)
    }

    /// The handshake over any byte stream (a process's stdout and stdin, say), offering
    /// protocol `offered`.
    pub fn handshake_over(
        reader: Reader,
        writer: Writer,
        store_dir: StoreDir,
        offered: u64,
    ) -> Result<DaemonClient, ClientError> {
        let mut from = WireReader::new(BufReader::new(reader), Limits::default());
        let mut to = WireWriter::new(BufWriter::new(writer));
        to.write_u64(protocol::WORKER_MAGIC_1)?;
        to.flush()?;
        let magic = from.read_u64()?;
        if magic != protocol::WORKER_MAGIC_2 {
            return Err(ClientError::BadMagic(magic));
        }
        let server = from.read_u64()?;
        let version = server.min(offered);
        if version < protocol::MIN_VERSION {
            return Err(ClientError::TooOld(server >> 8, minor(server)));
        }
        to.write_u64(offered)?;
        if minor(version) >= 38 {
            // Feature names: Arca's client asks for none; the daemon's are read below.
            to.write_u64(0)?;
        }
        if minor(version) >= 14 {
            to.write_u64(0)?; // no CPU affinity
        }
        if minor(version) >= 11 {
            to.write_u64(0)?; // reserveSpace (obsolete)
        }
        to.flush()?;
        if minor(version) >= 38 {
            from.read_strings("daemon features")?;
        }
        let mut daemon_version = None;
        if minor(version) >= 33 {
            daemon_version = Some(from.read_string("daemon version")?);
        }
        if minor(version) >= 35 {
            from.read_u64()?; // whether the daemon trusts us
        }
        let mut connection = Connection { from, to, version };
        connection.process_stderr(None)?;
        Ok(DaemonClient {
            log_dir: std::path::PathBuf::from("/nix/var/log/nix/drvs"),
            store_dir,
            connection: Mutex::new(connection),
            _transport: None,
            daemon_version,
        })
    }

    /// Keeps `transport` (what carries the stream) alive as long as this client.
    pub fn with_transport(mut self, transport: Box<dyn Send + Sync>) -> DaemonClient {
        self._transport = Some(transport);
        self
    }

    /// The daemon's version string (protocol 1.33 and later).
    pub fn daemon_version(&self) -> Option<&str> {
        self.daemon_version.as_deref()
    }

    /// The protocol version agreed on.
    pub fn protocol_version(&self) -> u64 {
        self.connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .version
    }

    fn with<T>(
        &self,
        op: impl FnOnce(&mut Connection, &StoreDir) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        op(&mut connection, &self.store_dir)
    }

    fn parse_path(store_dir: &StoreDir, text: &str) -> Result<StorePath, ClientError> {
        store_dir
            .parse_path(text)
            .map_err(|e| ClientError::BadReply(format!("'{text}': {e}")))
    }

    fn read_paths(
        connection: &mut Connection,
        store_dir: &StoreDir,
    ) -> Result<BTreeSet<StorePath>, ClientError> {
        connection
            .from
            .read_strings("store paths")?
            .iter()
            .map(|text| DaemonClient::parse_path(store_dir, text))
            .collect()
    }

    fn read_optional_path(
        connection: &mut Connection,
        store_dir: &StoreDir,
    ) -> Result<Option<StorePath>, ClientError> {
        let text = connection.from.read_string("store path")?;
        if text.is_empty() {
            return Ok(None);
        }
        DaemonClient::parse_path(store_dir, &text).map(Some)
    }

    /// One path query: op, the path, the log, then `read`.
    fn query<T>(
        &self,
        op: Op,
        path: &StorePath,
        read: impl FnOnce(&mut Connection, &StoreDir) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.with(|connection, store_dir| {
            connection.to.write_u64(op as u64)?;
            connection.to.write_str(&store_dir.display(path))?;
            connection.to.flush()?;
            connection.process_stderr(None)?;
            read(connection, store_dir)
        })
    }
}

/// The operations beyond the [`Store`] trait, as the protocol has them; the public face is
/// [`StoreOps`](arca_store_core::StoreOps) (`client_ops.rs`).
impl DaemonClient {
    /// The closure of `paths` (plus the valid outputs of its derivations when
    /// `include_outputs`), each member with its references: one request to an Arca
    /// daemon, a level of the graph per round trip to another.
    pub(crate) fn send_closure_graph(
        &self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeMap<StorePath, BTreeSet<StorePath>>, ClientError> {
        if !self.is_arca() {
            let mut closure = self.query_closure_infos(paths)?;
            if include_outputs {
                let drvs: Vec<StorePath> = closure
                    .keys()
                    .filter(|p| p.is_derivation())
                    .cloned()
                    .collect();
                for drv in drvs {
                    let outputs: BTreeSet<StorePath> =
                        self.query_derivation_outputs(&drv)?.into_values().collect();
                    closure.extend(self.query_closure_infos(&outputs)?);
                }
            }
            return Ok(closure
                .into_iter()
                .map(|(path, info)| (path, info.references))
                .collect());
        }
        self.with(|connection, store_dir| {
            connection.to.write_u64(Op::ArcaClosureGraph as u64)?;
            let paths: Vec<String> = paths.iter().map(|p| store_dir.display(p)).collect();
            connection.to.write_strings(paths.iter())?;
            connection.to.write_bool(include_outputs)?;
            connection.to.flush()?;
            connection.process_stderr(None)?;
            let count = connection.from.read_list_len("closure")?;
            let mut graph = BTreeMap::new();
            for _ in 0..count {
                let path = connection.from.read_string("store path")?;
                let path = DaemonClient::parse_path(store_dir, &path)?;
                let references = DaemonClient::read_paths(connection, store_dir)?;
                graph.insert(path, references);
            }
            Ok(graph)
        })
    }

    /// `QueryValidPaths`: which of `paths` are valid, in one request, asking the daemon
    /// to substitute the others first when `substitute` (protocol 1.27 and later).
    pub(crate) fn send_query_valid_paths(
        &self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, ClientError> {
        self.with(|connection, store_dir| {
            connection.to.write_u64(Op::QueryValidPaths as u64)?;
            let texts: Vec<String> = paths.iter().map(|p| store_dir.display(p)).collect();
            connection.to.write_strings(texts.iter())?;
            if minor(connection.version) >= 27 {
                connection.to.write_bool(substitute)?;
            }
            connection.to.flush()?;
            connection.process_stderr(None)?;
            DaemonClient::read_paths(connection, store_dir)
        })
    }

    /// Reads build logs of a daemon that cannot send them (not Arca's) from `log_dir`, as
    /// Nix's own client does (it reads the daemon's log files under the store's root).
    pub fn set_log_dir(&mut self, log_dir: std::path::PathBuf) {
        self.log_dir = log_dir;
    }

    /// Where [`StoreOps::read_build_log`](arca_store_core::StoreOps::read_build_log) reads logs of a daemon that is not Arca's.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Whether the daemon is Arca's (and so understands Arca's extension operations).
    pub fn is_arca(&self) -> bool {
        self.daemon_version
            .as_deref()
            .is_some_and(|v| v.starts_with("arca "))
    }

    /// Copies the stored build log of `drv` to `out` (decompressed, streamed); `false`
    /// when the daemon has none. Nix's protocol has no operation for this (Nix's client
    /// reads the daemon's log files directly), so it takes an Arca daemon.
    pub(crate) fn send_read_build_log(
        &self,
        drv: &StorePath,
        out: &mut dyn Write,
    ) -> Result<bool, ClientError> {
        if !self.is_arca() {
            return Err(ClientError::Daemon(
                "this daemon cannot send build logs (it is not Arca's)".into(),
            ));
        }
        self.with(|connection, store_dir| {
            connection.to.write_u64(Op::ArcaReadLog as u64)?;
            connection.to.write_str(&store_dir.display(drv))?;
            connection.to.flush()?;
            connection.process_stderr(None)?;
            if !connection.from.read_bool("log found")? {
                return Ok(false);
            }
            let max_frame = connection.from.limits().max_frame;
            let mut framed = FramedReader::new(connection.from.get_mut(), max_frame);
            io::copy(&mut framed, out)?;
            Ok(true)
        })
    }

    /// `AddBuildLog`: stores `text` as the build log of `drv` (trusted clients only).
    pub(crate) fn send_add_build_log(
        &self,
        drv: &StorePath,
        text: &mut dyn Read,
    ) -> Result<(), ClientError> {
        self.with(|connection, _| {
            if minor(connection.version) < 32 {
                return Err(ClientError::Daemon(
                    "the daemon's protocol is older than 1.32".into(),
                ));
            }
            let to = &mut connection.to;
            to.write_u64(Op::AddBuildLog as u64)?;
            to.write_str(drv.as_str())?;
            {
                let mut framed = FramedWriter::new(to.get_mut());
                io::copy(text, &mut framed)?;
                framed.finish()?;
            }
            to.flush()?;
            connection.process_stderr(None)?;
            connection.from.read_u64()?;
            Ok(())
        })
    }

    /// The closure of `paths` with every member's path info (invalid starting paths
    /// are skipped), asked for a level of the graph at a time.
    pub(crate) fn query_closure_infos(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, PathInfo>, ClientError> {
        self.with(|connection, store_dir| {
            let mut closure: BTreeMap<StorePath, PathInfo> = BTreeMap::new();
            let mut round: BTreeSet<StorePath> = paths.clone();
            while !round.is_empty() {
                for path in &round {
                    connection.to.write_u64(Op::QueryPathInfo as u64)?;
                    connection.to.write_str(&store_dir.display(path))?;
                }
                connection.to.flush()?;
                let mut next = BTreeSet::new();
                let mut failure = None;
                for path in &round {
                    // Every reply is read, even after a failure, to stay in step.
                    let reply = connection
                        .process_stderr(None)
                        .and_then(|()| read_path_info_reply(connection, store_dir, path));
                    match reply {
                        Ok(Some(info)) => {
                            next.extend(info.references.iter().cloned());
                            closure.insert(path.clone(), info);
                        }
                        Ok(None) => {}
                        Err(ClientError::Daemon(message)) => {
                            failure.get_or_insert(ClientError::Daemon(message));
                        }
                        Err(error) => return Err(error),
                    }
                }
                if let Some(error) = failure {
                    return Err(error);
                }
                next.retain(|path| !closure.contains_key(path));
                round = next;
            }
            Ok(closure)
        })
    }

    /// Adds a content-addressed path from a dump (a NAR for `fixed:r:ALGO`, a file's
    /// bytes for `fixed:ALGO`, a text for `text:sha256`), as `nix-store --add` does
    /// through a daemon. Needs protocol 1.25.
    pub(crate) fn send_add_dump(
        &self,
        name: &str,
        method: AddressingMethod,
        references: &BTreeSet<StorePath>,
        dump: &mut dyn Read,
    ) -> Result<StorePath, ClientError> {
        self.with(|connection, store_dir| {
            if minor(connection.version) < 25 {
                return Err(ClientError::Daemon(
                    "the daemon's protocol is older than 1.25".into(),
                ));
            }
            let to = &mut connection.to;
            to.write_u64(Op::AddToStore as u64)?;
            to.write_str(name)?;
            to.write_str(&method.to_string())?;
            let references: Vec<String> = references.iter().map(|r| store_dir.display(r)).collect();
            to.write_strings(references.iter())?;
            to.write_bool(false)?; // repair
            {
                let mut framed = FramedWriter::new(to.get_mut());
                io::copy(dump, &mut framed)?;
                framed.finish()?;
            }
            to.flush()?;
            connection.process_stderr(None)?;
            let path = connection.from.read_string("store path")?;
            let path = DaemonClient::parse_path(store_dir, &path)?;
            // The path info follows; only the path is needed here.
            DaemonClient::read_optional_path(connection, store_dir)?;
            connection.from.read_string("NAR hash")?;
            DaemonClient::read_paths(connection, store_dir)?;
            connection.from.read_u64()?;
            connection.from.read_u64()?;
            connection.from.read_bool("ultimate")?;
            connection.from.read_strings("signatures")?;
            connection.from.read_string("content address")?;
            Ok(path)
        })
    }

    /// `CollectGarbage`: `action` is a [`protocol::gc_action`] value. Returns the paths
    /// deleted (or listed) and the bytes freed.
    pub(crate) fn send_collect_garbage(
        &self,
        action: u64,
        paths: &BTreeSet<StorePath>,
        max_freed: Option<u64>,
    ) -> Result<(Vec<String>, u64), ClientError> {
        self.with(|connection, store_dir| {
            let to = &mut connection.to;
            to.write_u64(Op::CollectGarbage as u64)?;
            to.write_u64(action)?;
            let paths: Vec<String> = paths.iter().map(|p| store_dir.display(p)).collect();
            to.write_strings(paths.iter())?;
            to.write_bool(false)?; // ignore liveness
            to.write_u64(max_freed.unwrap_or(u64::MAX))?;
            for _ in 0..3 {
                to.write_u64(0)?;
            }
            to.flush()?;
            connection.process_stderr(None)?;
            let paths = connection.from.read_strings("paths")?;
            let freed = connection.from.read_u64()?;
            connection.from.read_u64()?;
            Ok((paths, freed))
        })
    }

    /// `FindRoots`: (link, path) pairs.
    pub(crate) fn send_find_roots(&self) -> Result<Vec<(String, StorePath)>, ClientError> {
        self.with(|connection, store_dir| {
            connection.to.write_u64(Op::FindRoots as u64)?;
            connection.to.flush()?;
            connection.process_stderr(None)?;
            let count = connection.from.read_list_len("roots")?;
            let mut roots = Vec::new();
            for _ in 0..count {
                let link = connection.from.read_string("link")?;
                let path = connection.from.read_string("root")?;
                roots.push((link, DaemonClient::parse_path(store_dir, &path)?));
            }
            Ok(roots)
        })
    }

    /// An operation without arguments answered by a number.
    fn simple(&self, op: Op) -> Result<u64, ClientError> {
        self.with(|connection, _| {
            connection.to.write_u64(op as u64)?;
            connection.to.flush()?;
            connection.process_stderr(None)?;
            Ok(connection.from.read_u64()?)
        })
    }

    /// `OptimiseStore`.
    pub(crate) fn send_optimise(&self) -> Result<(), ClientError> {
        self.simple(Op::OptimiseStore).map(drop)
    }

    /// `VerifyStore`: whether the daemon found errors.
    pub(crate) fn send_verify_store(
        &self,
        check_contents: bool,
        repair: bool,
    ) -> Result<bool, ClientError> {
        self.with(|connection, _| {
            connection.to.write_u64(Op::VerifyStore as u64)?;
            connection.to.write_bool(check_contents)?;
            connection.to.write_bool(repair)?;
            connection.to.flush()?;
            connection.process_stderr(None)?;
            Ok(connection.from.read_bool("errors")?)
        })
    }

    /// `AddIndirectRoot`: the daemon registers `link` (which the caller created).
    pub(crate) fn send_add_indirect_root(&self, link: &Path) -> Result<(), ClientError> {
        self.with(|connection, _| {
            connection.to.write_u64(Op::AddIndirectRoot as u64)?;
            connection.to.write_str(&link.to_string_lossy())?;
            connection.to.flush()?;
            connection.process_stderr(None)?;
            connection.from.read_u64()?;
            Ok(())
        })
    }

    /// `AddTempRoot`: keeps `path` alive while this connection lasts.
    pub(crate) fn send_add_temp_root(&self, path: &StorePath) -> Result<(), ClientError> {
        self.query(Op::AddTempRoot, path, |connection, _| {
            connection.from.read_u64()?;
            Ok(())
        })
    }

    /// `BuildPathsWithResults` (`BuildPaths` before 1.34): per target, what is there now
    /// (the outputs the daemon named, when it is new enough to say) or why it failed;
    /// `on_log` hears the builds' log as the daemon streams it.
    pub(crate) fn send_build_paths(
        &self,
        targets: &[DerivedPath],
        mode: BuildMode,
        on_log: &mut dyn FnMut(DaemonLog),
    ) -> Result<BuildOutcomes, ClientError> {
        self.with(|connection, store_dir| {
            let wire: Vec<String> = targets.iter().map(|t| t.to_wire(store_dir)).collect();
            let version = minor(connection.version);
            let with_results = version >= 34;
            connection.to.write_u64(if with_results {
                Op::BuildPathsWithResults as u64
            } else {
                Op::BuildPaths as u64
            })?;
            connection.to.write_strings(wire.iter())?;
            connection.to.write_u64(protocol::build_mode::of(mode))?;
            connection.to.flush()?;
            let logged = connection.process_stderr_logged(None, on_log);
            if !with_results {
                // One verdict for all: a failure is the daemon's error message.
                let verdict = match logged {
                    Ok(()) => {
                        connection.from.read_u64()?;
                        Ok(Built::default())
                    }
                    Err(ClientError::Daemon(message)) => Err(message),
                    Err(error) => return Err(error),
                };
                return Ok(targets
                    .iter()
                    .map(|t| (t.clone(), verdict.clone()))
                    .collect());
            }
            logged?;
            let count = connection.from.read_list_len("build results")?;
            let mut results = Vec::new();
            for index in 0..count as usize {
                connection.from.read_string("derived path")?;
                let result = connection.read_build_result()?;
                if let Some(target) = targets.get(index) {
                    results.push((target.clone(), result));
                }
            }
            // Every reply was read (the connection stays in step) before this check.
            if results.len() != targets.len() {
                return Err(ClientError::BadReply(format!(
                    "{count} build results for {} targets",
                    targets.len()
                )));
            }
            Ok(results)
        })
    }

    /// `BuildDerivation`: `drv` sent whole under `drv_path` (what a remote builder
    /// gets: its inputs are there already); `on_log` hears the build's log.
    pub(crate) fn send_build_derivation(
        &self,
        drv_path: &StorePath,
        drv: &arca_store_core::Derivation,
        mode: BuildMode,
        on_log: &mut dyn FnMut(DaemonLog),
    ) -> Result<Result<Built, String>, ClientError> {
        self.with(|connection, store_dir| {
            connection.to.write_u64(Op::BuildDerivation as u64)?;
            connection.to.write_str(&store_dir.display(drv_path))?;
            crate::serve_client::write_basic_derivation(&mut connection.to, store_dir, drv)?;
            connection.to.write_u64(protocol::build_mode::of(mode))?;
            connection.to.flush()?;
            connection.process_stderr_logged(None, on_log)?;
            connection.read_build_result()
        })
    }

    /// `SetOptions`: the twelve fixed fields (as [`crate::apply_client_options`] reads
    /// them) and named overrides; the daemon applies what this client's trust allows and
    /// sends a warning for the rest.
    pub(crate) fn send_set_options(
        &self,
        fixed: &[u64; 12],
        overrides: &[(String, String)],
    ) -> Result<(), ClientError> {
        self.with(|connection, _| {
            connection.to.write_u64(Op::SetOptions as u64)?;
            for value in fixed {
                connection.to.write_u64(*value)?;
            }
            connection.to.write_u64(overrides.len() as u64)?;
            for (name, value) in overrides {
                connection.to.write_str(name)?;
                connection.to.write_str(value)?;
            }
            connection.to.flush()?;
            connection.process_stderr(None)
        })
    }

    /// `QueryAllValidPaths`.
    pub(crate) fn send_query_all_valid_paths(&self) -> Result<BTreeSet<StorePath>, ClientError> {
        self.with(|connection, store_dir| {
            connection.to.write_u64(Op::QueryAllValidPaths as u64)?;
            connection.to.flush()?;
            connection.process_stderr(None)?;
            DaemonClient::read_paths(connection, store_dir)
        })
    }
}

impl Connection {
    /// A build result in the agreed version's shape: status, message, then times built,
    /// non-determinism and start and stop times (1.29), CPU times (1.37), the outputs'
    /// realisations (1.28).
    fn read_build_result(&mut self) -> Result<Result<Built, String>, ClientError> {
        let version = minor(self.version);
        let status = self.from.read_u64()?;
        let message = self.from.read_string("error message")?;
        if version >= 29 {
            for _ in 0..4 {
                self.from.read_u64()?;
            }
        }
        if version >= 37 {
            for _ in 0..2 {
                if self.from.read_u64()? == 1 {
                    self.from.read_u64()?;
                }
            }
        }
        let mut outputs = Vec::new();
        if version >= 28 {
            let count = self.from.read_list_len("built outputs")?;
            for _ in 0..count {
                self.from.read_string("output id")?;
                let json = self.from.read_string("realisation")?;
                let realisation = Realisation::from_json(&json)
                    .map_err(|error| ClientError::BadReply(error.to_string()))?;
                outputs.push(realisation);
            }
        }
        // Built, substituted, already valid, resolved (0, 1, 2, 13) succeed.
        Ok(match status {
            0 | 1 | 2 | 13 => Ok(Built {
                now: status == 0,
                outputs,
                timing: None,
            }),
            _ => Err(message),
        })
    }

    /// Reads log messages until `STDERR_LAST` (or the daemon's error), answering the
    /// daemon's requests for data (`STDERR_READ`, old protocols) from `source`.
    fn process_stderr(&mut self, source: Option<&mut dyn Read>) -> Result<(), ClientError> {
        self.process_stderr_logged(source, &mut |log| {
            if let DaemonLog::Message(line) = log {
                // The daemon's warnings (a setting refused, …) are for the user.
                match line.trim_end().strip_prefix("warning: ") {
                    Some(warning) => tracing::warn!("{warning}"),
                    None => tracing::info!("{}", line.trim_end()),
                }
            }
        })
    }

    /// [`Connection::process_stderr`], passing log messages and build activities on.
    fn process_stderr_logged(
        &mut self,
        mut source: Option<&mut dyn Read>,
        on_log: &mut dyn FnMut(DaemonLog),
    ) -> Result<(), ClientError> {
        // Build activities by id: their derivations.
        let mut builds: BTreeMap<u64, String> = BTreeMap::new();
        loop {
            match self.from.read_u64()? {
                stderr::LAST => return Ok(()),
                stderr::READ => {
                    let wanted = self.from.read_u64()?;
                    let Some(source) = source.as_deref_mut() else {
                        return Err(ClientError::BadReply("the daemon asked for data".into()));
                    };
                    let mut chunk = vec![0u8; wanted.min(64 << 10) as usize];
                    let read = source.read(&mut chunk)?;
                    self.to.write_bytes(&chunk[..read])?;
                    self.to.flush()?;
                }
                stderr::ERROR => {
                    let message = if minor(self.version) >= 26 {
                        self.from.read_string("error type")?;
                        self.from.read_u64()?; // level
                        self.from.read_string("error name")?;
                        let message = self.from.read_string("error message")?;
                        let have_position = self.from.read_u64()?;
                        if have_position != 0 {
                            return Err(ClientError::BadReply(
                                "error positions are not expected".into(),
                            ));
                        }
                        let traces = self.from.read_list_len("error traces")?;
                        for _ in 0..traces {
                            self.from.read_u64()?;
                            self.from.read_string("trace")?;
                        }
                        message
                    } else {
                        let message = self.from.read_string("error message")?;
                        self.from.read_u64()?; // exit status
                        message
                    };
                    return Err(ClientError::Daemon(message));
                }
                stderr::NEXT => {
                    let line = self.from.read_string("log line")?;
                    on_log(DaemonLog::Message(line));
                }
                stderr::START_ACTIVITY => {
                    let id = self.from.read_u64()?;
                    self.from.read_u64()?; // level
                    let kind = self.from.read_u64()?;
                    self.from.read_string("activity")?;
                    let fields = self.read_fields()?;
                    self.from.read_u64()?; // parent
                    if kind == ACT_BUILD {
                        if let Some(Field::String(drv)) = fields.into_iter().next() {
                            builds.insert(id, drv.clone());
                            on_log(DaemonLog::BuildStarted { drv });
                        }
                    }
                }
                stderr::STOP_ACTIVITY => {
                    let id = self.from.read_u64()?;
                    builds.remove(&id);
                }
                stderr::RESULT => {
                    let id = self.from.read_u64()?;
                    let kind = self.from.read_u64()?;
                    let fields = self.read_fields()?;
                    if let (RES_BUILD_LOG_LINE, Some(drv), Some(Field::String(line))) =
                        (kind, builds.get(&id), fields.into_iter().next())
                    {
                        on_log(DaemonLog::BuildLine {
                            drv: drv.clone(),
                            line,
                        });
                    }
                }
                other => {
                    return Err(ClientError::BadReply(format!(
                        "unexpected log message code {other:#x}"
                    )))
                }
            }
        }
    }

    fn read_fields(&mut self) -> Result<Vec<Field>, ClientError> {
        let count = self.from.read_list_len("fields")?;
        let mut fields = Vec::new();
        for _ in 0..count {
            fields.push(match self.from.read_u64()? {
                0 => {
                    self.from.read_u64()?;
                    Field::Int
                }
                1 => Field::String(self.from.read_string("field")?),
                other => return Err(ClientError::BadReply(format!("field type {other}"))),
            });
        }
        Ok(fields)
    }
}

/// A field of a log message (integers are not used here).
enum Field {
    Int,
    String(String),
}

impl Store for DaemonClient {
    type Error = ClientError;
    type Batch<'a> = arca_store_core::OneByOne<'a, Self>;

    fn add_batch(&self) -> Self::Batch<'_> {
        arca_store_core::OneByOne::new(self)
    }

    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn is_valid_path(&self, path: &StorePath) -> Result<bool, ClientError> {
        self.query(Op::IsValidPath, path, |connection, _| {
            Ok(connection.from.read_bool("valid")?)
        })
    }

    fn query_path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, ClientError> {
        self.query(Op::QueryPathInfo, path, |connection, store_dir| {
            read_path_info_reply(connection, store_dir, path)
        })
    }

    /// The closure in rounds: every path of a round is asked for at once (pipelined on
    /// the connection) and the replies read in order, so a closure of N paths costs a
    /// round trip per level of the graph, not per path.
    fn query_closure(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, ClientError> {
        Ok(self.query_closure_infos(paths)?.into_keys().collect())
    }

    fn query_referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, ClientError> {
        self.query(Op::QueryReferrers, path, DaemonClient::read_paths)
    }

    fn query_valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, ClientError> {
        self.query(Op::QueryValidDerivers, path, DaemonClient::read_paths)
    }

    fn query_derivation_outputs(
        &self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>, ClientError> {
        self.query(
            Op::QueryDerivationOutputMap,
            drv,
            |connection, store_dir| {
                let count = connection.from.read_list_len("outputs")?;
                let mut outputs = BTreeMap::new();
                for _ in 0..count {
                    let name = connection.from.read_string("output name")?;
                    if let Some(path) = DaemonClient::read_optional_path(connection, store_dir)? {
                        outputs.insert(name, path);
                    }
                }
                Ok(outputs)
            },
        )
    }

    fn query_path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>, ClientError> {
        self.with(|connection, store_dir| {
            connection.to.write_u64(Op::QueryPathFromHashPart as u64)?;
            connection.to.write_str(hash_part)?;
            connection.to.flush()?;
            connection.process_stderr(None)?;
            DaemonClient::read_optional_path(connection, store_dir)
        })
    }

    /// Sends the path asking the daemon not to check its signatures (which only a
    /// trusted client's request makes it skip).
    fn add_nar(&self, info: &PathInfo, nar: &mut dyn Read) -> Result<(), ClientError> {
        self.send_add_nar(info, nar, true)
    }

    fn add_text(
        &self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, ClientError> {
        self.with(|connection, store_dir| {
            let to = &mut connection.to;
            to.write_u64(Op::AddTextToStore as u64)?;
            to.write_str(name)?;
            to.write_bytes(contents)?;
            to.write_strings(
                references
                    .iter()
                    .map(|r| store_dir.display(r))
                    .collect::<Vec<_>>()
                    .iter(),
            )?;
            to.flush()?;
            connection.process_stderr(None)?;
            let path = connection.from.read_string("store path")?;
            DaemonClient::parse_path(store_dir, &path)
        })
    }

    fn nar_from_path(&self, path: &StorePath, out: &mut dyn Write) -> Result<(), ClientError> {
        self.query(Op::NarFromPath, path, |connection, _| {
            // The NAR follows raw: copy exactly one NAR, parsing it to know its end.
            let mut tee = TeeBufRead::new(connection.from.get_mut(), out);
            {
                let mut reader = arca_nar::NarReader::new(&mut tee, arca_nar::Limits::default());
                while reader
                    .next()
                    .map_err(|e| ClientError::BadReply(format!("NAR: {e}")))?
                    .is_some()
                {}
            }
            match tee.error {
                Some(error) => Err(error.into()),
                None => Ok(()),
            }
        })
    }
}

impl DaemonClient {
    /// `AddToStoreNar`: the path's info, then its NAR (framed from 1.23 on).
    pub(crate) fn send_add_nar(
        &self,
        info: &PathInfo,
        nar: &mut dyn Read,
        dont_check_signatures: bool,
    ) -> Result<(), ClientError> {
        self.with(|connection, store_dir| {
            let to = &mut connection.to;
            to.write_u64(Op::AddToStoreNar as u64)?;
            to.write_str(&store_dir.display(&info.path))?;
            let deriver = info
                .deriver
                .as_ref()
                .map(|d| store_dir.display(d))
                .unwrap_or_default();
            to.write_str(&deriver)?;
            to.write_str(&info.nar_hash.to_base16())?;
            to.write_strings(
                info.references
                    .iter()
                    .map(|r| store_dir.display(r))
                    .collect::<Vec<_>>()
                    .iter(),
            )?;
            to.write_u64(u64::try_from(info.registration_time).unwrap_or(0))?;
            to.write_u64(info.nar_size)?;
            to.write_bool(info.ultimate)?;
            to.write_strings(info.signatures.iter())?;
            to.write_str(
                &info
                    .ca
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            )?;
            to.write_bool(false)?; // repair
            to.write_bool(dont_check_signatures)?; // honoured for trusted clients only
            if minor(connection.version) < 23 {
                // The daemon pulls the NAR while it adds it.
                to.flush()?;
                return connection.process_stderr(Some(nar));
            }
            {
                let mut framed = FramedWriter::new(to.get_mut());
                io::copy(nar, &mut framed)?;
                framed.finish()?;
            }
            to.flush()?;
            connection.process_stderr(None)
        })
    }
}

/// The reply to `QueryPathInfo` (after the log): a validity flag, then the info.
fn read_path_info_reply(
    connection: &mut Connection,
    store_dir: &StoreDir,
    path: &StorePath,
) -> Result<Option<PathInfo>, ClientError> {
    if !connection.from.read_bool("valid")? {
        return Ok(None);
    }
    let deriver = DaemonClient::read_optional_path(connection, store_dir)?;
    let nar_hash = connection.from.read_string("NAR hash")?;
    let nar_hash = Hash::parse(&nar_hash, Some(HashAlgo::Sha256))
        .map_err(|e| ClientError::BadReply(e.to_string()))?;
    let references = DaemonClient::read_paths(connection, store_dir)?;
    let registration_time = connection.from.read_u64()?;
    let nar_size = connection.from.read_u64()?;
    let ultimate = connection.from.read_bool("ultimate")?;
    let signatures = connection.from.read_strings("signatures")?;
    let ca = connection.from.read_string("content address")?;
    let mut info = PathInfo::new(path.clone(), nar_hash, nar_size);
    info.deriver = deriver;
    info.references = references;
    info.registration_time = i64::try_from(registration_time).unwrap_or(i64::MAX);
    info.ultimate = ultimate;
    info.signatures = signatures.into_iter().collect();
    info.ca = if ca.is_empty() {
        None
    } else {
        Some(ContentAddress::parse(&ca).map_err(|e| ClientError::BadReply(e.to_string()))?)
    };
    Ok(Some(info))
}
