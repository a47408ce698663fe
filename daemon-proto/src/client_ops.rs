//! [`StoreOps`] for [`DaemonClient`]: every store operation through a daemon, so that
//! code written against the one store interface (the `arca` command's) runs unchanged on
//! a store behind `arca daemon` or `nix-daemon`.
//!
//! What the worker protocol cannot carry is refused with a message that says so (verify
//! of some paths only, `--ignore-liveness`); what the daemon's configuration decides (what
//! a collection keeps, censoring of root origins) is left to the daemon, as with Nix.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use arca_store_core::derivation::Derivation;
use arca_store_core::{
    export, AddProgress, AddressingMethod, BuildEvent, BuildMode, BuildOutcomes, Built,
    DerivedPath, DrvOutput, FindRoots, GcAction, GcOptions, GcProgress, GcReport, HashAlgo, Hasher,
    OptimiseProgress, OptimiseReport, PathInfo, Realisation, Settings, Store, StoreDir,
    StoreOpError, StoreOps, StorePath, VerifyOptions, VerifyOutcome,
};

use crate::client::{ClientError, DaemonClient, DaemonLog};
use crate::protocol::gc_action;
use crate::wire::TeeBufRead;

fn failed(error: ClientError) -> StoreOpError {
    StoreOpError::from_error(error)
}

/// A local file or stream the client itself failed on, named.
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
struct LocalFailure {
    context: String,
    #[source]
    source: io::Error,
}

