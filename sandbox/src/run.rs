//! The parent side of a run: [`prepare`] plans the root, has the keeper forked (by the
//! zygote, see `crate::zygote`, or here), writes the id
//! maps and lets init lay out the root; [`Prepared::start`] sends the deferred binds (from
//! any thread), and [`Started::wait`] supervises the program (output, limits) until every
//! process of the sandbox is gone.

use std::ffi::{c_char, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::statvfs::statvfs;
use nix::unistd::{pipe2, Pid};
use seccompiler::BpfProgram;

use crate::budget::Budget;
use crate::cgroup::Cgroup;
use crate::child::{
    fork_keeper, init_stack, lower_priority, ChildContext, ChildFds, InitUsage, Record, Step,
    DEFERRED_DIR, DEFERRED_END, DEFERRED_FILE, DEFERRED_HEADER, DEFERRED_LINK_MAX,
    DEFERRED_NAME_MAX, DEFERRED_SYMLINK, RECORD_LEN,
};
use crate::error::{SandboxError, SetupStep};
use crate::outcome::{Outcome, Report, Usage};
use crate::plan::{locked_flags, Plan, DEFERRED_MAX};
use crate::spec::{CgroupMode, Limits, Network, SandboxSpec};
use crate::user_net::UserModeNetwork;
use crate::zygote::Spawned;

/// Runs `spec.program` in a fresh sandbox and waits until it and every process it started
/// are gone. Its stdout and stderr, merged, are written to `output` as they arrive (up to
/// [`crate::Limits::max_output_bytes`]); its stdin is `/dev/null`.
///
/// Safe to call from many threads at once: each run has a single-threaded keeper process
/// of its own, which makes only system calls on data prepared before it was forked.
pub fn run(spec: &SandboxSpec, output: &mut dyn Write) -> Result<Report, SandboxError> {
    prepare(spec)?.run(&[] as &[&OsStr], output)
}

/// A sandbox built up to its deferred binds: namespaces made, id maps written, the
/// layout mounted, init waiting. [`Prepared::run`] names the deferred binds and runs the
/// program; dropping it instead kills the sandbox.
///
/// What it is for: nearly all of the cost of starting a sandbox (forks, namespaces,
/// mounts) can be paid while the builds of the program's inputs still run, and only
/// those inputs' binds, the `pivot_root` and `execve` wait for them.
pub struct Prepared {
    /// First, so that a dropped `Prepared` kills the sandbox before anything else goes.
    children: Children,
    plan: Plan,
    /// Removed (it is empty on the host) once init has left it for the program.
    staging: StagingDir,
    limits: Limits,
    status: File,
    exec: File,
    output: OwnedFd,
    /// Parent → init: the deferred binds; `None` without [`crate::DeferredBinds`].
    deferred: Option<File>,
    source_dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    /// Up before the program starts, down when the run is over.
    _network: Option<UserModeNetwork>,
}

/// Builds the sandbox `spec` describes up to the point where only its deferred binds
/// ([`SandboxSpec::deferred_binds`]) are missing, and returns without waiting for init to
/// get there. Errors of the layout done meanwhile come from [`Prepared::run`].
pub fn prepare(spec: &SandboxSpec) -> Result<Prepared, SandboxError> {
    let caller_is_root = nix::unistd::geteuid().is_root();
    let staging = StagingDir::create()?;
    let plan = Plan::new(spec, staging.path(), caller_is_root)?;
    if plan.unshare_user {
        host_ids(spec)?;
    }
    let filters: &[BpfProgram] = if spec.seccomp {
        seccomp_filters()?
    } else {
        &[]
    };
    let argv = pointer_array(&plan.argv);
    let envp = pointer_array(&plan.envp);
    let cgroup = match spec.cgroup {
        CgroupMode::Off => None,
        CgroupMode::Auto => Cgroup::create().ok(),
        CgroupMode::Required => {
            Some(Cgroup::create().map_err(|err| SandboxError::Cgroup(err.to_string()))?)
        }
    };

    let (status_read, status_write) = pipe()?;
    let (go_read, go_write) = pipe()?;
    let (exec_read, exec_write) = pipe()?;
    let (output_read, output_write) = pipe()?;
    let deferred = plan.deferred.as_ref().map(|_| pipe()).transpose()?;
    let dev_null = above_stdio(
        File::open("/dev/null")
            .map_err(|e| host("opening /dev/null", e))?
            .into(),
    )?;
    let deferred_read = deferred.as_ref().map_or(-1, |(read, _)| read.as_raw_fd());
    // The descriptors the keeper keeps, sorted (it may not allocate to sort them).
    let mut keep: Vec<RawFd> = [
        status_write.as_raw_fd(),
        go_read.as_raw_fd(),
        exec_write.as_raw_fd(),
        output_write.as_raw_fd(),
        dev_null.as_raw_fd(),
    ]
    .into_iter()
    .chain((deferred_read >= 0).then_some(deferred_read))
    .chain(plan.held.iter().map(|held| held.number))
    .collect();
    keep.sort_unstable();
    let context = ChildContext {
        plan: &plan,
        keep: &keep,
        fds: ChildFds {
            status: status_write.as_raw_fd(),
            go: go_read.as_raw_fd(),
            exec: exec_write.as_raw_fd(),
            output: output_write.as_raw_fd(),
            dev_null: dev_null.as_raw_fd(),
            deferred: deferred_read,
        },
        parent_pid: nix::unistd::getpid().as_raw(),
        caller_is_root,
        filters,
        last_capability: last_capability(),
        argv: &argv,
        envp: &envp,
        init_stack: init_stack().map_err(|errno| host("mapping a stack", errno.into()))?,
        remap: &[],
    };
    let cgroup_dir = cgroup.as_ref().and_then(|c| c.open_dir().ok());
    let cgroup_fd = cgroup_dir.as_ref().map(|fd| fd.as_raw_fd());
    // Through the zygote when it can (see `crate::zygote`), else forked from here.
    let request = crate::zygote::Request {
        plan: &plan,
        fds: context.fds,
        caller_is_root,
        seccomp: spec.seccomp,
        last_capability: context.last_capability,
        cgroup: cgroup_fd,
    };
    let (keeper, born_in_cgroup) = match crate::zygote::spawn_keeper(&request) {
        Spawned::Keeper(pid, born_in_cgroup) => (pid, born_in_cgroup),
        Spawned::NotMade => {
            fork_keeper(&context, cgroup_fd).map_err(|errno| host("forking", errno.into()))?
        }
        Spawned::Lost => {
            return Err(host(
                "starting the sandbox",
                io::Error::other("the sandbox zygote ended before it answered"),
            ))
        }
    };
    drop(cgroup_dir);
    let mut children = Children {
        keeper,
        init: None,
        go: Some(go_write),
        reaped: false,
    };
    drop((status_write, go_read, exec_write, output_write, dev_null));
    let deferred = deferred.map(|(_, write)| File::from(write));
    let mut status = File::from(status_read);
    let exec = File::from(exec_read);

    expect(&mut status, &plan, Record::Ready)?;
    if plan.unshare_user {
        write_id_maps(spec, keeper)?;
    }
    let network = match &spec.network {
        Network::UserMode {
            program,
            host_loopback,
        } => Some(
            UserModeNetwork::start(program, keeper, !caller_is_root, *host_loopback)
                .map_err(|e| host("starting the user-mode network", e))?,
        ),
        _ => None,
    };
    let cgroup = match cgroup {
        Some(cgroup) if born_in_cgroup => Some(cgroup),
        Some(cgroup) => match cgroup.add(keeper) {
            Ok(()) => Some(cgroup),
            Err(err) if spec.cgroup == CgroupMode::Required => {
                return Err(SandboxError::Cgroup(err.to_string()))
            }
            Err(_) => None,
        },
        None => None,
    };
    children
        .start()
        .map_err(|errno| host("starting the sandbox", errno.into()))?;
    match read_record(&mut status)? {
        Some(Record::InitPid(pid)) => children.init = Some(pid),
        other => return Err(unexpected(other, &plan, &[])),
    }
    Ok(Prepared {
        plan,
        staging,
        limits: spec.limits,
        children,
        status,
        exec,
        output: output_read,
        deferred,
        source_dir: spec.deferred_binds.as_ref().map(|b| b.source_dir.clone()),
        cgroup,
        _network: network,
    })
}

impl Prepared {
    /// Binds each of `deferred` (names of entries of [`crate::DeferredBinds::source_dir`],
    /// which must exist now) and runs the program, as [`run`] does: [`Prepared::start`]
    /// then [`Started::wait`].
    pub fn run<N: AsRef<OsStr>>(
        self,
        deferred: &[N],
        output: &mut dyn Write,
    ) -> Result<Report, SandboxError> {
        self.start(deferred)?.wait(output)
    }

    /// Sends init the deferred binds and returns without waiting: init makes them and
    /// starts the program on its own. Names without deferred binds in the spec are an
    /// error; so are more than 4,096 of them. The limits count from here. Any thread may
    /// start a sandbox another prepared.
    pub fn start<N: AsRef<OsStr>>(mut self, deferred: &[N]) -> Result<Started, SandboxError> {
        let start = Instant::now();
        let names: Vec<&OsStr> = deferred.iter().map(AsRef::as_ref).collect();
        if let Some(pipe) = self.deferred.take() {
            let message = deferred_message(self.source_dir.as_deref(), &names)?;
            send_deferred(pipe, &message)?;
        } else if !names.is_empty() {
            return Err(SandboxError::InvalidSpec {
                field: "deferred binds",
                value: names[0].to_string_lossy().into_owned(),
                reason: "the spec has no deferred_binds",
            });
        }
        Ok(Started {
            prepared: self,
            start,
            names: names.into_iter().map(OsStr::to_os_string).collect(),
        })
    }
}

/// A sandbox whose program was started ([`Prepared::start`]): [`Started::wait`] supervises
/// it. Dropping it kills the sandbox.
pub struct Started {
    prepared: Prepared,
    start: Instant,
    /// The deferred binds sent, to name the one that failed.
    names: Vec<OsString>,
}

impl Started {
    /// Passes the program's output on to `output` and enforces the limits until every
    /// process of the sandbox is gone, as [`run`] does.
    pub fn wait(self, output: &mut dyn Write) -> Result<Report, SandboxError> {
        let Started {
            mut prepared,
            start,
            names,
        } = self;
        // End-of-file without a record: init reached execve.
        if let Some(record) = read_record(&mut prepared.exec)? {
            let names: Vec<&OsStr> = names.iter().map(OsString::as_os_str).collect();
            return Err(unexpected(Some(record), &prepared.plan, &names));
        }

        // Everything lives until the run is over; the user-mode network goes last.
        let Prepared {
            limits,
            mut children,
            mut status,
            output: output_read,
            cgroup,
            staging,
            _network,
            plan,
            ..
        } = prepared;
        // Freed while the program runs rather than after. Init has made the root its own
        // (`pivot_root`) and left the host's tree, so the directory the root was built on
        // is nothing to anyone any more.
        drop((plan, staging));
        let supervised = supervise(
            &limits,
            start,
            &mut children,
            output_read,
            &mut status,
            output,
        );
        let (outcome, output_bytes, init_usage) = supervised?;
        if cgroup.is_some() {
            // The cgroup can only be removed once the keeper has left it.
            children
                .reap()
                .map_err(|errno| host("waiting for the sandbox", errno.into()))?;
        } else {
            // Every process of the sandbox is gone (init is a zombie, so its namespace
            // was emptied); the keeper only has to reap it and tear down the namespaces,
            // which nobody needs to wait for.
            children.reap_in_background();
        }
        let micros = Duration::from_micros;
        Ok(Report {
            outcome,
            output_bytes,
            elapsed: start.elapsed(),
            usage: Usage {
                user_time: micros(init_usage.user_us),
                system_time: micros(init_usage.system_us),
                max_rss_bytes: init_usage.max_rss_kib.saturating_mul(1024),
                cgroup: cgroup.as_ref().map(Cgroup::usage),
            },
        })
    }
}

/// The deferred binds as init reads them (see `child::deferred_binds`): for each name, what
/// the source is (a directory, a file, or a symlink and its target) and the mount flags a
/// user namespace locks on it, looked at now; then the end record.
fn deferred_message(source_dir: Option<&Path>, names: &[&OsStr]) -> Result<Vec<u8>, SandboxError> {
    let source_dir = source_dir.unwrap_or(Path::new("/"));
    if names.len() > DEFERRED_MAX {
        return Err(SandboxError::InvalidSpec {
            field: "deferred binds",
            value: names.len().to_string(),
            reason: "at most 4096 deferred binds",
        });
    }
    let mut message = Vec::with_capacity(names.len() * 80 + DEFERRED_HEADER);
    for name in names {
        let bytes = name.as_bytes();
        if bytes.is_empty()
            || bytes.len() > DEFERRED_NAME_MAX
            || bytes == b"."
            || bytes == b".."
            || bytes.iter().any(|&b| b == b'/' || b == 0)
        {
            return Err(SandboxError::InvalidSpec {
                field: "deferred bind",
                value: name.to_string_lossy().into_owned(),
                reason: "must be the name of a directory entry",
            });
        }
        let source = source_dir.join(name);
        let missing = |_| SandboxError::MissingSource {
            path: source.clone(),
        };
        let metadata = std::fs::symlink_metadata(&source).map_err(missing)?;
        let (kind, link, locked) = if metadata.file_type().is_symlink() {
            let link = std::fs::read_link(&source).map_err(missing)?;
            let link = link.into_os_string().into_vec();
            if link.len() > DEFERRED_LINK_MAX || link.contains(&0) {
                return Err(SandboxError::InvalidSpec {
                    field: "deferred bind",
                    value: source.display().to_string(),
                    reason: "a symlink target of at most 4095 bytes",
                });
            }
            (DEFERRED_SYMLINK, link, MsFlags::empty())
        } else {
            let flags = statvfs(&source).map_err(|errno| missing(io::Error::from(errno)))?;
            let kind = if metadata.is_dir() {
                DEFERRED_DIR
            } else {
                DEFERRED_FILE
            };
            (kind, Vec::new(), locked_flags(flags.flags()))
        };
        message.push(kind);
        message.extend_from_slice(&(locked.bits() as u32).to_ne_bytes());
        message.extend_from_slice(&(bytes.len() as u16).to_ne_bytes());
        message.extend_from_slice(&(link.len() as u16).to_ne_bytes());
        message.extend_from_slice(bytes);
        message.extend_from_slice(&link);
    }
    message.extend_from_slice(&[DEFERRED_END; DEFERRED_HEADER]);
    Ok(message)
}

/// Writes the deferred binds to init and closes the pipe. A pipe init closed (it failed
/// before it read them) is not an error here: its failure record tells why.
fn send_deferred(mut pipe: File, message: &[u8]) -> Result<(), SandboxError> {
    match pipe.write_all(message) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
            Err(host("sending the deferred binds", err))
        }
        _ => Ok(()),
    }
}

