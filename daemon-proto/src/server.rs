//! The server side of one connection: the handshake, then operations until the client
//! hangs up. Generic over [`StoreOps`]; one call of [`serve`] per connection, on its
//! own thread, so a slow client holds up nobody else.
//!
//! An operation that fails is answered with `STDERR_ERROR` and the connection goes on;
//! a request that cannot be decoded (garbage, a length over the limits, an unknown
//! operation) is answered with an error and the connection is closed, since the stream
//! can no longer be trusted to be in step.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use arca_store_core::derivation::{Derivation, DerivationOutput, OutputName};
use arca_store_core::{
    AddressingMethod, BuildEvent, BuildMode, Built, ContentAddressMethod, DerivedPath, DrvOutput,
    FindRoots, GcAction, GcOptions, Hash, HashAlgo, PathInfo, Realisation, Settings, Signature,
    SignatureError, StoreDir, StoreOpError, StoreOps, StorePath,
};

use crate::protocol::{self, gc_action, minor, stderr, Op};
use crate::wire::{
    FramedReader, FramedWriter, Limits, TeeBufRead, WireError, WireReader, WireWriter,
};

/// Who is on the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Trusted users may import unsigned content as trusted, repair, add perm roots.
    pub trusted: bool,
}

/// Why a connection ended other than by the client hanging up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("bad request: {0}")]
    Wire(#[from] WireError),
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("the client does not speak Nix's worker protocol (magic {0:#x})")]
    BadMagic(u64),
    #[error("the client's protocol version {0}.{1} is older than 1.21 (Nix 2.3)")]
    TooOld(u64, u64),
    #[error("unknown operation {0}")]
    UnknownOp(u64),
    #[error("the client sent nothing within the idle timeout")]
    Idle,
}

struct Connection<'s, S, R, W: Write> {
    store: &'s S,
    peer: Peer,
    /// The daemon's settings with what this client set (`SetOptions`) applied.
    settings: Settings,
    from: WireReader<R>,
    to: WireWriter<W>,
    version: u64,
}

/// Serves one client on `input`/`output` until it hangs up.
/// `settings` are the daemon's; the client's `SetOptions` change them for this
/// connection only, as far as its trust allows.
pub fn serve<S: StoreOps>(
    store: &S,
    input: impl Read,
    output: impl Write,
    peer: Peer,
    limits: Limits,
    settings: &Settings,
) -> Result<(), ServeError> {
    serve_with(store, input, output, peer, limits, settings, |_| Ok(()))
}

/// Serves one client on a Unix socket until it hangs up, or until it has kept the
/// daemon waiting longer than `idle_timeout` (`None`: no limit) for its handshake or its
/// next operation. An operation under way is never timed out: a build may be silent
/// for hours, and only the wait for the client's next request counts as idle.
pub fn serve_socket<S: StoreOps>(
    store: &S,
    stream: &UnixStream,
    peer: Peer,
    limits: Limits,
    settings: &Settings,
    idle_timeout: Option<Duration>,
) -> Result<(), ServeError> {
    let output = stream.try_clone()?;
    serve_with(
        store,
        stream,
        output,
        peer,
        limits,
        settings,
        |waiting| match idle_timeout {
            // SO_RCVTIMEO: a read that waits longer fails with `WouldBlock`. (Zero would
            // mean "never" to the kernel, but std refuses it: it is taken as no limit.)
            Some(timeout) if !timeout.is_zero() => {
                stream.set_read_timeout(waiting.then_some(timeout))
            }
            _ => Ok(()),
        },
    )
}

/// Answers a client that may not be served with `message` (a Nix client shows it as
/// the reason it cannot open the connection): the handshake, then `STDERR_ERROR` where
/// `STDERR_LAST` would open the connection, as Nix's daemon does when it refuses a
/// client after the handshake.
pub fn refuse(input: impl Read, output: impl Write, message: &str) -> Result<(), ServeError> {
    let mut from = WireReader::new(BufReader::new(input), Limits::default());
    let mut to = WireWriter::new(io::BufWriter::new(output));
    let version = handshake(&mut from, &mut to, Peer { trusted: false })?;
    write_error(&mut to, minor(version), message)?;
    Ok(())
}

/// `serve`, calling `idle(true)` when it starts waiting for the client (the handshake,
/// then the next operation) and `idle(false)` once a request has begun.
fn serve_with<S: StoreOps>(
    store: &S,
    input: impl Read,
    output: impl Write,
    peer: Peer,
    limits: Limits,
    settings: &Settings,
    mut idle: impl FnMut(bool) -> io::Result<()>,
) -> Result<(), ServeError> {
    let mut from = WireReader::new(BufReader::with_capacity(64 << 10, input), limits);
    let mut to = WireWriter::new(io::BufWriter::with_capacity(64 << 10, output));
    idle(true)?;
    let version = handshake(&mut from, &mut to, peer).map_err(timed_out)?;
    to.write_u64(stderr::LAST)?;
    to.flush()?;

    let mut connection = Connection {
        store,
        peer,
        settings: settings.clone(),
        from,
        to,
        version,
    };
    loop {
        let op = match connection.from.read_u64() {
            Ok(op) => op,
            Err(error) if error.is_disconnect() => return Ok(()),
            Err(error) => return Err(timed_out(error.into())),
        };
        idle(false)?;
        let Some(op) = Op::from_number(op) else {
            let message = format!("invalid operation {op}");
            connection.send_error(&message)?;
            return Err(ServeError::UnknownOp(op));
        };
        match connection.perform(op) {
            Ok(()) => {}
            Err(Failure::Op(error)) => connection.send_error(&error.chain())?,
            Err(Failure::Fatal(error)) => {
                // The request could not be read: say why, then hang up.
                let _ = connection.send_error(&error.to_string());
                return Err(error);
            }
        }
        connection.to.flush()?;
        idle(true)?;
    }
}

/// The server's side of the handshake, up to the log message that opens (or refuses)
/// the connection: the protocol version agreed.
fn handshake<R: BufRead, W: Write>(
    from: &mut WireReader<R>,
    to: &mut WireWriter<W>,
    peer: Peer,
) -> Result<u64, ServeError> {
    let magic = from.read_u64()?;
    if magic != protocol::WORKER_MAGIC_1 {
        return Err(ServeError::BadMagic(magic));
    }
    to.write_u64(protocol::WORKER_MAGIC_2)?;
    to.write_u64(protocol::MAX_VERSION)?;
    to.flush()?;
    let client = from.read_u64()?;
    let version = client.min(protocol::MAX_VERSION);
    if version < protocol::MIN_VERSION {
        return Err(ServeError::TooOld(client >> 8, minor(client)));
    }
    if minor(version) >= 38 {
        // Feature names, each side's; what both name is in use. Arca names none.
        from.read_strings("protocol features")?;
        to.write_u64(0)?;
        to.flush()?;
    }
    if minor(version) >= 14 && from.read_u64()? != 0 {
        from.read_u64()?; // obsolete CPU affinity
    }
    if minor(version) >= 11 {
        from.read_u64()?; // obsolete reserveSpace
    }
    if minor(version) >= 33 {
        to.write_str(concat!("arca ", env!("CARGO_PKG_VERSION")))?;
    }
    if minor(version) >= 35 {
        // optional<TrustedFlag>: 1 trusted, 2 not trusted.
        to.write_u64(if peer.trusted { 1 } else { 2 })?;
    }
    Ok(version)
}