fn local(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreOpError {
    let context = context.into();
    move |source| StoreOpError::from_error(LocalFailure { context, source })
}

impl StoreOps for DaemonClient {
    /// Sends the build settings a client may give (`SetOptions`, as Nix's client does):
    /// keep-failed, keep-going, fallback, max-jobs, max-silent-time and cores, and
    /// `timeout` and `max-log-size` when set. The daemon takes what this client's trust
    /// allows and warns about the rest (shown as its messages).
    fn apply_settings(&self, settings: &Settings) -> Result<(), StoreOpError> {
        let fixed = [
            u64::from(settings.keep_failed),
            u64::from(settings.keep_going),
            u64::from(settings.fallback),
            0, // verbosity
            settings.max_jobs as u64,
            settings.max_silent_time,
            1, // obsolete: use the build hook
            0, // verbose build: no
            0, // obsolete: log type
            0, // obsolete: print build trace
            u64::from(settings.cores),
            u64::from(settings.substitute),
        ];
        let mut overrides = Vec::new();
        if settings.timeout != 0 {
            overrides.push(("timeout".to_owned(), settings.timeout.to_string()));
        }
        if settings.max_log_size != 0 {
            overrides.push(("max-log-size".to_owned(), settings.max_log_size.to_string()));
        }
        self.send_set_options(&fixed, &overrides).map_err(failed)
    }

    fn query_valid_paths(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreOpError> {
        DaemonClient::send_query_valid_paths(self, paths, false).map_err(failed)
    }

    /// `QueryValidPaths` asking the daemon to substitute (1.27 and later).
    fn substitute_paths(&self, paths: &BTreeSet<StorePath>) -> Result<(), StoreOpError> {
        DaemonClient::send_query_valid_paths(self, paths, true)
            .map(drop)
            .map_err(failed)
    }

    fn query_all_valid_paths(&self) -> Result<BTreeSet<StorePath>, StoreOpError> {
        DaemonClient::send_query_all_valid_paths(self).map_err(failed)
    }

    fn query_realisation(&self, _id: &DrvOutput) -> Result<Option<Realisation>, StoreOpError> {
        Ok(None)
    }

    fn closure_graph(
        &self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeMap<StorePath, BTreeSet<StorePath>>, StoreOpError> {
        DaemonClient::send_closure_graph(self, paths, include_outputs).map_err(failed)
    }

    fn add_dump(
        &self,
        name: &str,
        method: AddressingMethod,
        references: &BTreeSet<StorePath>,
        dump: &mut dyn Read,
    ) -> Result<StorePath, StoreOpError> {
        DaemonClient::send_add_dump(self, name, method, references, dump).map_err(failed)
    }

    /// The daemon decides whether to take the path (its trust in this client, the
    /// signatures); `trusted` asks it not to check signatures, which it grants a
    /// trusted client only.
    fn add_nar_checked(
        &self,
        info: &PathInfo,
        nar: &mut dyn BufRead,
        trusted: bool,
    ) -> Result<(), StoreOpError> {
        DaemonClient::send_add_nar(self, info, nar, trusted).map_err(failed)
    }

    /// The daemon builds with its own settings (and what this client's `SetOptions` may
    /// change, which it does not send); its log reaches `events` as it streams.
    fn build_paths(
        &self,
        targets: &[DerivedPath],
        mode: BuildMode,
        _settings: &Settings,
        events: &mut dyn FnMut(&BuildEvent),
    ) -> Result<BuildOutcomes, StoreOpError> {
        let store_dir = self.store_dir().clone();
        DaemonClient::send_build_paths(self, targets, mode, &mut |log| {
            if let Some(event) = log_event(&store_dir, log) {
                events(&event);
            }
        })
        .map_err(failed)
    }

    /// The daemon builds `drv` as sent, if it trusts this client (a remote builder's
    /// `nix-daemon --stdio` or `arca daemon --stdio` does).
    fn build_derivation(
        &self,
        drv_path: &StorePath,
        drv: &Derivation,
        mode: BuildMode,
        _settings: &Settings,
        events: &mut dyn FnMut(&BuildEvent),
    ) -> Result<Result<Built, String>, StoreOpError> {
        let store_dir = self.store_dir().clone();
        DaemonClient::send_build_derivation(self, drv_path, drv, mode, &mut |log| {
            if let Some(event) = log_event(&store_dir, log) {
                events(&event);
            }
        })
        .map_err(failed)
    }

    fn add_temp_root(&self, path: &StorePath) -> Result<(), StoreOpError> {
        DaemonClient::send_add_temp_root(self, path).map_err(failed)
    }

    fn add_indirect_root(&self, link: &Path) -> Result<(), StoreOpError> {
        DaemonClient::send_add_indirect_root(self, link).map_err(failed)
    }

    /// As Nix's client: the link is made here (it is the caller's file), the daemon
    /// records it as an indirect root; a temporary root covers the moment between.
    fn add_perm_root(&self, path: &StorePath, link: &Path) -> Result<PathBuf, StoreOpError> {
        DaemonClient::send_add_temp_root(self, path).map_err(failed)?;
        let link = std::path::absolute(link)
            .map_err(local(format!("cannot resolve '{}'", link.display())))?;
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)
                .map_err(local(format!("cannot replace '{}'", link.display())))?;
        }
        std::os::unix::fs::symlink(self.store_dir().display(path), &link)
            .map_err(local(format!("cannot create '{}'", link.display())))?;
        DaemonClient::send_add_indirect_root(self, &link).map_err(failed)?;
        Ok(link)
    }

    /// The daemon censors root origins for untrusted clients and always looks for
    /// runtime roots.
    fn find_roots(&self, _options: FindRoots) -> Result<Vec<(String, StorePath)>, StoreOpError> {
        let mut roots = DaemonClient::send_find_roots(self).map_err(failed)?;
        roots.sort();
        Ok(roots)
    }

    /// What a collection keeps (`keep-outputs`, `keep-derivations`, runtime roots) is
    /// the daemon's configuration, as with Nix's client: asking for other than the
    /// defaults is refused rather than ignored, and so is ignoring liveness.
    fn collect_garbage(
        &self,
        options: &GcOptions,
        _progress: &(dyn Fn(GcProgress) + Sync),
    ) -> Result<GcReport, StoreOpError> {
        if options.ignore_liveness {
            return Err(StoreOpError::new(
                "a daemon does not let clients ignore liveness",
            ));
        }
        let defaults = GcOptions::default();
        if (
            options.keep_outputs,
            options.keep_derivations,
            options.runtime_roots,
        ) != (
            defaults.keep_outputs,
            defaults.keep_derivations,
            defaults.runtime_roots,
        ) {
            return Err(StoreOpError::new(
                "through a daemon, what a collection keeps (keep-outputs, keep-derivations, \
                 runtime roots) is the daemon's configuration",
            ));
        }
        let none = BTreeSet::new();
        let (action, paths) = match &options.action {
            GcAction::DeleteDead => (gc_action::DELETE_DEAD, &none),
            GcAction::ReturnDead => (gc_action::RETURN_DEAD, &none),
            GcAction::ReturnLive => (gc_action::RETURN_LIVE, &none),
            GcAction::DeleteSpecific(paths) => (gc_action::DELETE_SPECIFIC, paths),
        };
        let (paths, bytes_freed) =
            DaemonClient::send_collect_garbage(self, action, paths, options.max_freed)
                .map_err(failed)?;
        Ok(GcReport {
            paths,
            bytes_freed,
            links_removed: 0,
        })
    }

    /// The daemon does not say what it did.
    fn optimise(
        &self,
        _progress: &(dyn Fn(OptimiseProgress) + Sync),
    ) -> Result<Option<OptimiseReport>, StoreOpError> {
        DaemonClient::send_optimise(self).map_err(failed)?;
        Ok(None)
    }

    /// The whole store only; the daemon sends the problems it finds to the log.
    fn verify_store(
        &self,
        paths: Option<&BTreeSet<StorePath>>,
        options: VerifyOptions,
    ) -> Result<VerifyOutcome, StoreOpError> {
        if paths.is_some() {
            return Err(StoreOpError::new(
                "through a daemon, verify checks the whole store (Nix's protocol names no paths)",
            ));
        }
        let found = DaemonClient::send_verify_store(self, options.check_contents, options.repair)
            .map_err(failed)?;
        Ok(VerifyOutcome::ErrorsFound(found))
    }

    /// Each NAR is spooled to a temporary file, hashed on the way (its metadata comes
    /// after it in the archive; the daemon needs it before), then sent with it. Paths the
    /// daemon has already are not sent again.
    fn import_paths(&self, input: &mut dyn BufRead) -> Result<Vec<StorePath>, StoreOpError> {
        let store_dir = self.store_dir().clone();
        let mut imported = Vec::new();
        while export::read_entry_start(input).map_err(StoreOpError::from_error)? {
            let mut spool = tempfile::tempfile().map_err(local("cannot spool a NAR"))?;
            let mut hasher = Hasher::new(HashAlgo::Sha256);
            let size = {
                let mut out = SpoolAndHash {
                    spool: &mut spool,
                    hasher: &mut hasher,
                };
                let mut input = &mut *input;
                let mut tee = TeeBufRead::new(&mut input, &mut out);
                let size = arca_nar::NarReader::new(&mut tee, arca_nar::Limits::default())
                    .read_to_end()
                    .map_err(StoreOpError::from_error)?;
                if let Some(error) = tee.error.take() {
                    return Err(local("cannot spool a NAR of the export archive")(error));
                }
                size
            };
            let trailer =
                export::read_entry_trailer(input, &store_dir).map_err(StoreOpError::from_error)?;
            let mut info = PathInfo::new(trailer.path.clone(), hasher.finish(), size);
            info.references = trailer.references;
            info.deriver = trailer.deriver;
            if !self.is_valid_path(&trailer.path).map_err(failed)? {
                io::Seek::rewind(&mut spool).map_err(local("cannot read a spooled NAR"))?;
                Store::add_nar(self, &info, &mut spool).map_err(failed)?;
            }
            imported.push(trailer.path);
        }
        Ok(imported)
    }

    /// Each source is serialised on a thread of its own while the daemon reads it.
    fn add_paths(
        &self,
        sources: &[(PathBuf, String)],
        _progress: &(dyn Fn(usize, AddProgress) + Sync),
    ) -> Result<Vec<StorePath>, StoreOpError> {
        let mut added = Vec::with_capacity(sources.len());
        for (source, name) in sources {
            let (mut reader, mut writer) =
                io::pipe().map_err(local("cannot make a pipe for a NAR"))?;
            let source_path = source.clone();
            let dumper = std::thread::spawn(move || {
                let result = arca_nar::dump_path(
                    &source_path,
                    &mut writer,
                    &arca_nar::DumpOptions::default(),
                );
                drop(writer);
                result
            });
            let path = DaemonClient::send_add_dump(
                self,
                name,
                AddressingMethod::NIX_STORE_ADD,
                &BTreeSet::new(),
                &mut reader,
            );
            drop(reader);
            match dumper.join() {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    return Err(StoreOpError::from_error(DumpFailure {
                        source_path: source.clone(),
                        source: error,
                    }))
                }
                Err(_) => return Err(StoreOpError::new("the NAR writer panicked")),
            }
            added.push(path.map_err(failed)?);
        }
        Ok(added)
    }

    /// Its NAR is one regular file, the ATerm text.
    fn read_derivation(&self, path: &StorePath) -> Result<Derivation, StoreOpError> {
        read_derivation_file(self, path)
    }

    /// From an Arca daemon, read whole (Nix's client reads a log whole too); from another,
    /// read from its log files directly (see [`DaemonClient::set_log_dir`]), as Nix's
    /// client does.
    fn read_build_log(&self, drv: &StorePath) -> Result<Option<Box<dyn Read>>, StoreOpError> {
        if !self.is_arca() {
            let base = drv.as_str();
            let file = self
                .log_dir()
                .join(&base[..2])
                .join(format!("{}.bz2", &base[2..]));
            return match std::fs::File::open(&file) {
                Ok(file) => Ok(Some(Box::new(bzip2::read::MultiBzDecoder::new(file)))),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(local(format!("cannot read '{}'", file.display()))(error)),
            };
        }
        let mut text = Vec::new();
        if DaemonClient::send_read_build_log(self, drv, &mut text).map_err(failed)? {
            Ok(Some(Box::new(io::Cursor::new(text))))
        } else {
            Ok(None)
        }
    }

    fn add_build_log(&self, drv: &StorePath, text: &mut dyn Read) -> Result<(), StoreOpError> {
        DaemonClient::send_add_build_log(self, drv, text).map_err(failed)
    }
}

