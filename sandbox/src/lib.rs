//! `arca-sandbox`: run a command in an isolated Linux root.
//!
//! A [`SandboxSpec`] describes the program and the root it sees: bind mounts (read-only
//! or writable, files or directories, optional), tmpfs mounts, fresh files and
//! directories, the user it runs as, its host name, whether it has a network, and limits.
//! [`run`] builds that root and runs the program in it:
//!
//! - a keeper process, forked by the process's zygote (below) or else by the caller: a
//!   `fork`, or to be born in a cgroup a raw `clone3` with `CLONE_INTO_CGROUP` and fork
//!   semantics (never `vfork` or a shared-memory `clone` from a multi-threaded caller);
//!   then `unshare` of the mount, pid, network, UTS, IPC and cgroup namespaces, and of a
//!   user namespace when the caller
//!   is not root (or when asked), whose id maps the parent writes (`setgroups` denied);
//! - a `clone` sharing the keeper's memory (as `posix_spawn`'s) makes pid 1 of the new
//!   pid namespace, which mounts a tmpfs root, lays out `/dev`, `/proc` and the spec's
//!   mounts, sets the host name, brings up loopback, empties the capability bounding set,
//!   sets `no_new_privs` and installs Nix's seccomp filter, `pivot_root`s into the root
//!   and detaches the old one (no path back to the host remains), makes the deferred
//!   binds (see below: copies of mounts out of a detached copy of their source directory
//!   that the keeper made with `open_tree`, or, on kernels that cannot copy out of one
//!   (before 6.15) or with `ARCA_SANDBOX_DEFERRED=by-path`, by path before `pivot_root`),
//!   seals the root read-only, switches to the sandbox user, drops every capability,
//!   closes inherited descriptors and executes the program;
//! - the program is pid 1 of its namespace: when it ends the kernel kills everything it
//!   left behind, and [`run`] returns only once all of it is gone. Timeouts, silence and
//!   output limits kill the whole namespace (and the cgroup, when one could be made).
//! - every tmpfs has a size limit and an inode limit (one per 4 KiB of the size), so the
//!   program cannot fill the host's memory from `/tmp` or `/dev/shm`: those and every
//!   [`Mount::Tmpfs`] without a size of its own get [`Limits::tmpfs_size`] (half of RAM by
//!   default, Nix's default for `/dev/shm`), the root only what the layout writes in it.
//!
//! # What the program can learn about the host
//!
//! The mount table (`/proc/self/mounts`, `/proc/self/mountinfo`) lists mount points as
//! inside paths and sources by device or file system name (`/dev/vda`, `tmpfs`); the
//! staging directory the root is built in does not appear. One field cannot be hidden:
//! the fourth of `/proc/self/mountinfo`, the "root" of a mount, is the path of the
//! mount's top directory within its file system, which the kernel computes from the
//! mount itself when the file is read. For a bind mount that is the source's path
//! relative to the root of the host file system holding it (a physical store path such
//! as `/tmp/xyz/nix/store/…`, the host build directory). `pivot_root`, `open_tree` with
//! `move_mount`, and the user namespace all keep it; only a fresh file system (tmpfs,
//! proc, an overlay) shows `/`, and an overlay would show its layers' host paths in its
//! options instead. The device number, the file system type and its mount options
//! (the host's, for a bind) are visible alongside. `/proc/self/cgroup` reads `/`: the
//! program has a cgroup namespace of its own.
//!
//! It is not a container runtime (no images, no overlay file systems, no seccomp
//! allow-list) and knows nothing of Nix; `arca-build` describes builds with it.
//!
//! [`prepare`] does all of that but the deferred binds ([`SandboxSpec::deferred_binds`])
//! and what follows, and returns at once; [`Prepared::start`] names the
//! deferred binds (entries of one host directory that may not exist before) and lets the
//! program start, and [`Started::wait`] supervises it ([`Prepared::run`] is the two). A
//! build prepares its sandbox while its inputs are still being built, and the thread that
//! finishes the last input starts it. [`run`] is `prepare` then `Prepared::run` with no
//! deferred binds.
//!
//! [`run_on_host`] is the other way to run a program: unsandboxed, as Nix's
//! `sandbox = false`, on the host in a process group of its own, with the same limits.
//!
//! The keepers are forked from a zygote: a child the process forks with its second sandbox
//! (from a thread of its own that lives as long as the process), single-threaded and
//! nearly idle, which forks each keeper as a sibling (`CLONE_PARENT`), so the keepers are
//! the caller's children all the same. A keeper forked from the caller itself would
//! write-protect the caller's memory until the program starts, and every page the
//! caller's threads then write would be copied on a fault that flushes the TLB of every
//! CPU: for a busy multi-threaded caller, most of what a sandbox cost. The plan and the
//! descriptors travel over a socket. When the zygote cannot serve (none could be made, a
//! plan too big for one message, a process forked from the one that made it) and for the
//! process's first sandbox, the caller forks the keeper itself; `ARCA_SANDBOX_ZYGOTE=off`
//! in the environment of the process's second sandbox makes it always do so. In `ps` the
//! zygote is `arca-zygote`, each keeper `arca-keeper`.
//!
//! The zygote runs as `SCHED_BATCH` (when the caller is `SCHED_OTHER`), and so do the
//! keepers and inits it forks while they prepare: a waking batch task never preempts the
//! task on its CPU, so preparing the next sandbox does not stall the program of the one
//! running, whose end is what a chain of builds waits for. Init goes back to `SCHED_OTHER`
//! once only its start is left (before it waits for the deferred binds), and the program
//! runs under the caller's policy. [`background_thread`] does the same for a thread of the
//! caller that prepares ahead of need.
//!
//! All `unsafe` code of the crate is in three modules: `child` (what runs between the
//! forks and `execve`), `zygote` (descriptors received over its socket) and `host` (the
//! unsandboxed run's `umask` before `execve` and its `wait4`). Each block carries a
//! `// SAFETY:` comment.
//!
//! # Example
//!
//! ```no_run
//! use arca_sandbox::{run, Mount, Outcome, SandboxSpec};
//!
//! let spec = SandboxSpec::new("/bin/busybox", ["sh", "-c", "echo hello from $(hostname)"])
//!     .mount(Mount::bind_ro("/usr/bin/busybox", "/bin/busybox"))
//!     .env("PATH", "/bin");
//! let mut output = Vec::new();
//! let report = run(&spec, &mut output)?;
//! assert_eq!(report.outcome, Outcome::Exited(0));
//! assert_eq!(output, b"hello from localhost\n");
//! # Ok::<(), arca_sandbox::SandboxError>(())
//! ```

mod budget;
mod cgroup;
mod child;
mod error;
mod host;
mod outcome;
mod plan;
mod run;
mod seccomp;
mod spec;
mod user_net;
mod zygote;

pub use child::{background_thread, lower_thread_priority, BackgroundThread};
pub use error::{SandboxError, SetupStep};
pub use host::{kill_user, run_on_host, HostSpec};
pub use outcome::{CgroupUsage, Outcome, Report, Usage};
pub use run::{prepare, run, Prepared, Started};
pub use spec::{
    standard_etc, CgroupMode, DeferredBinds, Devices, Identity, Limits, Mount, Network,
    SandboxSpec, TmpfsSize, UserNamespace,
};
