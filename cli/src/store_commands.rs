//! `arca store …` and `arca path-info`, written once against the store interface
//! (`StoreOps`): the same code runs on a local store and through a daemon.

use std::collections::BTreeSet;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use arca_store_core::{
    dependency_order, FindRoots, GcAction, GcOptions, GcReport, HashAlgo, Store, StoreDir,
    StoreOps, StorePath, VerifyOptions, VerifyOutcome, VerifyProblem,
};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::store::OnStore;
use crate::GlobalArgs;

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Add files or trees to the store (== `nix-store --add`); prints one path per argument.
    AddPath(AddPathArgs),
    /// Add a regular file as a flat fixed-output path (== `nix-store --add-fixed sha256`).
    AddFile(AddFileArgs),
    /// Write paths in Nix's export format to stdout (== `nix-store --export`).
    Export(PathsArgs),
    /// Import an export archive from stdin (== `nix-store --import`); prints the paths.
    Import,
    /// Query the registry (== `nix-store -q`).
    Query(QueryArgs),
    /// Check the store against the registry (== `nix-store --verify`), and with
    /// --sigs-needed the paths' signatures (== `nix store verify --sigs-needed`).
    Verify(VerifyArgs),
    /// Sign paths with a secret key, adding to the signatures they have (== `nix store
    /// sign`).
    Sign(SignArgs),
    /// Delete paths that are dead: no root keeps them and nothing refers to them
    /// (== `nix-store --delete`).
    Delete(DeleteArgs),
    /// Delete every path no root keeps alive (== `nix-store --gc`).
    Gc(GcArgs),
    /// Hard-link identical files in the store (== `nix-store --optimise`).
    Optimise(crate::optimise::OptimiseArgs),
    /// Make LINK a symlink to PATH registered as a garbage collector root (==
    /// `nix-store --realise PATH --add-root LINK`).
    AddRoot(AddRootArgs),
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Delete even paths that roots keep alive (only references are respected).
    #[arg(long)]
    pub(crate) ignore_liveness: bool,
    #[arg(required = true, value_name = "PATH")]
    pub(crate) paths: Vec<String>,
}

#[derive(Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub(crate) action: GcActionArgs,
    /// Stop after freeing this many bytes (suffixes K, M, G, T as Nix accepts).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub(crate) max_freed: Option<u64>,
    /// Keep the outputs of live derivations (Nix's keep-outputs).
    #[arg(long)]
    pub(crate) keep_outputs: bool,
    /// Don't keep the derivations of live outputs (Nix's keep-derivations = false).
    #[arg(long)]
    pub(crate) no_keep_derivations: bool,
    /// Don't look for runtime roots in /proc.
    #[arg(long)]
    pub(crate) no_runtime_roots: bool,
}

