//! The zygote: a small process, forked once (with the process's second sandbox), that
//! forks the keepers of this process's sandboxes.
//!
//! A keeper forked from the caller copies the caller's page tables and write-protects every
//! page of it, and as long as the keeper (and init, which shares its memory until it
//! executes the program) lives, each page the caller's threads then write is copied on a
//! fault that flushes every CPU's TLB. For a build farm's process (many threads, a big heap,
//! SQLite's page cache) that was most of the cost of a sandbox: a chain of 50 builds took
//! some 10,000 such faults and 16,000 TLB flushes in `arca build` itself, half of them
//! interrupting the other CPU. The zygote is forked once (the caller's pages are copied at
//! most once more, on its first write after that), is single-threaded, and barely writes
//! memory; keepers are forked from it with `CLONE_PARENT`, so they are this process's
//! children all the same (it waits for them and kills them as before). It makes itself
//! `SCHED_BATCH` (from `SCHED_OTHER`), so keepers and inits prepare without preempting
//! running programs; init returns to `SCHED_OTHER` before it waits for its start.
//!
//! A request carries the [`Plan`] and the run's flags as bytes, and the descriptors the
//! keeper keeps (`SCM_RIGHTS`). The keeper moves those to the numbers the plan names
//! before anything else (`ChildContext::remap`). The reply is the keeper's pid. Whatever
//! goes wrong on the way (no zygote, a plan too big for one message, a zygote that died),
//! the caller forks the keeper itself, as without a zygote. `ARCA_SANDBOX_ZYGOTE=off` in
//! the environment of the process's second sandbox makes every keeper forked so.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};

use nix::cmsg_space;
use nix::mount::MsFlags;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use crate::child::{fork_sibling_keeper, fork_zygote, init_stack, ChildContext, ChildFds};
use crate::plan::{DeferredPlan, HeldDir, Op, Plan};
use crate::run::pointer_array;

/// The largest request (and receive buffer): a plan whose environment, files and mounts
/// take more goes the direct way.
const MAX_REQUEST: usize = 256 * 1024;
/// The most descriptors one request carries (`SCM_MAX_FD` is 253).
const MAX_FDS: usize = 240;

/// What the caller knows of the keeper to make, beside the plan.
pub(crate) struct Request<'a> {
    pub plan: &'a Plan,
    pub fds: ChildFds,
    pub caller_is_root: bool,
    pub seccomp: bool,
    pub last_capability: u32,
    pub cgroup: Option<RawFd>,
}

/// What asking the zygote for a keeper came to.
pub(crate) enum Spawned {
    /// The keeper's pid, and whether it was born in the cgroup.
    Keeper(libc::pid_t, bool),
    /// No keeper was made: the caller forks it itself.
    NotMade,
    /// The zygote ended between the request and its answer, maybe after forking the
    /// keeper: nothing can tell, so the run fails.
    Lost,
}

/// Forks a keeper through the zygote.
pub(crate) fn spawn_keeper(request: &Request<'_>) -> Spawned {
    match try_spawn_keeper(request) {
        Some(spawned) => spawned,
        None => Spawned::NotMade,
    }
}

