//! A small build-farm coordinator on Arca's builder API: builds a jobset (`.drv` paths
//! already in the store) on the machines of a machines file, prints each event as it
//! happens (queued, copied to or from which machine, started on which machine, log
//! lines, built, failed), and pushes
//! what was built to a binary cache.
//!
//! ```sh
//! cargo run -p arca-build --example farm -- \
//!     --store /var/lib/farm --machines /etc/nix/machines --cache file:///srv/cache \
//!     /nix/store/…-a.drv /nix/store/…-b.drv
//! ```
//!
//! Machines are Nix's machines file lines (`ssh://…` and `ssh-ng://…`); this machine
//! builds nothing itself (`max_jobs` 0), as a coordinator should. Exit status 1 when a
//! job failed.

use std::collections::BTreeSet;
use std::process::ExitCode;

use arca_build::{build, BuildEvent, BuildOptions, BuildResult, BuildTarget, Machine};
use arca_cache::{BinaryCache, OpenMode};
use arca_store_core::settings::host_system;
use arca_store_core::Store;
use arca_store_sqlite::LocalStore;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether every job built.
fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut store, mut machines, mut cache, mut jobs) = (None, None, None, Vec::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--store" => store = args.next(),
            "--machines" => machines = args.next(),
            "--cache" => cache = args.next(),
            _ => jobs.push(arg),
        }
    }
    let (Some(store), Some(machines)) = (store, machines) else {
        return Err("usage: farm --store ROOT --machines FILE [--cache URL] DRV...".into());
    };
    let store = LocalStore::open(std::path::Path::new(&store))?;
    let targets = jobs
        .iter()
        .map(|drv| Ok(BuildTarget::all(store.store_dir().parse_path(drv)?)))
        .collect::<Result<Vec<_>, arca_store_core::StorePathError>>()?;

    let options = BuildOptions {
        machines: Machine::parse_all(&format!("@{machines}"), &host_system())?,
        max_jobs: 0,
        keep_going: true,
        ..BuildOptions::default()
    };
    let store_dir = store.store_dir().clone();
    let results = build(&store, &targets, &options, &mut |event| match event {
        BuildEvent::Planned { to_build } => println!("planned {to_build}"),
        BuildEvent::Queued { drv } => println!("queued {}", store_dir.display(&drv)),
        BuildEvent::Copied {
            path,
            machine,
            direction,
        } => println!(
            "copied {} {direction:?} {machine}",
            store_dir.display(&path)
        ),
        BuildEvent::Started { drv, machine } => println!(
            "started {} on {}",
            store_dir.display(&drv),
            machine.as_deref().unwrap_or("this machine")
        ),
        BuildEvent::Log { drv, line } => println!("log {}: {line}", drv.name()),
        BuildEvent::Built { drv, .. } => println!("built {}", store_dir.display(&drv)),
        BuildEvent::Failed { drv, message } => {
            println!("failed {}: {message}", store_dir.display(&drv))
        }
        BuildEvent::Message { text } => print!("message {text}"),
        _ => {}
    })?;

    let mut outputs = BTreeSet::new();
    let mut all_built = true;
    for target in &targets {
        match results.get(&target.drv) {
            Some(result @ (BuildResult::Built(_) | BuildResult::AlreadyValid(_))) => outputs
                .extend(
                    result
                        .outputs()
                        .into_iter()
                        .flat_map(|o| o.values().cloned()),
                ),
            _ => all_built = false,
        }
    }
    if let Some(url) = cache {
        let cache = BinaryCache::open(&url, &store_dir, OpenMode::Write)?;
        let report = cache.push(&store, &outputs, 8)?;
        println!("pushed {} paths to {url}", report.pushed.len());
    }
    Ok(all_built)
}