/// A read that failed because the idle timeout (`SO_RCVTIMEO`) ran out becomes
/// [`ServeError::Idle`].
fn timed_out(error: ServeError) -> ServeError {
    match error {
        ServeError::Wire(WireError::Io(error))
            if matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            ServeError::Idle
        }
        other => other,
    }
}

/// `STDERR_ERROR` with `message` in the form a client of protocol minor `minor` expects.
fn write_error<W: Write>(to: &mut WireWriter<W>, minor: u64, message: &str) -> io::Result<()> {
    to.write_u64(stderr::ERROR)?;
    if minor >= 26 {
        to.write_str("Error")?;
        to.write_u64(0)?; // level: error
        to.write_str("Error")?;
        to.write_str(message)?;
        to.write_u64(0)?; // no position
        to.write_u64(0)?; // no traces
    } else {
        to.write_str(message)?;
        to.write_u64(1)?; // exit status
    }
    to.flush()
}

/// A signature refused on its way into the store.
#[derive(Debug, thiserror::Error)]
#[error("cannot add a signature to path '{path}': {source}")]
struct BadSignature {
    path: String,
    source: SignatureError,
}

/// How an operation failed.
enum Failure {
    /// The store refused: the connection goes on.
    Op(StoreOpError),
    /// The connection is out of step or gone.
    Fatal(ServeError),
}

impl From<WireError> for Failure {
    fn from(error: WireError) -> Failure {
        Failure::Fatal(error.into())
    }
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Failure {
        Failure::Fatal(error.into())
    }
}

impl From<StoreOpError> for Failure {
    fn from(error: StoreOpError) -> Failure {
        Failure::Op(error)
    }
}

fn op_error(error: impl std::fmt::Display) -> Failure {
    Failure::Op(StoreOpError::new(error.to_string()))
}

