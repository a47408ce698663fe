//! The two processes that build the sandbox. Everything here runs after a fork in a
//! possibly multi-threaded parent, so it only makes system calls on data prepared
//! beforehand ([`Plan`]): no allocation, no locks, no `std` I/O. Errors travel as
//! fixed-size records over pipes (see [`Record`]).
//!
//! The keeper may be made by a raw `clone3` (straight into a cgroup), which glibc does
//! not see: its malloc and stdio locks may be copied held, and it still believes in the
//! parent's threads, so glibc's set*id wrappers (which signal every thread and wait)
//! would hang. Hence raw system calls for set*id, setgroups and capabilities, and
//! nothing that allocates, even on error paths.
//!
//! ```text
//! parent ──fork──▶ keeper (host pid namespace); or parent's zygote ──clone(PARENT)──▶ keeper
//!                    │ unshare(user?, mount, pid, net?, uts, ipc)
//!                    │ ◀── id maps written by the parent, then "go"
//!                    │ open_tree: a detached copy of the deferred binds' source
//!                    └─clone(VM|VFORK)─▶ init (pid 1 of the new pid namespace)
//!                          mounts, host name, loopback, bounding set, seccomp,
//!                          pivot_root,
//!                          ◀── deferred binds (a prepared sandbox's, see `crate::prepare`),
//!                              copied out of that source (by path before pivot_root
//!                              where the kernel cannot)
//!                          seal the root, identity, caps, execve
//! ```
//!
//! Init runs in the keeper's memory on a stack of its own while the keeper waits, as
//! `posix_spawn` does: no page tables are copied for it and its `execve` tears no copy of
//! the supervisor's memory down. Init reports its own pid first (the kernel writes it in
//! the keeper's memory as it starts init); once init has executed the program, the keeper
//! waits for it and reports its status: it stays outside the new pid namespace only for
//! that. Init *is* the program after `execve`, so when it ends the kernel kills every
//! other process of the namespace.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr, OsStr};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root};
use seccompiler::BpfProgram;

use crate::plan::{Op, Plan};

/// What the child reports, as a fixed record of [`RECORD_LEN`] bytes (see `encode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    /// The keeper has unshared its namespaces and waits for its id maps.
    Ready,
    /// Host pid of init, sent by init itself as it starts.
    InitPid(i32),
    /// Raw wait status of init, and the resource use of init and everything it reaped.
    InitStatus(i32, InitUsage),
    /// A setup step failed: step code, op index (for `Step::Layout`), errno.
    Failed(Step, u32, i32),
}

/// CPU times (microseconds) and peak resident set (KiB) from `getrusage` semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct InitUsage {
    pub user_us: u64,
    pub system_us: u64,
    pub max_rss_kib: u64,
}

/// `[tag, step, op, value]` as 32-bit words, then three 64-bit words (usage).
pub(crate) const RECORD_LEN: usize = 40;

impl Record {
    fn encode(self) -> [u8; RECORD_LEN] {
        let (tag, step, op, value, usage) = match self {
            Record::Ready => (1u32, 0u32, 0u32, 0i32, InitUsage::default()),
            Record::InitPid(pid) => (2, 0, 0, pid, InitUsage::default()),
            Record::InitStatus(status, usage) => (3, 0, 0, status, usage),
            Record::Failed(step, op, errno) => (4, step as u32, op, errno, InitUsage::default()),
        };
        let mut out = [0u8; RECORD_LEN];
        out[0..4].copy_from_slice(&tag.to_ne_bytes());
        out[4..8].copy_from_slice(&step.to_ne_bytes());
        out[8..12].copy_from_slice(&op.to_ne_bytes());
        out[12..16].copy_from_slice(&value.to_ne_bytes());
        out[16..24].copy_from_slice(&usage.user_us.to_ne_bytes());
        out[24..32].copy_from_slice(&usage.system_us.to_ne_bytes());
        out[32..40].copy_from_slice(&usage.max_rss_kib.to_ne_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8; RECORD_LEN]) -> Option<Record> {
        let word =
            |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let value = word(12) as i32;
        match word(0) {
            1 => Some(Record::Ready),
            2 => Some(Record::InitPid(value)),
            3 => {
                let long = |i: usize| {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(&bytes[i..i + 8]);
                    u64::from_ne_bytes(word)
                };
                Some(Record::InitStatus(
                    value,
                    InitUsage {
                        user_us: long(16),
                        system_us: long(24),
                        max_rss_kib: long(32),
                    },
                ))
            }
            4 => Some(Record::Failed(Step::from_code(word(4))?, word(8), value)),
            _ => None,
        }
    }
}

/// The steps a child can fail at (the parent turns them into [`crate::SetupStep`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Step {
    Unshare = 1,
    ForkInit,
    PrivateMounts,
    RootTmpfs,
    Layout,
    PivotRoot,
    SealRoot,
    Hostname,
    Loopback,
    Identity,
    Capabilities,
    Seccomp,
    Chdir,
    Exec,
    FileDescriptors,
    /// A deferred bind (the op is its index among those sent).
    Deferred,
}

impl Step {
    fn from_code(code: u32) -> Option<Step> {
        const ALL: [Step; 16] = [
            Step::Unshare,
            Step::ForkInit,
            Step::PrivateMounts,
            Step::RootTmpfs,
            Step::Layout,
            Step::PivotRoot,
            Step::SealRoot,
            Step::Hostname,
            Step::Loopback,
            Step::Identity,
            Step::Capabilities,
            Step::Seccomp,
            Step::Chdir,
            Step::Exec,
            Step::FileDescriptors,
            Step::Deferred,
        ];
        ALL.into_iter().find(|step| *step as u32 == code)
    }
}

/// The descriptors the children use, all opened `O_CLOEXEC` by the parent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildFds {
    /// Keeper → parent records (and init's first one, its pid).
    pub status: RawFd,
    /// Parent → keeper "go" byte.
    pub go: RawFd,
    /// Init → parent failure record; its end-of-file means `execve` succeeded.
    pub exec: RawFd,
    /// The program's stdout and stderr.
    pub output: RawFd,
    /// The program's stdin.
    pub dev_null: RawFd,
    /// Parent → init: the deferred binds (see [`deferred_binds`]); -1 without any.
    pub deferred: RawFd,
}