/// What `store gc` does instead of deleting (at most one).
#[derive(Args)]
#[group(id = "gc-action", multiple = false)]
pub struct GcActionArgs {
    /// Print the roots and the paths they keep alive, don't delete anything.
    #[arg(long)]
    pub(crate) print_roots: bool,
    /// Print the live paths, don't delete anything.
    #[arg(long)]
    pub(crate) print_live: bool,
    /// Print the paths that would be deleted, don't delete anything.
    #[arg(long)]
    pub(crate) print_dead: bool,
    /// Same as --print-dead, and say how many paths that is.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Args)]
pub struct AddRootArgs {
    /// The symlink to create (an indirect root, like a `result` link).
    pub(crate) link: PathBuf,
    /// The store path it points to.
    pub(crate) path: String,
}

#[derive(Args)]
pub struct AddPathArgs {
    /// Name of the store path (default: the file's base name).
    #[arg(long)]
    pub(crate) name: Option<String>,
    #[arg(required = true)]
    pub(crate) paths: Vec<PathBuf>,
}

#[derive(Args)]
pub struct AddFileArgs {
    /// Name of the store path (default: the file's base name).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Hash algorithm of the fixed-output path.
    #[arg(long = "type", default_value = "sha256", value_parser = parse_algo)]
    pub(crate) algo: HashAlgo,
    pub(crate) file: PathBuf,
}

#[derive(Args)]
pub struct PathsArgs {
    #[arg(required = true, value_name = "PATH")]
    pub(crate) paths: Vec<String>,
}

#[derive(Args)]
#[group(id = "query", required = true, multiple = false)]
pub struct QueryFlags {
    /// Paths each path refers to.
    #[arg(long)]
    pub(crate) references: bool,
    /// Paths that refer to each path.
    #[arg(long)]
    pub(crate) referrers: bool,
    /// The closure of the paths (dependencies first).
    #[arg(long, short = 'R')]
    pub(crate) requisites: bool,
    /// Paths that refer to the paths, transitively.
    #[arg(long)]
    pub(crate) referrers_closure: bool,
    /// The derivation each path was built by.
    #[arg(long)]
    pub(crate) deriver: bool,
    /// The output paths of derivations.
    #[arg(long)]
    pub(crate) outputs: bool,
    /// The garbage collector roots that keep the paths alive (`LINK -> PATH`).
    #[arg(long)]
    pub(crate) roots: bool,
}

#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub(crate) flags: QueryFlags,
    /// With --requisites: add the outputs of derivations in the closure.
    #[arg(long)]
    pub(crate) include_outputs: bool,
    #[arg(required = true, value_name = "PATH")]
    pub(crate) paths: Vec<String>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Re-hash every path and compare with the registry.
    #[arg(long)]
    pub(crate) check_contents: bool,
    /// Fix what can be fixed.
    #[arg(long)]
    pub(crate) repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also require every path checked to carry at least N signatures by keys of
    /// `trusted-public-keys` (a content-addressed path needs none); untrusted paths are
    /// listed and the command fails.
    #[arg(long, value_name = "N")]
    pub(crate) sigs_needed: Option<usize>,
    /// The settings' `trusted-public-keys`, filled in before running.
    #[arg(skip)]
    pub(crate) trusted_keys: Vec<arca_store_core::PublicKey>,
    /// Paths to check (default: all).
    pub(crate) paths: Vec<String>,
}

#[derive(Args)]
pub struct SignArgs {
    /// The secret key file (as `nix key generate-secret` writes it).
    #[arg(long, short = 'k', value_name = "FILE")]
    pub(crate) key_file: PathBuf,
    /// Sign the closures of the paths.
    #[arg(long, short)]
    pub(crate) recursive: bool,
    #[arg(required = true, value_name = "PATH")]
    pub(crate) paths: Vec<String>,
}

#[derive(Args)]
pub struct PathInfoArgs {
    /// Print JSON (the shape of `nix path-info --json`).
    #[arg(long)]
    json: bool,
    /// Apply to the closure of the paths.
    #[arg(short, long)]
    recursive: bool,
    /// Print the NAR size.
    #[arg(short = 's', long)]
    size: bool,
    /// Print the closure size.
    #[arg(short = 'S', long)]
    closure_size: bool,
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
}

fn parse_algo(text: &str) -> Result<HashAlgo, String> {
    HashAlgo::from_name(text).map_err(|error| error.to_string())
}

/// Turns a command-line argument into a store path: a path in the store dir (or below a
/// store path), or a symlink to one such as a `result` link (followed like Nix does).
pub fn parse_path_arg(store_dir: &StoreDir, argument: &str) -> anyhow::Result<StorePath> {
    let mut current = PathBuf::from(argument);
    for _ in 0..32 {
        let text = current.to_string_lossy().into_owned();
        if text.starts_with(&format!("{store_dir}/")) {
            return Ok(store_dir.parse_path_prefix(&text)?.0);
        }
        let target = std::fs::read_link(&current)
            .with_context(|| format!("path '{argument}' is not in the Nix store"))?;
        current = match current.parent() {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        };
    }
    bail!("too many levels of symbolic links in '{argument}'")
}

pub fn parse_paths<S: Store>(
    store: &S,
    arguments: &[String],
) -> anyhow::Result<BTreeSet<StorePath>> {
    arguments
        .iter()
        .map(|a| parse_path_arg(store.store_dir(), a))
        .collect()
}

pub fn require_valid<S: Store>(store: &S, paths: &BTreeSet<StorePath>) -> anyhow::Result<()>
where
    S::Error: std::error::Error + Send + Sync + 'static,
{
    for path in paths {
        if !store.is_valid_path(path)? {
            bail!("path '{}' is not valid", store.store_dir().display(path));
        }
    }
    Ok(())
}

