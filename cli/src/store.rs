//! Which store a command works on (`--store`, `$ARCA_STORE`, the embedded default), opened
//! once: [`on_store`] runs a command on it whatever its back end, through the one store
//! interface (`StoreOps`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use arca_cache::{BinaryCache, OpenMode};
use arca_daemon::LocalBackend;
use arca_daemon_proto::ssh::{SshStore, SshStoreUrl};
use arca_daemon_proto::DaemonClient;
use arca_store_core::{Settings, StoreDir, StoreOps};
use arca_store_sqlite::LocalStore;

use crate::GlobalArgs;

/// A command that runs on any store.
pub trait OnStore {
    type Output;
    fn run<S: StoreOps>(self, store: &S) -> anyhow::Result<Self::Output>;
}

/// Runs `command` on the store `--store` names, whichever back end it has: `unix://SOCKET`
/// and `daemon` connect to a daemon, `ssh://[USER@]HOST?…` and `ssh-ng://…` to a machine
/// over ssh (`arca_daemon_proto::ssh`), `file://DIR`, `http(s)://…` and `s3://BUCKET` open
/// a binary cache (`arca_cache::store`); `local?root=ROOT`, `local://ROOT`, `local` and an
/// absolute path open a local store (with builds, following the settings); nothing given,
/// the default store.
pub fn on_store<C: OnStore>(global: &GlobalArgs, command: C) -> anyhow::Result<C::Output> {
    on_store_with(global, None, command)
}

/// [`on_store`] with the settings already loaded (`None`: loaded here when the store is
/// local, where builds it starts by itself follow them).
pub fn on_store_with<C: OnStore>(
    global: &GlobalArgs,
    settings: Option<&Settings>,
    command: C,
) -> anyhow::Result<C::Output> {
    if let Some(url) = global
        .store
        .as_deref()
        .filter(|url| SshStoreUrl::is_ssh(url))
    {
        return on_ssh_store(url, command);
    }
    if let Some(url) = global.store.as_deref().filter(|url| is_cache_url(url)) {
        // As Nix, a `nix-cache-info` is written into a cache that has none (an HTTP
        // server that takes no uploads then says so).
        let cache = BinaryCache::open(url, &StoreDir::default(), OpenMode::Write)
            .with_context(|| format!("cannot open the binary cache '{url}'"))?;
        return command.run(&cache);
    }
    if let Some(client) = daemon_client(global)? {
        return command.run(&client);
    }
    let root = local_root(global)?;
    let store = LocalStore::open(&root)
        .with_context(|| format!("cannot open the store at '{}'", root.display()))?;
    let settings = match settings {
        Some(settings) => settings.clone(),
        None => global.settings()?,
    };
    command.run(&LocalBackend::new(&store).with_settings(settings))
}

/// Runs `command` on the store `url` names (see [`on_store`]), with `settings` for a
/// local one: for commands that work on a second store (`arca copy --to STORE`).
pub fn on_store_url<C: OnStore>(
    url: &str,
    settings: &Settings,
    command: C,
) -> anyhow::Result<C::Output> {
    let global = GlobalArgs {
        store: Some(url.to_owned()),
        verbose: 0,
        option: Vec::new(),
    };
    on_store_with(&global, Some(settings), command)
}

/// Runs `command` on an `ssh://` or `ssh-ng://` store; the remote program's messages
/// reach this process's stderr.
fn on_ssh_store<C: OnStore>(url: &str, command: C) -> anyhow::Result<C::Output> {
    let parsed = SshStoreUrl::parse(url)?;
    match parsed.open(std::process::Stdio::inherit())? {
        SshStore::Serve(client) => command.run(&client),
        SshStore::Worker(client) => command.run(&client),
    }
}

/// The physical root of a local store: files live under `ROOT/nix/store`, state under
/// `ROOT/nix/var/nix`; the logical store dir stays `/nix/store`, as with Nix's
/// `local?root=ROOT` stores.
pub fn local_root(global: &GlobalArgs) -> anyhow::Result<PathBuf> {
    if let Some(store) = &global.store {
        return parse_store_uri(store);
    }
    if let Some(root) = std::env::var_os("ARCA_STORE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(root));
    }
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/share")));
    match data_home {
        Some(dir) => Ok(dir.join("arca")),
        None => bail!("no store given and neither $ARCA_STORE, $XDG_DATA_HOME nor $HOME is set"),
    }
}

/// The daemon named by `--store unix://SOCKET` (or `daemon`: Nix's default socket),
/// connected, or `None` for a local store.
fn daemon_client(global: &GlobalArgs) -> anyhow::Result<Option<DaemonClient>> {
    let Some(socket) = global.store.as_deref().and_then(daemon_socket) else {
        return Ok(None);
    };
    let mut client = DaemonClient::connect(&socket)
        .with_context(|| format!("cannot connect to the daemon at '{}'", socket.display()))?;
    client.set_log_dir(daemon_root(global).join("nix/var/log/nix/drvs"));
    Ok(Some(client))
}

/// The root a daemon store URI names for files read directly (`unix://SOCKET?root=R`),
/// `/` otherwise: where Nix's client looks for a daemon's build logs.
fn daemon_root(global: &GlobalArgs) -> PathBuf {
    let query = global
        .store
        .as_deref()
        .and_then(|store| store.split_once('?'))
        .map_or("", |(_, query)| query);
    query
        .split('&')
        .find_map(|param| param.strip_prefix("root="))
        .map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// The socket of a daemon store URI (`unix:///path[?params]`, `daemon`).
fn daemon_socket(store: &str) -> Option<PathBuf> {
    if store == "daemon" {
        return Some(PathBuf::from("/nix/var/nix/daemon-socket/socket"));
    }
    let rest = store.strip_prefix("unix://")?;
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    Some(PathBuf::from(path))
}

fn parse_store_uri(store: &str) -> anyhow::Result<PathBuf> {
    if daemon_socket(store).is_some() {
        bail!("store '{store}': this command needs a local store, not a daemon");
    }
    let root = store
        .strip_prefix("local?root=")
        .or_else(|| store.strip_prefix("local://"))
        .unwrap_or(store);
    if store == "local" {
        return Ok(PathBuf::from("/"));
    }
    if !root.starts_with('/') {
        bail!(
            "store '{store}' must be an absolute path, 'local?root=/path', 'local', \
             'unix:///path/to/socket', 'daemon', 'ssh://HOST' or 'ssh-ng://HOST'"
        );
    }
    Ok(PathBuf::from(root))
}

/// Whether `url` names a binary cache rather than a store.
pub fn is_cache_url(url: &str) -> bool {
    ["file://", "http://", "https://", "s3://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_uris_name_a_physical_root() {
        assert_eq!(parse_store_uri("/tmp/r").unwrap(), PathBuf::from("/tmp/r"));
        assert_eq!(
            parse_store_uri("local?root=/tmp/r").unwrap(),
            PathBuf::from("/tmp/r")
        );
        assert_eq!(parse_store_uri("local").unwrap(), PathBuf::from("/"));
        assert!(parse_store_uri("relative/dir").is_err());
        assert!(parse_store_uri("unix:///tmp/socket").is_err());
    }
}
