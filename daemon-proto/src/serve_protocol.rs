//! Nix's serve protocol (`nix-store --serve`, version 2.7): what Nix's `ssh://` store
//! (`LegacySSHStore`, the remote builders of `nix-build --builders`) and classic
//! Hydra's queue runner speak to a machine over ssh, on the remote program's stdin and
//! stdout. [`serve_legacy`] serves one client, generic over [`StoreOps`]; `arca serve`
//! (also spelt `arca --serve`, as Nix runs `PROGRAM --serve --write`) runs it on the
//! local store.
//!
//! The protocol is a greeting (magics `0x390c9deb` and `0x5452eecb`, then each side's
//! version), then commands until the client hangs up:
//!
//! | command | request | reply |
//! |---|---|---|
//! | 1 `QueryValidPaths` | lock, substitute, paths | the valid ones |
//! | 2 `QueryPathInfos` | paths | per valid path: path, deriver, references, sizes, NAR hash, content address, signatures; then `""` |
//! | 3 `DumpStorePath` | path | its NAR |
//! | 4 `ImportPaths` | an export archive | `1` |
//! | 5 `ExportPaths` | (obsolete word), paths | an export archive |
//! | 6 `BuildPaths` | derived paths, build settings | `0`, or a status and a message |
//! | 7 `QueryClosure` | include outputs, paths | the closure |
//! | 8 `BuildDerivation` | `.drv` path, the derivation, build settings | a build result |
//! | 9 `AddToStoreNar` | path info, NAR of its size | `1` |
//!
//! Commands that change the store (4, 6, 8, 9, and the lock and substitute flags of 1)
//! need `--write`. The client is trusted as Nix trusts it: paths it adds need no
//! signature (whoever holds the stream logged in as this process's user). Builds' log
//! lines go to the log writer (stderr), where Nix's client reads them as the build log.
//!
//! The protocol has no way to report an error in band but for builds: a request that
//! cannot be decoded, a command not allowed, a path that is not valid where one must be,
//! or a store error ends the connection with [`ServeProtocolError`], written to the log
//! by the caller, as `nix-store --serve` exits with it.

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};

use arca_store_core::derivation::Derivation;
use arca_store_core::{
    BuildEvent, BuildMode, Built, ContentAddress, DerivedPath, Hash, HashAlgo, PathInfo, Settings,
    StoreDir, StoreOpError, StoreOps, StorePath,
};

use crate::server::{read_basic_derivation, read_path_set, write_build_result, BuildResultShape};
use crate::wire::{Limits, WireError, WireReader, WireWriter};

/// The client's first word.
pub const SERVE_MAGIC_1: u64 = 0x390c_9deb;
/// The server's first word.
pub const SERVE_MAGIC_2: u64 = 0x5452_eecb;
/// The version served: 2.7, Nix 2.8's.
pub const SERVE_VERSION: u64 = (2 << 8) | 7;

/// Exit status Nix reports for a failed build (`Worker::exitStatus`'s "build failure"):
/// the reply of a failed `BuildPaths`. (1, Nix's generic status, would read as
/// `Substituted`, a success, to Nix's client.)
const BUILD_FAILURE_STATUS: u64 = 100;

/// A serve protocol command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    QueryValidPaths = 1,
    QueryPathInfos = 2,
    DumpStorePath = 3,
    ImportPaths = 4,
    ExportPaths = 5,
    BuildPaths = 6,
    QueryClosure = 7,
    BuildDerivation = 8,
    AddToStoreNar = 9,
}

impl Command {
    /// The command numbered `number`, if there is one.
    pub fn from_number(number: u64) -> Option<Command> {
        use Command::*;
        [
            QueryValidPaths,
            QueryPathInfos,
            DumpStorePath,
            ImportPaths,
            ExportPaths,
            BuildPaths,
            QueryClosure,
            BuildDerivation,
            AddToStoreNar,
        ]
        .into_iter()
        .find(|command| *command as u64 == number)
    }
}

/// How to serve.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Allow commands that change the store (`--write`).
    pub write: bool,
    /// Bounds on what the client may send.
    pub limits: Limits,
    /// The settings builds start from; the client's build settings (timeouts, log size,
    /// `keep-failed`) change a copy per build.
    pub settings: Settings,
}