/// Everything the children read, prepared by the parent before `fork()`.
pub(crate) struct ChildContext<'a> {
    pub plan: &'a Plan,
    /// Every descriptor the keeper keeps (those of `fds` and the plan's held
    /// directories), sorted.
    pub keep: &'a [RawFd],
    pub fds: ChildFds,
    pub parent_pid: libc::pid_t,
    pub caller_is_root: bool,
    pub filters: &'a [BpfProgram],
    /// The highest capability number the kernel knows (`/proc/sys/kernel/cap_last_cap`).
    pub last_capability: u32,
    /// `argv` and `envp` as null-terminated pointer arrays into `plan`.
    pub argv: &'a [*const c_char],
    pub envp: &'a [*const c_char],
    /// The top of init's stack ([`init_stack`]).
    pub init_stack: *mut u8,
    /// Descriptors to move before anything else, (where, to the number the plan names):
    /// a keeper the zygote made received them over a socket (see `crate::zygote`).
    pub remap: &'a [(RawFd, RawFd)],
}

type StepResult<T = ()> = Result<T, (Step, u32, Errno)>;

fn at<T>(step: Step, result: nix::Result<T>) -> StepResult<T> {
    result.map_err(|errno| (step, 0, errno))
}

/// Forks the keeper: straight into `cgroup` (a cgroup v2 directory descriptor) when given
/// and the kernel can (`clone3` with `CLONE_INTO_CGROUP`, Linux 5.7), else with `fork`.
/// Returns its pid and whether it was born in the cgroup, in the parent; never returns in
/// the child.
///
/// Moving a running process into a cgroup takes the write side of the kernel's
/// threadgroup lock, which waits for an RCU grace period (measured: 5-10 ms); being born
/// into it takes only the read side.
pub(crate) fn fork_keeper(
    context: &ChildContext<'_>,
    cgroup: Option<RawFd>,
) -> nix::Result<(libc::pid_t, bool)> {
    if let Some(cgroup) = cgroup {
        match clone_into_cgroup(cgroup) {
            Ok(0) => keeper(context),
            Ok(pid) => return Ok((pid, true)),
            // An older kernel, or a cgroup that cannot take processes this way: fork,
            // and let the parent move the keeper.
            Err(_) => {}
        }
    }
    // SAFETY: the parent may be multi-threaded. The child only runs `keeper`, which makes
    // raw system calls on memory prepared before the fork (the plan, pointer arrays and
    // compiled filters are borrowed, not built) and ends in `_exit` or `execve`.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok((child.as_raw(), false)),
        nix::unistd::ForkResult::Child => keeper(context),
    }
}

/// Makes the keeper in the zygote (see `crate::zygote`), as [`fork_keeper`] does but as a
/// sibling of the zygote (`CLONE_PARENT`): a child of the process the zygote serves, which
/// waits for it, kills it and gets its `SIGCHLD`. Returns its pid and whether it was born
/// in the cgroup; never returns in the child.
pub(crate) fn fork_sibling_keeper(
    context: &ChildContext<'_>,
    cgroup: Option<RawFd>,
) -> nix::Result<(libc::pid_t, bool)> {
    let sibling = |cgroup: Option<RawFd>| {
        // No exit signal of its own: with CLONE_PARENT the kernel gives it the zygote's
        // (SIGCHLD, the zygote being an ordinary child).
        let args = CloneArgs {
            flags: libc::CLONE_PARENT as u64 | cgroup.map_or(0, |_| CLONE_INTO_CGROUP),
            cgroup: cgroup.map_or(0, |fd| fd as u64),
            ..CloneArgs::default()
        };
        // The zygote is single-threaded, so no lock is copied held; the child runs
        // `keeper` only.
        fork_clone3(&args)
    };
    let (pid, born_in_cgroup) = match cgroup.map(|fd| sibling(Some(fd))) {
        Some(Ok(pid)) => (pid, true),
        // No cgroup, or one that cannot take processes this way: the parent moves it.
        _ => (sibling(None)?, false),
    };
    if pid == 0 {
        keeper(context)
    }
    Ok((pid, born_in_cgroup))
}

/// Forks the zygote (see `crate::zygote`) from the calling thread, which must outlive it
/// (the zygote dies with it: `PR_SET_PDEATHSIG`). In the child, closes every descriptor
/// but `socket`, puts `/dev/null` on 0-2 and runs `serve(socket, parent)`, which must not
/// return; returns the zygote's pid in the parent.
pub(crate) fn fork_zygote(
    socket: RawFd,
    serve: fn(RawFd, libc::pid_t) -> !,
) -> nix::Result<libc::pid_t> {
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: glibc's fork (atfork handlers run, so malloc works in the child). The child
    // takes no lock another thread may have held: it closes descriptors and then serves
    // requests with its own socket and buffers only (see `crate::zygote`).
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw()),
        nix::unistd::ForkResult::Child => {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            if nix::unistd::getppid().as_raw() != parent || close_all_except(&[socket]).is_err() {
                exit(1);
            }
            ZYGOTE_BATCH.store(other_to_batch(), std::sync::atomic::Ordering::Relaxed);
            // SAFETY: a NUL-terminated path; dup2 and close on descriptors we own.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    for to in 0..3 {
                        if null != to {
                            libc::dup2(null, to);
                        }
                    }
                    if null > 2 {
                        libc::close(null);
                    }
                }
            }
            serve(socket, parent)
        }
    }
}

