//! Running a program *without* a sandbox, as Nix does with `sandbox = false`: on the
//! host's file system, in the host's namespaces, in a process group of its own, with the
//! same time and output limits as [`crate::run`].
//!
//! Nothing here isolates anything: the program sees and may write whatever its user may.
//! What it keeps is the supervision: its stdout and stderr merged into one stream, the
//! wall-clock, silence and output limits (enforced by killing the process group), and
//! no process of the group outliving the run. A process that leaves the group
//! (`setsid`) escapes, as it does from Nix.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};

use crate::budget::Budget;
use crate::error::SandboxError;
use crate::outcome::{Outcome, Report, Usage};
use crate::spec::Limits;

/// A program to run on the host, unsandboxed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// The program (an absolute path; no `PATH` lookup).
    pub program: PathBuf,
    /// The full argument vector, `argv[0]` included.
    pub args: Vec<OsString>,
    /// The complete environment; nothing is inherited from the caller.
    pub env: Vec<(OsString, OsString)>,
    /// The working directory.
    pub cwd: PathBuf,
    /// Run as this user and group (supplementary groups dropped); `None`: as the caller.
    /// Changing them needs root.
    pub user: Option<(u32, u32)>,
    /// The time and output limits ([`Limits::tmpfs_size`] does not apply: there is no
    /// tmpfs of its own).
    pub limits: Limits,
    /// The file mode creation mask of the program.
    pub umask: u32,
}

impl HostSpec {
    /// `program` with `args` (`argv[0]` included), an empty environment, `/` as working
    /// directory, the caller's identity, no limits and umask 022.
    pub fn new(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        HostSpec {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            user: None,
            limits: Limits::default(),
            umask: 0o022,
        }
    }
}

/// Kills every process running as `uid` (Nix's `killUser`): a child takes that uid and
/// signals all it may at once (`kill(-1, SIGKILL)`), until `/proc` shows no live process
/// of the uid (a killed process may stay a zombie until its parent reaps it; it can do
/// nothing any more). For a build user before and after a build, so that nothing a
/// previous build left running (a daemonised process, out of its process group) can
/// touch this one's files. Refuses root and the caller's own uids, which would take
/// everything down.
pub fn kill_user(uid: u32) -> Result<(), SandboxError> {
    let own = [
        nix::unistd::getuid().as_raw(),
        nix::unistd::geteuid().as_raw(),
    ];
    if uid == 0 || own.contains(&uid) {
        return Err(SandboxError::InvalidSpec {
            field: "uid",
            value: uid.to_string(),
            reason: "killing every process of root or of the caller is refused",
        });
    }
    let failed = |err: io::Error| SandboxError::Host {
        context: format!("killing the processes of uid {uid}"),
        source: err,
    };
    for _ in 0..KILL_ROUNDS {
        if !has_live_process(uid).map_err(failed)? {
            return Ok(());
        }
        let mut command = Command::new("/");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .uid(uid);
        // SAFETY: runs in the forked child after it took `uid`, before execve (which
        // never comes: the child exits here); `kill` and `_exit` are async-signal-safe
        // and touch no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                let code = match nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) | Err(Errno::EPERM) => 0,
                    Err(_) => 1,
                };
                libc::_exit(code)
            });
        }
        let status = command.spawn().map_err(failed)?.wait().map_err(failed)?;
        if !status.success() {
            return Err(failed(io::Error::other(format!(
                "the killer exited with {status}"
            ))));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(failed(io::Error::other(
        "processes of the uid keep running after being killed",
    )))
}

/// How many times [`kill_user`] kills before giving up (a process that keeps forking
/// faster than it is killed).
const KILL_ROUNDS: usize = 200;

/// Whether a process that is not a zombie runs with real or effective uid `uid`.
fn has_live_process(uid: u32) -> io::Result<bool> {
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        // A process may end between listing and reading: skip it.
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| status.lines().find_map(|line| line.strip_prefix(name));
        let zombie = field("State:").is_some_and(|state| state.trim_start().starts_with('Z'));
        let uids: Vec<u32> = field("Uid:")
            .map(|ids| {
                ids.split_whitespace()
                    .filter_map(|id| id.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if !zombie && uids.iter().take(2).any(|id| *id == uid) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How often a run whose output stays open checks whether its program has exited.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// Runs `spec.program` on the host and waits for it. Its stdout and stderr, merged, are
/// written to `output` as they arrive (up to [`Limits::max_output_bytes`]); its stdin is
/// `/dev/null`. When the program exits, or a limit is reached, every process left in its
/// process group is killed (before the program is reaped, so that its group id cannot
/// have been reused); output still buffered in the pipe is passed on.
pub fn run_on_host(spec: &HostSpec, output: &mut dyn Write) -> Result<Report, SandboxError> {
    if !spec.program.is_absolute() {
        return Err(SandboxError::InvalidSpec {
            field: "program",
            value: spec.program.display().to_string(),
            reason: "must be an absolute path",
        });
    }
    let start = Instant::now();
    let (read_end, write_end) =
        pipe2(OFlag::O_CLOEXEC).map_err(|errno| host("creating a pipe", errno.into()))?;
    let stderr_end = write_end
        .try_clone()
        .map_err(|err| host("duplicating a pipe", err))?;
    let mut command = Command::new(&spec.program);
    command
        .arg0(spec.args.first().cloned().unwrap_or_default())
        .args(spec.args.iter().skip(1))
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(stderr_end))
        .process_group(0);
    if let Some((uid, gid)) = spec.user {
        // std drops the supplementary groups when root changes the uid.
        command.uid(uid).gid(gid);
    }
    let umask = nix::sys::stat::Mode::from_bits_truncate(spec.umask);
    // SAFETY: runs in the forked child before execve; `umask` is async-signal-safe and
    // touches no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            nix::sys::stat::umask(umask);
            Ok(())
        });
    }
    let child = command.spawn().map_err(|err| SandboxError::Host {
        context: format!("executing '{}'", spec.program.display()),
        source: err,
    })?;
    // The write ends were moved into `command`; drop it so only the child holds them.
    drop(command);
    let pid = child.id() as i32;
    let mut group = Group { pid, reaped: None };
    let supervised = supervise(&spec.limits, start, &mut group, read_end, output);
    let (outcome, output_bytes) = supervised?;
    let (status, usage) = group.wait()?;
    let outcome = outcome.unwrap_or(if libc::WIFSIGNALED(status) {
        Outcome::Signaled(libc::WTERMSIG(status))
    } else {
        Outcome::Exited(libc::WEXITSTATUS(status))
    });
    Ok(Report {
        outcome,
        output_bytes,
        elapsed: start.elapsed(),
        usage,
    })
}