/// A source could not be serialised.
#[derive(Debug, thiserror::Error)]
#[error("cannot serialise '{}'", source_path.display())]
struct DumpFailure {
    source_path: PathBuf,
    #[source]
    source: arca_nar::DumpError,
}

/// Writes everything to a spool file and a hasher at once.
struct SpoolAndHash<'a> {
    spool: &'a mut std::fs::File,
    hasher: &'a mut Hasher,
}

impl Write for SpoolAndHash<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.spool.write_all(buf)?;
        self.hasher.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.spool.flush()
    }
}

/// A daemon's log message as a build event (`None`: nothing to tell).
fn log_event(store_dir: &StoreDir, log: DaemonLog) -> Option<BuildEvent> {
    let drv_path = |text: &str| store_dir.parse_path(text).ok();
    Some(match log {
        DaemonLog::BuildStarted { drv } => BuildEvent::Started {
            drv: drv_path(&drv)?,
            machine: None,
        },
        DaemonLog::BuildLine { drv, line } => match drv_path(&drv) {
            Some(drv) => BuildEvent::Log { drv, line },
            None => BuildEvent::Message {
                text: format!("{line}\n"),
            },
        },
        DaemonLog::Message(text) => BuildEvent::Message { text },
    })
}

/// The largest `.drv` file read from another store (Nix's biggest are a few MiB).
const MAX_DRV_NAR: u64 = 64 << 20;