/// Moves each `(from, to)` descriptor to `to`, through numbers above all of them so that
/// no move overwrites a descriptor still to be moved; all close on exec. No allocation.
fn remap_fds(remap: &[(RawFd, RawFd)]) -> nix::Result<()> {
    const MAX: usize = 256;
    if remap.is_empty() {
        return Ok(());
    }
    if remap.len() > MAX {
        return Err(Errno::EMFILE);
    }
    let floor = remap
        .iter()
        .map(|&(from, to)| from.max(to))
        .max()
        .unwrap_or(0)
        + 1;
    let mut parked = [0 as RawFd; MAX];
    for (slot, &(from, _)) in parked.iter_mut().zip(remap) {
        // SAFETY: duplicates a descriptor we own onto a free number at or above `floor`.
        *slot = Errno::result(unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, floor) })?;
    }
    for (&parked, &(_, to)) in parked.iter().zip(remap) {
        // SAFETY: dup3 onto a number this process owns (or that is free).
        Errno::result(unsafe { libc::dup3(parked, to, libc::O_CLOEXEC) })?;
    }
    // The parked copies and the received numbers go with `close_all_except`.
    Ok(())
}

/// `struct clone_args` of `clone3(2)` (the fields up to `cgroup`, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// A fork (own copy of memory, SIGCHLD to the parent) whose child starts in `cgroup`:
/// 0 in the child, the child's pid in the parent.
fn clone_into_cgroup(cgroup: RawFd) -> nix::Result<libc::pid_t> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup as u64,
        ..CloneArgs::default()
    };
    // The child runs `keeper`, which makes raw system calls only (see the module docs).
    fork_clone3(&args)
}

/// `clone3` with `args` (which must not ask for CLONE_VM): 0 in the child, the child's pid
/// in the parent. Unlike glibc's fork, no atfork handler runs and glibc's locks (malloc's
/// among them) are copied in whatever state other threads held them: the child must not
/// allocate or lock at all.
fn fork_clone3(args: &CloneArgs) -> nix::Result<libc::pid_t> {
    // SAFETY: without CLONE_VM the child gets a copy of the address space and continues
    // on its copy of this stack, as after fork; callers keep the child to raw system calls.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    Errno::result(pid).map(|pid| pid as libc::pid_t)
}

/// Gives `pid` the lowest scheduling priority (nice 19): the keeper's last work, reaping
/// init and taking the namespaces down, should not compete with builds still running.
pub(crate) fn lower_priority(pid: libc::pid_t) {
    set_nice(pid, 19);
}

/// Sets the nice value of one task (a process, or a thread by its id); false if refused
/// (a lower value than the current one needs `CAP_SYS_NICE`).
pub(crate) fn set_nice(task: libc::pid_t, nice: i32) -> bool {
    // SAFETY: setpriority with integer arguments only; a failure changes nothing.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, task as libc::id_t, nice) == 0 }
}

/// Gives the calling thread a low scheduling priority (nice 10), for bookkeeping that
/// should yield to sandboxes being set up and builds running (Linux applies the nice
/// value of `setpriority` on a thread id to that thread only).
pub fn lower_thread_priority() {
    set_nice(nix::unistd::gettid().as_raw(), 10);
}

/// The calling thread as `SCHED_BATCH` while this lives ([`background_thread`]).
pub struct BackgroundThread {
    /// Whether the thread was `SCHED_OTHER` and is `SCHED_BATCH` now.
    switched: bool,
    /// The policy is the calling thread's: the guard stays on it.
    _thread: std::marker::PhantomData<*const ()>,
}

/// Makes the calling thread `SCHED_BATCH` (if it is `SCHED_OTHER`) until the guard is
/// dropped: its wake-ups then never preempt the task running on the CPU (the program of
/// a sandbox, whose end the builds wait for); it runs when a CPU is free or at the next
/// tick, with the same share of the CPU as before. For work done ahead of need, such as
/// preparing a sandbox before its inputs are built.
pub fn background_thread() -> BackgroundThread {
    BackgroundThread {
        switched: other_to_batch(),
        _thread: std::marker::PhantomData,
    }
}

impl Drop for BackgroundThread {
    fn drop(&mut self) {
        if self.switched {
            batch_to_other();
        }
    }
}

/// Whether this process is a zygote (or a keeper or init forked from one) that went from
/// `SCHED_OTHER` to `SCHED_BATCH` as it started: a keeper just forked and an init woken
/// by its keeper then never preempt the program of another sandbox while they prepare,
/// and init goes back to `SCHED_OTHER` once only the start is left
/// ([`foreground_from_here`]).
static ZYGOTE_BATCH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// In init, where what is left is what the program waits for (the deferred binds, which
/// come when the caller starts the sandbox, and `execve`): back to `SCHED_OTHER` if the
/// zygote left it (see [`ZYGOTE_BATCH`]), so that the start wakes init at once.
fn foreground_from_here() {
    if ZYGOTE_BATCH.load(std::sync::atomic::Ordering::Relaxed) {
        batch_to_other();
    }
}

/// Moves the calling thread from `SCHED_OTHER` to `SCHED_BATCH`; false if it was under
/// another policy (left as it is) or the kernel refused.
fn other_to_batch() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: scheduler calls on the calling thread (0) with a parameter of ours.
    unsafe {
        libc::sched_getscheduler(0) == libc::SCHED_OTHER
            && libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) == 0
    }
}

/// Moves the calling thread back to `SCHED_OTHER` (see [`other_to_batch`]); any thread
/// may, at the same nice value. No allocation.
fn batch_to_other() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a scheduler call on the calling thread with a parameter of ours.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
}

fn keeper(context: &ChildContext<'_>) -> ! {
    let fds = context.fds;
    if let Err((step, op, errno)) = keeper_steps(context) {
        send(fds.status, Record::Failed(step, op, errno as i32));
    }
    exit(1)
}

