//! A lab for the tests of `arca daemon` building on the host
//! (`tests/tests/daemon_settings.rs`, `tests/tests/ca_derivations.rs`): a temporary
//! directory whose `nixroot/nix` is `/nix` inside a private mount namespace (`unshare
//! --mount`, then a bind mount), so that unsandboxed builds, which happen only in a store
//! at `/nix/store`, leave the host's `/nix` alone.
//!
//! [`NsDaemon`] runs `arca --store / daemon` in such a namespace; real Nix clients run
//! outside it ([`Lab::client`]) and reach the daemon through a socket outside `/nix`,
//! seeing its store at `LAB/nixroot/nix/store` (their store URI says
//! `root=LAB/nixroot`). [`Lab::local`] runs real Nix itself in the namespace, on the
//! lab's store without a daemon: what Nix does with the same nix.conf, to compare with.
//! The tests need root, `unshare` and real Nix ([`prerequisites`]).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{open_up_to_root, running_as_root, version, RawClient, Unprivileged};
use crate::{arca_bin, nix_available};

/// Whether a lab test can run: real Nix, root (to make mount namespaces and to run
/// clients as `nobody`), `unshare`, `setpriv` and `timeout`. Prints a loud notice when not.
pub fn prerequisites(test: &str) -> bool {
    if !nix_available(test) {
        return false;
    }
    if !running_as_root() {
        eprintln!(
            "SKIPPED {test}: needs root, to run the daemon in a mount namespace of its own and clients as nobody"
        );
        return false;
    }
    for program in ["unshare", "setpriv", "timeout", "nix-build", "nix"] {
        if !crate::program_runs(program) {
            eprintln!("SKIPPED {test}: `{program}` is not installed");
            return false;
        }
    }
    let namespaces = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !namespaces {
        eprintln!("SKIPPED {test}: cannot make a mount namespace (`unshare --mount` fails)");
        return false;
    }
    true
}