/// The derivation at `path` of a store that can only dump it: its NAR (a single regular
/// file, at most [`MAX_DRV_NAR`] bytes), parsed.
pub(crate) fn read_derivation_file<S: Store>(
    store: &S,
    path: &StorePath,
) -> Result<Derivation, StoreOpError>
where
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let store_dir = store.store_dir();
    let mut nar = Vec::new();
    store
        .nar_from_path(
            path,
            &mut CappedWriter {
                out: &mut nar,
                left: MAX_DRV_NAR,
            },
        )
        .map_err(StoreOpError::from_error)?;
    let mut reader = arca_nar::NarReader::new(&nar[..], arca_nar::Limits::default());
    let mut text = Vec::new();
    match reader.next().map_err(StoreOpError::from_error)? {
        Some(arca_nar::Event::Regular { .. }) => {
            reader
                .contents()
                .read_to_end(&mut text)
                .map_err(local("cannot read a derivation's NAR"))?;
        }
        _ => {
            return Err(StoreOpError::new(format!(
                "'{}' is not a derivation file",
                store_dir.display(path)
            )))
        }
    }
    Derivation::parse_drv_file(store_dir, path, &text).map_err(StoreOpError::from_error)
}

/// A writer that refuses to take more than `left` bytes.
struct CappedWriter<'a> {
    out: &'a mut Vec<u8>,
    left: u64,
}

impl Write for CappedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other(format!(
                "a derivation's NAR is larger than {MAX_DRV_NAR} bytes"
            )));
        }
        self.left -= buf.len() as u64;
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
