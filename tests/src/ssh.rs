//! A real OpenSSH server for the tests of ssh stores and remote builders: `sshd` on a
//! free loopback port with a throw-away host key, accepting one throw-away user key for
//! root, and the client options (`NIX_SSHOPTS`, an ssh config file) that reach it with
//! the host key checked. Killed when dropped.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `openssh-server` puts the daemon.
pub const SSHD: &str = "/usr/sbin/sshd";

/// Whether `sshd` and `ssh` are installed. When they are not, the calling test should
/// return early: this prints a loud notice, and panics instead when
/// `ARCA_REQUIRE_NIX=1` (CI, whose test command installs them).
pub fn sshd_available(test: &str) -> bool {
    let found = Path::new(SSHD).is_file()
        && Command::new("ssh")
            .arg("-V")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("ARCA_REQUIRE_NIX").as_deref() == Ok("1") {
            panic!("{test}: OpenSSH (sshd and ssh) is required (ARCA_REQUIRE_NIX=1)");
        }
        eprintln!("SKIPPED {test}: no OpenSSH server at {SSHD}; ssh not checked");
    }
    found
}

/// A running `sshd` on 127.0.0.1.
pub struct Sshd {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Sshd {
    /// Starts `sshd` with its keys and files in `dir` (created), accepting the user key
    /// `dir/client_key` for root.
    pub fn start(dir: &Path) -> Sshd {
        fs::create_dir_all(dir).unwrap();
        // Privilege separation needs this directory; Debian makes it at boot.
        fs::create_dir_all("/run/sshd").unwrap();
        for key in ["host_key", "client_key"] {
            let path = dir.join(key);
            if !path.exists() {
                let status = Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                    .arg(&path)
                    .status()
                    .expect("ssh-keygen runs");
                assert!(status.success(), "ssh-keygen -f {}", path.display());
            }
        }
        fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        let port = free_port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {dir}/host_key\n\
                 PidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {dir}/authorized_keys\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 LogLevel ERROR\n\
                 MaxStartups 100\n\
                 MaxSessions 100\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd can be started");
        let host_key = fs::read_to_string(dir.join("host_key.pub")).unwrap();
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        fs::write(
            dir.join("known_hosts"),
            format!(
                "[localhost]:{port},[127.0.0.1]:{port} {}\n",
                host_key.join(" ")
            ),
        )
        .unwrap();
        let sshd = Sshd {
            child,
            dir: dir.to_owned(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on port {port}: {}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user key that logs in as root.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client_key")
    }

    /// The host's public key, base64 (the machines file's host key column, Nix's
    /// `base64-ssh-public-host-key`).
    pub fn host_key_base64(&self) -> String {
        let text = fs::read_to_string(self.dir.join("host_key.pub")).unwrap();
        let line: Vec<&str> = text.split_whitespace().take(2).collect();
        let output =
            crate::store::run(Command::new("base64").arg("-w0"), line.join(" ").as_bytes());
        assert!(output.status.success(), "base64 runs");
        String::from_utf8(output.stdout).unwrap()
    }

    /// ssh options that reach this server as root with the host key checked: the
    /// value of `NIX_SSHOPTS`.
    pub fn ssh_opts(&self) -> String {
        format!(
            "-p {} -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes \
             -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR",
            self.port,
            self.client_key().display(),
            self.dir.join("known_hosts").display()
        )
    }

    /// What sshd logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on (free when asked; sshd binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Whether the remote-machine tests can run: root (sshd logs in as root), real Nix, a
/// static busybox and OpenSSH; each missing one is said loudly (an error in CI).
pub fn remote_tools_available(test: &str) -> bool {
    if !crate::daemon::running_as_root() {
        eprintln!("SKIPPED {test}: needs root (sshd logs in as root)");
        return false;
    }
    crate::nix_available(test) && crate::build::busybox_available(test) && sshd_available(test)
}

/// An Arca machine over `scheme` (`ssh` or `ssh-ng`): `machine`'s Arca root, served by
/// `arca` as root on this host.
pub fn arca_machine_uri(scheme: &str, machine: &crate::build::Scratch) -> String {
    format!(
        "{scheme}://root@localhost?remote-program={}&remote-store={}",
        crate::arca_bin().display(),
        machine.arca_root().display()
    )
}

/// A Nix machine over `scheme`: `machine`'s Nix root, served by `nix-store --serve`
/// (`ssh://`) or `nix-daemon --stdio` (`ssh-ng://`) through a wrapper that gives Nix
/// the tests' configuration with the sandbox on (ssh passes no environment).
pub fn nix_machine_uri(scheme: &str, machine: &crate::build::Scratch) -> String {
    use std::os::unix::fs::PermissionsExt;
    let program = if scheme == "ssh" {
        "nix-store"
    } else {
        "nix-daemon"
    };
    let wrapper = machine.path().join(format!("{program}-wrapper"));
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport NIX_CONFIG='{}\nsandbox = true'\nexec {program} \"$@\"\n",
            crate::NIX_CONFIG
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{scheme}://root@localhost?remote-program={}&remote-store={}",
        wrapper.display(),
        machine.nix_uri()
    )
}

/// What two stores must agree on of a path (`path-info --json`): path, NAR hash and
/// size, references, content address.
pub type Essentials = (String, String, u64, Vec<String>, Option<String>);

/// [`Essentials`] of each path-info object, by path.
pub fn essentials(infos: &[serde_json::Value]) -> std::collections::BTreeMap<String, Essentials> {
    infos
        .iter()
        .map(|info| {
            let refs = info["references"]
                .as_array()
                .map(|refs| {
                    refs.iter()
                        .filter_map(|r| r.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let path = info["path"].as_str().unwrap_or_default().to_owned();
            let essentials = (
                path.clone(),
                info["narHash"].as_str().unwrap_or_default().to_owned(),
                info["narSize"].as_u64().unwrap_or_default(),
                refs,
                info["ca"].as_str().map(str::to_owned),
            );
            (path, essentials)
        })
        .collect()
}