fn keeper_steps(context: &ChildContext<'_>) -> StepResult {
    let fds = context.fds;
    let plan = context.plan;
    // Die with the thread that forked us (through the zygote: the thread that forked the
    // zygote, which lives as long as the process): nothing outlives a crashed supervisor.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if nix::unistd::getppid().as_raw() != context.parent_pid {
        exit(1);
    }
    // SAFETY: prctl with a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"arca-keeper".as_ptr(), 0, 0, 0) };
    remap_fds(context.remap).map_err(|errno| (Step::FileDescriptors, 0, errno))?;
    // Another thread of the parent may have forked with descriptors of its own open;
    // keep only ours, or a concurrent run could hold our output pipe open.
    close_all_except(context.keep).map_err(|errno| (Step::FileDescriptors, 0, errno))?;

    // A cgroup namespace too: `/proc/self/cgroup` then names the build's own cgroup
    // `/`, not the host's hierarchy (which would show the supervisor's place and pid).
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP;
    if plan.isolate_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if plan.unshare_user {
        if context.caller_is_root {
            // Leave no supplementary group of root behind (setgroups is denied later).
            drop_supplementary_groups().map_err(|errno| (Step::Identity, 0, errno))?;
        }
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    at(Step::Unshare, unshare(flags))?;
    send(fds.status, Record::Ready);
    let mut go = [0u8; 1];
    loop {
        // SAFETY: reads one byte into a stack buffer.
        let n = unsafe { libc::read(fds.go, go.as_mut_ptr().cast(), 1) };
        match n {
            1 => break,
            -1 if Errno::last() == Errno::EINTR => continue,
            // The parent gave up (its end closed without "go").
            _ => exit(1),
        }
    }

    // Init shares the keeper's memory and runs on a stack of its own while the keeper
    // waits (vfork semantics, as posix_spawn): no page tables are copied for it, and its
    // `execve` has no copy of the supervisor's memory to tear down. The keeper only
    // resumes once init has executed the program or ended, so nothing runs beside it in
    // that memory. (glibc's `clone` wrapper takes no locks and runs no fork handlers.)
    // SAFETY: `init_entry` gets a pointer to `start` (which holds `context`), both alive
    // for the whole call (the keeper is suspended until init has left this memory); the
    // kernel writes init's pid into `start.pid` before init runs; the stack given is a
    // mapping of its own, `INIT_STACK_SIZE` bytes below `context.init_stack`.
    let source_tree = match &plan.deferred {
        Some(deferred) if deferred.from_tree => source_tree(&deferred.source_dir),
        _ => -1,
    };
    let mut start = InitStart {
        context,
        pid: 0,
        source_tree,
    };
    let start = std::ptr::addr_of_mut!(start);
    let init = unsafe {
        libc::clone(
            init_entry,
            context.init_stack.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT_SETTID | libc::SIGCHLD,
            start.cast(),
            std::ptr::addr_of_mut!((*start).pid),
        )
    };
    if init < 0 {
        return Err((Step::ForkInit, 0, Errno::last()));
    }
    for fd in [fds.exec, fds.output, fds.dev_null] {
        // SAFETY: closing descriptors this process owns and no longer uses.
        unsafe { libc::close(fd) };
    }
    // Learn init's status without reaping it: while it is an unreaped zombie its pid
    // cannot be reused, so the parent may kill it by pid until it has read the status
    // and closed the "go" pipe. (A zombie init also means the kernel has already killed
    // and reaped every other process of its pid namespace.)
    // SAFETY: siginfo_t and rusage are plain old data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // The raw system call takes a fifth argument glibc's waitid lacks: the resource
        // use of init and of everything it reaped (filled in with WNOWAIT too).
        // SAFETY: waits for our own child, writing into the siginfo_t and rusage we own.
        let r = unsafe {
            libc::syscall(
                libc::SYS_waitid,
                libc::P_PID,
                init as libc::id_t,
                &mut info as *mut libc::siginfo_t,
                libc::WEXITED | libc::WNOWAIT,
                &mut usage as *mut libc::rusage,
            )
        };
        if r == 0 {
            break;
        }
        if Errno::last() != Errno::EINTR {
            exit(1);
        }
    }
    // SAFETY: waitid filled in a SIGCHLD siginfo, whose status/code fields are valid.
    let (code, status) = unsafe { (info.si_code, info.si_status()) };
    let wait_status = if code == libc::CLD_EXITED {
        (status & 0xff) << 8
    } else {
        status & 0x7f
    };
    let micros = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    let init_usage = InitUsage {
        user_us: micros(usage.ru_utime),
        system_us: micros(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss as u64,
    };
    send(fds.status, Record::InitStatus(wait_status, init_usage));
    // Wait for the parent to let go of the pid (end-of-file), then reap.
    loop {
        // SAFETY: reads into a stack buffer.
        let n = unsafe { libc::read(fds.go, go.as_mut_ptr().cast(), 1) };
        if n == 0 || (n < 0 && Errno::last() != Errno::EINTR) {
            break;
        }
    }
    let mut raw = 0;
    // SAFETY: reaps our own child with a stack out-parameter.
    while unsafe { libc::waitpid(init, &mut raw, 0) } < 0 && Errno::last() == Errno::EINTR {}
    exit(0)
}

/// Where init starts (see `keeper_steps`): runs [`init_steps`], reports a failure, ends.
extern "C" fn init_entry(start: *mut libc::c_void) -> libc::c_int {
    // SAFETY: the keeper passes a pointer to an `InitStart` on its stack, alive while
    // init runs (the keeper waits), whose `pid` the kernel set before init started.
    let start = unsafe { &*(start as *const InitStart<'_, '_>) };
    let context = start.context;
    // Init reports its own (host) pid at once, while the keeper waits: the parent can
    // kill it by pid from now on, also while a prepared sandbox waits.
    send(context.fds.status, Record::InitPid(start.pid));
    if let Err((step, op, errno)) = init_steps(context, start.source_tree) {
        send(context.fds.exec, Record::Failed(step, op, errno as i32));
    }
    exit(127)
}

/// What the keeper hands init: the context, init's pid in the keeper's pid namespace
/// (written there by the kernel: `CLONE_PARENT_SETTID`), and the deferred binds' source
/// tree ([`source_tree`]) or -1.
struct InitStart<'c, 'a> {
    context: &'c ChildContext<'a>,
    pid: libc::pid_t,
    source_tree: RawFd,
}

