//! `arca daemon`: serves the store to Nix clients (and Arca's) over Nix's worker protocol.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use arca_daemon::daemon::{self, DaemonOptions};
use arca_daemon_proto::serve_protocol::{serve_legacy, ServeOptions};
use arca_store_core::StoreOps;
use arca_store_sqlite::Durability;
use clap::builder::RangedU64ValueParser;
use clap::Args;

use crate::GlobalArgs;

#[derive(Args)]
pub struct DaemonArgs {
    /// The socket to listen on (default: ROOT/nix/var/nix/daemon-socket/socket; a socket
    /// passed by systemd is used when there is one).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Serve one client on stdin/stdout instead of listening: the `ssh-ng://` remote
    /// program (`arca --stdio` is the same). As `nix-daemon --stdio`, the client is
    /// trusted: whoever holds the stream (an ssh login) already acts as this process's
    /// user on the store.
    #[arg(long)]
    stdio: bool,
    /// With --stdio: treat the client as untrusted (e.g. in an ssh `command=` of
    /// `authorized_keys` for a user who may only add signed or content-addressed
    /// paths), as Nix's `--force-untrusted`.
    #[arg(long, requires = "stdio")]
    force_untrusted: bool,
    /// Users who may connect: names, @group, * (Nix's allowed-users; default: the
    /// setting's, `*` unless nix.conf says otherwise).
    #[arg(long, value_delimiter = ',', value_name = "USERS")]
    allowed_users: Option<Vec<String>>,
    /// Users who are trusted (Nix's trusted-users; default: the setting's, `root` unless
    /// nix.conf says otherwise).
    #[arg(long, value_delimiter = ',', value_name = "USERS")]
    trusted_users: Option<Vec<String>>,
    /// When added paths reach the disk: `deferred` (at the connection's first add a second
    /// after its last flush, and when it ends; after a power loss,
    /// paths not flushed yet are checked and invalidated if damaged) or `immediate`
    /// (before each becomes valid: slower adds, nothing lost once acknowledged).
    #[arg(long, value_name = "MODE", default_value = "deferred")]
    durability: Durability,
    /// Hard-link the files of added paths to identical ones (the same as
    /// `--option auto-optimise-store true`).
    #[arg(long)]
    auto_optimise: bool,
    /// Longest byte string a client may send: store paths, option values, texts added
    /// whole (`.drv` files, `builtins.toFile`). Sizes take K, M or G (powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_string: Option<u64>,
    /// Most elements of one list or set a client may send.
    #[arg(long, value_name = "N")]
    max_list: Option<u64>,
    /// Longest frame of a streamed NAR, dump or log (the stream itself is unbounded:
    /// it is copied, never held in memory).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_frame: Option<u64>,
    /// Most connections served at once, trusted or not (default 1024); more are refused.
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections: Option<usize>,
    /// Most connections one untrusted user may hold at once (default 64); trusted users
    /// are exempt.
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections_per_user: Option<usize>,
    /// Close a connection that keeps the daemon waiting this long for its next operation
    /// (default 3600; 0: never). An operation under way, a build, is never timed out.
    #[arg(long, value_name = "SECONDS")]
    idle_timeout: Option<u64>,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Allow the client to change the store: add paths, build (Nix's `--write`).
    #[arg(long)]
    write: bool,
}

/// `arca serve`: Nix's serve protocol on stdin/stdout, over whichever store `--store`
/// names (a daemon's too, for a user who may not open the store's files).
pub fn serve(args: &ServeArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let settings = global.settings()?;
    let options = ServeOptions {
        write: args.write,
        settings: settings.clone(),
        ..ServeOptions::default()
    };
    crate::store::on_store_with(global, Some(&settings), Serve(options))
}

struct Serve(ServeOptions);

impl crate::store::OnStore for Serve {
    type Output = ();

    fn run<S: StoreOps>(self, store: &S) -> anyhow::Result<()> {
        let mut log = std::io::stderr().lock();
        serve_legacy(
            store,
            std::io::stdin().lock(),
            std::io::stdout().lock(),
            &mut log,
            &self.0,
        )?;
        Ok(())
    }
}

/// `123`, `64K`, `64M`, `1G`: bytes, in powers of 1024.
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.strip_suffix(['K', 'k']) {
        Some(digits) => (digits, 10),
        None => match text.strip_suffix(['M', 'm']) {
            Some(digits) => (digits, 20),
            None => match text.strip_suffix(['G', 'g']) {
                Some(digits) => (digits, 30),
                None => (text, 0),
            },
        },
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (a number, optionally with K, M or G)"))?;
    number
        .checked_mul(1 << shift)
        .filter(|&bytes| bytes > 0)
        .ok_or_else(|| format!("size '{text}' is zero or too large"))
}

pub fn run(args: &DaemonArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let root = crate::store::local_root(global)?;
    let mut options = DaemonOptions {
        settings: global.settings()?,
        ..DaemonOptions::default()
    };
    let settings = &mut options.settings;
    if let Some(users) = &args.allowed_users {
        settings.allowed_users = users.clone();
    }
    if let Some(users) = &args.trusted_users {
        settings.trusted_users = users.clone();
    }
    settings.auto_optimise_store |= args.auto_optimise;
    options.store.durability = args.durability;
    options.store.auto_optimise = settings.auto_optimise_store;
    if let Some(max) = args.max_string {
        options.limits.max_string = max;
    }
    if let Some(max) = args.max_list {
        options.limits.max_list = max;
    }
    if let Some(max) = args.max_frame {
        options.limits.max_frame = max;
    }
    if let Some(max) = args.max_connections {
        options.max_connections = max;
    }
    if let Some(max) = args.max_connections_per_user {
        options.max_connections_per_user = max;
    }
    if let Some(seconds) = args.idle_timeout {
        options.idle_timeout = (seconds > 0).then(|| Duration::from_secs(seconds));
    }
    if args.stdio {
        return Ok(daemon::serve_stdio(&root, !args.force_untrusted, &options)?);
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

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("3m"), Ok(3 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }
}
