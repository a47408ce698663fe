//! `arca build` and `arca log`.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use arca_store_core::derivation::OutputName;
use arca_store_core::{
    BuildEvent, BuildMode, DerivedPath, Settings, Store, StoreDir, StoreOps, StorePath,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::store::OnStore;
use crate::store_commands::parse_path_arg;
use crate::GlobalArgs;

/// Build derivations (== `nix-store --realise DRV...`): prints the output paths.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// `.drv` paths, optionally with outputs: `DRV^out,dev` (or `DRV!out`).
    #[arg(required = true)]
    derivations: Vec<String>,
    /// Builds at once here (default: the max-jobs setting, 1 unless nix.conf says
    /// otherwise); 0 builds on the --builders machines only.
    #[arg(long, short = 'j')]
    max_jobs: Option<usize>,
    /// Remote machines to build on, in Nix's machines format (`URI SYSTEMS KEY MAX-JOBS
    /// SPEED FEATURES MANDATORY HOST-KEY`, lines separated by `;`, `@FILE` for a file;
    /// default: the builders setting, `@/etc/nix/machines`).
    #[arg(long, value_name = "MACHINES")]
    builders: Option<String>,
    /// NIX_BUILD_CORES of each builder (default: the number of CPUs).
    #[arg(long)]
    cores: Option<u32>,
    /// Go on building what does not depend on a failure.
    #[arg(long, short = 'k')]
    keep_going: bool,
    /// Keep the build directory of a failed build.
    #[arg(long, short = 'K')]
    keep_failed: bool,
    /// Print build logs on stderr as they come.
    #[arg(long = "print-build-logs", short = 'L')]
    print_build_logs: bool,
    /// Rebuild and compare with the valid outputs; register nothing.
    #[arg(long)]
    check: bool,
    /// Rebuild outputs that no longer match their registered hash.
    #[arg(long)]
    repair: bool,
    /// Seconds a build may take.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Seconds a builder may stay silent.
    #[arg(long, value_name = "SECONDS")]
    max_silent_time: Option<u64>,
    /// Bytes of log a builder may write.
    #[arg(long, value_name = "BYTES")]
    max_log_size: Option<u64>,
    /// Extra host paths in the sandbox: `PATH`, `TARGET=SOURCE`, `?` suffix if optional.
    #[arg(long = "sandbox-path", value_name = "PATH")]
    sandbox_paths: Vec<arca_store_core::SandboxPath>,
    /// Make symlinks to the outputs that keep them alive as garbage collector roots, as
    /// `nix-build -o` does: LINK for the first target's `out`, LINK-<output> for its
    /// other outputs, LINK-2, LINK-2-<output>, … for the next targets.
    #[arg(long, short = 'o', value_name = "LINK")]
    out_link: Option<PathBuf>,
}

pub fn build(args: BuildArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    // The settings (nix.conf, --option), then this command's flags over them. (A daemon
    // builds with its own, and takes from these what its trust in this client allows.)
    let mut settings = global.settings()?;
    settings
        .sandbox_paths
        .extend(args.sandbox_paths.iter().cloned());
    settings.keep_going |= args.keep_going;
    settings.keep_failed |= args.keep_failed;
    if let Some(max_jobs) = args.max_jobs {
        settings.max_jobs = max_jobs;
    }
    if let Some(builders) = &args.builders {
        settings.builders.clone_from(builders);
    }
    if let Some(cores) = args.cores {
        settings.cores = cores;
    }
    if let Some(timeout) = args.timeout {
        settings.timeout = timeout;
    }
    if let Some(max_silent_time) = args.max_silent_time {
        settings.max_silent_time = max_silent_time;
    }
    if let Some(max_log_size) = args.max_log_size {
        settings.max_log_size = max_log_size;
    }
    crate::store::on_store_with(global, Some(&settings.clone()), Build { args, settings })
}

struct Build {
    args: BuildArgs,
    settings: Settings,
}

impl OnStore for Build {
    type Output = ();

