//! Nix's ssh stores, the client side: `ssh://[USER@]HOST?…` speaks the serve protocol
//! ([`ServeClient`](crate::ServeClient)) and `ssh-ng://[USER@]HOST?…` the worker protocol
//! ([`DaemonClient`](crate::DaemonClient)), each to a program the system's `ssh` runs on
//! the host: `REMOTE-PROGRAM --serve --write` (default `nix-store`) or
//! `REMOTE-PROGRAM --stdio` (default `nix-daemon`), with `--store REMOTE-STORE` when
//! given. As Nix 2.8:
//!
//! - parameters `ssh-key` (`-i`), `base64-ssh-public-host-key` (the only key accepted
//!   for the host), `compress` (`-C`), `remote-program`, `remote-store`,
//!   `max-connections` (accepted: a store opened here keeps one connection, and remote
//!   builds open one per running step, all through one shared ssh connection);
//! - `$NIX_SSHOPTS` adds options to every `ssh` (split at white space), e.g.
//!   `-F CONFIG` for a host alias with a port and key of its own;
//! - the host `localhost` (without a user) runs the program directly, through
//!   `bash -c`, without ssh.
//!
//! Unlike Nix, connections to one host share one ssh connection (OpenSSH's
//! `ControlMaster`, its socket in a directory of this user's alone, kept a minute after
//! the last session), so a build or copy after another skips ssh's key exchange;
//! `ARCA_SSH_SHARE=0` turns that off.

use std::io;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};

/// Which protocol an ssh store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshProtocol {
    /// `ssh://`: the serve protocol (`nix-store --serve`).
    Serve,
    /// `ssh-ng://`: the worker protocol (`nix-daemon --stdio`).
    Worker,
}

/// A parsed `ssh://` or `ssh-ng://` store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshStoreUrl {
    pub protocol: SshProtocol,
    /// `[USER@]HOST`, as given to `ssh`.
    pub host: String,
    /// `ssh-key`: the private key to log in with.
    pub ssh_key: Option<PathBuf>,
    /// `base64-ssh-public-host-key`: the host's public key line, base64.
    pub host_key: Option<String>,
    /// `compress`.
    pub compress: bool,
    /// `remote-program` (default `nix-store` for `ssh://`, `nix-daemon` for `ssh-ng://`).
    pub remote_program: String,
    /// `remote-store`: the store the remote program opens.
    pub remote_store: Option<String>,
}

/// A URL that names no ssh store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ssh store URL '{url}': {reason}")]
pub struct SshUrlError {
    pub url: String,
    pub reason: String,
}

impl SshStoreUrl {
    /// Whether `url` names an ssh store (`ssh://` or `ssh-ng://`).
    pub fn is_ssh(url: &str) -> bool {
        url.starts_with("ssh://") || url.starts_with("ssh-ng://")
    }