/// A test's directory: `nixroot/nix` (the store's `/nix`), `daemon-conf/nix.conf` (the
/// daemon's `NIX_CONF_DIR`, and [`Lab::local`]'s), `client-conf/nix.conf` (the
/// clients'), `socket`, `log`, `tmp` (the daemon's `TMPDIR`), `home`, and whatever the
/// test writes there.
pub struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    /// A new lab whose daemon reads `nix_conf` (no nix.conf at all when `None`).
    pub fn new(nix_conf: Option<&str>) -> Lab {
        let lab = Lab {
            dir: tempfile::tempdir().unwrap(),
        };
        for dir in ["nixroot/nix", "daemon-conf", "client-conf", "tmp", "home"] {
            fs::create_dir_all(lab.path(dir)).unwrap();
        }
        if let Some(text) = nix_conf {
            lab.write("daemon-conf/nix.conf", text);
        }
        // No substituters (there is no network); `nix` needs its experimental feature.
        lab.write(
            "client-conf/nix.conf",
            "substituters =\nexperimental-features = nix-command\n",
        );
        // The lab is 0700; `nobody` must reach the socket, the .nix files, the hooks.
        open_up_to_root(lab.dir.path());
        lab
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes `text` at `relative`; returns its path.
    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path(relative);
        fs::write(&path, text).unwrap();
        path
    }

    /// Writes an executable shell script at `relative`; returns its path.
    pub fn script(&self, relative: &str, body: &str) -> PathBuf {
        let path = self.write(relative, &format!("#!/bin/sh\n{body}\n"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Writes `NAME.nix`: a derivation `NAME` whose builder is the host's `/bin/sh`
    /// running `script` (so it builds only unsandboxed: the sandbox shows just the input
    /// closure, which has no `/bin/sh`). Returns its path.
    pub fn derivation(&self, name: &str, script: &str) -> PathBuf {
        self.write(
            &format!("{name}.nix"),
            &format!(
                "derivation {{\n  name = \"{name}\";\n  system = builtins.currentSystem;\n  builder = \"/bin/sh\";\n  args = [ \"-c\" {} ];\n}}\n",
                nix_string(script)
            ),
        )
    }

    /// Where a store path (`/nix/store/…`) of the lab's store is, seen from outside the
    /// namespace.
    pub fn physical(&self, store_path: &str) -> PathBuf {
        let relative = store_path
            .strip_prefix("/nix/store/")
            .unwrap_or_else(|| panic!("{store_path:?} is not in /nix/store"));
        self.path("nixroot/nix/store").join(relative)
    }

    /// The store URI of the clients: the daemon's socket, with its store's location.
    pub fn store_uri(&self) -> String {
        format!(
            "unix://{}?root={}",
            self.path("socket").display(),
            self.path("nixroot").display()
        )
    }

    /// `program`, run in a private mount namespace where `LAB/nixroot/nix` is `/nix`,
    /// ready for its arguments.
    pub fn in_namespace(&self, program: &Path) -> Command {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /nix && shift && exec "$@""#)
            .arg("sh")
            .arg(self.path("nixroot/nix"))
            .arg(program);
        command
    }

    /// A real Nix client `program` of the lab's daemon, as `user` when given (through
    /// `setpriv`), killed after 60 s (a hung client fails the test, not hangs it). Its
    /// settings are only the lab's client nix.conf and what the test passes.
    pub fn client(&self, program: &str, user: Option<&Unprivileged>) -> Command {
        let mut command = match user {
            None => {
                let mut command = Command::new("timeout");
                command
                    .env("HOME", self.path("home"))
                    .env("XDG_CACHE_HOME", self.path("home/.cache"));
                command
            }
            Some(user) => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={}", user.user))
                    .arg(format!("--regid={}", user.group))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg("timeout")
                    .env("HOME", &user.home)
                    .env("XDG_CACHE_HOME", user.home.join(".cache"));
                command
            }
        };
        command
            .args(["--kill-after=5", "60", program])
            .env_remove("NIX_CONFIG")
            .env("NIX_CONF_DIR", self.path("client-conf"))
            .env("NIX_USER_CONF_FILES", self.path("client-conf/absent.conf"))
            .env("NIX_REMOTE", self.store_uri())
            .env_remove("NIX_STORE_DIR")
            .env_remove("NIX_STATE_DIR")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        command
    }

    /// Runs `program ARGS` as a client (see [`Lab::client`]), whatever the exit status.
    pub fn run(&self, program: &str, user: Option<&Unprivileged>, args: &[&str]) -> Output {
        self.client(program, user)
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("{program} cannot be spawned: {error}"))
    }

    /// Runs `program ARGS` as root, which must succeed: its stdout, trimmed.
    pub fn run_ok(&self, daemon: &NsDaemon, program: &str, args: &[&str]) -> String {
        let output = self.run(program, None, args);
        expect_success(daemon, program, args, &output);
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// Runs real Nix's `program ARGS` as root in the lab's namespace, on the lab's store
    /// itself (`NIX_REMOTE=local`, no daemon), with the daemon's settings
    /// (`NIX_CONF_DIR=LAB/daemon-conf`) and `TMPDIR=LAB/tmp`, killed after 60 s; whatever
    /// the exit status.
    pub fn local(&self, program: &str, args: &[&str]) -> Output {
        self.in_namespace(Path::new("timeout"))
            .args(["--kill-after=5", "60", program])
            .args(args)
            .env_remove("NIX_CONFIG")
            .env("NIX_CONF_DIR", self.path("daemon-conf"))
            .env("NIX_USER_CONF_FILES", self.path("daemon-conf/absent.conf"))
            .env("NIX_REMOTE", "local")
            .env_remove("NIX_STORE_DIR")
            .env_remove("NIX_STATE_DIR")
            .env("TMPDIR", self.path("tmp"))
            .env("HOME", self.path("home"))
            .env("XDG_CACHE_HOME", self.path("home/.cache"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("{program} cannot be spawned: {error}"))
    }

    /// Runs real Nix's `program ARGS` on the lab's store (see [`Lab::local`]), which must
    /// succeed: its stdout, trimmed.
    pub fn local_ok(&self, program: &str, args: &[&str]) -> String {
        let output = self.local(program, args);
        assert!(
            output.status.success(),
            "{program} {args:?} (real Nix, local store) failed ({}): {}",
            output.status,
            stderr_of(&output)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }
}

/// `text` as a Nix string literal.
pub fn nix_string(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace("${", "\\${");
    format!("\"{escaped}\"")
}

/// What a command wrote to its stderr, as text.
pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Panics, with the command's stderr and the daemon's log, when `output` is a failure.
pub fn expect_success(daemon: &NsDaemon, program: &str, args: &[&str], output: &Output) {
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}): {}\ndaemon log:\n{}",
        output.status,
        stderr_of(output),
        daemon.log()
    );
}