impl<S: StoreOps, R: BufRead, W: Write> Connection<'_, S, R, W> {
    fn minor(&self) -> u64 {
        minor(self.version)
    }

    /// `STDERR_ERROR` in the form the client's version expects.
    fn send_error(&mut self, message: &str) -> io::Result<()> {
        let minor = self.minor();
        write_error(&mut self.to, minor, message)
    }

    /// Whether paths the client adds are accepted without a signature: it is trusted and
    /// asks for it, or this daemon does not require signatures (`require-sigs = false`,
    /// as in Nix, for every client).
    fn vouched_for(&self, dont_check_signatures: bool) -> bool {
        (self.peer.trusted && dont_check_signatures) || !self.settings.require_sigs
    }

    /// Whether one of `signatures` of `fingerprint` is by a key in
    /// `trusted-public-keys`.
    fn signed_by_trusted_key<'s>(
        &self,
        fingerprint: &str,
        signatures: impl IntoIterator<Item = &'s String>,
    ) -> bool {
        signed_by_any(&self.settings.trusted_public_keys, fingerprint, signatures)
    }

    /// Whether this daemon has Nix's experimental `ca-derivations` on.
    fn ca_derivations(&self) -> bool {
        self.settings
            .experimental_features
            .contains("ca-derivations")
    }

    fn read_drv_output(&mut self) -> Result<DrvOutput, Failure> {
        let text = self.from.read_string("derivation output")?;
        DrvOutput::parse(&text).map_err(op_error)
    }

    /// A path as old clients send it in a realisation: full, or a base name.
    fn to_path(&self, text: &str) -> Result<StorePath, Failure> {
        self.store
            .store_dir()
            .parse_path(text)
            .or_else(|_| StorePath::from_base_name(text))
            .map_err(op_error)
    }

    /// A line of text for the client's terminal (`STDERR_NEXT`).
    fn log(&mut self, text: &str) -> io::Result<()> {
        self.to.write_u64(stderr::NEXT)?;
        self.to.write_str(text)
    }

    fn last(&mut self) -> io::Result<()> {
        self.to.write_u64(stderr::LAST)
    }

    fn read_path(&mut self) -> Result<StorePath, Failure> {
        let text = self.from.read_string("store path")?;
        self.store.store_dir().parse_path(&text).map_err(|error| {
            Failure::Fatal(ServeError::Wire(invalid(&format!("'{text}': {error}"))))
        })
    }

    fn read_paths(&mut self) -> Result<BTreeSet<StorePath>, Failure> {
        Ok(read_path_set(&mut self.from, self.store.store_dir())?)
    }

    fn write_paths<'p>(
        &mut self,
        paths: impl ExactSizeIterator<Item = &'p StorePath>,
    ) -> io::Result<()> {
        let dir = self.store.store_dir().clone();
        self.to.write_u64(paths.len() as u64)?;
        for path in paths {
            self.to.write_str(&dir.display(path))?;
        }
        Ok(())
    }

    fn write_paths_to<'p, T: Write>(
        &self,
        to: &mut WireWriter<T>,
        paths: impl ExactSizeIterator<Item = &'p StorePath>,
    ) -> io::Result<()> {
        to.write_u64(paths.len() as u64)?;
        for path in paths {
            to.write_str(&self.store.store_dir().display(path))?;
        }
        Ok(())
    }

    fn write_optional_path(&mut self, path: Option<&StorePath>) -> io::Result<()> {
        let text = path
            .map(|p| self.store.store_dir().display(p))
            .unwrap_or_default();
        self.to.write_str(&text)
    }

    /// `UnkeyedValidPathInfo`.
    fn write_info(&mut self, info: &PathInfo) -> io::Result<()> {
        self.write_optional_path(info.deriver.as_ref())?;
        self.to.write_str(&info.nar_hash.to_base16())?;
        self.write_paths(info.references.iter())?;
        self.to
            .write_u64(u64::try_from(info.registration_time).unwrap_or(0))?;
        self.to.write_u64(info.nar_size)?;
        if self.minor() >= 16 {
            self.to.write_bool(info.ultimate)?;
            self.to.write_strings(info.signatures.iter())?;
            let ca = info
                .ca
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            self.to.write_str(&ca)?;
        }
        Ok(())
    }

    /// Every signature of `path` parsed, or an operation error naming the first bad one
    /// and the path: nothing of a request with a bad signature is stored (the registry
    /// keeps signatures space-separated, so "a b c" unchecked would read back as three).
    fn parse_signatures(
        &self,
        path: &StorePath,
        texts: &[String],
    ) -> Result<Vec<Signature>, Failure> {
        texts
            .iter()
            .map(|text| {
                Signature::parse(text).map_err(|source| {
                    op_error(BadSignature {
                        path: self.store.store_dir().display(path),
                        source,
                    })
                })
            })
            .collect()
    }

    fn read_derived_paths(&mut self) -> Result<Vec<DerivedPath>, Failure> {
        let mut targets = Vec::new();
        for text in self.from.read_strings("derived paths")? {
            match DerivedPath::parse(self.store.store_dir(), &text) {
                Ok(target) => targets.push(target),
                Err(error @ arca_store_core::DerivedPathError::Path { .. }) => {
                    return Err(Failure::Fatal(ServeError::Wire(invalid(
                        &error.to_string(),
                    ))))
                }
                Err(error) => return Err(Failure::Op(StoreOpError::from_error(error))),
            }
        }
        Ok(targets)
    }

    /// A `BasicDerivation` named after `drv_path`; see [`read_basic_derivation`].
    fn read_basic_derivation(
        &mut self,
        drv_path: &StorePath,
    ) -> Result<Result<Derivation, StoreOpError>, Failure> {
        let store_dir = self.store.store_dir();
        Ok(read_basic_derivation(&mut self.from, store_dir, drv_path)?)
    }

    fn read_build_mode(&mut self) -> Result<BuildMode, Failure> {
        Ok(match self.from.read_u64()? {
            protocol::build_mode::REPAIR => BuildMode::Repair,
            protocol::build_mode::CHECK => BuildMode::Check,
            _ => BuildMode::Normal,
        })
    }

    fn perform(&mut self, op: Op) -> Result<(), Failure> {
        let store = self.store;
        match op {
            Op::IsValidPath => {
                let path = self.read_path()?;
                let valid = store.is_valid_path(&path).map_err(op_error)?;
                self.last()?;
                self.to.write_bool(valid)?;
            }
            Op::QueryValidPaths => {
                let paths = self.read_paths()?;
                let substitute = self.minor() >= 27 && self.from.read_bool("substitute")?;
                if substitute {
                    // Nix's `substitutePaths`: what cannot be had stays invalid.
                    store.substitute_paths(&paths)?;
                }
                let mut valid = BTreeSet::new();
                for path in paths {
                    if store.is_valid_path(&path).map_err(op_error)? {
                        valid.insert(path);
                    }
                }
                self.last()?;
                self.write_paths(valid.iter())?;
            }
            Op::QuerySubstitutablePaths => {
                self.read_paths()?;
                self.last()?;
                self.to.write_u64(0)?;
            }
            Op::QueryReferrers | Op::QueryValidDerivers | Op::QueryDerivationOutputs => {
                let path = self.read_path()?;
                let paths = match op {
                    Op::QueryReferrers => store.query_referrers(&path).map_err(op_error)?,
                    Op::QueryValidDerivers => {
                        store.query_valid_derivers(&path).map_err(op_error)?
                    }
                    _ => store
                        .query_derivation_outputs(&path)
                        .map_err(op_error)?
                        .into_values()
                        .collect(),
                };
                self.last()?;
                self.write_paths(paths.iter())?;
            }
            Op::QueryDerivationOutputNames => {
                let path = self.read_path()?;
                let outputs = store.query_derivation_outputs(&path).map_err(op_error)?;
                self.last()?;
                self.to.write_strings(outputs.keys())?;
            }
            Op::QueryDerivationOutputMap => {
                let path = self.read_path()?;
                let outputs: BTreeMap<String, Option<StorePath>> =
                    store.query_derivation_output_map(&path, self.ca_derivations())?;
                self.last()?;
                self.to.write_u64(outputs.len() as u64)?;
                for (name, output) in &outputs {
                    self.to.write_str(name)?;
                    self.write_optional_path(output.as_ref())?;
                }
            }
            Op::QueryDeriver => {
                let path = self.read_path()?;
                let info = store.query_path_info(&path).map_err(op_error)?;
                let Some(info) = info else {
                    return Err(op_error(format!(
                        "path '{}' is not valid",
                        store.store_dir().display(&path)
                    )));
                };
                self.last()?;
                self.write_optional_path(info.deriver.as_ref())?;
            }
            Op::QueryPathFromHashPart => {
                let hash_part = self.from.read_string("hash part")?;
                let path = store
                    .query_path_from_hash_part(&hash_part)
                    .map_err(op_error)?;
                self.last()?;
                self.write_optional_path(path.as_ref())?;
            }
            Op::QueryAllValidPaths => {
                let paths = store.query_all_valid_paths()?;
                self.last()?;
                self.write_paths(paths.iter())?;
            }
            Op::QueryPathInfo => {
                let path = self.read_path()?;
                let info = store.query_path_info(&path).map_err(op_error)?;
                self.last()?;
                match info {
                    Some(info) => {
                        if self.minor() >= 17 {
                            self.to.write_bool(true)?;
                        }
                        self.write_info(&info)?;
                    }
                    None if self.minor() >= 17 => self.to.write_bool(false)?,
                    None => {
                        return Err(op_error(format!(
                            "path '{}' is not valid",
                            store.store_dir().display(&path)
                        )))
                    }
                }
            }
            Op::AddToStore => self.add_to_store()?,
            Op::AddTextToStore => {
                let name = self.from.read_string("name")?;
                let text = self.from.read_bytes("text")?;
                let references = self.read_paths()?;
                let path = store
                    .add_text(&name, &text, &references)
                    .map_err(op_error)?;
                self.last()?;
                self.to.write_str(&store.store_dir().display(&path))?;
            }
            Op::AddToStoreNar => self.add_to_store_nar()?,
            Op::AddMultipleToStore => self.add_multiple_to_store()?,
            Op::NarFromPath => {
                let path = self.read_path()?;
                if !store.is_valid_path(&path).map_err(op_error)? {
                    return Err(op_error(format!(
                        "path '{}' is not valid",
                        store.store_dir().display(&path)
                    )));
                }
                self.last()?;
                // The NAR follows the last message, raw (not framed).
                store
                    .nar_from_path(&path, self.to.get_mut())
                    .map_err(|error| {
                        Failure::Fatal(ServeError::Io(io::Error::other(error.to_string())))
                    })?;
            }
            Op::BuildPaths | Op::BuildPathsWithResults => {
                let targets = self.read_derived_paths()?;
                let mode = self.read_build_mode()?;
                if mode == BuildMode::Repair && !self.peer.trusted {
                    return Err(op_error(
                        "repairing is not allowed because you are not in 'trusted-users'",
                    ));
                }
                let mut activities = BuildActivities::new();
                let to = &mut self.to;
                let results = store.build_paths(&targets, mode, &self.settings, &mut |event| {
                    activities.report(to, store.store_dir(), event)
                })?;
                if op == Op::BuildPaths {
                    // Nix reports a failed build as the operation's error.
                    if let Some(message) = results.iter().find_map(|(_, r)| r.as_ref().err()) {
                        return Err(op_error(message));
                    }
                    self.last()?;
                    self.to.write_u64(1)?;
                } else {
                    self.last()?;
                    self.to.write_u64(results.len() as u64)?;
                    for (target, result) in &results {
                        self.to.write_str(&target.to_wire(store.store_dir()))?;
                        self.write_build_result(result)?;
                    }
                }
            }
            Op::EnsurePath => {
                let path = self.read_path()?;
                store.ensure_path(&path)?;
                self.last()?;
                self.to.write_u64(1)?;
            }
            Op::AddTempRoot => {
                let path = self.read_path()?;
                store.add_temp_root(&path)?;
                self.last()?;
                self.to.write_u64(1)?;
            }
            Op::AddIndirectRoot => {
                let link = self.from.read_string("link")?;
                store.add_indirect_root(std::path::Path::new(&link))?;
                self.last()?;
                self.to.write_u64(1)?;
            }
            Op::AddPermRoot => {
                let path = self.read_path()?;
                let link = self.from.read_string("link")?;
                if !self.peer.trusted {
                    return Err(op_error("you are not privileged to create perm roots"));
                }
                let link = store.add_perm_root(&path, std::path::Path::new(&link))?;
                self.last()?;
                self.to.write_str(&link.to_string_lossy())?;
            }
            Op::SyncWithGc => {
                self.last()?;
                self.to.write_u64(1)?;
            }
            Op::FindRoots => {
                let options = FindRoots {
                    censor: !self.peer.trusted,
                    ..FindRoots::default()
                };
                let roots = store.find_roots(options)?;
                self.last()?;
                self.to.write_u64(roots.len() as u64)?;
                for (link, path) in &roots {
                    self.to.write_str(link)?;
                    self.to.write_str(&store.store_dir().display(path))?;
                }
            }
            Op::CollectGarbage => {
                let action = self.from.read_u64()?;
                let paths = self.read_paths()?;
                let ignore_liveness = self.from.read_bool("ignore liveness")?;
                let max_freed = self.from.read_u64()?;
                for _ in 0..3 {
                    self.from.read_u64()?; // obsolete
                }
                if ignore_liveness {
                    return Err(op_error("you are not allowed to ignore liveness"));
                }
                let action = match action {
                    gc_action::RETURN_LIVE => GcAction::ReturnLive,
                    gc_action::RETURN_DEAD => GcAction::ReturnDead,
                    gc_action::DELETE_DEAD => GcAction::DeleteDead,
                    gc_action::DELETE_SPECIFIC => GcAction::DeleteSpecific(paths),
                    other => {
                        return Err(op_error(format!(
                            "unknown garbage collector action {other}"
                        )))
                    }
                };
                let max_freed = (max_freed != u64::MAX && max_freed != 0).then_some(max_freed);
                // What to keep is the daemon's configuration (and a trusted client's).
                let options = GcOptions {
                    action,
                    max_freed,
                    keep_outputs: self.settings.keep_outputs,
                    keep_derivations: self.settings.keep_derivations,
                    ..GcOptions::default()
                };
                let report = store.collect_garbage(&options, &|_| {})?;
                self.last()?;
                self.to.write_strings(report.paths.iter())?;
                self.to.write_u64(report.bytes_freed)?;
                self.to.write_u64(0)?; // obsolete
            }
            Op::SetOptions => {
                let mut fixed = [0u64; 12];
                for value in &mut fixed {
                    *value = self.from.read_u64()?;
                }
                let count = self.from.read_list_len("options")?;
                let mut overrides = Vec::new();
                for _ in 0..count {
                    let name = self.from.read_string("option name")?;
                    let value = self.from.read_string("option value")?;
                    overrides.push((name, value));
                }
                for warning in
                    apply_client_options(&mut self.settings, &fixed, &overrides, self.peer.trusted)
                {
                    self.log(&format!("warning: {warning}\n"))?;
                }
                store.apply_settings(&self.settings)?;
                self.last()?;
            }
            Op::QuerySubstitutablePathInfo => {
                self.read_path()?;
                self.last()?;
                self.to.write_u64(0)?;
            }
            Op::QuerySubstitutablePathInfos => {
                if self.minor() < 22 {
                    self.read_paths()?;
                } else {
                    let count = self.from.read_list_len("paths")?;
                    for _ in 0..count {
                        self.read_path()?;
                        self.from.read_string("content address")?;
                    }
                }
                self.last()?;
                self.to.write_u64(0)?;
            }
            Op::OptimiseStore => {
                store.optimise(&|_| {})?;
                self.last()?;
                self.to.write_u64(1)?;
            }
            Op::VerifyStore => {
                let check_contents = self.from.read_bool("check contents")?;
                let repair = self.from.read_bool("repair")?;
                if repair && !self.peer.trusted {
                    return Err(op_error("you are not privileged to repair paths"));
                }
                let options = arca_store_core::VerifyOptions {
                    check_contents,
                    repair,
                };
                let outcome = store.verify_store(None, options)?;
                if let arca_store_core::VerifyOutcome::Report(report) = &outcome {
                    // Nix's daemon sends each problem to the client's log.
                    for problem in &report.problems {
                        self.log(&format!("{}\n", problem.describe(store.store_dir())))?;
                    }
                }
                self.last()?;
                self.to.write_bool(outcome.errors_found())?;
            }
            Op::AddSignatures => {
                let path = self.read_path()?;
                let signatures = self.from.read_strings("signatures")?;
                // Nix's daemon refuses untrusted clients after reading the request,
                // with these words: signatures vouch for a path to other stores.
                if !self.peer.trusted {
                    return Err(op_error("you are not privileged to add signatures"));
                }
                let signatures = self.parse_signatures(&path, &signatures)?;
                store.add_signatures(&path, &signatures)?;
                self.last()?;
                self.to.write_u64(1)?;
            }
            Op::QueryMissing => {
                let targets = self.read_derived_paths()?;
                let (will_build, unknown) = store.query_missing(&targets)?;
                self.last()?;
                self.write_paths(will_build.iter())?;
                self.to.write_u64(0)?; // will substitute: nothing
                self.write_paths(unknown.iter())?;
                self.to.write_u64(0)?; // download size
                self.to.write_u64(0)?; // NAR size
            }
            Op::ArcaClosureGraph => {
                let paths = self.read_paths()?;
                let include_outputs = self.from.read_bool("include outputs")?;
                let graph = store.closure_graph(&paths, include_outputs)?;
                self.last()?;
                self.to.write_u64(graph.len() as u64)?;
                for (path, references) in &graph {
                    self.to.write_str(&store.store_dir().display(path))?;
                    self.write_paths(references.iter())?;
                }
            }
            Op::ImportPaths => {
                // Nix 2.3's `--import`: the server pulls the export archive.
                if !self.peer.trusted {
                    // Nothing was pulled yet, so refusing keeps the stream in step.
                    return Err(op_error(
                        "cannot import paths without signatures: you are not in 'trusted-users'",
                    ));
                }
                let max = self.from.limits().max_frame;
                let mut pulled = io::BufReader::new(Pull {
                    from: self.from.get_mut(),
                    to: self.to.get_mut(),
                    max,
                });
                let paths = store.import_paths(&mut pulled)?;
                self.last()?;
                self.write_paths(paths.iter())?;
            }
            Op::ExportPath => {
                // Old clients: one path in the export format, sent as STDERR_WRITE chunks.
                let path = self.read_path()?;
                self.from.read_u64()?; // sign: there are no keys to sign with
                let info = store
                    .query_path_info(&path)
                    .map_err(op_error)?
                    .ok_or_else(|| {
                        op_error(format!(
                            "path '{}' is not valid",
                            store.store_dir().display(&path)
                        ))
                    })?;
                let mut export = Vec::new();
                store.nar_from_path(&path, &mut export).map_err(op_error)?;
                let mut tail = WireWriter::new(Vec::new());
                tail.write_u64(0x4558_494e)?; // "NIXE"
                tail.write_str(&store.store_dir().display(&path))?;
                self.write_paths_to(&mut tail, info.references.iter())?;
                let deriver = info
                    .deriver
                    .as_ref()
                    .map(|d| store.store_dir().display(d))
                    .unwrap_or_default();
                tail.write_str(&deriver)?;
                tail.write_u64(0)?; // no signature
                export.extend_from_slice(&tail.into_inner());
                for chunk in export.chunks(64 << 10) {
                    self.to.write_u64(stderr::WRITE)?;
                    self.to.write_bytes(chunk)?;
                }
                self.last()?;
                self.to.write_u64(1)?;
            }
            Op::BuildDerivation => {
                let drv_path = self.read_path()?;
                let drv = self.read_basic_derivation(&drv_path)?;
                let mode = self.read_build_mode()?;
                let drv = drv.map_err(Failure::Op)?;
                // As Nix 2.8: a fixed output is checked against its hash whoever asks;
                // input-addressed paths cannot be checked here (the inputs were resolved
                // to sources), so only a trusted client may claim them.
                if !self.peer.trusted && !drv.is_fixed_output() {
                    return Err(op_error(
                        "you are not privileged to build input-addressed derivations",
                    ));
                }
                // As `BuildPaths`: a repair replaces valid paths, which an untrusted client
                // may not ask for (Nix 2.8 does not check it here, leaving a fixed output's
                // hash the only guard, and md5 or sha1 ones can be collided).
                if mode == BuildMode::Repair && !self.peer.trusted {
                    return Err(op_error(
                        "repairing is not allowed because you are not in 'trusted-users'",
                    ));
                }
                // As Nix 2.8: an untrusted client's derivation is written to the store and
                // built under the path its contents give, not the one it names, which
                // nothing proves: the log and the outputs' deriver are then its own, not
                // those of a derivation it names.
                let drv_path = if self.peer.trusted {
                    drv_path
                } else {
                    let text = drv.to_aterm(store.store_dir());
                    store
                        .add_text(
                            &format!("{}.drv", drv.name),
                            text.as_bytes(),
                            &drv.drv_references(),
                        )
                        .map_err(op_error)?
                };
                let mut activities = BuildActivities::new();
                let to = &mut self.to;
                let result = store.build_derivation(
                    &drv_path,
                    &drv,
                    mode,
                    &self.settings,
                    &mut |event| activities.report(to, store.store_dir(), event),
                )?;
                self.last()?;
                self.write_build_result(&result)?;
            }
            Op::AddBuildLog => {
                // A base name, as Nix sends it (a full path is accepted too).
                let text = self.from.read_string("derivation")?;
                let store_dir = store.store_dir();
                let drv = if text.starts_with('/') {
                    store_dir.parse_path(&text)
                } else {
                    StorePath::from_base_name(&text)
                }
                .map_err(|error| {
                    Failure::Fatal(ServeError::Wire(invalid(&format!("'{text}': {error}"))))
                })?;
                let max_frame = self.from.limits().max_frame;
                let mut log = FramedReader::new(self.from.get_mut(), max_frame);
                let result = if self.peer.trusted {
                    store.add_build_log(&drv, &mut log)
                } else {
                    Err(StoreOpError::new("you are not privileged to add logs"))
                };
                // Read to the end whatever happened, to stay in step.
                log.drain()?;
                result?;
                self.last()?;
                self.to.write_u64(1)?;
            }
            Op::ArcaReadLog => {
                let drv = self.read_path()?;
                let log = store.read_build_log(&drv)?;
                self.last()?;
                self.to.write_bool(log.is_some())?;
                if let Some(mut log) = log {
                    // Streamed: a log is never held in memory. A failure half-way
                    // cannot be reported in band any more; it ends the connection.
                    let mut framed = FramedWriter::new(self.to.get_mut());
                    io::copy(&mut log, &mut framed)?;
                    framed.finish()?;
                }
            }
            Op::RegisterDrvOutput => {
                let realisation = if self.minor() < 31 {
                    let id = self.read_drv_output()?;
                    let text = self.from.read_string("output path")?;
                    let path = self.to_path(&text)?;
                    Realisation::new(id, path)
                } else {
                    let json = self.from.read_string("realisation")?;
                    Realisation::from_json(&json).map_err(op_error)?
                };
                if !self.ca_derivations() {
                    return Err(op_error(CA_DISABLED));
                }
                // Nix 2.8 takes any client's word for where an output came to be; a
                // realisation pointing at another path would poison every later build
                // that uses it, so it must be signed by a trusted key or come from a
                // trusted client (or signatures are not required).
                if !self.peer.trusted
                    && self.settings.require_sigs
                    && !self
                        .signed_by_trusted_key(&realisation.fingerprint(), &realisation.signatures)
                {
                    return Err(op_error(format!(
                        "cannot register realisation '{}' because it lacks a valid signature",
                        realisation.out_path.as_str()
                    )));
                }
                store.register_realisation(&realisation)?;
                self.last()?;
            }
            Op::QueryRealisation => {
                let id = self.read_drv_output()?;
                let realisation = if self.ca_derivations() {
                    store.query_realisation(&id)?
                } else {
                    None
                };
                self.last()?;
                self.to.write_u64(u64::from(realisation.is_some()))?;
                if let Some(realisation) = realisation {
                    if self.minor() < 31 {
                        self.to
                            .write_str(&store.store_dir().display(&realisation.out_path))?;
                    } else {
                        self.to.write_str(&realisation.to_json())?;
                    }
                }
            }
        }
        Ok(())
    }

    fn write_build_result(&mut self, result: &Result<Built, String>) -> io::Result<()> {
        let minor = self.minor();
        write_build_result(
            &mut self.to,
            result,
            BuildResultShape {
                times: minor >= 29,
                cpu: minor >= 37,
                outputs: minor >= 28,
            },
        )
    }

    /// `AddToStore`: a content-addressed path from a dump (1.25 and later: name, content
    /// address method, references, repair, framed dump; before: the NAR inline).
    fn add_to_store(&mut self) -> Result<(), Failure> {
        let store = self.store;
        if self.minor() < 25 {
            // Before 1.25: name, a "fixed" flag, a recursive flag, the algorithm, then
            // always a NAR, inline (its end is found by parsing it).
            let name = self.from.read_string("name")?;
            let fixed = self.from.read_bool("fixed")?;
            let recursive = self.from.read_u64()? == 1;
            let algo = self.from.read_string("hash algorithm")?;
            let (recursive, algo) = if fixed {
                (recursive, algo)
            } else {
                (true, "sha256".into())
            };
            let mut nar = spool_nar(self.from.get_mut())?;
            // The NAR is spooled: an error from here on leaves the connection in step.
            let algo = HashAlgo::from_name(&algo).map_err(op_error)?;
            let result = if recursive {
                let method = AddressingMethod::Fixed(ContentAddressMethod::Recursive, algo);
                store.add_dump(&name, method, &BTreeSet::new(), &mut nar)
            } else {
                let mut reader =
                    arca_nar::NarReader::new(io::BufReader::new(nar), arca_nar::Limits::default());
                match reader.next() {
                    Ok(Some(arca_nar::Event::Regular { .. })) => store.add_dump(
                        &name,
                        AddressingMethod::Fixed(ContentAddressMethod::Flat, algo),
                        &BTreeSet::new(),
                        &mut reader.contents(),
                    ),
                    _ => Err(StoreOpError::new("a flat path must be a regular file")),
                }
            };
            let path = result?;
            self.last()?;
            self.to.write_str(&store.store_dir().display(&path))?;
            return Ok(());
        }
        let name = self.from.read_string("name")?;
        let method = self.from.read_string("content address method")?;
        let references = self.read_paths()?;
        let _repair = self.from.read_bool("repair")?;
        let max_frame = self.from.limits().max_frame;
        let mut dump = FramedReader::new(self.from.get_mut(), max_frame);
        let result = AddressingMethod::parse(&method)
            .map_err(op_error)
            .and_then(|method| Ok(store.add_dump(&name, method, &references, &mut dump)?));
        // Whatever happened, the rest of the dump must be read to stay in step.
        dump.drain()?;
        let path = result?;
        let info = store
            .query_path_info(&path)
            .map_err(op_error)?
            .ok_or_else(|| op_error("the path just added is not valid"))?;
        self.last()?;
        self.to.write_str(&store.store_dir().display(&path))?;
        self.write_info(&info)?;
        Ok(())
    }

    fn read_path_info(&mut self, path: StorePath) -> Result<PathInfo, Failure> {
        let deriver = self.from.read_string("deriver")?;
        let nar_hash = self.from.read_string("NAR hash")?;
        let references = self.read_paths()?;
        let registration_time = self.from.read_u64()?;
        let nar_size = self.from.read_u64()?;
        let ultimate = self.from.read_bool("ultimate")?;
        let signatures = self.from.read_strings("signatures")?;
        let ca = self.from.read_string("content address")?;
        let store_dir = self.store.store_dir();
        let nar_hash =
            arca_store_core::Hash::parse(&nar_hash, Some(arca_store_core::HashAlgo::Sha256))
                .map_err(op_error)?;
        let signatures = self.parse_signatures(&path, &signatures)?;
        let mut info = PathInfo::new(path, nar_hash, nar_size);
        info.deriver = if deriver.is_empty() {
            None
        } else {
            Some(store_dir.parse_path(&deriver).map_err(op_error)?)
        };
        info.references = references;
        info.registration_time = i64::try_from(registration_time).unwrap_or(0);
        // Only a trusted client may claim the path was built here.
        info.ultimate = ultimate && self.peer.trusted;
        info.signatures = signatures.iter().map(ToString::to_string).collect();
        info.ca = if ca.is_empty() {
            None
        } else {
            Some(arca_store_core::ContentAddress::parse(&ca).map_err(op_error)?)
        };
        Ok(info)
    }

    /// `AddToStoreNar`: a path with its metadata, then its NAR (framed from 1.23 on).
    fn add_to_store_nar(&mut self) -> Result<(), Failure> {
        let path = self.read_path()?;
        let info = self.read_path_info(path);
        let _repair = self.from.read_bool("repair")?;
        let dont_check_signatures = self.from.read_bool("don't check signatures")?;
        let trusted_import = self.vouched_for(dont_check_signatures)
            || info.as_ref().is_ok_and(|info| {
                let fingerprint = info.fingerprint(self.store.store_dir());
                self.signed_by_trusted_key(&fingerprint, &info.signatures)
            });
        if self.minor() < 23 {
            // Before 1.23 the server pulls the NAR: `STDERR_READ` with a size, answered
            // by a byte string, as often as it needs.
            let info = info?;
            let max = self.from.limits().max_frame;
            let mut pulled = io::BufReader::new(Pull {
                from: self.from.get_mut(),
                to: self.to.get_mut(),
                max,
            });
            self.store
                .add_nar_checked(&info, &mut pulled, trusted_import)?;
            self.last()?;
            return Ok(());
        }
        let max_frame = self.from.limits().max_frame;
        let mut framed = FramedReader::new(self.from.get_mut(), max_frame);
        let result = match info {
            Ok(info) => {
                let mut nar = BufReader::new(&mut framed);
                self.store.add_nar_checked(&info, &mut nar, trusted_import)
            }
            Err(Failure::Op(error)) => Err(error),
            Err(fatal) => return Err(fatal),
        };
        framed.drain()?;
        result?;
        self.last()?;
        Ok(())
    }

    /// `AddMultipleToStore`: a framed stream of a count, then for each path its info and
    /// NAR.
    fn add_multiple_to_store(&mut self) -> Result<(), Failure> {
        let _repair = self.from.read_bool("repair")?;
        let dont_check_signatures = self.from.read_bool("don't check signatures")?;
        let trusted_import = self.vouched_for(dont_check_signatures);
        let keys = self.settings.trusted_public_keys.clone();
        let limits = self.from.limits();
        let store = self.store;
        let peer = self.peer;
        let version = self.version;
        let result = {
            let mut framed =
                BufReader::new(FramedReader::new(self.from.get_mut(), limits.max_frame));
            let outcome = (|| -> Result<(), Failure> {
                let count = WireReader::new(&mut framed, limits).read_u64()?;
                let mut read_info =
                    |stream: &mut dyn BufRead| -> Result<(PathInfo, bool), Failure> {
                        let mut inner = Connection {
                            store,
                            peer,
                            settings: Settings::default(),
                            from: WireReader::new(stream, limits),
                            to: WireWriter::new(io::sink()),
                            version,
                        };
                        let path = inner.read_path()?;
                        let info = inner.read_path_info(path)?;
                        let signed = signed_by_any(
                            &keys,
                            &info.fingerprint(store.store_dir()),
                            &info.signatures,
                        );
                        Ok((info, trusted_import || signed))
                    };
                store.add_many_checked(&mut framed, count, &mut read_info)
            })();
            io::copy(&mut framed, &mut io::sink())?;
            outcome
        };
        result?;
        self.last()?;
        Ok(())
    }
}

