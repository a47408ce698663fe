//! What a sandbox looks like: the program, its root layout, its identity and its limits.
//!
//! A [`SandboxSpec`] is plain data. [`crate::run`] checks it (absolute, normalised targets,
//! no NUL bytes, sources that exist) before anything is forked, so a bad spec is an error
//! that names the bad field, never a half-built sandbox.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Everything [`crate::run`] needs to start one program in a fresh sandbox.
///
/// Build one with [`SandboxSpec::new`], which fills in the defaults (uid 1000 / gid 100
/// named `nixbld`, hostname `localhost`, no network, a minimal `/dev`, `/proc`, generated
/// `/etc/passwd`, `/etc/group` and `/etc/hosts`, a `/tmp` tmpfs, the seccomp filter on,
/// every tmpfs limited to [`Limits::tmpfs_size`]), then add mounts and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The program to execute, as a path inside the sandbox (no `PATH` lookup).
    pub program: PathBuf,
    /// The full argument vector, `argv[0]` included.
    pub args: Vec<OsString>,
    /// The complete environment; nothing is inherited from the caller.
    pub env: Vec<(OsString, OsString)>,
    /// The working directory inside the sandbox.
    pub cwd: PathBuf,
    /// The root layout, applied in order on an empty root (after `/dev` and `/proc`).
    pub mounts: Vec<Mount>,
    /// Read-only binds named only when a prepared sandbox starts (see [`crate::prepare`]).
    pub deferred_binds: Option<DeferredBinds>,
    /// Who the program runs as inside the sandbox.
    pub identity: Identity,
    /// Whether to use a user namespace (always the case when the caller is not root).
    pub user_namespace: UserNamespace,
    /// Host-side user and group the inside identity maps to in a user namespace; `None`
    /// means the caller's effective ids (the only choice for an unprivileged caller), or
    /// nobody (65534) for root. Host root itself is refused: a process whose host uid is 0
    /// passes the owner checks of `/proc/sys` files even without capabilities.
    pub host_ids: Option<(u32, u32)>,
    /// Host name in the private UTS namespace.
    pub hostname: String,
    /// NIS domain name in the private UTS namespace (`(none)` is the kernel's empty value).
    pub domainname: String,
    /// Network isolation.
    pub network: Network,
    /// What `/dev` holds besides the minimal set.
    pub devices: Devices,
    /// Mount a `/proc` for the sandbox's own pid namespace.
    pub proc: bool,
    /// Install the seccomp filter (no setuid/setgid files, no extended attributes).
    pub seccomp: bool,
    /// Wall-clock, silence, output and tmpfs size limits.
    pub limits: Limits,
    /// Use a cgroup for kill-all and accounting.
    pub cgroup: CgroupMode,
    /// The file mode creation mask of the program.
    pub umask: u32,
}

/// One entry of the root layout. Targets are absolute paths inside the sandbox; missing
/// parent directories are created (mode 0755).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// Bind-mount a host file or directory (which one is read off the source). A source
    /// that is a symlink is recreated as a symlink with the same target, never followed
    /// (as Nix does); a read-only bind takes no submounts of the source along, a writable
    /// one does.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Path inside the sandbox.
        target: PathBuf,
        /// Writable from inside; read-only otherwise.
        writable: bool,
        /// Skip silently when the source does not exist (Nix's `?` suffix).
        optional: bool,
    },
    /// A fresh, empty tmpfs.
    Tmpfs {
        /// Path inside the sandbox.
        target: PathBuf,
        /// Mode of its root directory, e.g. `0o1777` for `/tmp`.
        mode: u32,
        /// Its size limit; `None` means [`Limits::tmpfs_size`].
        size: Option<TmpfsSize>,
    },
    /// A fresh directory in the (read-only) root, e.g. a mount point for later use.
    Dir {
        /// Path inside the sandbox.
        target: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// A fresh file with the given contents (read-only once the root is sealed).
    File {
        /// Path inside the sandbox.
        target: PathBuf,
        /// The bytes it holds.
        contents: Vec<u8>,
        /// Its mode.
        mode: u32,
    },
    /// A symbolic link.
    Symlink {
        /// Path inside the sandbox where the link is made.
        link: PathBuf,
        /// What it points to.
        target: PathBuf,
    },
}

