//! `arca daemon`: serves the store to Nix clients (and Arca's) over Nix's worker protocol.

use std::path::PathBuf;

use anyhow::Context;
use arca_daemon_proto::daemon::{self, DaemonOptions};
use arca_store_sqlite::Durability;
use clap::Args;

use crate::GlobalArgs;

#[derive(Args)]
pub struct DaemonArgs {
    /// The socket to listen on (default: ROOT/nix/var/nix/daemon-socket/socket; a socket
    /// passed by systemd is used when there is one).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Serve one client on stdin/stdout (for ssh) instead of listening.
    #[arg(long)]
    stdio: bool,
    /// With --stdio: treat the client as trusted.
    #[arg(long, requires = "stdio")]
    trusted: bool,
    /// Users who may connect: names, @group, * (Nix's allowed-users; default *).
    #[arg(long, value_delimiter = ',', value_name = "USERS")]
    allowed_users: Option<Vec<String>>,
    /// Users who are trusted (Nix's trusted-users; default root).
    #[arg(long, value_delimiter = ',', value_name = "USERS")]
    trusted_users: Option<Vec<String>>,
    /// When added paths reach the disk: `deferred` (within a second; after a power loss,
    /// paths not flushed yet are checked and invalidated if damaged) or `immediate`
    /// (before each becomes valid: slower adds, nothing lost once acknowledged).
    #[arg(long, value_name = "MODE", default_value = "deferred")]
    durability: Durability,
    /// Hard-link the files of added paths to identical ones (auto-optimise-store).
    #[arg(long)]
    auto_optimise: bool,
}

pub fn run(args: &DaemonArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let root = crate::store::local_root(global)?;
    let mut options = DaemonOptions::default();
    if let Some(users) = &args.allowed_users {
        options.allowed_users = users.clone();
    }
    if let Some(users) = &args.trusted_users {
        options.trusted_users = users.clone();
    }
    options.store.durability = args.durability;
    options.store.auto_optimise = args.auto_optimise;
    if args.stdio {
        return Ok(daemon::serve_stdio(&root, args.trusted, &options)?);
    }
    let listener = match daemon::systemd_listener() {
        Some(listener) if args.socket.is_none() => listener,
        _ => {
            let socket = args
                .socket
                .clone()
                .unwrap_or_else(|| daemon::default_socket(&root));
            let listener = daemon::bind(&socket)?;
            eprintln!("listening on '{}'", socket.display());
            listener
        }
    };
    daemon::run(&root, listener, options).context("the daemon stopped")
}