/// Why a connection ended other than by the client hanging up.
#[derive(Debug, thiserror::Error)]
pub enum ServeProtocolError {
    #[error("bad request: {0}")]
    Wire(#[from] WireError),
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("protocol mismatch: the client's first word is {0:#x}, not the serve protocol's")]
    BadMagic(u64),
    #[error("the client's serve protocol version {0}.{1} is not 2.x")]
    Unsupported(u64, u64),
    #[error("unknown serve command {0}")]
    UnknownCommand(u64),
    /// A command that changes the store, without `--write` (Nix's words).
    #[error("{0} is not allowed")]
    NotAllowed(&'static str),
    #[error("path '{0}' is not valid")]
    InvalidPath(String),
    #[error("path '{path}': {message}")]
    BadPathInfo { path: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreOpError),
}

/// Serves one client of the serve protocol on `input`/`output` until it hangs up;
/// builds' log lines go to `log`.
pub fn serve_legacy<S: StoreOps>(
    store: &S,
    input: impl Read,
    output: impl Write,
    log: &mut dyn Write,
    options: &ServeOptions,
) -> Result<(), ServeProtocolError> {
    let mut from = WireReader::new(BufReader::with_capacity(64 << 10, input), options.limits);
    let mut to = WireWriter::new(io::BufWriter::with_capacity(64 << 10, output));
    let magic = from.read_u64()?;
    if magic != SERVE_MAGIC_1 {
        return Err(ServeProtocolError::BadMagic(magic));
    }
    to.write_u64(SERVE_MAGIC_2)?;
    to.write_u64(SERVE_VERSION)?;
    to.flush()?;
    let client = from.read_u64()?;
    if client >> 8 != 2 {
        return Err(ServeProtocolError::Unsupported(client >> 8, client & 0xff));
    }
    let mut connection = Connection {
        store,
        options,
        from,
        to,
        log,
        minor: client.min(SERVE_VERSION) & 0xff,
    };
    loop {
        let number = match connection.from.read_u64() {
            Ok(number) => number,
            Err(error) if error.is_disconnect() => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        let command =
            Command::from_number(number).ok_or(ServeProtocolError::UnknownCommand(number))?;
        connection.perform(command)?;
        connection.to.flush()?;
    }
}

struct Connection<'a, S, R, W: Write> {
    store: &'a S,
    options: &'a ServeOptions,
    from: WireReader<R>,
    to: WireWriter<W>,
    log: &'a mut dyn Write,
    /// The minor version agreed.
    minor: u64,
}

impl<S: StoreOps, R: BufRead, W: Write> Connection<'_, S, R, W> {
    fn store_dir(&self) -> &StoreDir {
        self.store.store_dir()
    }

    fn require_write(&self, what: &'static str) -> Result<(), ServeProtocolError> {
        if self.options.write {
            Ok(())
        } else {
            Err(ServeProtocolError::NotAllowed(what))
        }
    }

    fn read_paths(&mut self) -> Result<BTreeSet<StorePath>, ServeProtocolError> {
        Ok(read_path_set(&mut self.from, self.store.store_dir())?)
    }

    fn read_path(&mut self) -> Result<StorePath, ServeProtocolError> {
        let text = self.from.read_string("store path")?;
        self.store_dir()
            .parse_path(&text)
            .map_err(|error| ServeProtocolError::BadPathInfo {
                path: text.clone(),
                message: error.to_string(),
            })
    }