/// Read-only binds of entries of one host directory, named when a [`crate::Prepared`]
/// sandbox is started rather than when it is prepared: each name given to
/// [`crate::Prepared::run`] is bound at `target_dir/NAME` as [`Mount::bind_ro`] would bind
/// it (a symlink recreated, not followed). A build prepares its sandbox while the builds
/// of its inputs still run and names their outputs (and what those refer to) once they
/// exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredBinds {
    /// The host directory the entries are in (a store directory).
    pub source_dir: PathBuf,
    /// The directory inside the sandbox they appear in (created by the layout).
    pub target_dir: PathBuf,
}

impl Mount {
    /// A read-only bind mount of `source` at `target`.
    pub fn bind_ro(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        Mount::Bind {
            source: source.into(),
            target: target.into(),
            writable: false,
            optional: false,
        }
    }

    /// A writable bind mount of `source` at `target`.
    pub fn bind_rw(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        Mount::Bind {
            source: source.into(),
            target: target.into(),
            writable: true,
            optional: false,
        }
    }

    /// The path inside the sandbox this entry creates.
    pub fn target(&self) -> &std::path::Path {
        match self {
            Mount::Bind { target, .. }
            | Mount::Tmpfs { target, .. }
            | Mount::Dir { target, .. }
            | Mount::File { target, .. } => target,
            Mount::Symlink { link, .. } => link,
        }
    }
}

/// The user and group the program runs as, and their names in the generated `/etc` files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id inside the sandbox.
    pub uid: u32,
    /// Group id inside the sandbox.
    pub gid: u32,
    /// User name in `/etc/passwd`.
    pub user_name: String,
    /// Group name in `/etc/group`.
    pub group_name: String,
    /// Home directory written in `/etc/passwd`.
    pub home: String,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            uid: 1000,
            gid: 100,
            user_name: "nixbld".into(),
            group_name: "nixbld".into(),
            home: "/build".into(),
        }
    }
}

/// When to create a user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserNamespace {
    /// Only when the caller is not root (it cannot mount otherwise). A root caller drops
    /// to the inside identity with `setresuid`/`setresgid` instead.
    #[default]
    Auto,
    /// Always; the inside identity is mapped to [`SandboxSpec::host_ids`].
    Always,
}

/// Network isolation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    /// A private network namespace holding only a loopback interface, which is up.
    #[default]
    Isolated,
    /// The host's network namespace (for fixed-output derivations when no user-mode
    /// network is to be had): the program also shares the host's abstract unix sockets.
    Host,
    /// A private network namespace whose way out is a user-mode TCP/IP stack run on
    /// the host by `program` (`slirp4netns`): a `tap0` interface with 10.0.2.100/24,
    /// the gateway 10.0.2.2 and a DNS forwarder at 10.0.2.3. Outgoing connections work
    /// as from the host, but nothing else of the host's network is shared: no
    /// interfaces, no abstract unix sockets, and (unless `host_loopback`) no way to the
    /// host's loopback addresses.
    UserMode {
        /// The `slirp4netns` binary.
        program: PathBuf,
        /// Let 10.0.2.2 reach the host's 127.0.0.1 (off for builds).
        host_loopback: bool,
    },
}

/// Optional device nodes in `/dev`. The minimal set is always there: `null`, `zero`,
/// `full`, `random`, `urandom`, `tty`, a private `pts` with `ptmx`, a `shm` tmpfs and the
/// `fd`, `stdin`, `stdout`, `stderr` links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Devices {
    /// Bind `/dev/kvm` when the host has it (silently absent otherwise).
    pub kvm: bool,
}