    fn run<S: StoreOps>(self, store: &S) -> anyhow::Result<()> {
        let Build { args, settings } = self;
        let store_dir = store.store_dir().clone();
        let mut targets = Vec::new();
        for argument in &args.derivations {
            let (path, outputs) = match argument.split_once(['^', '!']) {
                Some((path, outputs)) => (path, Some(outputs)),
                None => (argument.as_str(), None),
            };
            // The path may be a symlink to a `.drv` (followed as Nix does).
            let drv = parse_path_arg(&store_dir, path)?;
            let target = match outputs {
                Some(outputs) => DerivedPath::parse(
                    &store_dir,
                    &format!("{}!{outputs}", store_dir.display(&drv)),
                )
                .with_context(|| format!("bad output name in '{argument}'"))?,
                None => DerivedPath::all_outputs(drv),
            };
            if !target.path.is_derivation() {
                bail!("'{}' is not a derivation", store_dir.display(&target.path));
            }
            if !store.is_valid_path(&target.path)? {
                bail!("path '{}' is not valid", store_dir.display(&target.path));
            }
            targets.push(target);
        }
        let mode = if args.check {
            BuildMode::Check
        } else if args.repair {
            BuildMode::Repair
        } else {
            BuildMode::Normal
        };

        // A daemon gets what a client may set (as Nix's client sends it); the local store
        // builds with all of it.
        store.apply_settings(&settings)?;
        let mut display = Display::new(args.print_build_logs);
        let results = store.build_paths(&targets, mode, &settings, &mut |event| {
            display.event(&store_dir, event)
        });
        display.finish();
        let results = results?;

        let mut failed = Vec::new();
        let mut stdout = std::io::stdout().lock();
        for (index, (target, result)) in results.iter().enumerate() {
            let built = match result {
                Ok(built) => built,
                Err(message) => {
                    // A failure the build events did not already report (a failed
                    // dependency, a refusal).
                    if !display.reported(&target.path) {
                        eprintln!("error: {message}");
                    }
                    failed.push(store_dir.display(&target.path));
                    continue;
                }
            };
            let mut outputs: Vec<(OutputName, StorePath)> = built
                .outputs
                .iter()
                .map(|r| (r.id.output.clone(), r.out_path.clone()))
                .collect();
            if outputs.is_empty() {
                // A daemon too old to name them: the registered outputs.
                for (name, path) in store.query_derivation_outputs(&target.path)? {
                    outputs.push((OutputName::new(&name)?, path));
                }
            }
            outputs.retain(|(name, _)| target.wants(name));
            if let Some(out_link) = &args.out_link {
                for (name, path) in &outputs {
                    let mut link = out_link.as_os_str().to_owned();
                    if index > 0 {
                        link.push(format!("-{}", index + 1));
                    }
                    if name.as_str() != "out" {
                        link.push(format!("-{name}"));
                    }
                    store.add_perm_root(path, Path::new(&link))?;
                }
            }
            // Per target, sorted by path, as `nix-store --realise` prints them.
            let printed: BTreeSet<String> = outputs
                .iter()
                .map(|(_, path)| store_dir.display(path))
                .collect();
            for path in printed {
                writeln!(stdout, "{path}")?;
            }
        }
        if let Some(first) = display.first_failure().or(failed.first().cloned()) {
            bail!(
                "build of {} failed",
                if failed.is_empty() {
                    first
                } else {
                    failed.join(", ")
                }
            );
        }
        Ok(())
    }
}

/// How build events reach the user: a progress bar with the running builds on a
/// terminal, plain lines otherwise; build logs with `-L`.
struct Display {
    bar: Option<ProgressBar>,
    print_logs: bool,
    running: BTreeSet<String>,
    done: u64,
    /// The derivations whose failure was printed, in order.
    failures: Vec<StorePath>,
}