    /// Parses `url`; parameters are percent-decoded, unknown ones refused by name.
    pub fn parse(url: &str) -> Result<SshStoreUrl, SshUrlError> {
        let error = |reason: String| SshUrlError {
            url: url.to_owned(),
            reason,
        };
        let (protocol, rest) = if let Some(rest) = url.strip_prefix("ssh://") {
            (SshProtocol::Serve, rest)
        } else if let Some(rest) = url.strip_prefix("ssh-ng://") {
            (SshProtocol::Worker, rest)
        } else {
            return Err(error("expected ssh:// or ssh-ng://".into()));
        };
        let (host, query) = rest.split_once('?').unwrap_or((rest, ""));
        let host = host.trim_end_matches('/');
        // Nix's check: a host ssh would take for an option is refused.
        if host.is_empty() || host.starts_with('-') || host.contains(char::is_whitespace) {
            return Err(error(format!("invalid SSH host name '{host}'")));
        }
        let mut parsed = SshStoreUrl {
            protocol,
            host: host.to_owned(),
            ssh_key: None,
            host_key: None,
            compress: false,
            remote_program: match protocol {
                SshProtocol::Serve => "nix-store".to_owned(),
                SshProtocol::Worker => "nix-daemon".to_owned(),
            },
            remote_store: None,
        };
        for parameter in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            let value = percent_decode(value).ok_or_else(|| {
                error(format!("parameter '{name}' has a bad %-escape: '{value}'"))
            })?;
            match name {
                "ssh-key" => parsed.ssh_key = Some(PathBuf::from(value)),
                "base64-ssh-public-host-key" => parsed.host_key = Some(value),
                "compress" => {
                    parsed.compress = match value.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(error(format!(
                                "compress must be true or false, not '{value}'"
                            )))
                        }
                    }
                }
                "remote-program" => parsed.remote_program = value,
                "remote-store" => parsed.remote_store = Some(value),
                "max-connections" => {
                    value
                        .parse::<u32>()
                        .map_err(|_| error(format!("bad max-connections '{value}'")))?;
                }
                // Nix's hook passes the log's descriptor; it changes nothing here.
                "log-fd" => {}
                _ => return Err(error(format!("unknown parameter '{name}'"))),
            }
        }
        Ok(parsed)
    }

    /// The URL as Nix names the store in messages (`ssh://HOST`).
    pub fn display(&self) -> String {
        match self.protocol {
            SshProtocol::Serve => format!("ssh://{}", self.host),
            SshProtocol::Worker => format!("ssh-ng://{}", self.host),
        }
    }

    /// The command line run on the host.
    pub fn remote_command(&self) -> String {
        let mut command = match self.protocol {
            SshProtocol::Serve => format!("{} --serve --write", self.remote_program),
            SshProtocol::Worker => format!("{} --stdio", self.remote_program),
        };
        if let Some(store) = &self.remote_store {
            command.push_str(" --store ");
            command.push_str(&shell_escape(store));
        }
        command
    }

    /// Starts the remote program: `ssh HOST -x -a [OPTIONS] COMMAND` (or `bash -c COMMAND`
    /// for `localhost`): the process, and its stdout and stdin. Its standard error goes
    /// where `stderr` says.
    pub fn spawn(&self, stderr: Stdio) -> Result<(SshProcess, ChildStdout, ChildStdin), SshError> {
        let mut host_key_file = None;
        let mut command = if self.host == "localhost" {
            let mut command = Command::new("bash");
            command.arg("-c");
            command
        } else {
            let mut command = Command::new("ssh");
            command.args([self.host.as_str(), "-x", "-a"]);
            if let Ok(options) = std::env::var("NIX_SSHOPTS") {
                command.args(options.split_whitespace());
            }
            if let Some(key) = &self.ssh_key {
                command.arg("-i").arg(key);
            }
            if let Some(host_key) = &self.host_key {
                let file = known_hosts_file(&self.host, host_key)?;
                command.arg(format!("-oUserKnownHostsFile={}", file.path().display()));
                host_key_file = Some(file);
            }
            if self.compress {
                command.arg("-C");
            }
            if let Some(dir) = control_dir() {
                // One ssh connection per host, kept a minute after its last session
                // (Nix opens one per build): later connections skip the key exchange.
                command.arg("-oControlMaster=auto");
                command.arg(format!("-oControlPath={}/%C", dir.display()));
                command.arg("-oControlPersist=60");
            }
            command
        };
        command
            .arg(self.remote_command())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let program = if self.host == "localhost" {
            "bash"
        } else {
            "ssh"
        };
        let mut child = command
            .spawn()
            .map_err(|source| SshError::Spawn { program, source })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(SshError::Spawn {
                program,
                source: io::Error::other("its standard input and output were not piped"),
            });
        };
        let process = SshProcess {
            stderr: child.stderr.take(),
            child: Some(child),
            _host_key_file: host_key_file,
        };
        Ok((process, stdout, stdin))
    }
}

/// Why an ssh store could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(transparent)]
    Url(#[from] SshUrlError),
    #[error("cannot run '{program}'")]
    Spawn {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the host key file")]
    HostKey(#[source] io::Error),
    #[error("base64-ssh-public-host-key is not base64")]
    HostKeyEncoding,
}

/// The remote program's process (`ssh`, or `bash` for `localhost`), ended when this is
/// dropped: waited for a moment (its client, dropped first, closed its stdin, so the
/// remote program ends), then killed if it lingers.
pub struct SshProcess {
    child: Option<Child>,
    stderr: Option<ChildStderr>,
    _host_key_file: Option<tempfile::NamedTempFile>,
}

impl SshProcess {
    /// Its standard error, when it was spawned with it piped (once).
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }
}

impl Drop for SshProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            for _ in 0..50 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where ssh's control sockets live: `$XDG_RUNTIME_DIR/arca-ssh`, else
/// `/tmp/arca-ssh-UID`, a directory of this user's alone (mode 0700, checked); `None`
/// (no shared connections) when there is none, or `$ARCA_SSH_SHARE` is `0`.
fn control_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if std::env::var("ARCA_SSH_SHARE").as_deref() == Ok("0") {
        return None;
    }
    let uid = nix::unistd::getuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(runtime) => PathBuf::from(runtime).join("arca-ssh"),
        None => PathBuf::from(format!("/tmp/arca-ssh-{uid}")),
    };
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && meta.uid() == uid && meta.permissions().mode() & 0o077 == 0).then_some(dir)
}

/// `HOST KEY` (host without its user) in a file of its own, for `UserKnownHostsFile`.
fn known_hosts_file(host: &str, base64_key: &str) -> Result<tempfile::NamedTempFile, SshError> {
    use std::io::Write;
    let key = decode_base64(base64_key).ok_or(SshError::HostKeyEncoding)?;
    let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
    let mut file = tempfile::NamedTempFile::new().map_err(SshError::HostKey)?;
    file.write_all(host.as_bytes())
        .and_then(|()| file.write_all(b" "))
        .and_then(|()| file.write_all(&key))
        .and_then(|()| file.write_all(b"\n"))
        .map_err(SshError::HostKey)?;
    Ok(file)
}