fn try_spawn_keeper(request: &Request<'_>) -> Option<Spawned> {
    // A process that runs one sandbox pays nothing for a zygote: it is made for the
    // second.
    static SPAWNS: AtomicUsize = AtomicUsize::new(0);
    if SPAWNS.fetch_add(1, Ordering::Relaxed) == 0 {
        return None;
    }
    let zygote = zygote()?;
    let message = encode(request)?;
    let fds: Vec<RawFd> = [
        request.fds.status,
        request.fds.go,
        request.fds.exec,
        request.fds.output,
        request.fds.dev_null,
    ]
    .into_iter()
    .chain((request.fds.deferred >= 0).then_some(request.fds.deferred))
    .chain(request.plan.held.iter().map(|held| held.fd.as_raw_fd()))
    .chain(request.cgroup)
    .collect();
    if fds.len() > MAX_FDS {
        return None;
    }
    let socket = zygote.lock().unwrap_or_else(|p| p.into_inner());
    let socket = socket.as_raw_fd();
    // A datagram goes whole or not at all.
    retrying(|| {
        sendmsg::<()>(
            socket,
            &[IoSlice::new(&message)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
    })
    .ok()?;
    let mut reply = [0u8; 5];
    let received = retrying(|| {
        recvmsg::<()>(
            socket,
            &mut [IoSliceMut::new(&mut reply)],
            None,
            MsgFlags::empty(),
        )
        .map(|message| message.bytes)
    })
    .unwrap_or(0);
    if received != reply.len() {
        return Some(Spawned::Lost);
    }
    let pid = i32::from_ne_bytes([reply[0], reply[1], reply[2], reply[3]]);
    Some(if pid > 0 {
        Spawned::Keeper(pid, reply[4] == 1)
    } else {
        Spawned::NotMade
    })
}

/// `call` again while a signal interrupts it.
fn retrying<T>(mut call: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match call() {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// The zygote of this process: started with its second sandbox, `None` if it could not be
/// (or is turned off). It serves only the process that made it (a process forked from
/// that one would not be the parent of its keepers) with the identity it had then (its
/// keepers have the zygote's credentials).
fn zygote() -> Option<&'static Mutex<OwnedFd>> {
    static ZYGOTE: OnceLock<Option<(Owner, Mutex<OwnedFd>)>> = OnceLock::new();
    let (owner, socket) = ZYGOTE
        .get_or_init(|| {
            let off = std::env::var_os("ARCA_SANDBOX_ZYGOTE").is_some_and(|value| value == "off");
            let socket = (!off).then(|| start().ok()).flatten()?;
            Some((Owner::now(), Mutex::new(socket)))
        })
        .as_ref()?;
    (*owner == Owner::now()).then_some(socket)
}

/// Who asks: the process and its effective ids.
#[derive(PartialEq, Eq)]
struct Owner {
    pid: u32,
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
}

impl Owner {
    fn now() -> Owner {
        Owner {
            pid: std::process::id(),
            uid: nix::unistd::geteuid(),
            gid: nix::unistd::getegid(),
        }
    }
}

/// Forks the zygote from a thread of its own that lives as long as the process (a process
/// dies with the thread that forked it, and so do the keepers forked as its siblings), and
/// waits for it there.
fn start() -> io::Result<OwnedFd> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let (started, forked) = mpsc::channel::<io::Result<()>>();
    std::thread::Builder::new()
        .name("arca-zygote".into())
        .spawn(move || {
            let forked = fork_zygote(theirs.as_raw_fd(), serve).map_err(io::Error::from);
            drop(theirs);
            let zygote = match forked {
                Ok(pid) => pid,
                Err(err) => {
                    let _ = started.send(Err(err));
                    return;
                }
            };
            let _ = started.send(Ok(()));
            // The zygote only ends with this process (or by a bug, and then its socket
            // says so to the next request, which forks its keeper itself).
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(zygote), None);
            loop {
                std::thread::park();
            }
        })?;
    forked
        .recv()
        .map_err(|_| io::Error::other("the zygote's thread ended"))??;
    Ok(ours)
}

/// The zygote's loop: one keeper per request, until the socket closes.
fn serve(socket: RawFd, parent: libc::pid_t) -> ! {
    let filters = crate::seccomp::filters().unwrap_or_default();
    let stack = init_stack();
    let mut buffer = vec![0u8; MAX_REQUEST];
    loop {
        let mut space = cmsg_space!([RawFd; MAX_FDS]);
        let (bytes, fds) = match recvmsg::<()>(
            socket,
            &mut [IoSliceMut::new(&mut buffer)],
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) if message.bytes > 0 => {
                let mut fds = Vec::new();
                for cmsg in message.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: descriptors the kernel just installed in this process
                        // for this message; nothing else owns them.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                (message.bytes, fds)
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // The process went away: so do we (`_exit`: the stdio buffers copied from it
            // are not ours to flush).
            _ => crate::child::exit(0),
        };
        let reply = match (&stack, decode(&buffer[..bytes], fds)) {
            (Ok(stack), Some(decoded)) => decoded.spawn(parent, &filters, *stack),
            _ => None,
        };
        let (pid, born) = reply.unwrap_or((-1, false));
        let mut answer = [0u8; 5];
        answer[..4].copy_from_slice(&pid.to_ne_bytes());
        answer[4] = born as u8;
        let _ = sendmsg::<()>(
            socket,
            &[IoSlice::new(&answer)],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
    }
}

/// A request as the zygote received it.
struct Decoded {
    plan: Plan,
    fds: ChildFds,
    caller_is_root: bool,
    seccomp: bool,
    last_capability: u32,
    /// (received, number in the plan) for each descriptor but the cgroup's.
    remap: Vec<(RawFd, RawFd)>,
    cgroup: Option<OwnedFd>,
    /// The descriptors received, closed once the keeper has its copies.
    _received: Vec<OwnedFd>,
}

impl Decoded {
    fn spawn(
        &self,
        parent: libc::pid_t,
        filters: &[seccompiler::BpfProgram],
        init_stack: *mut u8,
    ) -> Option<(libc::pid_t, bool)> {
        let argv = pointer_array(&self.plan.argv);
        let envp = pointer_array(&self.plan.envp);
        let mut keep: Vec<RawFd> = self.remap.iter().map(|&(_, to)| to).collect();
        keep.sort_unstable();
        let context = ChildContext {
            plan: &self.plan,
            keep: &keep,
            fds: self.fds,
            parent_pid: parent,
            caller_is_root: self.caller_is_root,
            filters: if self.seccomp { filters } else { &[] },
            last_capability: self.last_capability,
            argv: &argv,
            envp: &envp,
            init_stack,
            remap: &self.remap,
        };
        fork_sibling_keeper(&context, self.cgroup.as_ref().map(AsRawFd::as_raw_fd)).ok()
    }
}

/// The plan and flags of `request` as bytes (`None`: too big for one message).
fn encode(request: &Request<'_>) -> Option<Vec<u8>> {
    let plan = request.plan;
    let mut out = Encoder(Vec::with_capacity(4096));
    let fds = request.fds;
    for fd in [
        fds.status,
        fds.go,
        fds.exec,
        fds.output,
        fds.dev_null,
        fds.deferred,
    ] {
        out.i32(fd);
    }
    out.bool(request.caller_is_root);
    out.bool(request.seccomp);
    out.u32(request.last_capability);
    out.bool(request.cgroup.is_some());
    out.bytes(plan.root.as_bytes());
    out.bytes(plan.root_options.as_bytes());
    out.u32(plan.ops.len() as u32);
    for op in &plan.ops {
        match op {
            Op::Mkdir { path, mode } => {
                out.u8(0);
                out.bytes(path.as_bytes());
                out.u32(*mode);
            }
            Op::Touch { path } => {
                out.u8(1);
                out.bytes(path.as_bytes());
            }
            Op::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => {
                out.u8(2);
                out.optional(source.as_deref());
                out.bytes(target.as_bytes());
                out.optional(fstype.as_deref());
                out.u64(flags.bits());
                out.optional(data.as_deref());
            }
            Op::WriteFile {
                path,
                contents,
                mode,
            } => {
                out.u8(3);
                out.bytes(path.as_bytes());
                out.bytes(contents);
                out.u32(*mode);
            }
            Op::Symlink { target, link } => {
                out.u8(4);
                out.bytes(target.as_bytes());
                out.bytes(link.as_bytes());
            }
            Op::ChmodIgnoringErrors { path, mode } => {
                out.u8(5);
                out.bytes(path.as_bytes());
                out.u32(*mode);
            }
        }
    }
    out.bytes(plan.program.as_bytes());
    for strings in [&plan.argv, &plan.envp] {
        out.u32(strings.len() as u32);
        for string in strings.iter() {
            out.bytes(string.as_bytes());
        }
    }
    out.bytes(plan.cwd.as_bytes());
    out.bytes(&plan.hostname);
    out.bytes(&plan.domainname);
    out.bool(plan.unshare_user);
    out.bool(plan.isolate_network);
    for id in [plan.uid, plan.gid, plan.umask] {
        out.u32(id);
    }
    out.u32(plan.held.len() as u32);
    for held in &plan.held {
        out.i32(held.number);
        out.bytes(held.path.as_bytes());
        out.u32(held.op as u32);
    }
    match &plan.deferred {
        Some(deferred) => {
            out.bool(true);
            out.bytes(&deferred.source_prefix);
            out.bytes(deferred.source_dir.as_bytes());
            out.bytes(&deferred.inner_prefix);
            out.bool(deferred.from_tree);
            out.bytes(&deferred.target_prefix);
        }
        None => out.bool(false),
    }
    (out.0.len() <= MAX_REQUEST).then_some(out.0)
}

/// A request read back, with the descriptors that came with it in the order
/// [`spawn_keeper`] sends them; `None` if it does not add up.
fn decode(bytes: &[u8], received: Vec<OwnedFd>) -> Option<Decoded> {
    let mut input = Decoder(bytes);
    let numbers: Vec<RawFd> = (0..6).map(|_| input.i32()).collect::<Option<_>>()?;
    let fds = ChildFds {
        status: numbers[0],
        go: numbers[1],
        exec: numbers[2],
        output: numbers[3],
        dev_null: numbers[4],
        deferred: numbers[5],
    };
    let caller_is_root = input.bool()?;
    let seccomp = input.bool()?;
    let last_capability = input.u32()?;
    let has_cgroup = input.bool()?;
    let root = input.cstring()?;
    let root_options = input.cstring()?;
    let count = input.count()?;
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        ops.push(match input.u8()? {
            0 => Op::Mkdir {
                path: input.cstring()?,
                mode: input.u32()?,
            },
            1 => Op::Touch {
                path: input.cstring()?,
            },
            2 => Op::Mount {
                source: input.optional()?,
                target: input.cstring()?,
                fstype: input.optional()?,
                flags: MsFlags::from_bits_retain(input.u64()?),
                data: input.optional()?,
            },
            3 => Op::WriteFile {
                path: input.cstring()?,
                contents: input.bytes()?.to_vec(),
                mode: input.u32()?,
            },
            4 => Op::Symlink {
                target: input.cstring()?,
                link: input.cstring()?,
            },
            5 => Op::ChmodIgnoringErrors {
                path: input.cstring()?,
                mode: input.u32()?,
            },
            _ => return None,
        });
    }
    let program = input.cstring()?;
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        let count = input.count()?;
        for _ in 0..count {
            list.push(input.cstring()?);
        }
    }
    let [argv, envp] = lists;
    let cwd = input.cstring()?;
    let hostname = input.bytes()?.to_vec();
    let domainname = input.bytes()?.to_vec();
    let unshare_user = input.bool()?;
    let isolate_network = input.bool()?;
    let (uid, gid, umask) = (input.u32()?, input.u32()?, input.u32()?);

    // The descriptors, in the order they were sent: the roles (the deferred binds' pipe
    // only if there is one), the held directories, the cgroup.
    let roles = if fds.deferred >= 0 { 6 } else { 5 };
    let held_count = input.count()?;
    if received.len() != roles + held_count + usize::from(has_cgroup) {
        return None;
    }
    let mut received = received.into_iter();
    let mut remap = Vec::with_capacity(roles + held_count);
    let mut kept = Vec::with_capacity(roles);
    for &to in &numbers[..roles] {
        let fd = received.next()?;
        remap.push((fd.as_raw_fd(), to));
        kept.push(fd);
    }
    let mut held = Vec::with_capacity(held_count);
    for fd in received.by_ref().take(held_count) {
        let number = input.i32()?;
        remap.push((fd.as_raw_fd(), number));
        held.push(HeldDir {
            fd,
            number,
            path: input.cstring()?,
            op: input.u32()? as usize,
        });
    }
    let cgroup = received.next();
    let deferred = if input.bool()? {
        Some(DeferredPlan {
            source_prefix: input.bytes()?.to_vec(),
            source_dir: input.cstring()?,
            inner_prefix: input.bytes()?.to_vec(),
            from_tree: input.bool()?,
            target_prefix: input.bytes()?.to_vec(),
        })
    } else {
        None
    };
    if !input.0.is_empty() {
        return None;
    }
    Some(Decoded {
        plan: Plan {
            root,
            root_options,
            ops,
            descriptions: Vec::new(),
            program,
            argv,
            envp,
            cwd,
            hostname,
            domainname,
            unshare_user,
            isolate_network,
            uid,
            gid,
            umask,
            held,
            deferred,
        },
        fds,
        caller_is_root,
        seccomp,
        last_capability,
        remap,
        cgroup,
        _received: kept,
    })
}