pub fn default_name(path: &Path, name: &Option<String>) -> anyhow::Result<String> {
    if let Some(name) = name {
        return Ok(name.clone());
    }
    let base = path
        .file_name()
        .with_context(|| format!("'{}' has no file name; pass --name", path.display()))?;
    Ok(base.to_string_lossy().into_owned())
}

pub fn run(mut command: StoreCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    if let StoreCommand::Verify(args) = &mut command {
        if args.sigs_needed.is_some() {
            args.trusted_keys = global.settings()?.trusted_public_keys;
        }
    }
    crate::store::on_store(global, command)
}

impl OnStore for StoreCommand {
    type Output = ();

    fn run<S: StoreOps>(self, store: &S) -> anyhow::Result<()> {
        let store_dir = store.store_dir().clone();
        let mut out = BufWriter::new(io::stdout().lock());
        match self {
            StoreCommand::AddPath(args) => {
                let sources = args
                    .paths
                    .iter()
                    .map(|source| Ok((source.clone(), default_name(source, &args.name)?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                // One progress bar at a time, for the source being added.
                let current: std::sync::Mutex<Option<(usize, crate::progress::AddBar)>> =
                    std::sync::Mutex::new(None);
                let paths = store.add_paths(&sources, &|index, progress| {
                    let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
                    if current.as_ref().map(|(shown, _)| *shown) != Some(index) {
                        if let Some((_, bar)) = current.take() {
                            bar.finish();
                        }
                        *current = Some((index, crate::progress::AddBar::new(&sources[index].0)));
                    }
                    if let Some((_, bar)) = current.as_ref() {
                        bar.update(progress);
                    }
                })?;
                if let Some((_, bar)) = current.into_inner().unwrap_or_else(|p| p.into_inner()) {
                    bar.finish();
                }
                for path in &paths {
                    writeln!(out, "{}", store_dir.display(path))?;
                }
            }
            StoreCommand::AddFile(args) => {
                let name = default_name(&args.file, &args.name)?;
                let path = store.add_file(&args.file, &name, args.algo)?;
                writeln!(out, "{}", store_dir.display(&path))?;
            }
            StoreCommand::Export(args) => {
                let paths = parse_paths(store, &args.paths)?;
                require_valid(store, &paths)?;
                store.export_paths(&paths, &mut out)?;
            }
            StoreCommand::Import => {
                let mut input = BufReader::with_capacity(1 << 16, io::stdin().lock());
                for path in store.import_paths(&mut input)? {
                    writeln!(out, "{}", store_dir.display(&path))?;
                }
            }
            StoreCommand::Query(args) => query(store, &args, &mut out)?,
            StoreCommand::Verify(args) => {
                let paths = if args.paths.is_empty() {
                    None
                } else {
                    Some(parse_paths(store, &args.paths)?)
                };
                let options = VerifyOptions {
                    check_contents: args.check_contents,
                    repair: args.repair,
                };
                let untrusted = match args.sigs_needed {
                    Some(needed) => {
                        let checked = match &paths {
                            Some(paths) => paths.clone(),
                            None => store.query_all_valid_paths()?,
                        };
                        untrusted_paths(store, &checked, needed, &args.trusted_keys)?
                    }
                    None => Vec::new(),
                };
                let outcome = store.verify_store(paths.as_ref(), options)?;
                print_verify(&store_dir, &outcome, args.json, &mut out)?;
                out.flush()?;
                for path in &untrusted {
                    eprintln!("path '{}' is untrusted", store_dir.display(path));
                }
                if !untrusted.is_empty() {
                    bail!(
                        "{} path(s) lack {} signature(s) by trusted keys [{}]",
                        untrusted.len(),
                        args.sigs_needed.unwrap_or(1).max(1),
                        args.trusted_keys
                            .iter()
                            .map(|key| key.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                match outcome {
                    VerifyOutcome::Report(report) if report.errors_found() => {
                        let left = report.problems.iter().filter(|p| !p.repaired()).count();
                        bail!("the store has {left} problem(s)")
                    }
                    VerifyOutcome::ErrorsFound(true) => bail!("the store has problems"),
                    _ => {}
                }
            }
            StoreCommand::Sign(args) => {
                let key = arca_cache::cache::read_secret_key(&args.key_file)?;
                let mut paths = parse_paths(store, &args.paths)?;
                if args.recursive {
                    paths = store.query_closure(&paths)?;
                }
                let mut added = 0;
                for path in &paths {
                    let Some(info) = store.query_path_info(path)? else {
                        bail!("path '{}' is not valid", store_dir.display(path));
                    };
                    let signature = key.sign(&info.fingerprint(&store_dir));
                    if !info.signatures.contains(&signature.to_string()) {
                        store
                            .add_signatures(path, &[signature])
                            .map_err(|e| anyhow::anyhow!(e.chain()))?;
                        added += 1;
                    }
                }
                eprintln!("added {added} signatures");
            }
            StoreCommand::Delete(args) => {
                let paths = parse_paths(store, &args.paths)?;
                let options = GcOptions {
                    action: GcAction::DeleteSpecific(paths),
                    ignore_liveness: args.ignore_liveness,
                    ..GcOptions::default()
                };
                let report = collect(store, &options)?;
                print_freed(&report, &mut out)?;
            }
            StoreCommand::Gc(args) => gc(store, &args, &mut out)?,
            StoreCommand::Optimise(args) => crate::optimise::optimise(&args, store)?,
            StoreCommand::AddRoot(args) => {
                let path = parse_path_arg(&store_dir, &args.path)?;
                require_valid(store, &BTreeSet::from([path.clone()]))?;
                let link = store.add_perm_root(&path, &args.link)?;
                writeln!(out, "{}", link.display())?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

fn query<S: StoreOps>(store: &S, args: &QueryArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let store_dir = store.store_dir();
    let paths = parse_paths(store, &args.paths)?;
    require_valid(store, &paths)?;
    let flags = &args.flags;
    let print = |out: &mut dyn Write, set: &BTreeSet<StorePath>| -> anyhow::Result<()> {
        // Nix prints these sets dependencies first.
        for path in dependency_order(set, |p| store.query_references(p))? {
            writeln!(out, "{}", store_dir.display(&path))?;
        }
        Ok(())
    };
    if flags.deriver {
        for path in &paths {
            match store.query_path_info(path)?.and_then(|info| info.deriver) {
                Some(deriver) => writeln!(out, "{}", store_dir.display(&deriver))?,
                None => writeln!(out, "unknown-deriver")?,
            }
        }
    } else if flags.outputs {
        // As Nix: a derivation gives its outputs (in path order), anything else itself.
        for path in &paths {
            if path.is_derivation() {
                let outputs: BTreeSet<StorePath> = store
                    .query_derivation_outputs(path)?
                    .into_values()
                    .collect();
                for output in &outputs {
                    writeln!(out, "{}", store_dir.display(output))?;
                }
            } else {
                writeln!(out, "{}", store_dir.display(path))?;
            }
        }
    } else if flags.references || flags.referrers {
        let mut result = BTreeSet::new();
        for path in &paths {
            result.extend(if flags.references {
                store.query_references(path)?
            } else {
                store.query_referrers(path)?
            });
        }
        print(out, &result)?;
    } else if flags.roots {
        for (link, path) in store.roots_of(&paths)? {
            writeln!(out, "{link} -> {}", store_dir.display(&path))?;
        }
    } else if flags.requisites {
        // The graph comes with each path's references: ordering it needs no more queries.
        let graph = store.closure_graph(&paths, args.include_outputs)?;
        let closure: BTreeSet<StorePath> = graph.keys().cloned().collect();
        let order = dependency_order(&closure, |p| {
            Ok::<_, anyhow::Error>(graph.get(p).cloned().unwrap_or_default())
        })?;
        for path in order {
            writeln!(out, "{}", store_dir.display(&path))?;
        }
    } else if flags.referrers_closure {
        print(out, &store.referrers_closure(&paths)?)?;
    }
    Ok(())
}

fn print_verify(
    store_dir: &StoreDir,
    outcome: &VerifyOutcome,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let report = match outcome {
        VerifyOutcome::Report(report) => report,
        VerifyOutcome::ErrorsFound(found) => {
            // A daemon sent its findings to the log; only the verdict is left.
            if json {
                writeln!(out, "{}", json!({ "errorsFound": found }))?;
            }
            return Ok(());
        }
    };
    let describe = |problem: &VerifyProblem| match problem {
        VerifyProblem::Missing { path, repaired } => json!({
            "kind": "missing", "path": store_dir.display(path), "repaired": repaired,
        }),
        VerifyProblem::Modified {
            path,
            expected,
            actual,
            repaired,
        } => json!({
            "kind": "modified", "path": store_dir.display(path),
            "expected": expected.to_string(), "actual": actual.to_string(),
            "repaired": repaired,
        }),
        VerifyProblem::DanglingReference { path, missing_id } => json!({
            "kind": "dangling-reference", "path": store_dir.display(path),
            "missingId": missing_id,
        }),
    };
    if json {
        let problems: Vec<Value> = report.problems.iter().map(describe).collect();
        writeln!(
            out,
            "{}",
            json!({"checked": report.checked, "problems": problems})
        )?;
        return Ok(());
    }
    for problem in &report.problems {
        writeln!(out, "{}", problem.describe(store_dir))?;
    }
    Ok(())
}

/// `arca path-info`.
pub fn path_info(args: PathInfoArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    crate::store::on_store(global, args)
}

impl OnStore for PathInfoArgs {
    type Output = ();

    fn run<S: StoreOps>(self, store: &S) -> anyhow::Result<()> {
        path_info_in(store, &self)
    }
}

/// `path-info` on any store (local, a daemon's, a binary cache), as Nix prints it.
fn path_info_in<S: StoreOps>(store: &S, args: &PathInfoArgs) -> anyhow::Result<()> {
    let store_dir = store.store_dir().clone();
    let mut paths = parse_paths(store, &args.paths)?;
    require_valid(store, &paths)?;
    if args.recursive {
        paths = store.query_closure(&paths)?;
    }
    let mut out = BufWriter::new(io::stdout().lock());
    let closure_size = |path: &StorePath| -> anyhow::Result<u64> {
        let closure = store.query_closure(&BTreeSet::from([path.clone()]))?;
        let mut total = 0;
        for member in &closure {
            total += store.query_path_info(member)?.map_or(0, |i| i.nar_size);
        }
        Ok(total)
    };
    if args.json {
        let mut entries = Vec::new();
        for path in &paths {
            let Some(info) = store.query_path_info(path)? else {
                continue;
            };
            let mut object = Map::new();
            object.insert("path".into(), json!(store_dir.display(path)));
            object.insert("narHash".into(), json!(info.nar_hash.to_sri()));
            object.insert("narSize".into(), json!(info.nar_size));
            let references: Vec<String> = info
                .references
                .iter()
                .map(|r| store_dir.display(r))
                .collect();
            object.insert("references".into(), json!(references));
            if let Some(ca) = &info.ca {
                object.insert("ca".into(), json!(ca.to_string()));
            }
            if args.closure_size {
                object.insert("closureSize".into(), json!(closure_size(path)?));
            }
            if let Some(deriver) = &info.deriver {
                object.insert("deriver".into(), json!(store_dir.display(deriver)));
            }
            if info.registration_time != 0 {
                object.insert("registrationTime".into(), json!(info.registration_time));
            }
            if info.ultimate {
                object.insert("ultimate".into(), json!(true));
            }
            if !info.signatures.is_empty() {
                object.insert("signatures".into(), json!(info.signatures));
            }
            if let Some(download) = store.query_nar_download(path)? {
                if !download.url.is_empty() {
                    object.insert("url".into(), json!(download.url));
                }
                if let Some(hash) = &download.file_hash {
                    object.insert("downloadHash".into(), json!(hash.to_sri()));
                }
                if let Some(size) = download.file_size {
                    object.insert("downloadSize".into(), json!(size));
                }
                if args.closure_size {
                    let closure = store.query_closure(&BTreeSet::from([path.clone()]))?;
                    let mut total = 0;
                    for member in &closure {
                        total += store
                            .query_nar_download(member)?
                            .and_then(|d| d.file_size)
                            .unwrap_or(0);
                    }
                    object.insert("closureDownloadSize".into(), json!(total));
                }
            }
            entries.push(Value::Object(object));
        }
        writeln!(out, "{}", Value::Array(entries))?;
    } else {
        let width = paths
            .iter()
            .map(|p| store_dir.display(p).len())
            .max()
            .unwrap_or(0);
        for path in &paths {
            let shown = store_dir.display(path);
            write!(out, "{shown}")?;
            if args.size || args.closure_size {
                write!(out, "{}", " ".repeat(width - shown.len()))?;
            }
            if args.size {
                let size = store.query_path_info(path)?.map_or(0, |i| i.nar_size);
                write!(out, "\t{size:>11}")?;
            }
            if args.closure_size {
                write!(out, "\t{:>11}", closure_size(path)?)?;
            }
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn gc<S: StoreOps>(store: &S, args: &GcArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let store_dir = store.store_dir();
    if args.action.print_roots {
        let options = FindRoots {
            censor: false,
            runtime_roots: !args.no_runtime_roots,
        };
        for (link, path) in store.find_roots(options)? {
            writeln!(out, "{link} -> {}", store_dir.display(&path))?;
        }
        return Ok(());
    }
    let action = if args.action.print_live {
        GcAction::ReturnLive
    } else if args.action.print_dead || args.action.dry_run {
        GcAction::ReturnDead
    } else {
        GcAction::DeleteDead
    };
    let deleting = action == GcAction::DeleteDead;
    let options = GcOptions {
        action,
        max_freed: args.max_freed,
        keep_outputs: args.keep_outputs,
        keep_derivations: !args.no_keep_derivations,
        runtime_roots: !args.no_runtime_roots,
        ignore_liveness: false,
    };
    let report = collect(store, &options)?;
    if deleting {
        print_freed(&report, out)?;
    } else {
        for path in &report.paths {
            writeln!(out, "{path}")?;
        }
        if args.action.dry_run {
            eprintln!("{} store paths would be deleted", report.paths.len());
        }
    }
    Ok(())
}

/// Runs the collector with a progress bar on a terminal.
fn collect<S: StoreOps>(store: &S, options: &GcOptions) -> anyhow::Result<GcReport> {
    let bar = crate::progress::GcBar::new();
    let report = store.collect_garbage(options, &|p| bar.update(p));
    bar.finish();
    Ok(report?)
}

/// Nix's summary: each deleted path on stderr, then `N store paths deleted, X MiB freed`.
fn print_freed(report: &GcReport, out: &mut impl Write) -> anyhow::Result<()> {
    let mut stderr = io::BufWriter::new(io::stderr().lock());
    for path in &report.paths {
        writeln!(stderr, "deleting '{path}'")?;
    }
    stderr.flush()?;
    writeln!(
        out,
        "{} store paths deleted, {:.2} MiB freed",
        report.paths.len(),
        report.bytes_freed as f64 / (1024.0 * 1024.0)
    )?;
    Ok(())
}

/// A byte count with an optional K/M/G/T suffix (powers of 1024, as Nix).
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.chars().last() {
        Some('K' | 'k') => (&text[..text.len() - 1], 10),
        Some('M' | 'm') => (&text[..text.len() - 1], 20),
        Some('G' | 'g') => (&text[..text.len() - 1], 30),
        Some('T' | 't') => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("'{text}' is not a byte count"))
}

/// The paths among `paths` with fewer than `needed` (at least one) signatures by
/// `trusted` keys, content-addressed paths excepted — what `nix store verify
/// --sigs-needed` calls untrusted.
fn untrusted_paths<S: StoreOps>(
    store: &S,
    paths: &BTreeSet<StorePath>,
    needed: usize,
    trusted: &[arca_store_core::PublicKey],
) -> anyhow::Result<Vec<StorePath>> {
    let store_dir = store.store_dir();
    let mut untrusted = Vec::new();
    for path in paths {
        let Some(info) = store.query_path_info(path)? else {
            continue;
        };
        if info.is_content_addressed_correctly(store_dir) {
            continue;
        }
        if info.trusted_signers(store_dir, trusted).len() < needed.max(1) {
            untrusted.push(path.clone());
        }
    }
    Ok(untrusted)
}