/// Reads exactly one NAR off the connection into an anonymous temporary file (the old
/// `AddToStore` sends it inline, so only parsing finds its end), rewound.
fn spool_nar(from: &mut impl BufRead) -> Result<std::fs::File, Failure> {
    let mut file = tempfile::tempfile()?;
    {
        let mut tee = TeeBufRead::new(from, &mut file);
        let mut reader = arca_nar::NarReader::new(&mut tee, arca_nar::Limits::default());
        reader
            .read_to_end()
            .map_err(|e| Failure::Fatal(ServeError::Wire(invalid(&format!("NAR: {e}")))))?;
        if let Some(error) = tee.error {
            return Err(error.into());
        }
    }
    io::Seek::rewind(&mut file)?;
    Ok(file)
}

/// The data of a pre-1.23 `AddToStoreNar`, pulled from the client chunk by chunk.
struct Pull<'a, R, W> {
    from: &'a mut R,
    to: &'a mut W,
    max: u64,
}

impl<R: BufRead, W: Write> Read for Pull<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.max as usize) as u64;
        self.to.write_all(&stderr::READ.to_le_bytes())?;
        self.to.write_all(&want.to_le_bytes())?;
        self.to.flush()?;
        let mut len = [0u8; 8];
        self.from.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        if len > want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the client sent more than asked",
            ));
        }
        let len = len as usize;
        self.from.read_exact(&mut buf[..len])?;
        let mut padding = [0u8; 8];
        self.from.read_exact(&mut padding[..(8 - len % 8) % 8])?;
        if len == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(len)
    }
}

