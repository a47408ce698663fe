//! `arca`: the command line front end. Thin by design: it parses arguments, calls the
//! library crates and prints their results; every behaviour lives in a library first.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod build;
mod cache;
mod copy;
mod daemon;
mod derivation;
mod hash;
mod nar;
mod optimise;
mod progress;
mod store;
mod store_commands;

/// Arca: a Nix-compatible store.
#[derive(Parser)]
#[command(
    name = "arca",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ARCA_REVISION"), ")"),
    about,
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command accepts.
#[derive(clap::Args, Clone, Debug)]
pub struct GlobalArgs {
    /// The store to use: a directory ROOT holding ROOT/nix/store and ROOT/nix/var/nix
    /// ('/' is the system store; also 'local?root=ROOT'), or a daemon:
    /// 'unix:///path/to/socket', or 'daemon' for Nix's default socket; a machine over
    /// ssh ('ssh://HOST', 'ssh-ng://HOST'); a binary cache ('file:///DIR',
    /// 'http(s)://…', 's3://BUCKET'). Default: $ARCA_STORE, else $XDG_DATA_HOME/arca.
    #[arg(long, global = true, value_name = "STORE")]
    pub store: Option<String>,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Set a Nix setting, over nix.conf, arca.conf and $NIX_CONFIG (e.g. `--option
    /// sandbox false`); repeatable.
    #[arg(long, global = true, num_args = 2, value_names = ["NAME", "VALUE"], action = clap::ArgAction::Append)]
    pub option: Vec<String>,
}

impl GlobalArgs {
    /// The settings: Nix's configuration files and `$NIX_CONFIG`
    /// ([`arca_store_core::config::ConfigSources::from_env`]), then `--option`s.
    /// Unknown names are warned about, as Nix does; a bad value is an error.
    pub fn settings(&self) -> anyhow::Result<arca_build::Settings> {
        let mut warn = |warning: String| eprintln!("warning: {warning}");
        let sources = arca_store_core::config::ConfigSources::from_env();
        let mut settings = arca_build::Settings::load(&sources, &mut warn)?;
        for pair in self.option.chunks(2) {
            if let [name, value] = pair {
                match settings.set(name, value) {
                    Ok(()) => {}
                    Err(arca_build::SettingError::Unknown(name)) => {
                        warn(format!("unknown setting '{name}'"))
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(settings)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Compute and convert hashes.
    #[command(subcommand)]
    Hash(hash::HashCommand),
    /// Create, inspect and unpack Nix archives.
    #[command(subcommand)]
    Nar(nar::NarCommand),
    /// Work with derivations.
    #[command(subcommand)]
    Derivation(derivation::DerivationCommand),
    /// Add, query, export, import, verify and delete store paths.
    #[command(subcommand)]
    Store(store_commands::StoreCommand),
    /// Show information about store paths (== `nix path-info`).
    PathInfo(store_commands::PathInfoArgs),
    /// Build derivations in the sandbox and print their output paths.
    Build(build::BuildArgs),
    /// Print the build log of a derivation or output (== `nix-store -l`).
    Log(build::LogArgs),
    /// Serve the store to Nix clients over Nix's daemon protocol (== `nix-daemon`).
    Daemon(daemon::DaemonArgs),
    /// Serve the store on stdin/stdout over Nix's serve protocol, for `ssh://` stores
    /// and remote builders (== `nix-store --serve`; `arca --serve` is the same).
    Serve(daemon::ServeArgs),
    /// Copy paths and their closures to or from a binary cache (== `nix copy`).
    Copy(copy::CopyArgs),
    /// Serve the store as a binary cache.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Make and convert signing keys (== `nix key`).
    #[command(subcommand)]
    Key(cache::KeyCommand),
    /// Print a completion script for SHELL (e.g. `arca completions bash >
    /// /etc/bash_completion.d/arca`).
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(nix_spellings(std::env::args_os().collect()));
    init_tracing(cli.global.verbose);
    let result = match cli.command {
        Command::Hash(command) => hash::run(command),
        Command::Nar(command) => nar::run(command),
        Command::Derivation(command) => derivation::run(command, &cli.global),
        Command::Store(command) => store_commands::run(command, &cli.global),
        Command::PathInfo(args) => store_commands::path_info(args, &cli.global),
        Command::Build(args) => build::build(args, &cli.global),
        Command::Log(args) => build::log(args, &cli.global),
        Command::Daemon(args) => daemon::run(&args, &cli.global),
        Command::Serve(args) => daemon::serve(&args, &cli.global),
        Command::Copy(args) => copy::copy(args, &cli.global),
        Command::Cache(command) => cache::run(command, &cli.global),
        Command::Key(command) => cache::key(command),
        Command::Completions { shell } => completions(shell),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, Nix's style: `error: <what went wrong>: <why>`.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command lines Nix's ssh stores run on a remote machine, as spelt for `arca`:
/// `PROGRAM --serve --write [--store STORE]` (`ssh://`) is `arca serve --write …`, and
/// `PROGRAM --stdio [--store STORE]` (`ssh-ng://`) is `arca daemon --stdio …`, so that
/// `remote-program=arca` works for both.
fn nix_spellings(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let command: &[&str] = match args.get(1).and_then(|arg| arg.to_str()) {
        Some("--serve") => &["serve"],
        Some("--stdio") => &["daemon", "--stdio"],
        _ => return args,
    };
    args.splice(1..2, command.iter().map(Into::into));
    args
}

/// The completion script for `shell`, written whole (clap_complete panics on a write
/// error; into memory it cannot fail).
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "arca", &mut script);
    std::io::stdout().write_all(&script)?;
    Ok(())
}

fn init_tracing(verbosity: u8) {
    let level = match verbosity {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
}

#[cfg(test)]
mod tests {
    use super::nix_spellings;

    fn spelt(args: &[&str]) -> Vec<String> {
        nix_spellings(args.iter().map(Into::into).collect())
            .into_iter()
            .map(|arg| arg.into_string().unwrap())
            .collect()
    }

    #[test]
    fn nix_remote_programs_spellings_name_commands() {
        assert_eq!(
            spelt(&["arca", "--serve", "--write", "--store", "/r"]),
            ["arca", "serve", "--write", "--store", "/r"]
        );
        assert_eq!(
            spelt(&["arca", "--stdio", "--store", "/r"]),
            ["arca", "daemon", "--stdio", "--store", "/r"]
        );
        assert_eq!(
            spelt(&["arca", "--store", "/r", "serve"]),
            ["arca", "--store", "/r", "serve"]
        );
        assert_eq!(spelt(&["arca"]), ["arca"]);
    }
}
