//! `arca build` and `arca log`.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use arca_build::{BuildEvent, BuildOptions, BuildResult, BuildTarget};
use arca_store_core::derivation::OutputName;
use arca_store_core::{Store, StorePath};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::store_commands::{open_store, parse_path_arg};
use crate::GlobalArgs;

/// Build derivations (== `nix-store --realise DRV...`): prints the output paths.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// `.drv` paths, optionally with outputs: `DRV^out,dev` (or `DRV!out`).
    #[arg(required = true)]
    derivations: Vec<String>,
    /// Builds at once (default: the max-jobs setting, 1 unless nix.conf says otherwise).
    #[arg(long, short = 'j')]
    max_jobs: Option<usize>,
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
    sandbox_paths: Vec<String>,
    /// Make symlinks to the outputs that keep them alive as garbage collector roots, as
    /// `nix-build -o` does: LINK for the first target's `out`, LINK-<output> for its
    /// other outputs, LINK-2, LINK-2-<output>, … for the next targets.
    #[arg(long, short = 'o', value_name = "LINK")]
    out_link: Option<PathBuf>,
}

pub fn build(args: &BuildArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if let Some(client) = crate::store::daemon_client(global)? {
        return build_through(&client, args);
    }
    let store = open_store(global)?;
    let mut targets = Vec::new();
    for argument in &args.derivations {
        let (path, outputs) = match argument.split_once(['^', '!']) {
            Some((path, outputs)) if outputs != "*" => {
                let names = outputs
                    .split(',')
                    .map(|name| {
                        OutputName::new(name)
                            .with_context(|| format!("bad output name in '{argument}'"))
                    })
                    .collect::<anyhow::Result<BTreeSet<_>>>()?;
                (path, Some(names))
            }
            Some((path, _)) => (path, None),
            None => (argument.as_str(), None),
        };
        let drv = parse_path_arg(store.store_dir(), path)?;
        if !drv.is_derivation() {
            bail!("'{}' is not a derivation", store.store_dir().display(&drv));
        }
        if !store.is_valid_path(&drv)? {
            bail!("path '{}' is not valid", store.store_dir().display(&drv));
        }
        targets.push(BuildTarget { drv, outputs });
    }
    // The settings (nix.conf, --option), then this command's flags over them.
    let settings = global.settings()?;
    let (root, store_options) = store.opened_with();
    let recursive = arca_daemon::recursive::RecursiveDaemon {
        root: root.to_owned(),
        store: store_options.clone(),
        settings: settings.clone(),
        limits: Default::default(),
    };
    let mut options = BuildOptions {
        check: args.check,
        repair: args.repair,
        recursive_nix: Some(std::sync::Arc::new(recursive)),
        ..arca_build::BuildOptions::from_settings(&settings)?
    };
    options
        .sandbox_paths
        .extend(args.sandbox_paths.iter().cloned());
    options.keep_going |= args.keep_going;
    options.keep_failed |= args.keep_failed;
    if let Some(max_jobs) = args.max_jobs {
        options.max_jobs = max_jobs;
    }
    if let Some(cores) = args.cores {
        options.cores = cores;
    }
    if let Some(timeout) = args.timeout {
        options.timeout = Some(Duration::from_secs(timeout));
    }
    if let Some(max_silent_time) = args.max_silent_time {
        options.max_silent_time = Some(Duration::from_secs(max_silent_time));
    }
    if let Some(max_log_size) = args.max_log_size {
        options.max_log_size = Some(max_log_size);
    }

    let store_dir = store.store_dir().clone();
    let mut display = Display::new(args.print_build_logs);
    let results = arca_build::build(&store, &targets, &options, &mut |event| {
        display.event(&store_dir, event)
    })?;
    display.finish();

    let mut failures = Vec::new();
    let mut stdout = std::io::stdout().lock();
    for (index, target) in targets.iter().enumerate() {
        match results.get(&target.drv) {
            Some(result) => match result.outputs() {
                Some(outputs) => {
                    if let Some(out_link) = &args.out_link {
                        for (name, path) in outputs {
                            if target
                                .outputs
                                .as_ref()
                                .is_some_and(|wanted| !wanted.contains(name))
                            {
                                continue;
                            }
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
                        .filter(|(name, _)| {
                            target
                                .outputs
                                .as_ref()
                                .is_none_or(|wanted| wanted.contains(*name))
                        })
                        .map(|(_, path)| store_dir.display(path))
                        .collect();
                    for path in printed {
                        writeln!(stdout, "{path}")?;
                    }
                }
                None => failures.push(target.drv.clone()),
            },
            None => failures.push(target.drv.clone()),
        }
    }
    let mut first_error = None;
    for (drv, result) in &results {
        if let BuildResult::Failed(error) = result {
            // With its causes, as the top-level error is printed (`{:#}`): "cannot read
            // output …: '…' changed while being archived".
            let mut message = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("error: {message}");
            first_error.get_or_insert_with(|| store_dir.display(drv));
        }
    }
    if !failures.is_empty() || first_error.is_some() {
        let failed: Vec<String> = failures.iter().map(|d| store_dir.display(d)).collect();
        bail!(
            "build of {} failed",
            if failed.is_empty() {
                first_error.unwrap_or_default()
            } else {
                failed.join(", ")
            }
        );
    }
    Ok(())
}

/// How build events reach the user: a progress bar with the running builds on a
/// terminal, plain lines otherwise; build logs with `-L`.
struct Display {
    bar: Option<ProgressBar>,
    print_logs: bool,
    running: BTreeSet<String>,
    done: u64,
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
        }
    }

    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn event(&mut self, store_dir: &arca_store_core::StoreDir, event: BuildEvent) {
        let name = |drv: &StorePath| drv.name().trim_end_matches(".drv").to_string();
        match event {
            BuildEvent::Planned { to_build } => {
                if let Some(bar) = &self.bar {
                    bar.set_length(to_build as u64);
                }
                if to_build > 0 {
                    self.say(&if to_build == 1 {
                        "this derivation will be built".to_string()
                    } else {
                        format!("these {to_build} derivations will be built")
                    });
                }
            }
            BuildEvent::Started { drv } => {
                self.say(&format!("building '{}'...", store_dir.display(&drv)));
                self.running.insert(name(&drv));
            }
            BuildEvent::Log { drv, line } => {
                if self.print_logs {
                    self.say(&format!("{}> {line}", name(&drv)));
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
                    store_dir.display(&drv),
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
            BuildEvent::Built { drv, .. } | BuildEvent::Failed { drv, .. } => {
                self.running.remove(&name(&drv));
                self.done += 1;
            }
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            bar.set_message(self.running.iter().cloned().collect::<Vec<_>>().join(", "));
        }
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

pub fn log(args: &LogArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if let Some(client) = crate::store::daemon_client(global)? {
        let path = parse_path_arg(client.store_dir(), &args.path)?;
        let mut out = std::io::stdout().lock();
        for drv in log_candidates(&client, &path)? {
            let found = if client.is_arca() {
                client.read_build_log(&drv, &mut out)?
            } else {
                // As Nix's own client does with a daemon: its log files are read
                // directly, under the root the store URI names (`?root=`, else `/`).
                let root = crate::store::daemon_root(global);
                match arca_build::open_log(&root.join("nix/var/log/nix/drvs"), &drv) {
                    Ok(mut log) => std::io::copy(&mut log, &mut out).map(|_| true)?,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
                    Err(error) => return Err(error.into()),
                }
            };
            if found {
                return Ok(());
            }
        }
        bail!(
            "build log of '{}' is not available",
            client.store_dir().display(&path)
        );
    }
    let store = open_store(global)?;
    let path = parse_path_arg(store.store_dir(), &args.path)?;
    for drv in log_candidates(&store, &path)? {
        if let Ok(text) = arca_build::read_log(store.log_dir(), &drv) {
            std::io::stdout().lock().write_all(&text)?;
            return Ok(());
        }
    }
    bail!(
        "build log of '{}' is not available",
        store.store_dir().display(&path)
    )
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

/// `arca build --store unix://…`: the daemon builds (with its own settings); the output
/// paths are printed as for a local build.
fn build_through(client: &arca_daemon_proto::DaemonClient, args: &BuildArgs) -> anyhow::Result<()> {
    let store_dir = client.store_dir().clone();
    let mut targets = Vec::new();
    for argument in &args.derivations {
        let (path, outputs) = match argument.split_once(['^', '!']) {
            Some((path, outputs)) if outputs != "*" => {
                (path, outputs.split(',').map(str::to_owned).collect())
            }
            Some((path, _)) => (path, BTreeSet::new()),
            None => (argument.as_str(), BTreeSet::new()),
        };
        let drv = parse_path_arg(&store_dir, path)?;
        if !drv.is_derivation() {
            bail!("'{}' is not a derivation", store_dir.display(&drv));
        }
        targets.push((drv, outputs));
    }
    // The daemon streams the builds' logs; printed as a local build prints them.
    let print_logs = args.print_build_logs;
    let results = client.build_paths_logged(&targets, &mut |log| match log {
        arca_daemon_proto::DaemonLog::BuildStarted { drv } => eprintln!("building '{drv}'..."),
        arca_daemon_proto::DaemonLog::BuildLine { drv, line } if print_logs => {
            match store_dir.parse_path(&drv) {
                Ok(path) => eprintln!("{}> {line}", path.name().trim_end_matches(".drv")),
                Err(_) => eprintln!("{line}"),
            }
        }
        arca_daemon_proto::DaemonLog::Message(text) => eprint!("{text}"),
        _ => {}
    })?;
    let mut failed = false;
    for (target, result) in &results {
        if let Err(message) = result {
            eprintln!("error: building '{target}': {message}");
            failed = true;
        }
    }
    if failed {
        bail!(
            "build of {} derivation(s) failed",
            results.iter().filter(|r| r.1.is_err()).count()
        );
    }
    let mut stdout = std::io::stdout().lock();
    for (drv, wanted) in &targets {
        let outputs = client.query_derivation_outputs(drv)?;
        let printed: BTreeSet<String> = outputs
            .iter()
            .filter(|(name, _)| wanted.is_empty() || wanted.contains(*name))
            .map(|(_, path)| store_dir.display(path))
            .collect();
        for path in printed {
            writeln!(stdout, "{path}")?;
        }
    }
    Ok(())
}
