//! The client side of the serve protocol ([`crate::serve_protocol`]): [`ServeClient`]
//! is an `ssh://` store, a [`Store`] and [`StoreOps`] over a `nix-store --serve --write`
//! (or `arca serve --write`) on the other end of an ssh connection, as Nix's
//! `LegacySSHStore`. What the protocol has no command for (referrers, derivers, adding
//! texts or dumps, garbage collection) is refused with a reason.
//!
//! The server reports a failed command only by hanging up, its reason on its standard
//! error (which ssh passes on); the client then fails with the connection's end.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::process::Stdio;
use std::sync::Mutex;

use arca_store_core::derivation::Derivation;
use arca_store_core::{
    BuildEvent, BuildMode, BuildOutcomes, Built, ContentAddress, DerivedPath, Hash, HashAlgo,
    PathInfo, Realisation, Settings, Store, StoreDir, StoreOpError, StoreOps, StorePath,
};

use crate::client::{Reader, Writer};
use crate::serve_protocol::{Command, SERVE_MAGIC_1, SERVE_MAGIC_2, SERVE_VERSION};
use crate::ssh::{SshError, SshProcess, SshStoreUrl};
use crate::wire::{Limits, TeeBufRead, WireError, WireReader, WireWriter};

/// What went wrong talking to a serve-protocol server.
#[derive(Debug, thiserror::Error)]
pub enum ServeClientError {
    // The cause is the source (printed once, after this, by whoever prints the chain).
    #[error("connection to '{0}'")]
    Wire(String, #[source] WireError),
    #[error("connection to '{0}'")]
    Io(String, #[source] io::Error),
    /// The other end hung up: the remote program failed (its reason went to its
    /// standard error), or ssh could not reach it.
    #[error("'{0}' closed the connection (its reason, if it gave one, is above)")]
    Closed(String),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("'nix-store --serve' protocol mismatch from '{host}' (it sent {magic:#x})")]
    Mismatch { host: String, magic: u64 },
    #[error("unsupported 'nix-store --serve' protocol version {major}.{minor} on '{host}'")]
    Version {
        host: String,
        major: u64,
        minor: u64,
    },
    #[error("'{host}' sent an invalid reply: {reason}")]
    BadReply { host: String, reason: String },
    #[error("'{host}' failed to add path '{path}'")]
    AddFailed { host: String, path: String },
    #[error("{what} is not supported by ssh:// stores (the serve protocol has no such command)")]
    Unsupported { what: &'static str },
}

struct Connection {
    from: WireReader<BufReader<Reader>>,
    to: WireWriter<BufWriter<Writer>>,
    /// The server's minor version.
    minor: u64,
}

/// An `ssh://` store: one serve-protocol connection, used by one operation at a time.
pub struct ServeClient {
    store_dir: StoreDir,
    /// Who is on the other end, for messages (`ssh://HOST`).
    host: String,
    connection: Mutex<Connection>,
    _transport: Option<SshProcess>,
}

impl std::fmt::Debug for ServeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeClient")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl ServeClient {
    /// Opens the `ssh://` store `url`: runs its remote program through ssh and greets
    /// it. The remote program's standard error (its messages, builds' logs) goes where
    /// `stderr` says (see [`SshStoreUrl::open_with_stderr`] to read it).
    pub fn open(url: &SshStoreUrl, stderr: Stdio) -> Result<ServeClient, ServeClientError> {
        let (process, stdout, stdin) = url.spawn(stderr)?;
        Ok(ServeClient::handshake(
            Box::new(stdout),
            Box::new(stdin),
            StoreDir::default(),
            &url.display(),
        )?
        .with_transport(process))
    }

    /// Keeps `process` (what carries the stream) alive as long as this client, ended
    /// after the connection is closed.
    pub fn with_transport(mut self, process: SshProcess) -> ServeClient {
        self._transport = Some(process);
        self
    }

    /// Greets a serve-protocol server on an open byte stream; `host` names it in
    /// messages.
    pub fn handshake(
        reader: Reader,
        writer: Writer,
        store_dir: StoreDir,
        host: &str,
    ) -> Result<ServeClient, ServeClientError> {
        let io = |error: io::Error| match error.kind() {
            io::ErrorKind::BrokenPipe => ServeClientError::Closed(host.to_owned()),
            _ => ServeClientError::Io(host.to_owned(), error),
        };
        let wire = |error: WireError| match error.is_disconnect() {
            true => ServeClientError::Closed(host.to_owned()),
            false => ServeClientError::Wire(host.to_owned(), error),
        };
        let mut from = WireReader::new(BufReader::new(reader), Limits::default());
        let mut to = WireWriter::new(BufWriter::new(writer));
        to.write_u64(SERVE_MAGIC_1).map_err(io)?;
        to.write_u64(SERVE_VERSION).map_err(io)?;
        to.flush().map_err(io)?;
        let magic = from.read_u64().map_err(wire)?;
        if magic != SERVE_MAGIC_2 {
            return Err(ServeClientError::Mismatch {
                host: host.to_owned(),
                magic,
            });
        }
        let version = from.read_u64().map_err(wire)?;
        if version >> 8 != 2 || version & 0xff < 4 {
            return Err(ServeClientError::Version {
                host: host.to_owned(),
                major: version >> 8,
                minor: version & 0xff,
            });
        }
        Ok(ServeClient {
            store_dir,
            host: host.to_owned(),
            connection: Mutex::new(Connection {
                from,
                to,
                minor: version.min(SERVE_VERSION) & 0xff,
            }),
            _transport: None,
        })
    }

    /// The store's name in messages (`ssh://HOST`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Runs `op` on the connection, naming the host in its wire errors.
    fn with<T>(
        &self,
        op: impl FnOnce(&mut Connection, &StoreDir) -> Result<T, Failure>,
    ) -> Result<T, ServeClientError> {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        op(&mut connection, &self.store_dir).map_err(|failure| match failure {
            Failure::Wire(error) if error.is_disconnect() => {
                ServeClientError::Closed(self.host.clone())
            }
            Failure::Io(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                ServeClientError::Closed(self.host.clone())
            }
            Failure::Wire(error) => ServeClientError::Wire(self.host.clone(), error),
            Failure::Io(error) => ServeClientError::Io(self.host.clone(), error),
            Failure::Reply(reason) => ServeClientError::BadReply {
                host: self.host.clone(),
                reason,
            },
            Failure::Other(error) => error,
        })
    }

    /// `QueryPathInfos` for `paths`: the infos of the valid ones.
    pub fn query_path_infos(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, PathInfo>, ServeClientError> {
        self.with(|connection, store_dir| {
            connection.to.write_u64(Command::QueryPathInfos as u64)?;
            write_paths(&mut connection.to, store_dir, paths)?;
            connection.to.flush()?;
            let mut infos = BTreeMap::new();
            loop {
                let path = connection.from.read_string("store path")?;
                if path.is_empty() {
                    return Ok(infos);
                }
                let path = parse_path(store_dir, &path)?;
                let deriver = connection.from.read_string("deriver")?;
                let references = read_paths(&mut connection.from, store_dir)?;
                connection.from.read_u64()?; // download size
                let nar_size = connection.from.read_u64()?;
                let nar_hash = connection.from.read_string("NAR hash")?;
                let ca = connection.from.read_string("content address")?;
                let signatures = connection.from.read_strings("signatures")?;
                let nar_hash = Hash::parse(&nar_hash, Some(HashAlgo::Sha256))
                    .map_err(|e| Failure::Reply(format!("NAR hash '{nar_hash}': {e}")))?;
                let mut info = PathInfo::new(path.clone(), nar_hash, nar_size);
                if !deriver.is_empty() {
                    info.deriver = Some(parse_path(store_dir, &deriver)?);
                }
                info.references = references;
                info.signatures = signatures.into_iter().collect();
                if !ca.is_empty() {
                    info.ca = Some(
                        ContentAddress::parse(&ca)
                            .map_err(|e| Failure::Reply(format!("content address '{ca}': {e}")))?,
                    );
                }
                infos.insert(path, info);
            }
        })
    }

    /// `QueryValidPaths`, not locking; substituting the invalid ones first when
    /// `substitute` (a server with `--write` does).
    fn send_query_valid_paths(
        &self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, ServeClientError> {
        self.with(|connection, store_dir| {
            connection.to.write_u64(Command::QueryValidPaths as u64)?;
            connection.to.write_bool(false)?; // lock
            connection.to.write_bool(substitute)?;
            write_paths(&mut connection.to, store_dir, paths)?;
            connection.to.flush()?;
            read_paths(&mut connection.from, store_dir)
        })
    }

    /// `QueryClosure`: the closure of `paths` (with the outputs of derivations in it).
    fn send_query_closure(
        &self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeSet<StorePath>, ServeClientError> {
        self.with(|connection, store_dir| {
            connection.to.write_u64(Command::QueryClosure as u64)?;
            connection.to.write_bool(include_outputs)?;
            write_paths(&mut connection.to, store_dir, paths)?;
            connection.to.flush()?;
            read_paths(&mut connection.from, store_dir)
        })
    }

    /// `BuildDerivation`: `drv` sent whole under `drv_path`, built with `settings`'
    /// timeouts, log limit and `keep-failed`.
    fn send_build_derivation(
        &self,
        drv_path: &StorePath,
        drv: &Derivation,
        settings: &Settings,
    ) -> Result<Result<Built, String>, ServeClientError> {
        self.with(|connection, store_dir| {
            let minor = connection.minor;
            let to = &mut connection.to;
            to.write_u64(Command::BuildDerivation as u64)?;
            to.write_str(&store_dir.display(drv_path))?;
            write_basic_derivation(to, store_dir, drv)?;
            to.write_u64(settings.max_silent_time)?;
            to.write_u64(settings.timeout)?;
            if minor >= 2 {
                to.write_u64(settings.max_log_size)?;
            }
            if minor >= 3 {
                to.write_u64(0)?; // build repeat
                to.write_u64(0)?; // enforce determinism
            }
            if minor >= 7 {
                to.write_bool(settings.keep_failed)?;
            }
            to.flush()?;
            let from = &mut connection.from;
            let status = from.read_u64()?;
            let message = from.read_string("error message")?;
            let mut times_built = 1;
            if minor >= 3 {
                times_built = from.read_u64()?;
                from.read_u64()?; // non-deterministic
                from.read_u64()?; // start time
                from.read_u64()?; // stop time
            }
            let mut outputs = Vec::new();
            if minor >= 6 {
                for _ in 0..from.read_list_len("built outputs")? {
                    from.read_string("derivation output")?;
                    let json = from.read_string("realisation")?;
                    outputs.push(
                        Realisation::from_json(&json)
                            .map_err(|e| Failure::Reply(format!("realisation: {e}")))?,
                    );
                }
            }
            // Built, Substituted, AlreadyValid, ResolvesToAlreadyValid.
            Ok(if matches!(status, 0 | 1 | 2 | 13) {
                Ok(Built {
                    now: status == 0 && times_built > 0,
                    outputs,
                    timing: None,
                })
            } else {
                Err(message)
            })
        })
    }
}

/// How an operation on the connection failed, before the host is named.
enum Failure {
    Wire(WireError),
    Io(io::Error),
    Reply(String),
    Other(ServeClientError),
}

impl From<WireError> for Failure {
    fn from(error: WireError) -> Failure {
        Failure::Wire(error)
    }
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Failure {
        Failure::Io(error)
    }
}

fn parse_path(store_dir: &StoreDir, text: &str) -> Result<StorePath, Failure> {
    store_dir
        .parse_path(text)
        .map_err(|e| Failure::Reply(format!("'{text}': {e}")))
}

fn read_paths<R: BufRead>(
    from: &mut WireReader<R>,
    store_dir: &StoreDir,
) -> Result<BTreeSet<StorePath>, Failure> {
    from.read_strings("store paths")?
        .iter()
        .map(|text| parse_path(store_dir, text))
        .collect()
}

fn write_paths<W: Write>(
    to: &mut WireWriter<W>,
    store_dir: &StoreDir,
    paths: &BTreeSet<StorePath>,
) -> io::Result<()> {
    let texts: Vec<String> = paths.iter().map(|p| store_dir.display(p)).collect();
    to.write_strings(texts.iter())
}

/// A `BasicDerivation` as both protocols carry it (`BuildDerivation`): outputs (name,
/// path, hash algorithm, hash), input sources, platform, builder, arguments,
/// environment. Input derivations are not sent: a remote builder gets their outputs as
/// input sources.
pub(crate) fn write_basic_derivation<W: Write>(
    to: &mut WireWriter<W>,
    store_dir: &StoreDir,
    drv: &Derivation,
) -> io::Result<()> {
    to.write_u64(drv.outputs.len() as u64)?;
    for (name, output) in &drv.outputs {
        to.write_str(name.as_str())?;
        let path = output
            .path()
            .map(|p| store_dir.display(p))
            .unwrap_or_default();
        to.write_str(&path)?;
        to.write_str(&output.hash_algo_field())?;
        to.write_str(&output.hash_field())?;
    }
    write_paths(to, store_dir, &drv.input_srcs)?;
    to.write_str(&drv.system)?;
    to.write_str(&drv.builder)?;
    to.write_strings(drv.args.iter())?;
    to.write_u64(drv.env.len() as u64)?;
    for (key, value) in &drv.env {
        to.write_str(key)?;
        to.write_str(value)?;
    }
    Ok(())
}

fn unsupported(what: &'static str) -> ServeClientError {
    ServeClientError::Unsupported { what }
}

impl Store for ServeClient {
    type Error = ServeClientError;
    type Batch<'a> = arca_store_core::OneByOne<'a, Self>;

    fn add_batch(&self) -> Self::Batch<'_> {
        arca_store_core::OneByOne::new(self)
    }

    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn is_valid_path(&self, path: &StorePath) -> Result<bool, ServeClientError> {
        let paths = BTreeSet::from([path.clone()]);
        Ok(self.send_query_valid_paths(&paths, false)?.contains(path))
    }

    fn query_path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, ServeClientError> {
        let paths = BTreeSet::from([path.clone()]);
        Ok(self.query_path_infos(&paths)?.remove(path))
    }

    fn query_referrers(&self, _: &StorePath) -> Result<BTreeSet<StorePath>, ServeClientError> {
        Err(unsupported("querying referrers"))
    }

    fn query_valid_derivers(&self, _: &StorePath) -> Result<BTreeSet<StorePath>, ServeClientError> {
        Err(unsupported("querying derivers"))
    }

    /// From the `.drv` file itself (dumped and parsed): the outputs whose paths it names.
    fn query_derivation_outputs(
        &self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>, ServeClientError> {
        let derivation = crate::client_ops::read_derivation_file(self, drv).map_err(|error| {
            ServeClientError::BadReply {
                host: self.host.clone(),
                reason: error.chain(),
            }
        })?;
        Ok(derivation
            .outputs
            .iter()
            .filter_map(|(name, output)| Some((name.to_string(), output.path()?.clone())))
            .collect())
    }

    fn query_path_from_hash_part(&self, _: &str) -> Result<Option<StorePath>, ServeClientError> {
        Err(unsupported("looking paths up by hash part"))
    }

    /// `AddToStoreNar`: the path's metadata, then exactly its NAR.
    fn add_nar(&self, info: &PathInfo, nar: &mut dyn Read) -> Result<(), ServeClientError> {
        let added = self.with(|connection, store_dir| {
            if connection.minor < 5 {
                return Err(Failure::Other(unsupported(
                    "adding paths to a server older than 2.5",
                )));
            }
            let to = &mut connection.to;
            to.write_u64(Command::AddToStoreNar as u64)?;
            to.write_str(&store_dir.display(&info.path))?;
            let deriver = info.deriver.as_ref().map(|d| store_dir.display(d));
            to.write_str(&deriver.unwrap_or_default())?;
            to.write_str(&info.nar_hash.to_base16())?;
            write_paths(to, store_dir, &info.references)?;
            to.write_u64(u64::try_from(info.registration_time).unwrap_or(0))?;
            to.write_u64(info.nar_size)?;
            to.write_bool(info.ultimate)?;
            to.write_strings(info.signatures.iter())?;
            let ca = info
                .ca
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            to.write_str(&ca)?;
            // Exactly nar_size bytes: the server reads that many.
            let copied = io::copy(&mut nar.take(info.nar_size), to.get_mut())?;
            if copied != info.nar_size {
                return Err(Failure::Reply(format!(
                    "the NAR of '{}' is {copied} bytes, not the {} its info says",
                    store_dir.display(&info.path),
                    info.nar_size
                )));
            }
            to.flush()?;
            Ok(connection.from.read_u64()? == 1)
        })?;
        if !added {
            return Err(ServeClientError::AddFailed {
                host: self.host.clone(),
                path: self.store_dir.display(&info.path),
            });
        }
        Ok(())
    }

    fn add_text(
        &self,
        _: &str,
        _: &[u8],
        _: &BTreeSet<StorePath>,
    ) -> Result<StorePath, ServeClientError> {
        Err(unsupported("adding texts"))
    }

    /// `DumpStorePath`: the NAR follows raw; parsing it finds its end. It is read to its
    /// end even when `out` fails, so the connection stays in step; then `out`'s error
    /// is returned.
    fn nar_from_path(&self, path: &StorePath, out: &mut dyn Write) -> Result<(), ServeClientError> {
        let mut out = Sticky { out, error: None };
        let read = self.with(|connection, store_dir| {
            connection.to.write_u64(Command::DumpStorePath as u64)?;
            connection.to.write_str(&store_dir.display(path))?;
            connection.to.flush()?;
            let mut tee = TeeBufRead::new(connection.from.get_mut(), &mut out);
            {
                let mut reader = arca_nar::NarReader::new(&mut tee, arca_nar::Limits::default());
                while reader
                    .next()
                    .map_err(|e| {
                        Failure::Reply(format!("NAR of '{}': {e}", store_dir.display(path)))
                    })?
                    .is_some()
                {}
            }
            match tee.error {
                Some(error) => Err(error.into()),
                None => Ok(()),
            }
        });
        read?;
        match out.error {
            Some(error) => Err(ServeClientError::Io(self.host.clone(), error)),
            None => Ok(()),
        }
    }
}

/// A writer that keeps its first error and swallows what follows, so that a reader
/// copying into it reads on to the end of what it copies.
struct Sticky<'a> {
    out: &'a mut dyn Write,
    error: Option<io::Error>,
}

impl Write for Sticky<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.error.is_none() {
            if let Err(error) = self.out.write_all(buf) {
                self.error = Some(error);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.error.is_none() {
            if let Err(error) = self.out.flush() {
                self.error = Some(error);
            }
        }
        Ok(())
    }
}

fn failed(error: ServeClientError) -> StoreOpError {
    StoreOpError::from_error(error)
}

impl StoreOps for ServeClient {
    /// The `.drv` file dumped (`DumpStorePath`) and parsed.
    fn read_derivation(&self, path: &StorePath) -> Result<Derivation, StoreOpError> {
        crate::client_ops::read_derivation_file(self, path)
    }

    fn query_valid_paths(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreOpError> {
        self.send_query_valid_paths(paths, false).map_err(failed)
    }

    fn substitute_paths(&self, paths: &BTreeSet<StorePath>) -> Result<(), StoreOpError> {
        self.send_query_valid_paths(paths, true)
            .map(drop)
            .map_err(failed)
    }

    /// Two requests: the closure (`QueryClosure`), then the references of all of it
    /// (`QueryPathInfos`).
    fn closure_graph(
        &self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeMap<StorePath, BTreeSet<StorePath>>, StoreOpError> {
        let closure = self
            .send_query_closure(paths, include_outputs)
            .map_err(failed)?;
        Ok(self
            .query_path_infos(&closure)
            .map_err(failed)?
            .into_iter()
            .map(|(path, info)| (path, info.references))
            .collect())
    }

    fn add_dump(
        &self,
        _: &str,
        _: arca_store_core::AddressingMethod,
        _: &BTreeSet<StorePath>,
        _: &mut dyn Read,
    ) -> Result<StorePath, StoreOpError> {
        Err(failed(unsupported("adding files")))
    }

    /// The server takes what it is sent (it trusts the stream); `trusted` is its to
    /// decide.
    fn add_nar_checked(
        &self,
        info: &PathInfo,
        nar: &mut dyn BufRead,
        _trusted: bool,
    ) -> Result<(), StoreOpError> {
        self.add_nar(info, nar).map_err(failed)
    }

    /// `BuildPaths`: all or nothing, without the outputs' paths (the protocol reports
    /// only success or the first failure).
    fn build_paths(
        &self,
        targets: &[DerivedPath],
        mode: BuildMode,
        settings: &Settings,
        _events: &mut dyn FnMut(&BuildEvent),
    ) -> Result<BuildOutcomes, StoreOpError> {
        if mode != BuildMode::Normal {
            return Err(failed(unsupported("repairing or checking builds")));
        }
        let failure = self
            .with(|connection, store_dir| {
                let minor = connection.minor;
                let to = &mut connection.to;
                to.write_u64(Command::BuildPaths as u64)?;
                // Nix's `StorePathWithOutputs`: every output is the bare `.drv` path (the
                // serve protocol predates `DRV!*`).
                let texts: Vec<String> = targets
                    .iter()
                    .map(|target| match &target.outputs {
                        Some(outputs) if outputs.is_empty() => store_dir.display(&target.path),
                        _ => target.to_wire(store_dir),
                    })
                    .collect();
                to.write_strings(texts.iter())?;
                to.write_u64(settings.max_silent_time)?;
                to.write_u64(settings.timeout)?;
                if minor >= 2 {
                    to.write_u64(settings.max_log_size)?;
                }
                if minor >= 3 {
                    to.write_u64(0)?;
                    to.write_u64(0)?;
                }
                if minor >= 7 {
                    to.write_bool(settings.keep_failed)?;
                }
                to.flush()?;
                Ok(match connection.from.read_u64()? {
                    0 => None,
                    _ => Some(connection.from.read_string("error message")?),
                })
            })
            .map_err(failed)?;
        Ok(targets
            .iter()
            .map(|target| {
                let result = match &failure {
                    None => Ok(Built {
                        now: true,
                        outputs: Vec::new(),
                        timing: None,
                    }),
                    Some(message) => Err(message.clone()),
                };
                (target.clone(), result)
            })
            .collect())
    }

    fn build_derivation(
        &self,
        drv_path: &StorePath,
        drv: &Derivation,
        mode: BuildMode,
        settings: &Settings,
        _events: &mut dyn FnMut(&BuildEvent),
    ) -> Result<Result<Built, String>, StoreOpError> {
        if mode != BuildMode::Normal {
            return Err(failed(unsupported("repairing or checking builds")));
        }
        self.send_build_derivation(drv_path, drv, settings)
            .map_err(failed)
    }
}