/// `open_tree(2)` and `move_mount(2)` flags (Linux 5.2) libc does not name.
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// A detached copy (`open_tree(OPEN_TREE_CLONE)`) of the deferred binds' source directory
/// with what is mounted below it, made read-only, nosuid and nodev: init binds entries
/// out of it once it has left the host's tree, so that `pivot_root` and the detaching of
/// the old root (which waits for an RCU grace period) are done while the sandbox is
/// prepared. The keeper holds it, so that the copy is dissolved when the keeper ends, not
/// as init executes the program. -1 if the kernel cannot (init then binds the entries by
/// path before it leaves the host's tree).
fn source_tree(path: &CStr) -> RawFd {
    // SAFETY: a NUL-terminated path and integer flags.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE,
        )
    } as RawFd;
    if tree < 0 {
        return -1;
    }
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a descriptor we own, an empty NUL-terminated path, a mount_attr of ours
    // and its size.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if set != 0 {
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::close(tree) };
        return -1;
    }
    tree
}

/// Whether mounts can be copied out of a detached copy made in the same mount namespace
/// (Linux 6.15 allows it), in a sandbox with a user namespace of its own or without:
/// tried in a child that makes a mount namespace (and a user namespace) of its own, a
/// detached copy of `/` and a copy out of that.
pub(crate) fn tree_copies_work(user_namespace: bool) -> bool {
    let flags = if user_namespace {
        libc::CLONE_NEWUSER | libc::CLONE_NEWNS
    } else {
        libc::CLONE_NEWNS
    };
    // SAFETY: the parent may be multi-threaded; the child only makes raw system calls on
    // constants and ends in `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: unshare, open_tree and _exit with constant arguments and descriptors
        // of our own.
        unsafe {
            if libc::unshare(flags) != 0 {
                libc::_exit(1);
            }
            let tree = libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c"/".as_ptr(),
                libc::OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE,
            );
            if tree < 0 {
                libc::_exit(1);
            }
            let copy = libc::syscall(
                libc::SYS_open_tree,
                tree as RawFd,
                c"".as_ptr(),
                libc::OPEN_TREE_CLONE
                    | OPEN_TREE_CLOEXEC
                    | AT_RECURSIVE
                    | libc::AT_EMPTY_PATH as libc::c_uint,
            );
            libc::_exit(if copy < 0 { 1 } else { 0 })
        }
    }
    if pid < 0 {
        return false;
    }
    let mut status = 0;
    // SAFETY: reaps our own child with a stack out-parameter.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 && Errno::last() == Errno::EINTR {}
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// The size of init's stack (see [`init_stack`]), a guard page below it.
const INIT_STACK_SIZE: usize = 256 * 1024;

/// The top of a stack for init, one per supervisor thread, mapped once and never written
/// by the supervisor: the keeper's copy of it is what init uses, and untouched pages
/// cost nothing to copy.
pub(crate) fn init_stack() -> Result<*mut u8, Errno> {
    thread_local! {
        static STACK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    STACK.with(|stack| {
        if stack.get() == 0 {
            let guard = 4096;
            // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    INIT_STACK_SIZE + guard,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return Err(Errno::last());
            }
            // SAFETY: the lowest page of the mapping just made becomes the guard.
            if unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
                return Err(Errno::last());
            }
            stack.set(base as usize + guard + INIT_STACK_SIZE);
        }
        Ok(stack.get() as *mut u8)
    })
}