/// A `BasicDerivation` as both of Nix's protocols carry it (`BuildDerivation`): outputs
/// (name, path, hash algorithm, hash), input sources, platform, builder, arguments,
/// environment; its name comes from `drv_path`. The inner error refuses it once all of
/// it was read (the connection stays in step); the outer one means it could not be read.
pub(crate) fn read_basic_derivation<R: BufRead>(
    from: &mut WireReader<R>,
    store_dir: &StoreDir,
    drv_path: &StorePath,
) -> Result<Result<Derivation, StoreOpError>, WireError> {
    let mut refusal = None;
    let bad = |what: String| invalid(&what);
    let name = drv_path
        .name()
        .strip_suffix(".drv")
        .ok_or_else(|| bad(format!("'{}' is not a derivation", drv_path.as_str())))?
        .to_owned();
    let mut outputs = BTreeMap::new();
    for _ in 0..from.read_list_len("outputs")? {
        let output = from.read_string("output name")?;
        let path = from.read_string("output path")?;
        let algo = from.read_string("output hash algorithm")?;
        let hash = from.read_string("output hash")?;
        let path = store_dir
            .parse_path(&path)
            .map_err(|e| bad(e.to_string()))?;
        let output_value = if algo.is_empty() {
            DerivationOutput::InputAddressed { path }
        } else {
            let (method, algo) = match algo.strip_prefix("r:") {
                Some(algo) => (ContentAddressMethod::Recursive, algo),
                None => (ContentAddressMethod::Flat, algo.as_str()),
            };
            let algo = HashAlgo::from_name(algo).map_err(|e| bad(e.to_string()))?;
            let hash = Hash::from_base16(algo, &hash).map_err(|e| bad(e.to_string()))?;
            let output = OutputName::new(&output).map_err(|e| bad(e.to_string()))?;
            // A fixed output's path follows from its hash (Nix recomputes it and
            // ignores the one sent): one that does not would let any client build
            // content of its choosing into another derivation's output path.
            let fixed = DerivationOutput::fixed(store_dir, &name, &output, method, hash)
                .map_err(|e| bad(e.to_string()))?;
            if fixed.path() != Some(&path) && refusal.is_none() {
                refusal = Some(StoreOpError::new(format!(
                    "fixed output '{output}' of '{}' has path '{}', but its hash gives '{}'",
                    store_dir.display(drv_path),
                    store_dir.display(&path),
                    fixed
                        .path()
                        .map(|p| store_dir.display(p))
                        .unwrap_or_default()
                )));
            }
            fixed
        };
        let output = OutputName::new(&output).map_err(|e| bad(e.to_string()))?;
        outputs.insert(output, output_value);
    }
    let input_srcs = read_path_set(from, store_dir)?;
    let system = from.read_string("platform")?;
    let builder = from.read_string("builder")?;
    let args = from.read_strings("arguments")?;
    let mut env = BTreeMap::new();
    for _ in 0..from.read_list_len("environment")? {
        let key = from.read_string("variable")?;
        let value = from.read_string("value")?;
        env.insert(key, value);
    }
    if let Some(refusal) = refusal {
        return Ok(Err(refusal));
    }
    Ok(Ok(Derivation {
        name,
        outputs,
        input_drvs: BTreeMap::new(),
        input_srcs,
        system,
        builder,
        args,
        env,
    }))
}