impl Display {
    fn new(print_logs: bool) -> Display {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("[{pos}/{len} built] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Display {
            bar,
            print_logs,
            running: BTreeSet::new(),
            done: 0,
            failures: Vec::new(),
        }
    }

    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn event(&mut self, store_dir: &StoreDir, event: &BuildEvent) {
        let name = |drv: &StorePath| drv.name().trim_end_matches(".drv").to_string();
        match event {
            BuildEvent::Planned { to_build } => {
                if let Some(bar) = &self.bar {
                    bar.set_length(*to_build as u64);
                }
                if *to_build > 0 {
                    self.say(&if *to_build == 1 {
                        "this derivation will be built:".to_string()
                    } else {
                        format!("these {to_build} derivations will be built:")
                    });
                }
            }
            // Nix's list under the count.
            BuildEvent::Queued { drv } => self.say(&format!("  {}", store_dir.display(drv))),
            BuildEvent::Copied {
                path,
                machine,
                direction,
            } => {
                let way = match direction {
                    arca_store_core::CopyDirection::ToMachine => "to",
                    arca_store_core::CopyDirection::FromMachine => "from",
                };
                self.say(&format!(
                    "copying path '{}' {way} '{machine}'...",
                    store_dir.display(path)
                ));
            }
            BuildEvent::Started { drv, machine } => {
                match machine {
                    Some(machine) => self.say(&format!(
                        "building '{}' on '{machine}'...",
                        store_dir.display(drv)
                    )),
                    None => self.say(&format!("building '{}'...", store_dir.display(drv))),
                }
                self.running.insert(name(drv));
            }
            BuildEvent::Log { drv, line } => {
                if self.print_logs {
                    self.say(&format!("{}> {line}", name(drv)));
                }
            }
            BuildEvent::BuilderExited {
                drv,
                user_time,
                system_time,
                ..
            } => {
                tracing::debug!(
                    "'{}': {:.3} s user, {:.3} s system",
                    store_dir.display(drv),
                    user_time.as_secs_f64(),
                    system_time.as_secs_f64()
                );
            }
            BuildEvent::KeptBuildDir { path, .. } => {
                self.say(&format!(
                    "note: keeping build directory '{}'",
                    path.display()
                ));
            }
            BuildEvent::Message { text } => {
                self.say(text.trim_end_matches('\n'));
            }
            BuildEvent::Failed { drv, message } => {
                self.say(&format!("error: {message}"));
                self.running.remove(&name(drv));
                self.failures.push(drv.clone());
                self.done += 1;
            }
            BuildEvent::Built { drv, .. } => {
                self.running.remove(&name(drv));
                self.done += 1;
            }
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            bar.set_message(self.running.iter().cloned().collect::<Vec<_>>().join(", "));
        }
    }

    /// Whether the failure of `drv` was printed.
    fn reported(&self, drv: &StorePath) -> bool {
        self.failures.contains(drv)
    }

    /// The first failed derivation, as the user sees it.
    fn first_failure(&self) -> Option<String> {
        self.failures
            .first()
            .map(|drv| StoreDir::default().display(drv))
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Print the build log of a derivation or of an output it built (== `nix-store -l`).
#[derive(clap::Args)]
pub struct LogArgs {
    /// A `.drv` path or an output path.
    path: String,
}

pub fn log(args: LogArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let substituters = global.settings()?.substituters;
    crate::store::on_store(global, Log { args, substituters })
}

/// `arca log`, with the substituters to ask when the store has no log (as `nix log`
/// asks the binary caches' `log/`).
struct Log {
    args: LogArgs,
    substituters: Vec<String>,
}

impl OnStore for Log {
    type Output = ();

    fn run<S: StoreOps>(self, store: &S) -> anyhow::Result<()> {
        let path = parse_path_arg(store.store_dir(), &self.args.path)?;
        let mut candidates = log_candidates(store, &path)?;
        for drv in &candidates {
            if let Some(mut log) = store.read_build_log(drv)? {
                std::io::copy(&mut log, &mut std::io::stdout().lock())?;
                return Ok(());
            }
        }
        for url in &self.substituters {
            let cache = match arca_cache::BinaryCache::open(
                url,
                store.store_dir(),
                arca_cache::OpenMode::Read,
            ) {
                Ok(cache) => cache,
                Err(error) => {
                    eprintln!("warning: disabling substituter '{url}': {error:#}");
                    continue;
                }
            };
            // The cache may know the deriver of a path this store lacks.
            if !path.is_derivation() {
                if let Ok(Some(narinfo)) = cache.narinfo(&path) {
                    candidates.extend(narinfo.info.deriver);
                }
            }
            for drv in &candidates {
                if let Some(mut log) = cache.log(drv)? {
                    std::io::copy(&mut log, &mut std::io::stdout().lock())?;
                    return Ok(());
                }
            }
        }
        bail!(
            "build log of '{}' is not available",
            store.store_dir().display(&path)
        )
    }
}

/// The derivations whose log may be `path`'s: itself, or its deriver and valid derivers.
fn log_candidates<S: Store>(store: &S, path: &StorePath) -> anyhow::Result<Vec<StorePath>>
where
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let mut candidates = vec![path.clone()];
    if !path.is_derivation() {
        if let Some(info) = store.query_path_info(path)? {
            candidates.extend(info.deriver);
        }
        candidates.extend(store.query_valid_derivers(path)?);
    }
    Ok(candidates)
}