/// Pid 1 of the sandbox: builds the root, becomes the sandbox user, executes the program.
fn init_steps(context: &ChildContext<'_>, source_tree: RawFd) -> StepResult {
    let fds = context.fds;
    let plan = context.plan;
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    at(Step::FileDescriptors, nix::unistd::setsid().map(drop))?;
    reset_signals();
    for (from, to) in [(fds.dev_null, 0), (fds.output, 1), (fds.output, 2)] {
        // SAFETY: dup2 on descriptors this process owns.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err((Step::FileDescriptors, 0, Errno::last()));
        }
    }

    // The bind sources' directories, opened in this mount namespace by the caller's
    // identity (see `HeldDir`).
    for held in &plan.held {
        // SAFETY: a NUL-terminated path; the new descriptor is moved and closed below.
        let fd = unsafe {
            libc::open(
                held.path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        let target = held.number;
        // SAFETY: dup3 and close on descriptors this process owns.
        if fd < 0 || unsafe { libc::dup3(fd, target, libc::O_CLOEXEC) } < 0 {
            return Err((Step::Layout, held.op as u32, Errno::last()));
        }
        // SAFETY: as above.
        unsafe { libc::close(fd) };
    }

    if plan.unshare_user {
        // Become the inside user before creating anything: files made by an id the user
        // namespace does not map (host root, when root asked for another host id) fail
        // with EOVERFLOW. The capabilities of the namespace stay: its root id is not the
        // one being left, so the kernel's setuid rules do not clear them.
        switch_identity(plan)?;
        rearm_parent_death(fds.go);
    }
    let none: Option<&CStr> = None;
    at(
        Step::PrivateMounts,
        mount(
            none,
            c"/",
            none,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            none,
        ),
    )?;
    at(
        Step::RootTmpfs,
        mount(
            Some(c"tmpfs"),
            plan.root.as_c_str(),
            Some(c"tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(plan.root_options.as_c_str()),
        ),
    )?;
    for (index, op) in plan.ops.iter().enumerate() {
        apply(op).map_err(|errno| (Step::Layout, index as u32, errno))?;
    }
    // What does not need the finished root comes first, so that a prepared sandbox has
    // done it by the time its deferred binds arrive.
    at(
        Step::Hostname,
        nix::unistd::sethostname(OsStr::from_bytes(&plan.hostname)),
    )?;
    // SAFETY: pointer and length of a live byte vector.
    if unsafe { libc::setdomainname(plan.domainname.as_ptr().cast(), plan.domainname.len()) } != 0 {
        return Err((Step::Hostname, 0, Errno::last()));
    }
    if plan.isolate_network {
        loopback_up().map_err(|errno| (Step::Loopback, 0, errno))?;
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(plan.umask));
    // The bounding set needs CAP_SETPCAP to shrink, so it goes before the identity
    // switch; it limits what an `execve` can gain, not what this process holds, so the
    // mounts below still work. (Raw prctl/capset rather than the `caps` crate, whose
    // error paths and `clear` allocate, which nothing may do here.)
    drop_bounding_set(context.last_capability).map_err(|errno| (Step::Capabilities, 0, errno))?;
    // The filter only refuses setuid/setgid modes and extended attributes, which
    // nothing below uses.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err((Step::Seccomp, 0, Errno::last()));
    }
    for filter in context.filters {
        seccompiler::apply_filter(filter).map_err(|_| (Step::Seccomp, 0, Errno::last()))?;
    }
    // The deferred binds come after `pivot_root` when they can be copied out of the
    // source tree the keeper made (see `source_tree`), else before it, by path.
    let from_tree = plan.deferred.as_ref().is_some_and(|d| d.from_tree) && source_tree >= 0;
    if !from_tree {
        foreground_from_here();
    }
    if let (Some(deferred), false) = (&plan.deferred, from_tree) {
        deferred_binds(deferred, fds.deferred, None)?;
    }

    // pivot_root(".", ".") stacks the old root on top of the new one; detaching it
    // leaves no path back to the host (unlike chroot, which `..` games escape).
    at(Step::PivotRoot, chdir(plan.root.as_c_str()))?;
    at(Step::PivotRoot, pivot_root(c".", c"."))?;
    at(Step::PivotRoot, umount2(c".", MntFlags::MNT_DETACH))?;
    at(Step::PivotRoot, chdir(c"/"))?;
    if from_tree {
        foreground_from_here();
    }
    if let (Some(deferred), true) = (&plan.deferred, from_tree) {
        deferred_binds(deferred, fds.deferred, Some(source_tree))?;
    }
    at(
        Step::SealRoot,
        mount(
            none,
            c"/",
            none,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            none,
        ),
    )?;

    if !plan.unshare_user {
        // Real root: dropping to the inside user clears every capability.
        drop_supplementary_groups().map_err(|errno| (Step::Identity, 0, errno))?;
        switch_identity(plan)?;
        rearm_parent_death(fds.go);
    }
    clear_capabilities().map_err(|errno| (Step::Capabilities, 0, errno))?;
    at(Step::Chdir, chdir(plan.cwd.as_c_str()))?;

    // Everything but stdio closes on exec (the exec pipe already does).
    close_on_exec_from(3).map_err(|errno| (Step::FileDescriptors, 0, errno))?;
    // SAFETY: program, argv and envp are NUL-terminated strings and null-terminated
    // pointer arrays built by the parent and alive for the whole call.
    unsafe {
        libc::execve(
            plan.program.as_ptr(),
            context.argv.as_ptr(),
            context.envp.as_ptr(),
        )
    };
    Err((Step::Exec, 0, Errno::last()))
}

/// The header of one deferred bind as the parent sends it: kind (`DEFERRED_*`), the
/// locked mount flags of its source (32 bits), the name's length and the symlink
/// target's length (16 bits each), native byte order; then the name and the target.
pub(crate) const DEFERRED_HEADER: usize = 9;
/// The kinds of deferred entry: the end of the list, a directory, a file, a symlink.
pub(crate) const DEFERRED_END: u8 = 0;
pub(crate) const DEFERRED_DIR: u8 = b'd';
pub(crate) const DEFERRED_FILE: u8 = b'f';
pub(crate) const DEFERRED_SYMLINK: u8 = b'l';
/// The longest name and symlink target the parent sends (`NAME_MAX`, `PATH_MAX` - 1).
pub(crate) const DEFERRED_NAME_MAX: usize = 255;
pub(crate) const DEFERRED_LINK_MAX: usize = 4095;

/// Reads the deferred binds from `fd` until the end record and makes each, as a bind of
/// the layout is made: a symlink recreated, else the mount point created, and bound and
/// remounted read-only. With `tree` (after `pivot_root`, see [`source_tree`]) the mount
/// point is inside the new root and the bind a copy of the entry out of the tree, which
/// is read-only already. Paths are put together in stack buffers. The pipe closing before
/// the end record means the parent gave up: nothing more is done.
fn deferred_binds(plan: &crate::plan::DeferredPlan, fd: RawFd, tree: Option<RawFd>) -> StepResult {
    const PATH: usize = 4096 + DEFERRED_NAME_MAX + 2;
    let mut header = [0u8; DEFERRED_HEADER];
    let mut name = [0u8; DEFERRED_NAME_MAX];
    let mut link = [0u8; DEFERRED_LINK_MAX + 1];
    let mut source = [0u8; PATH];
    let mut target = [0u8; PATH];
    let mut index = 0u32;
    loop {
        let fail = |errno: Errno| (Step::Deferred, index, errno);
        read_exact(fd, &mut header).map_err(fail)?;
        let kind = header[0];
        if kind == DEFERRED_END {
            return Ok(());
        }
        let locked = u32::from_ne_bytes([header[1], header[2], header[3], header[4]]);
        let name_len = u16::from_ne_bytes([header[5], header[6]]) as usize;
        let link_len = u16::from_ne_bytes([header[7], header[8]]) as usize;
        if name_len == 0 || name_len > DEFERRED_NAME_MAX || link_len > DEFERRED_LINK_MAX {
            return Err(fail(Errno::EINVAL));
        }
        read_exact(fd, &mut name[..name_len]).map_err(fail)?;
        read_exact(fd, &mut link[..link_len]).map_err(fail)?;
        link[link_len] = 0;
        let name = &name[..name_len];
        let prefix = match tree {
            Some(_) => &plan.inner_prefix,
            None => &plan.target_prefix,
        };
        let target = joined(&mut target, prefix, name).map_err(fail)?;
        match kind {
            DEFERRED_SYMLINK => {
                // SAFETY: two NUL-terminated paths in stack buffers.
                let made = unsafe { libc::symlink(link.as_ptr().cast(), target.as_ptr()) };
                Errno::result(made).map_err(fail)?;
            }
            DEFERRED_DIR | DEFERRED_FILE => {
                // SAFETY: a NUL-terminated path in a stack buffer; a descriptor closed at
                // once. Neither follows a symlink.
                let made = unsafe {
                    if kind == DEFERRED_DIR {
                        libc::mkdir(target.as_ptr(), 0o755)
                    } else {
                        let fd = libc::open(
                            target.as_ptr(),
                            libc::O_RDONLY
                                | libc::O_CREAT
                                | libc::O_EXCL
                                | libc::O_NOFOLLOW
                                | libc::O_CLOEXEC,
                            0o444,
                        );
                        if fd >= 0 {
                            libc::close(fd);
                        }
                        fd.min(0)
                    }
                };
                Errno::result(made).map_err(fail)?;
                if let Some(tree) = tree {
                    let name = joined(&mut source, b"", name).map_err(fail)?;
                    bind_from_tree(tree, name, target).map_err(fail)?;
                    index += 1;
                    continue;
                }
                let source = joined(&mut source, &plan.source_prefix, name).map_err(fail)?;
                let none: Option<&CStr> = None;
                mount(Some(source), target, none, MsFlags::MS_BIND, none).map_err(fail)?;
                let flags = MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_RDONLY
                    | MsFlags::from_bits_truncate(locked as libc::c_ulong);
                mount(none, target, none, flags, none).map_err(fail)?;
            }
            _ => return Err(fail(Errno::EINVAL)),
        }
        index += 1;
    }
}

/// Mounts a copy of the entry `name` of `tree` (not following a symlink) on `target`.
fn bind_from_tree(tree: RawFd, name: &CStr, target: &CStr) -> nix::Result<()> {
    // SAFETY: a descriptor we hold, a NUL-terminated name, integer flags.
    let copy = Errno::result(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            tree,
            name.as_ptr(),
            libc::OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
        )
    })? as RawFd;
    // SAFETY: the copy's descriptor, an empty path, a NUL-terminated target path.
    let moved = Errno::result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            copy,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    });
    // SAFETY: closing the copy's descriptor (once attached, closing it unmounts nothing).
    unsafe { libc::close(copy) };
    moved.map(drop)
}