/// The program's process group. Dropped before its status was taken (an early return),
/// it kills the group and reaps the program.
struct Group {
    pid: i32,
    reaped: Option<(i32, Usage)>,
}

impl Group {
    fn kill(&self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
    }

    /// Once the program has exited: kills what it left in its group (while its pid,
    /// still unreaped, keeps the group id from being reused), then reaps it. `false`
    /// while it runs.
    fn reap_if_exited(&mut self) -> Result<bool, SandboxError> {
        if self.reaped.is_some() {
            return Ok(true);
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(Pid::from_raw(self.pid)), flags) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => Ok(false),
            Ok(_) => {
                self.kill();
                self.wait()?;
                Ok(true)
            }
            Err(errno) => Err(host("waiting for the builder", errno.into())),
        }
    }

    fn wait(&mut self) -> Result<(i32, Usage), SandboxError> {
        if let Some(reaped) = self.reaped {
            return Ok(reaped);
        }
        let reaped = wait4(self.pid, true)?.ok_or_else(|| {
            host(
                "waiting for the builder",
                io::Error::other("no status returned"),
            )
        })?;
        self.reaped = Some(reaped);
        Ok(reaped)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            self.kill();
            let _ = self.wait();
        }
    }
}

/// `wait4` on one child: its raw status and resource use, or `None` if it is still
/// running and `block` is false.
fn wait4(pid: i32, block: bool) -> Result<Option<(i32, Usage)>, SandboxError> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: a zeroed rusage is a valid value of the plain C struct.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if block { 0 } else { libc::WNOHANG };
        // SAFETY: `status` and `rusage` are valid, exclusive pointers for the call.
        let result = unsafe { libc::wait4(pid, &mut status, flags, &mut rusage) };
        match result {
            0 => return Ok(None),
            r if r == pid => {
                let time = |t: libc::timeval| {
                    Duration::from_secs(t.tv_sec.max(0) as u64)
                        + Duration::from_micros(t.tv_usec.max(0) as u64)
                };
                let usage = Usage {
                    user_time: time(rusage.ru_utime),
                    system_time: time(rusage.ru_stime),
                    max_rss_bytes: (rusage.ru_maxrss.max(0) as u64).saturating_mul(1024),
                    cgroup: None,
                };
                return Ok(Some((status, usage)));
            }
            _ => match Errno::last() {
                Errno::EINTR => continue,
                errno => return Err(host("waiting for the builder", errno.into())),
            },
        }
    }
}

/// Passes output on and enforces the limits until the program has exited (its group is
/// then killed and what is left in the pipe passed on) or the pipe is closed.
fn supervise(
    limits: &Limits,
    start: Instant,
    group: &mut Group,
    read_end: OwnedFd,
    output: &mut dyn Write,
) -> Result<(Option<Outcome>, u64), SandboxError> {
    let mut budget = Budget::new(limits, start);
    let mut pipe = File::from(read_end);
    let mut killed: Option<Outcome> = None;
    let mut buffer = [0u8; 16 * 1024];
    let mut exited = false;
    loop {
        let mut wait = EXIT_POLL;
        if killed.is_none() && !exited {
            match budget.check(Instant::now()) {
                Ok(until_limit) => wait = until_limit.map_or(wait, |w| w.min(wait)),
                Err(limit) => {
                    killed = Some(limit);
                    group.kill();
                    continue;
                }
            }
        }
        // Once the program is gone, only what is already in the pipe is read.
        let timeout = if exited {
            PollTimeout::ZERO
        } else {
            PollTimeout::try_from(wait.as_millis().saturating_add(1).min(1000) as i32)
                .unwrap_or(PollTimeout::MAX)
        };
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(host("polling the builder's output", errno.into())),
        }
        let ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        if ready {
            let n = match pipe.read(&mut buffer) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(host("reading the builder's output", err)),
            };
            if n == 0 {
                break;
            }
            let (allowed, over) = budget.output(n);
            if killed.is_none() && allowed > 0 {
                if let Err(err) = output.write_all(&buffer[..allowed]) {
                    group.kill();
                    return Err(SandboxError::Output(err));
                }
            }
            if let (Some(limit), None) = (over, killed) {
                killed = Some(limit);
                group.kill();
            }
            continue;
        }
        if exited {
            break;
        }
        // What it left behind in its group goes with it.
        exited = group.reap_if_exited()?;
    }
    Ok((killed, budget.total()))
}

fn host(context: &str, source: io::Error) -> SandboxError {
    SandboxError::Host {
        context: context.to_string(),
        source,
    }
}