/// Passes output on and enforces the limits until init's status arrives and the output
/// pipe is closed (which, init being pid 1 of its namespace, means every process is gone).
fn supervise(
    limits: &Limits,
    start: Instant,
    children: &mut Children,
    output_read: OwnedFd,
    status: &mut File,
    output: &mut dyn Write,
) -> Result<(Outcome, u64, InitUsage), SandboxError> {
    let mut budget = Budget::new(limits, start);
    let mut pipe = Some(File::from(output_read));
    let mut init_status: Option<i32> = None;
    let mut init_usage = InitUsage::default();
    let mut killed: Option<Outcome> = None;
    let mut writer_error: Option<io::Error> = None;
    let mut buffer = [0u8; 16 * 1024];

    // Killing init (pid 1 of its namespace) kills every process of the sandbox. The
    // cgroup is not used for this: it holds the keeper too, and its `cgroup.kill` would
    // take the keeper and init's status with it.
    let kill_all = |children: &Children, reason: Outcome, killed: &mut Option<Outcome>| {
        if killed.is_none() {
            *killed = Some(reason);
        }
        children.kill_init();
    };

    while pipe.is_some() || init_status.is_none() {
        let mut wait: Option<Duration> = None;
        if killed.is_none() {
            match budget.check(Instant::now()) {
                Ok(until_limit) => wait = until_limit,
                Err(limit) => {
                    kill_all(children, limit, &mut killed);
                    continue;
                }
            }
        }
        let timeout = match wait {
            None => PollTimeout::NONE,
            // Round up so a wake-up never comes a millisecond early and spins.
            Some(w) => {
                PollTimeout::try_from(w.as_millis().saturating_add(1).min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = Vec::with_capacity(2);
        if let Some(out) = &pipe {
            fds.push(PollFd::new(out.as_fd(), PollFlags::POLLIN));
        }
        if init_status.is_none() {
            fds.push(PollFd::new(status.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(host("polling the sandbox", errno.into())),
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        let output_ready = pipe.is_some() && ready(&fds[0]);
        let status_ready = init_status.is_none() && ready(&fds[fds.len() - 1]);
        drop(fds);

        if output_ready {
            let out = pipe
                .as_mut()
                .expect("output_ready implies the pipe is open");
            let n = match out.read(&mut buffer) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(host("reading the sandbox's output", err)),
            };
            if n == 0 {
                pipe = None;
            } else {
                let (allowed, over) = budget.output(n);
                if killed.is_none() && allowed > 0 {
                    if let Err(err) = output.write_all(&buffer[..allowed]) {
                        writer_error = Some(err);
                        // Nobody reads what it prints: stop it rather than block it.
                        kill_all(children, Outcome::Signaled(libc::SIGKILL), &mut killed);
                    }
                }
                if let Some(limit) = over {
                    kill_all(children, limit, &mut killed);
                }
            }
        }
        if status_ready {
            match read_record(status)? {
                Some(Record::InitStatus(raw, usage)) => {
                    init_status = Some(raw);
                    init_usage = usage;
                    // init is a zombie now: release its pid to the keeper.
                    children.init = None;
                    children.go = None;
                }
                _ => {
                    return Err(host(
                        "supervising the sandbox",
                        io::Error::other("the keeper process died"),
                    ))
                }
            }
        }
    }
    if let Some(err) = writer_error {
        return Err(SandboxError::Output(err));
    }
    let raw = init_status.expect("the loop ends only once init's status is known");
    let outcome = killed.unwrap_or(if libc::WIFSIGNALED(raw) {
        Outcome::Signaled(libc::WTERMSIG(raw))
    } else {
        Outcome::Exited(libc::WEXITSTATUS(raw))
    });
    Ok((outcome, budget.total(), init_usage))
}

/// The keeper and init processes of one run. Dropping it (on any early return) kills
/// the sandbox and reaps the keeper.
struct Children {
    keeper: i32,
    /// Init's pid while it may be killed by pid (not yet waited for by the keeper).
    init: Option<i32>,
    /// The parent's end of the "go" pipe; closing it lets the keeper reap init.
    go: Option<OwnedFd>,
    reaped: bool,
}

impl Children {
    /// Tells the keeper its id maps are written: fork init.
    fn start(&self) -> Result<(), Errno> {
        let fd = self
            .go
            .as_ref()
            .expect("the go pipe is open until init's status is read");
        nix::unistd::write(fd, b"g").map(drop)
    }

    fn kill_init(&self) {
        if let Some(init) = self.init {
            // Killing pid 1 of the namespace kills every process in it.
            let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
        }
    }

    fn reap(&mut self) -> Result<(), Errno> {
        self.go = None;
        reap(self.keeper)?;
        self.reaped = true;
        Ok(())
    }

    /// Hands the keeper to the process's reaper thread (or reaps it here if no thread
    /// can be made), so that the caller does not wait for the namespaces' teardown.
    fn reap_in_background(&mut self) {
        lower_priority(self.keeper);
        self.go = None;
        static REAPER: OnceLock<Option<Mutex<mpsc::Sender<i32>>>> = OnceLock::new();
        let reaper = REAPER.get_or_init(|| {
            let (send, receive) = mpsc::channel::<i32>();
            std::thread::Builder::new()
                .name("arca-sandbox-reaper".into())
                .spawn(move || {
                    for keeper in receive {
                        let _ = reap(keeper);
                    }
                })
                .ok()
                .map(|_| Mutex::new(send))
        });
        let handed = reaper.as_ref().is_some_and(|send| {
            send.lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(self.keeper)
                .is_ok()
        });
        if !handed {
            let _ = reap(self.keeper);
        }
        self.reaped = true;
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        self.kill_init();
        let _ = kill(Pid::from_raw(self.keeper), Signal::SIGKILL);
        self.go = None;
        let _ = reap(self.keeper);
    }
}

/// The host ids the sandbox user maps to: the spec's, else the caller's, except that root
/// is never mapped (a process whose host uid is 0 passes the owner checks of
/// `/proc/sys`, even without capabilities): root's default is nobody.
fn host_ids(spec: &SandboxSpec) -> Result<(u32, u32), SandboxError> {
    let ids = match spec.host_ids {
        Some(ids) => ids,
        None if nix::unistd::geteuid().is_root() => (NOBODY, NOBODY),
        None => (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ),
    };
    if ids.0 == 0 {
        return Err(SandboxError::InvalidSpec {
            field: "host_ids",
            value: format!("{ids:?}"),
            reason: "the sandbox user must not map to host root",
        });
    }
    Ok(ids)
}

const NOBODY: u32 = 65534;

/// Writes `setgroups`, `uid_map` and `gid_map` of the keeper's new user namespace.
fn write_id_maps(spec: &SandboxSpec, keeper: i32) -> Result<(), SandboxError> {
    let (host_uid, host_gid) = host_ids(spec)?;
    let proc = PathBuf::from(format!("/proc/{keeper}"));
    let identity = &spec.identity;
    for (file, contents) in [
        ("setgroups", "deny".to_string()),
        ("uid_map", format!("{} {host_uid} 1\n", identity.uid)),
        ("gid_map", format!("{} {host_gid} 1\n", identity.gid)),
    ] {
        std::fs::write(proc.join(file), contents).map_err(|err| {
            let errno = Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO));
            // Mapping one's own ids is what any user may do; refusing it means the
            // kernel refuses user namespaces. Other host ids need privilege.
            if errno == Errno::EPERM && spec.host_ids.is_none() {
                SandboxError::UserNamespacesUnavailable { errno }
            } else {
                SandboxError::Setup {
                    step: SetupStep::IdMaps,
                    errno,
                }
            }
        })?;
    }
    Ok(())
}

fn expect(status: &mut File, plan: &Plan, wanted: Record) -> Result<(), SandboxError> {
    match read_record(status)? {
        Some(record) if record == wanted => Ok(()),
        other => Err(unexpected(other, plan, &[])),
    }
}

/// The error for a record other than the one expected (normally a failure report).
fn unexpected(record: Option<Record>, plan: &Plan, deferred: &[&OsStr]) -> SandboxError {
    let Some(Record::Failed(step, op, errno)) = record else {
        return host(
            "starting the sandbox",
            io::Error::other("a sandbox process died during setup"),
        );
    };
    let errno = Errno::from_raw(errno);
    let user_namespace_refused = matches!(
        errno,
        Errno::EPERM | Errno::EINVAL | Errno::ENOSPC | Errno::EUSERS
    );
    let step = match step {
        Step::Unshare if plan.unshare_user && user_namespace_refused => {
            return SandboxError::UserNamespacesUnavailable { errno };
        }
        Step::Unshare => SetupStep::Unshare,
        Step::ForkInit => SetupStep::ForkInit,
        Step::PrivateMounts => SetupStep::PrivateMounts,
        Step::RootTmpfs => SetupStep::RootTmpfs,
        Step::Layout => SetupStep::Layout(
            plan.descriptions
                .get(op as usize)
                .cloned()
                .unwrap_or_else(|| format!("layout step {op}")),
        ),
        Step::PivotRoot => SetupStep::PivotRoot,
        Step::SealRoot => SetupStep::SealRoot,
        Step::Hostname => SetupStep::Hostname,
        Step::Loopback => SetupStep::Loopback,
        Step::Identity => SetupStep::Identity,
        Step::Capabilities => SetupStep::Capabilities,
        Step::Seccomp => SetupStep::Seccomp,
        Step::Chdir => SetupStep::Chdir(PathBuf::from(std::ffi::OsStr::from_bytes(
            plan.cwd.to_bytes(),
        ))),
        Step::Exec => SetupStep::Exec(PathBuf::from(std::ffi::OsStr::from_bytes(
            plan.program.to_bytes(),
        ))),
        Step::FileDescriptors => SetupStep::FileDescriptors,
        Step::Deferred => SetupStep::Layout(match deferred.get(op as usize) {
            Some(name) => format!("bind-mounting deferred entry '{}'", name.to_string_lossy()),
            None => format!("reading deferred bind {op}"),
        }),
    };
    SandboxError::Setup { step, errno }
}

/// Reads one record; `None` at end-of-file.
fn read_record(pipe: &mut File) -> Result<Option<Record>, SandboxError> {
    let mut bytes = [0u8; RECORD_LEN];
    let mut filled = 0;
    while filled < RECORD_LEN {
        match pipe.read(&mut bytes[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(host(
                    "reading from the sandbox",
                    io::ErrorKind::UnexpectedEof.into(),
                ))
            }
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(host("reading from the sandbox", err)),
        }
    }
    Record::decode(&bytes).map(Some).ok_or_else(|| {
        host(
            "reading from the sandbox",
            io::Error::other("malformed record"),
        )
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let (read, write) =
        pipe2(OFlag::O_CLOEXEC).map_err(|errno| host("creating a pipe", errno.into()))?;
    Ok((above_stdio(read)?, above_stdio(write)?))
}

/// Moves a descriptor to 3 or above: a caller that runs with stdin, stdout or stderr
/// closed gets those numbers back from `pipe`/`open`, and init's `dup2` onto 0-2 would
/// then overwrite them.
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd, SandboxError> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // `try_clone` duplicates with F_DUPFD_CLOEXEC from 3 up.
    fd.try_clone()
        .map_err(|err| host("moving a descriptor above 2", err))
}

fn host(context: &str, source: io::Error) -> SandboxError {
    SandboxError::Host {
        context: context.to_string(),
        source,
    }
}

/// `strings` as a null-terminated array of pointers, for `execve`.
pub(crate) fn pointer_array(strings: &[std::ffi::CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn seccomp_filters() -> Result<&'static [BpfProgram], SandboxError> {
    static FILTERS: OnceLock<Result<Vec<BpfProgram>, String>> = OnceLock::new();
    match FILTERS.get_or_init(|| crate::seccomp::filters().map_err(|err| err.to_string())) {
        Ok(filters) => Ok(filters),
        Err(message) => Err(host(
            "compiling the seccomp filter",
            io::Error::other(message.clone()),
        )),
    }
}

/// `/proc/sys/kernel/cap_last_cap`: every capability up to it is dropped in the sandbox
/// (63, all that fit in the kernel's 64-bit sets, if the file cannot be read).
fn last_capability() -> u32 {
    static LAST: OnceLock<u32> = OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(63)
    })
}

/// The empty directory the root tmpfs is mounted on (inside the private mount namespace
/// only; on the host it stays empty) and removed after the run.
struct StagingDir {
    path: PathBuf,
}

impl StagingDir {
    fn create() -> Result<StagingDir, SandboxError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // mkdir never follows a planted symlink and fails on any existing name (one left
        // by a crashed run, or made by someone else in a shared /tmp): take the next.
        loop {
            let path = std::env::temp_dir().join(format!(
                "arca-sandbox-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(StagingDir { path }),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(host(&format!("creating {}", path.display()), err)),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Reaps the keeper (retrying on EINTR).
fn reap(pid: i32) -> Result<(), Errno> {
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(pid), None) {
            Err(Errno::EINTR) => continue,
            result => return result.map(drop),
        }
    }
}