/// Which parts of a build result a protocol version carries after the status and the
/// message.
pub(crate) struct BuildResultShape {
    /// Times built, non-determinism, start and stop time.
    pub times: bool,
    /// CPU times (user, system), each optional.
    pub cpu: bool,
    /// The outputs' realisations, by id.
    pub outputs: bool,
}

/// A build result, as both protocols carry it (in the parts `shape` says).
pub(crate) fn write_build_result<W: Write>(
    to: &mut WireWriter<W>,
    result: &Result<Built, String>,
    shape: BuildResultShape,
) -> io::Result<()> {
    let (status, message) = match result {
        Ok(built) if built.now => (protocol::build_status::BUILT, ""),
        Ok(_) => (protocol::build_status::ALREADY_VALID, ""),
        Err(message) => (protocol::build_status::PERMANENT_FAILURE, message.as_str()),
    };
    to.write_u64(status)?;
    to.write_str(message)?;
    let timing = result.as_ref().ok().and_then(|built| built.timing);
    if shape.times {
        let built_now = matches!(result, Ok(built) if built.now);
        let seconds = |time: std::time::SystemTime| {
            time.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        to.write_u64(u64::from(built_now))?; // times built
        to.write_bool(false)?; // non-deterministic
        to.write_u64(timing.map_or(0, |t| seconds(t.start)))?;
        to.write_u64(timing.map_or(0, |t| seconds(t.stop)))?;
    }
    if shape.cpu {
        // Two optional durations in microseconds: a tag, then the value if present.
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        for cpu in [timing.map(|t| t.cpu_user), timing.map(|t| t.cpu_system)] {
            match cpu {
                Some(duration) => {
                    to.write_u64(1)?;
                    to.write_u64(micros(duration))?;
                }
                None => to.write_u64(0)?,
            }
        }
    }
    if shape.outputs {
        // The realisations of the outputs, keyed by their id, as JSON with Nix's
        // (sorted) keys and the output's base name.
        let outputs = result
            .as_ref()
            .map(|b| b.outputs.as_slice())
            .unwrap_or_default();
        to.write_u64(outputs.len() as u64)?;
        for realisation in outputs {
            to.write_str(&realisation.id.to_string())?;
            to.write_str(&realisation.to_json())?;
        }
    }
    Ok(())
}

/// A set of full store paths; one that is not a path of `store_dir` breaks the stream.
pub(crate) fn read_path_set<R: BufRead>(
    from: &mut WireReader<R>,
    store_dir: &StoreDir,
) -> Result<BTreeSet<StorePath>, WireError> {
    from.read_strings("store paths")?
        .iter()
        .map(|text| {
            store_dir
                .parse_path(text)
                .map_err(|error| invalid(&format!("'{text}': {error}")))
        })
        .collect()
}

fn invalid(message: &str) -> WireError {
    WireError::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        message.to_owned(),
    ))
}