/// Standard base64 (padding optional), or `None`.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    data_encoding::BASE64
        .decode(text.as_bytes())
        .or_else(|_| data_encoding::BASE64_NOPAD.decode(text.as_bytes()))
        .ok()
}

/// `%XX` escapes decoded (as Nix decodes store URL parameters), or `None` for a bad one.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `text` quoted for a POSIX shell, as Nix's `shellEscape`.
fn shell_escape(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_s_ssh_urls_parse() {
        let url = SshStoreUrl::parse(
            "ssh://root@builder?remote-program=/usr/bin/arca&remote-store=local%3Froot%3D/r&compress=true&ssh-key=/k",
        )
        .unwrap();
        assert_eq!(url.protocol, SshProtocol::Serve);
        assert_eq!(url.host, "root@builder");
        assert_eq!(url.ssh_key, Some(PathBuf::from("/k")));
        assert!(url.compress);
        assert_eq!(
            url.remote_command(),
            "/usr/bin/arca --serve --write --store 'local?root=/r'"
        );
        let url = SshStoreUrl::parse("ssh-ng://h").unwrap();
        assert_eq!(url.remote_command(), "nix-daemon --stdio");
        assert_eq!(url.display(), "ssh-ng://h");
        assert_eq!(
            SshStoreUrl::parse("ssh://h?remote-store=it's")
                .unwrap()
                .remote_command(),
            "nix-store --serve --write --store 'it'\\''s'"
        );
    }

    #[test]
    fn bad_ssh_urls_are_refused_naming_what_is_wrong() {
        for (url, words) in [
            ("ssh://", "invalid SSH host name"),
            ("ssh://-oProxyCommand=x", "invalid SSH host name"),
            ("ssh://h?frobnicate=1", "unknown parameter 'frobnicate'"),
            ("ssh://h?compress=maybe", "compress must be true or false"),
            ("ssh://h?ssh-key=%zz", "bad %-escape"),
            ("http://h", "expected ssh:// or ssh-ng://"),
        ] {
            let error = SshStoreUrl::parse(url).unwrap_err().to_string();
            assert!(error.contains(words), "{url}: {error}");
        }
    }

    #[test]
    fn base64_host_keys_decode() {
        assert_eq!(
            decode_base64("c3NoLWVkMjU1MTkgQUFBQQ==").unwrap(),
            b"ssh-ed25519 AAAA"
        );
        assert_eq!(decode_base64("YQ").unwrap(), b"a");
        assert!(decode_base64("a b").is_none());
    }
}

/// An open ssh store, by protocol.
#[derive(Debug)]
pub enum SshStore {
    /// `ssh://`.
    Serve(crate::ServeClient),
    /// `ssh-ng://`: a daemon client over the ssh process's pipes.
    Worker(crate::DaemonClient),
}

/// Why an ssh store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SshStoreError {
    #[error(transparent)]
    Serve(#[from] crate::ServeClientError),
    #[error("cannot open '{url}'")]
    Worker {
        url: String,
        #[source]
        source: crate::ClientError,
    },
    #[error("cannot open '{url}'")]
    Ssh {
        url: String,
        #[source]
        source: SshError,
    },
}

impl SshStoreUrl {
    /// Connects: starts the remote program and greets it in the URL's protocol. Its
    /// standard error (messages; builds' logs over `ssh://`) goes where `stderr` says.
    pub fn open(&self, stderr: Stdio) -> Result<SshStore, SshStoreError> {
        Ok(self.open_with_stderr(stderr)?.0)
    }

    /// [`SshStoreUrl::open`], also handing out the remote program's standard error when
    /// `stderr` is [`Stdio::piped`]. It is taken before the greeting, so a reader of it
    /// hears why a greeting failed.
    pub fn open_with_stderr(
        &self,
        stderr: Stdio,
    ) -> Result<(SshStore, Option<ChildStderr>), SshStoreError> {
        match self.protocol {
            SshProtocol::Serve => {
                let (mut process, stdout, stdin) =
                    self.spawn(stderr).map_err(|source| SshStoreError::Ssh {
                        url: self.display(),
                        source,
                    })?;
                let piped = process.take_stderr();
                let client = crate::ServeClient::handshake(
                    Box::new(stdout),
                    Box::new(stdin),
                    arca_store_core::StoreDir::default(),
                    &self.display(),
                )?
                .with_transport(process);
                Ok((SshStore::Serve(client), piped))
            }
            SshProtocol::Worker => {
                let (mut process, stdout, stdin) =
                    self.spawn(stderr).map_err(|source| SshStoreError::Ssh {
                        url: self.display(),
                        source,
                    })?;
                let client = crate::DaemonClient::handshake_over(
                    Box::new(stdout),
                    Box::new(stdin),
                    arca_store_core::StoreDir::default(),
                    crate::protocol::MAX_VERSION,
                )
                .map_err(|source| SshStoreError::Worker {
                    url: self.display(),
                    source,
                })?;
                let piped = process.take_stderr();
                Ok((
                    SshStore::Worker(client.with_transport(Box::new(process))),
                    piped,
                ))
            }
        }
    }
}