struct Encoder(Vec<u8>);

impl Encoder {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    fn bool(&mut self, value: bool) {
        self.u8(value as u8);
    }
    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_ne_bytes());
    }
    fn i32(&mut self, value: i32) {
        self.0.extend_from_slice(&value.to_ne_bytes());
    }
    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_ne_bytes());
    }
    fn bytes(&mut self, bytes: &[u8]) {
        self.u32(bytes.len() as u32);
        self.0.extend_from_slice(bytes);
    }
    fn optional(&mut self, string: Option<&std::ffi::CStr>) {
        match string {
            Some(string) => {
                self.bool(true);
                self.bytes(string.to_bytes());
            }
            None => self.bool(false),
        }
    }
}

struct Decoder<'b>(&'b [u8]);

impl<'b> Decoder<'b> {
    fn take(&mut self, len: usize) -> Option<&'b [u8]> {
        if self.0.len() < len {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_ne_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A count of items, each at least one byte: no more than the bytes left.
    fn count(&mut self) -> Option<usize> {
        let count = self.u32()? as usize;
        (count <= self.0.len()).then_some(count)
    }
    fn bytes(&mut self) -> Option<&'b [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn cstring(&mut self) -> Option<CString> {
        CString::new(self.bytes()?).ok()
    }
    fn optional(&mut self) -> Option<Option<CString>> {
        Some(if self.bool()? {
            Some(self.cstring()?)
        } else {
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::spec::{DeferredBinds, Mount, SandboxSpec};

    fn plan() -> Plan {
        let mut spec = SandboxSpec::new("/bin/sh", ["sh", "-c", "true"])
            .env("PATH", "/bin")
            .mount(Mount::bind_ro("/etc/hostname", "/etc/hostname"))
            .mount(Mount::bind_ro("/usr/bin", "/usr/bin"));
        spec.deferred_binds = Some(DeferredBinds {
            source_dir: "/usr".into(),
            target_dir: "/nix/store".into(),
        });
        Plan::new(&spec, Path::new("/tmp/arca-zygote-test-root"), true).unwrap()
    }

    fn request(plan: &Plan) -> Request<'_> {
        Request {
            plan,
            fds: ChildFds {
                status: 10,
                go: 11,
                exec: 12,
                output: 13,
                dev_null: 14,
                deferred: 15,
            },
            caller_is_root: true,
            seccomp: true,
            last_capability: 40,
            cgroup: None,
        }
    }

    /// Descriptors standing in for those a request carries.
    fn received(plan: &Plan) -> Vec<OwnedFd> {
        (0..6 + plan.held.len())
            .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
            .collect()
    }

    #[test]
    fn a_request_reads_back_as_it_was_written() {
        let plan = plan();
        let bytes = encode(&request(&plan)).unwrap();
        let received = received(&plan);
        let raw: Vec<RawFd> = received.iter().map(AsRawFd::as_raw_fd).collect();
        let decoded = decode(&bytes, received).expect("decodes");
        assert_eq!(format!("{:?}", decoded.plan.ops), format!("{:?}", plan.ops));
        for (a, b) in [
            (&decoded.plan.root, &plan.root),
            (&decoded.plan.root_options, &plan.root_options),
            (&decoded.plan.program, &plan.program),
            (&decoded.plan.cwd, &plan.cwd),
        ] {
            assert_eq!(a, b);
        }
        assert_eq!(decoded.plan.argv, plan.argv);
        assert_eq!(decoded.plan.envp, plan.envp);
        assert_eq!(decoded.plan.hostname, plan.hostname);
        assert_eq!(
            (decoded.plan.uid, decoded.plan.gid, decoded.plan.umask),
            (plan.uid, plan.gid, plan.umask)
        );
        assert_eq!(
            format!("{:?}", decoded.plan.deferred),
            format!("{:?}", plan.deferred)
        );
        assert!(!plan.held.is_empty());
        for (held, original) in decoded.plan.held.iter().zip(&plan.held) {
            assert_eq!(
                (held.number, &held.path, held.op),
                (original.number, &original.path, original.op)
            );
        }
        assert_eq!((decoded.caller_is_root, decoded.seccomp), (true, true));
        assert_eq!(decoded.last_capability, 40);
        // Each descriptor received goes to the number the plan names.
        let wanted: Vec<RawFd> = (10..16).chain(plan.held.iter().map(|h| h.number)).collect();
        assert_eq!(
            decoded.remap,
            raw.into_iter().zip(wanted).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_request_cut_short_or_with_the_wrong_descriptors_is_refused() {
        let plan = plan();
        let bytes = encode(&request(&plan)).unwrap();
        for end in 0..bytes.len() {
            assert!(decode(&bytes[..end], received(&plan)).is_none(), "{end}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, received(&plan)).is_none());
        let mut fewer = received(&plan);
        fewer.pop();
        assert!(decode(&bytes, fewer).is_none());
    }
}