/// A build's progress as Nix's daemon streams it, while the operation runs: a build
/// activity per derivation (`building '…'`, with the `.drv` path, as Nix's `actBuild`),
/// each builder output line as a `resBuildLogLine` result of it, and its end. A client
/// that went away is not an error here: the operation's reply finds out.
struct BuildActivities {
    next: u64,
    running: std::collections::HashMap<StorePath, u64>,
}

/// Nix's verbosity `lvlInfo`, activity type `actBuild` and result type `resBuildLogLine`.
const LVL_INFO: u64 = 3;
/// Whether one of `signatures` of `fingerprint` is by one of `keys`.
fn signed_by_any<'s>(
    keys: &[arca_store_core::PublicKey],
    fingerprint: &str,
    signatures: impl IntoIterator<Item = &'s String>,
) -> bool {
    signatures.into_iter().any(|text| {
        Signature::parse(text)
            .is_ok_and(|signature| keys.iter().any(|key| key.verify(fingerprint, &signature)))
    })
}

/// Nix's refusal when a realisation is sent to a daemon without `ca-derivations`.
const CA_DISABLED: &str = "experimental Nix feature 'ca-derivations' is disabled; use '--extra-experimental-features ca-derivations' to override";
const ACT_BUILD: u64 = 105;
const RES_BUILD_LOG_LINE: u64 = 101;