    fn write_paths<'p>(
        &mut self,
        paths: impl ExactSizeIterator<Item = &'p StorePath>,
    ) -> io::Result<()> {
        self.to.write_u64(paths.len() as u64)?;
        for path in paths {
            self.to.write_str(&self.store.store_dir().display(path))?;
        }
        Ok(())
    }

    fn valid(&self, path: &StorePath) -> Result<bool, ServeProtocolError> {
        self.store
            .is_valid_path(path)
            .map_err(|error| StoreOpError::from_error(error).into())
    }

    fn perform(&mut self, command: Command) -> Result<(), ServeProtocolError> {
        let store = self.store;
        match command {
            Command::QueryValidPaths => {
                let lock = self.from.read_bool("lock")?;
                let substitute = self.from.read_bool("substitute")?;
                let paths = self.read_paths()?;
                if lock && self.options.write {
                    for path in &paths {
                        store.add_temp_root(path)?;
                    }
                }
                if substitute && self.options.write {
                    // As Nix's `substitutePaths`: what cannot be had is simply not valid.
                    store.substitute_paths(&paths)?;
                }
                let mut valid = Vec::new();
                for path in &paths {
                    if self.valid(path)? {
                        valid.push(path);
                    }
                }
                self.write_paths(valid.into_iter())?;
            }
            Command::QueryPathInfos => {
                for path in self.read_paths()? {
                    let info = store
                        .query_path_info(&path)
                        .map_err(StoreOpError::from_error)?;
                    if let Some(info) = info {
                        self.write_path_info(&info)?;
                    }
                }
                self.to.write_str("")?;
            }
            Command::DumpStorePath => {
                let path = self.read_path()?;
                if !self.valid(&path)? {
                    return Err(ServeProtocolError::InvalidPath(
                        self.store_dir().display(&path),
                    ));
                }
                store
                    .nar_from_path(&path, self.to.get_mut())
                    .map_err(StoreOpError::from_error)?;
            }
            Command::ImportPaths => {
                self.require_write("importing paths")?;
                store.import_paths(self.from.get_mut())?;
                self.to.write_u64(1)?;
            }
            Command::ExportPaths => {
                self.from.read_u64()?; // obsolete
                let paths = self.read_paths()?;
                for path in &paths {
                    if !self.valid(path)? {
                        return Err(ServeProtocolError::InvalidPath(
                            self.store_dir().display(path),
                        ));
                    }
                }
                store.export_paths(&paths, self.to.get_mut())?;
            }
            Command::BuildPaths => {
                self.require_write("building paths")?;
                let mut targets = Vec::new();
                for text in self.from.read_strings("derived paths")? {
                    let target = DerivedPath::parse(store.store_dir(), &text)
                        .map_err(|error| WireError::Io(io::Error::other(error.to_string())))?;
                    targets.push(target);
                }
                let settings = self.read_build_settings()?;
                let outcomes = {
                    let log = &mut *self.log;
                    store.build_paths(&targets, BuildMode::Normal, &settings, &mut |event| {
                        log_event(log, event)
                    })
                };
                let failure = match outcomes {
                    Ok(outcomes) => outcomes.into_iter().find_map(|(_, result)| result.err()),
                    Err(error) => Some(error.chain()),
                };
                match failure {
                    None => self.to.write_u64(0)?,
                    Some(message) => {
                        self.to.write_u64(BUILD_FAILURE_STATUS)?;
                        self.to.write_str(&message)?;
                    }
                }
            }
            Command::QueryClosure => {
                let include_outputs = self.from.read_bool("include outputs")?;
                let paths = self.read_paths()?;
                let closure = store.closure_graph(&paths, include_outputs)?;
                self.write_paths(closure.keys())?;
            }
            Command::BuildDerivation => {
                self.require_write("building paths")?;
                let drv_path = self.read_path()?;
                let drv = read_basic_derivation(&mut self.from, store.store_dir(), &drv_path)?;
                let settings = self.read_build_settings()?;
                let result = match drv {
                    Ok(drv) => self.build_derivation(&drv_path, &drv, &settings),
                    Err(refusal) => Err(refusal.chain()),
                };
                self.write_build_result(&result)?;
            }
            Command::AddToStoreNar => {
                self.require_write("importing paths")?;
                self.add_to_store_nar()?;
                self.to.write_u64(1)?;
            }
        }
        Ok(())
    }

    /// `QueryPathInfos`' entry for one valid path.
    fn write_path_info(&mut self, info: &PathInfo) -> io::Result<()> {
        let store_dir = self.store.store_dir();
        self.to.write_str(&store_dir.display(&info.path))?;
        let deriver = info
            .deriver
            .as_ref()
            .map(|d| store_dir.display(d))
            .unwrap_or_default();
        self.to.write_str(&deriver)?;
        self.write_paths(info.references.iter())?;
        self.to.write_u64(info.nar_size)?; // download size: NARs travel uncompressed
        self.to.write_u64(info.nar_size)?;
        if self.minor >= 4 {
            self.to
                .write_str(&format!("sha256:{}", info.nar_hash.to_base32()))?;
            let ca = info
                .ca
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            self.to.write_str(&ca)?;
            self.to.write_strings(info.signatures.iter())?;
        }
        Ok(())
    }

    /// The build settings that follow a build request: max silent time, timeout, then by
    /// version max log size (2.2), repeat and enforce-determinism (2.3, ignored: Arca
    /// builds once), keep-failed (2.7). Substitution is off, as in Nix's `--serve`: the
    /// client sent the inputs.
    fn read_build_settings(&mut self) -> Result<Settings, ServeProtocolError> {
        let mut settings = self.options.settings.clone();
        settings.max_silent_time = self.from.read_u64()?;
        settings.timeout = self.from.read_u64()?;
        if self.minor >= 2 {
            settings.max_log_size = self.from.read_u64()?;
        }
        if self.minor >= 3 {
            self.from.read_u64()?; // build repeat
            self.from.read_u64()?; // enforce determinism
        }
        if self.minor >= 7 {
            settings.keep_failed = self.from.read_u64()? != 0;
        }
        settings.substitute = false;
        Ok(settings)
    }

    fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &Derivation,
        settings: &Settings,
    ) -> Result<Built, String> {
        let log = &mut *self.log;
        let store = self.store;
        match store.build_derivation(drv_path, drv, BuildMode::Normal, settings, &mut |event| {
            log_event(log, event)
        }) {
            Ok(result) => result,
            Err(error) => Err(error.chain()),
        }
    }

    /// A build result as 2.7 carries it: status, error message; times built,
    /// non-determinism, start and stop time (2.3); the outputs' realisations (2.6).
    fn write_build_result(&mut self, result: &Result<Built, String>) -> io::Result<()> {
        let shape = BuildResultShape {
            times: self.minor >= 3,
            cpu: false,
            outputs: self.minor >= 6,
        };
        write_build_result(&mut self.to, result, shape)
    }

    /// `AddToStoreNar`: path, deriver, NAR hash (any encoding; Nix sends base16),
    /// references, registration time, NAR size, ultimate, signatures, content address,
    /// then exactly NAR-size bytes of NAR.
    fn add_to_store_nar(&mut self) -> Result<(), ServeProtocolError> {
        let path = self.read_path()?;
        let shown = self.store_dir().display(&path);
        let bad = |message: String| ServeProtocolError::BadPathInfo {
            path: shown.clone(),
            message,
        };
        let deriver = self.from.read_string("deriver")?;
        let nar_hash = self.from.read_string("NAR hash")?;
        let references = self.read_paths()?;
        let registration_time = self.from.read_u64()?;
        let nar_size = self.from.read_u64()?;
        let ultimate = self.from.read_u64()? != 0;
        let signatures = self.from.read_strings("signatures")?;
        let ca = self.from.read_string("content address")?;
        if nar_size == 0 {
            // Nix's words; without a size the NAR's end is unknown.
            return Err(bad(
                "narInfo is too old and missing the narSize field".to_owned()
            ));
        }
        let nar_hash = Hash::parse(&nar_hash, Some(HashAlgo::Sha256))
            .map_err(|error| bad(format!("NAR hash '{nar_hash}': {error}")))?;
        let mut info = PathInfo::new(path, nar_hash, nar_size);
        if !deriver.is_empty() {
            info.deriver = Some(
                self.store_dir()
                    .parse_path(&deriver)
                    .map_err(|error| bad(format!("deriver '{deriver}': {error}")))?,
            );
        }
        info.references = references;
        info.registration_time = i64::try_from(registration_time).unwrap_or(0);
        info.ultimate = ultimate;
        for text in signatures {
            arca_store_core::Signature::parse(&text)
                .map_err(|error| bad(format!("signature '{text}': {error}")))?;
            info.signatures.insert(text);
        }
        if !ca.is_empty() {
            info.ca = Some(
                ContentAddress::parse(&ca)
                    .map_err(|error| bad(format!("content address '{ca}': {error}")))?,
            );
        }
        // Exactly the NAR's bytes: the store checks its hash and size, and whatever it
        // leaves unread is drained, so the stream stays in step for the reply.
        let mut nar = self.from.get_mut().take(nar_size);
        let added = self.store.add_nar_checked(&info, &mut nar, true);
        io::copy(&mut nar, &mut io::sink())?;
        added?;
        Ok(())
    }
}

/// A build's progress as the log shows it: the builder's lines, and what else the
/// store has to say.
fn log_event(log: &mut dyn Write, event: &BuildEvent) {
    // The log is best effort: a client that stopped reading it still gets its result.
    let _ = match event {
        BuildEvent::Log { line, .. } => writeln!(log, "{line}"),
        BuildEvent::Message { text } => write!(log, "{text}"),
        _ => Ok(()),
    };
    let _ = log.flush();
}