/// `prefix` then `name` then NUL in `buffer`, as a C string.
fn joined<'b>(buffer: &'b mut [u8], prefix: &[u8], name: &[u8]) -> Result<&'b CStr, Errno> {
    let end = prefix.len() + name.len();
    if end >= buffer.len() {
        return Err(Errno::ENAMETOOLONG);
    }
    buffer[..prefix.len()].copy_from_slice(prefix);
    buffer[prefix.len()..end].copy_from_slice(name);
    buffer[end] = 0;
    CStr::from_bytes_with_nul(&buffer[..=end]).map_err(|_| Errno::EINVAL)
}

/// Fills `buffer` from the pipe `fd`; end-of-file first is `EPIPE`.
fn read_exact(fd: RawFd, buffer: &mut [u8]) -> Result<(), Errno> {
    let mut filled = 0;
    while filled < buffer.len() {
        // SAFETY: reads into the unfilled tail of a buffer we own.
        let n = unsafe {
            libc::read(
                fd,
                buffer[filled..].as_mut_ptr().cast(),
                buffer.len() - filled,
            )
        };
        match n {
            0 => return Err(Errno::EPIPE),
            n if n > 0 => filled += n as usize,
            _ if Errno::last() == Errno::EINTR => {}
            _ => return Err(Errno::last()),
        }
    }
    Ok(())
}

/// Asks again for SIGKILL when the keeper dies: the kernel forgets the request whenever
/// the effective user changes. If the supervisor died meanwhile (the "go" pipe, which only
/// it writes, hung up), there is nobody left to kill us: end here.
fn rearm_parent_death(go: RawFd) {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let mut poll = libc::pollfd {
        fd: go,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one descriptor we own, without waiting.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    if ready > 0 && poll.revents & libc::POLLHUP != 0 {
        exit(1);
    }
}

fn switch_identity(plan: &Plan) -> StepResult {
    let (uid, gid) = (plan.uid as libc::c_ulong, plan.gid as libc::c_ulong);
    // Raw system calls, not glibc's wrappers: those broadcast the change to every thread
    // glibc believes the process has (`__nptl_setxid`), and after a raw clone it still
    // believes in the parent's threads and waits for them forever.
    // SAFETY: setresgid/setresuid with integer arguments only.
    let result = unsafe {
        if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
        {
            Err(Errno::last())
        } else {
            Ok(())
        }
    };
    result.map_err(|errno| (Step::Identity, 0, errno))
}

/// `setgroups(0, NULL)` by raw system call (see `switch_identity` for why not glibc's).
fn drop_supplementary_groups() -> nix::Result<()> {
    // SAFETY: an empty list: no memory is read.
    Errno::result(unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) })
        .map(drop)
}

fn apply(op: &Op) -> nix::Result<()> {
    match op {
        Op::Mkdir { path, mode } => {
            // SAFETY: a NUL-terminated path.
            let created = unsafe { libc::mkdir(path.as_ptr(), *mode) } == 0;
            if !created && Errno::last() != Errno::EEXIST {
                return Err(Errno::last());
            }
            // Never through a symlink (one planted in a writable bind would point the
            // chmod at a host directory); an existing directory keeps its mode.
            // SAFETY: a NUL-terminated path; the descriptor is closed below.
            let fd = unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(Errno::last());
            }
            // mkdir applied the umask; the mode is the spec's.
            // SAFETY: our own descriptor.
            let result = if created {
                unsafe { libc::fchmod(fd, *mode) }
            } else {
                0
            };
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd) };
            Errno::result(result).map(drop)
        }
        Op::Touch { path } => {
            // SAFETY: a NUL-terminated path; the descriptor is closed right away.
            let fd = unsafe {
                // Not through a symlink, and without blocking on a fifo.
                libc::open(
                    path.as_ptr(),
                    libc::O_RDONLY
                        | libc::O_CREAT
                        | libc::O_NOFOLLOW
                        | libc::O_NONBLOCK
                        | libc::O_CLOEXEC,
                    0o444,
                )
            };
            if fd < 0 {
                return Err(Errno::last());
            }
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd) };
            Ok(())
        }
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => mount(
            source.as_deref(),
            target.as_c_str(),
            fstype.as_deref(),
            *flags,
            data.as_deref(),
        ),
        Op::WriteFile {
            path,
            contents,
            mode,
        } => {
            // SAFETY: a NUL-terminated path.
            let fd = unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    *mode,
                )
            };
            if fd < 0 {
                return Err(Errno::last());
            }
            let written = write_all(fd, contents);
            // SAFETY: a NUL-terminated path (fchmod: the umask shaped the open mode).
            let chmod = unsafe { libc::fchmod(fd, *mode) };
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd) };
            written?;
            Errno::result(chmod).map(drop)
        }
        Op::Symlink { target, link } => {
            // SAFETY: two NUL-terminated paths.
            Errno::result(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }).map(drop)
        }
        Op::ChmodIgnoringErrors { path, mode } => {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::chmod(path.as_ptr(), *mode) };
            Ok(())
        }
    }
}