impl BuildActivities {
    fn new() -> BuildActivities {
        // Unique in the daemon process, as Nix's (pid << 32) + counter: each operation
        // takes a range of 2^20 ids.
        BuildActivities {
            next: (u64::from(std::process::id()) << 32)
                + NEXT_ACTIVITY.fetch_add(1 << 20, std::sync::atomic::Ordering::Relaxed),
            running: Default::default(),
        }
    }

    fn report<W: Write>(
        &mut self,
        to: &mut WireWriter<W>,
        store_dir: &arca_store_core::StoreDir,
        event: &BuildEvent,
    ) {
        let _ = self.write(to, store_dir, event);
    }

    fn write<W: Write>(
        &mut self,
        to: &mut WireWriter<W>,
        store_dir: &arca_store_core::StoreDir,
        event: &BuildEvent,
    ) -> io::Result<()> {
        match event {
            BuildEvent::Started { drv, machine } => {
                self.next += 1;
                let id = self.next;
                self.running.insert(drv.clone(), id);
                let path = store_dir.display(drv);
                to.write_u64(stderr::START_ACTIVITY)?;
                to.write_u64(id)?;
                to.write_u64(LVL_INFO)?;
                to.write_u64(ACT_BUILD)?;
                match machine {
                    Some(machine) => to.write_str(&format!("building '{path}' on '{machine}'"))?,
                    None => to.write_str(&format!("building '{path}'"))?,
                }
                // Fields: the derivation, the machine (local: empty), round 1 of 1.
                to.write_u64(4)?;
                to.write_u64(1)?;
                to.write_str(&path)?;
                to.write_u64(1)?;
                to.write_str(machine.as_deref().unwrap_or_default())?;
                to.write_u64(0)?;
                to.write_u64(1)?;
                to.write_u64(0)?;
                to.write_u64(1)?;
                to.write_u64(0)?; // parent: none
            }
            BuildEvent::Log { drv, line } => {
                let Some(&id) = self.running.get(drv) else {
                    return Ok(());
                };
                to.write_u64(stderr::RESULT)?;
                to.write_u64(id)?;
                to.write_u64(RES_BUILD_LOG_LINE)?;
                to.write_u64(1)?;
                to.write_u64(1)?;
                to.write_str(line)?;
            }
            BuildEvent::Message { text } => {
                to.write_u64(stderr::NEXT)?;
                to.write_str(text)?;
            }
            BuildEvent::Built { drv, .. } | BuildEvent::Failed { drv, .. } => {
                let Some(id) = self.running.remove(drv) else {
                    return Ok(());
                };
                to.write_u64(stderr::STOP_ACTIVITY)?;
                to.write_u64(id)?;
            }
            _ => return Ok(()),
        }
        to.flush()
    }
}

static NEXT_ACTIVITY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Applies a client's `SetOptions` to its connection's settings, with Nix 2.8's trust
/// rules (`daemon.cc`): the twelve fixed fields (keep-failed, keep-going, fallback,
/// verbosity, max-jobs, max-silent-time, three obsolete ones, verbose-build, cores,
/// use-substitutes, which can only turn substitution off) apply for every client; of
/// the named overrides, an untrusted client
/// may set only `timeout`, `repeat`, `connect-timeout`, an empty `builders`, and
/// `substituters` (alias `binary-caches`) limited to the caches in the daemon's
/// `trusted-substituters` or `substituters` (each other one ignored with Nix's warning).
/// Returns the warnings for the client: settings refused, unknown or invalid.
pub fn apply_client_options(
    settings: &mut Settings,
    fixed: &[u64; 12],
    overrides: &[(String, String)],
    trusted: bool,
) -> Vec<String> {
    let [keep_failed, keep_going, fallback, _verbosity, max_jobs, max_silent_time, _build_hook, _verbose_build, _log_type, _print_build_trace, cores, use_substitutes] =
        *fixed;
    settings.keep_failed = keep_failed != 0;
    settings.keep_going = keep_going != 0;
    settings.fallback = fallback != 0;
    settings.max_jobs = usize::try_from(max_jobs).unwrap_or(usize::MAX);
    settings.max_silent_time = max_silent_time;
    settings.cores = u32::try_from(cores).unwrap_or(u32::MAX);
    // `--no-substitute` (`useSubstitutes`): builds through this connection substitute
    // only if the client lets them.
    settings.substitute = settings.substitute && use_substitutes != 0;
    let mut warnings = Vec::new();
    for (name, value) in overrides {
        let harmless = matches!(
            name.as_str(),
            "timeout" | "build-timeout" | "repeat" | "connect-timeout"
        ) || (name == "builders" && value.is_empty());
        if name == "ssh-auth-sock" {
            continue; // obsolete
        }
        if !(trusted || harmless) && matches!(name.as_str(), "substituters" | "binary-caches") {
            // As Nix: an untrusted client keeps only the caches the daemon trusts (its
            // `trusted-substituters` and its own `substituters`).
            let allowed = |url: &str| {
                settings.trusted_substituters.iter().any(|t| t == url)
                    || settings.substituters.iter().any(|t| t == url)
            };
            let mut kept = Vec::new();
            for url in value.split_whitespace() {
                if allowed(url) {
                    kept.push(url.to_owned());
                } else if !url.ends_with('/') && allowed(&format!("{url}/")) {
                    kept.push(format!("{url}/"));
                } else {
                    warnings.push(format!("ignoring untrusted substituter '{url}'"));
                }
            }
            settings.substituters = kept;
            continue;
        }
        if !(trusted || harmless) {
            warnings.push(format!(
                "ignoring the client-specified setting '{name}', because it is a restricted setting and you are not a trusted user"
            ));
            continue;
        }
        if let Err(error) = settings.set(name, value) {
            warnings.push(error.to_string());
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(trusted: bool, overrides: &[(&str, &str)]) -> (Settings, Vec<String>) {
        let mut settings = Settings {
            trusted_substituters: vec!["file:///good".into(), "http://cache/".into()],
            substituters: vec!["https://own".into()],
            ..Settings::default()
        };
        let overrides: Vec<(String, String)> = overrides
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let fixed = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1];
        let warnings = apply_client_options(&mut settings, &fixed, &overrides, trusted);
        (settings, warnings)
    }

    #[test]
    fn an_untrusted_client_keeps_only_the_substituters_the_daemon_trusts() {
        let (settings, warnings) = options(
            false,
            &[(
                "substituters",
                "file:///good http://cache https://own file:///evil",
            )],
        );
        // `http://cache` is trusted as `http://cache/`, as Nix does.
        assert_eq!(
            settings.substituters,
            ["file:///good", "http://cache/", "https://own"]
        );
        assert_eq!(warnings, ["ignoring untrusted substituter 'file:///evil'"]);
        // Nix's old name too.
        let (settings, warnings) = options(false, &[("binary-caches", "file:///evil")]);
        assert!(settings.substituters.is_empty());
        assert_eq!(warnings.len(), 1);
        // Other settings about substitution stay restricted.
        let (settings, warnings) = options(false, &[("extra-substituters", "file:///good")]);
        assert_eq!(settings.substituters, ["https://own"]);
        assert!(
            warnings[0].contains("'extra-substituters', because it is a restricted setting"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_trusted_client_sets_any_substituters() {
        let (settings, warnings) = options(true, &[("substituters", "file:///evil")]);
        assert_eq!(settings.substituters, ["file:///evil"]);
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}