/// `arca --store / daemon --socket LAB/socket ARGS` in a mount namespace of its own where
/// `LAB/nixroot/nix` is `/nix`, with `NIX_CONF_DIR=LAB/daemon-conf` and `TMPDIR=LAB/tmp`,
/// logging to `LAB/log`. Its process group is killed when it is dropped.
pub struct NsDaemon {
    child: Child,
    log: PathBuf,
}

impl NsDaemon {
    /// The daemon's command, not started.
    pub fn command(lab: &Lab, args: &[&str]) -> Command {
        let mut command = lab.in_namespace(&arca_bin());
        command
            .args(["--store", "/", "daemon", "--socket"])
            .arg(lab.path("socket"))
            .args(args)
            .env_remove("NIX_CONFIG")
            .env("NIX_CONF_DIR", lab.path("daemon-conf"))
            .env("NIX_USER_CONF_FILES", lab.path("daemon-conf/absent.conf"))
            .env("TMPDIR", lab.path("tmp"))
            .env("HOME", lab.path("home"))
            .stdin(Stdio::null())
            .process_group(0);
        command
    }

    /// Starts the daemon and waits until it answers a handshake.
    pub fn start(lab: &Lab, args: &[&str]) -> NsDaemon {
        let log_path = lab.path("log");
        let log = fs::File::create(&log_path).unwrap();
        let child = NsDaemon::command(lab, args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare can be spawned");
        let mut daemon = NsDaemon {
            child,
            log: log_path,
        };
        let socket = lab.path("socket");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let served =
                RawClient::connect(&socket).and_then(|mut client| client.handshake(version(1, 34)));
            if served.is_ok() {
                return daemon;
            }
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!(
                    "the daemon exited ({status}) before listening:\n{}",
                    daemon.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon does not listen on {} after 20 s:\n{}",
                socket.display(),
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the daemon wrote to its stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NsDaemon {
    fn drop(&mut self) {
        // The group: `unshare` became `sh`, then the daemon; builders it left too.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nobody`, with a home in the lab.
pub fn nobody(lab: &Lab) -> Unprivileged {
    Unprivileged::nobody(&lab.path("nobody-home"))
}

/// `nix-build FILE -o LAB/result ARGS` as root, which must succeed: the output path.
pub fn build_ok(lab: &Lab, daemon: &NsDaemon, file: &Path, args: &[&str]) -> String {
    let result = lab.path("result");
    let mut all = vec![file.to_str().unwrap(), "-o", result.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = lab.run_ok(daemon, "nix-build", &all);
    assert!(
        out.starts_with("/nix/store/") && !out.contains('\n'),
        "nix-build printed {out:?}, not one output path"
    );
    out
}

/// Whether `path` is valid, as `nix-store --check-validity` through the daemon says.
pub fn valid(lab: &Lab, path: &str) -> bool {
    lab.run("nix-store", None, &["--check-validity", path])
        .status
        .success()
}