/// What the sandbox may use. The supervising parent enforces the time and output limits
/// by killing the whole sandbox; the kernel enforces the tmpfs sizes (a write past one
/// fails with `ENOSPC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Wall-clock time from start to end.
    pub timeout: Option<Duration>,
    /// Longest stretch without any output.
    pub silence_timeout: Option<Duration>,
    /// Most output bytes (stdout and stderr together) passed on to the caller.
    pub max_output_bytes: Option<u64>,
    /// Size of `/dev/shm` and of every [`Mount::Tmpfs`] (`/tmp` among them) that sets none
    /// of its own; by default half of the host's RAM each, which is the kernel's own
    /// default for a tmpfs and Nix's for `/dev/shm` (`sandbox-dev-shm-size`). Tmpfs pages
    /// are memory: without a limit a builder could fill the host's RAM from `/tmp`.
    ///
    /// The number of files is limited too, to one per 4 KiB of the size (the kernel's
    /// default ratio), so that empty files cannot take more kernel memory than a
    /// fraction of the size. The root itself is a tmpfs sized to what the layout writes
    /// in it (it is read-only to the program).
    pub tmpfs_size: TmpfsSize,
}

/// The size limit of a tmpfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmpfsSize {
    /// At most this many bytes (rounded up to whole pages by the kernel); at least 1.
    Bytes(u64),
    /// At most this share of the host's RAM, in percent, from 1 to 100 (like the kernel's
    /// `size=50%`).
    PercentOfRam(u8),
}

impl Default for TmpfsSize {
    /// Half of the host's RAM.
    fn default() -> Self {
        TmpfsSize::PercentOfRam(50)
    }
}

/// Whether to put the sandbox in a cgroup (v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupMode {
    /// Never.
    Off,
    /// When the host has a writable cgroup v2 hierarchy; otherwise run without one.
    #[default]
    Auto,
    /// Fail when no cgroup can be made.
    Required,
}

impl SandboxSpec {
    /// A spec running `program` with `args` (`argv[0]` included) and the default layout.
    pub fn new(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        let identity = Identity::default();
        let mut spec = SandboxSpec {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            mounts: Vec::new(),
            deferred_binds: None,
            identity,
            user_namespace: UserNamespace::Auto,
            host_ids: None,
            hostname: "localhost".into(),
            domainname: "(none)".into(),
            network: Network::Isolated,
            devices: Devices::default(),
            proc: true,
            seccomp: true,
            limits: Limits::default(),
            cgroup: CgroupMode::Auto,
            umask: 0o022,
        };
        spec.mounts = standard_etc(&spec.identity);
        spec.mounts.push(Mount::Tmpfs {
            target: "/tmp".into(),
            mode: 0o1777,
            size: None,
        });
        spec
    }

    /// Adds one environment variable.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Adds one entry to the root layout.
    pub fn mount(mut self, mount: Mount) -> Self {
        self.mounts.push(mount);
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.cwd = cwd.into();
        self
    }
}

/// `/etc/passwd`, `/etc/group` and `/etc/hosts` as a Nix builder sees them: root, the
/// build user and nobody; root, the build group and nogroup; localhost on v4 and v6.
pub fn standard_etc(identity: &Identity) -> Vec<Mount> {
    let passwd = format!(
        "root:x:0:0:Nix build user:{home}:/noshell\n\
         {user}:x:{uid}:{gid}:Nix build user:{home}:/noshell\n\
         nobody:x:65534:65534:Nobody:/:/noshell\n",
        home = identity.home,
        user = identity.user_name,
        uid = identity.uid,
        gid = identity.gid,
    );
    let group = format!(
        "root:x:0:\n{group}:!:{gid}:\nnogroup:x:65534:\n",
        group = identity.group_name,
        gid = identity.gid,
    );
    let hosts = "127.0.0.1 localhost\n::1 localhost\n";
    vec![
        Mount::File {
            target: "/etc/passwd".into(),
            contents: passwd.into_bytes(),
            mode: 0o444,
        },
        Mount::File {
            target: "/etc/group".into(),
            contents: group.into_bytes(),
            mode: 0o444,
        },
        Mount::File {
            target: "/etc/hosts".into(),
            contents: hosts.as_bytes().to_vec(),
            mode: 0o444,
        },
    ]
}