/// Empties the bounding and ambient sets: no program started from here can ever gain a
/// capability, not even through a setuid-root or file-capability binary.
fn drop_bounding_set(last_capability: u32) -> nix::Result<()> {
    for capability in 0..=last_capability {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability as libc::c_ulong, 0, 0, 0) } != 0
        {
            // EINVAL: a number this kernel does not know; nothing to drop.
            if Errno::last() != Errno::EINVAL {
                return Err(Errno::last());
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    let cleared = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Errno::result(cleared).map(drop)
}

/// `struct __user_cap_header_struct` of `capset(2)`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct` of `capset(2)`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties the effective, permitted and inheritable sets of this process.
fn clear_capabilities() -> nix::Result<()> {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads the header and the two data words (version 3) we own.
    Errno::result(unsafe {
        libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr())
    })
    .map(drop)
}

/// `ip link set lo up` in the new network namespace.
fn loopback_up() -> nix::Result<()> {
    // SAFETY: creates a socket we close below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(Errno::last());
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo") {
        *slot = *byte as c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own; the union member
    // used is the flags one these requests define.
    let result = unsafe {
        if libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request) < 0 {
            Err(Errno::last())
        } else {
            request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(socket, libc::SIOCSIFFLAGS, &request) < 0 {
                Err(Errno::last())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: our own descriptor.
    unsafe { libc::close(socket) };
    result
}

/// Default dispositions and an empty signal mask: the parent's (ignored SIGPIPE, blocked
/// signals of a runtime) must not leak into the program.
fn reset_signals() {
    for signal in 1..libc::SIGRTMAX() {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: installing SIG_DFL is async-signal-safe and always valid.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
    // SAFETY: an empty set on the stack, initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Closes every descriptor from 3 up except `keep` (sorted).
fn close_all_except(keep: &[RawFd]) -> nix::Result<()> {
    let mut next: RawFd = 3;
    for &fd in keep {
        if fd > next {
            close_range(next as u32, (fd - 1) as u32, 0)?;
        }
        if fd >= next {
            next = fd + 1;
        }
    }
    close_range(next as u32, u32::MAX, 0)
}

fn close_on_exec_from(first: RawFd) -> nix::Result<()> {
    close_range(
        first as u32,
        u32::MAX,
        libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
    )
}

fn close_range(first: u32, last: u32, flags: libc::c_int) -> nix::Result<()> {
    // SAFETY: close_range only acts on this process's descriptor table.
    Errno::result(unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) }).map(drop)
}

fn write_all(fd: RawFd, mut bytes: &[u8]) -> nix::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: pointer and length of a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            return Err(Errno::last());
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

fn send(fd: RawFd, record: Record) {
    // A failed report leaves the parent reading end-of-file, which it treats as a
    // failure of the child; nothing more can be done from here.
    let _ = write_all(fd, &record.encode());
}

pub(crate) fn exit(code: i32) -> ! {
    // SAFETY: _exit skips atexit handlers and stdio flushing, which belong to the parent.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for record in [
            Record::Ready,
            Record::InitPid(4242),
            Record::InitStatus(
                9,
                InitUsage {
                    user_us: 1,
                    system_us: 2,
                    max_rss_kib: 3,
                },
            ),
            Record::Failed(Step::Layout, 17, libc::EPERM),
            Record::Failed(Step::FileDescriptors, 0, libc::EBADF),
        ] {
            assert_eq!(Record::decode(&record.encode()), Some(record));
        }
        assert_eq!(Record::decode(&[0xff; RECORD_LEN]), None);
    }

    /// The kernel's version as (major, minor).
    fn kernel_version() -> (u32, u32) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse().unwrap_or(0));
        (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
    }

    /// Since Linux 6.15 mounts are copied out of a detached tree, with a user namespace
    /// (as builds run) and without: the probe must say so, or every sandbox binds its
    /// late entries by path and detaches the old root as it starts. (A root whose
    /// submounts a user namespace locks once made the probe fail there.)
    #[test]
    fn tree_copies_work_from_linux_6_15() {
        if kernel_version() < (6, 15) || !nix::unistd::geteuid().is_root() {
            return;
        }
        assert!(tree_copies_work(true), "with a user namespace");
        assert!(tree_copies_work(false), "without a user namespace");
    }

    fn policy() -> i32 {
        // SAFETY: the calling thread's policy.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn a_background_thread_is_batch_until_the_guard_drops() {
        std::thread::spawn(|| {
            assert_eq!(policy(), libc::SCHED_OTHER);
            let background = background_thread();
            assert_eq!(policy(), libc::SCHED_BATCH);
            drop(background);
            assert_eq!(policy(), libc::SCHED_OTHER);
            // A thread under another policy is left under it.
            assert!(other_to_batch());
            let background = background_thread();
            drop(background);
            assert_eq!(policy(), libc::SCHED_BATCH);
        })
        .join()
        .expect("the thread");
    }
}
