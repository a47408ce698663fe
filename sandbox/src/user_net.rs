//! The user-mode network of [`crate::Network::UserMode`]: `slirp4netns` run on the host
//! for the sandbox's network namespace, from before the program starts until the run
//! is over.
//!
//! `slirp4netns` enters the namespace (through the keeper's pid, once the keeper has
//! unshared it), creates and configures `tap0` there, and relays its traffic through
//! ordinary sockets of its own on the host. The sandbox shares nothing else with the
//! host's network: in particular not the abstract unix socket namespace, through which
//! a program in the host's namespace could hand descriptors to any local process.

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `slirp4netns` may take to configure the namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `slirp4netns`; killed (and reaped) when dropped.
pub(crate) struct UserModeNetwork {
    child: Child,
}

impl UserModeNetwork {
    /// Starts `program` for the network namespace of process `pid` and waits until the
    /// namespace has its default route (the sign that `tap0` is configured). `join_user`:
    /// the caller is not root, so `slirp4netns` must join the process's user namespace
    /// to configure its network namespace.
    pub(crate) fn start(
        program: &Path,
        pid: i32,
        join_user: bool,
        host_loopback: bool,
    ) -> io::Result<UserModeNetwork> {
        let mut command = Command::new(program);
        // It parses the builder's packets as root: confined to a mount namespace of its
        // own without capabilities (--enable-sandbox) and a seccomp filter of its own.
        command.args([
            "--configure",
            "--mtu=65520",
            "--enable-sandbox",
            "--enable-seccomp",
        ]);
        if !host_loopback {
            command.arg("--disable-host-loopback");
        }
        if join_user {
            command.arg(format!("--userns-path=/proc/{pid}/ns/user"));
        }
        command
            .arg(pid.to_string())
            .arg("tap0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot start '{}': {error}", program.display()),
            )
        })?;
        let mut network = UserModeNetwork { child };
        network.wait_ready(pid)?;
        Ok(network)
    }

    fn wait_ready(&mut self, pid: i32) -> io::Result<()> {
        let routes = format!("/proc/{pid}/net/route");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // The default route (destination 00000000) appears last in the setup.
            let ready = fs::read_to_string(&routes)?
                .lines()
                .skip(1)
                .any(|line| line.split_whitespace().nth(1) == Some("00000000"));
            if ready {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "slirp4netns exited before the network was up ({status})"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "slirp4netns did not configure the network in time",
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for UserModeNetwork {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
