//! The errors of [`crate::run`]. A failure while building the sandbox names the step, the
//! path it was working on and the errno the kernel gave.

use std::fmt;
use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

/// Why a sandbox could not be run. (A program that ran and failed is not an error: see
/// [`crate::Outcome`].)
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The spec is malformed (relative or non-normal target, NUL byte, ...).
    #[error("invalid sandbox spec: {field} {value:?}: {reason}")]
    InvalidSpec {
        /// Which field.
        field: &'static str,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A required bind-mount source does not exist on the host.
    #[error("bind mount source '{}' does not exist", path.display())]
    MissingSource {
        /// The host path.
        path: PathBuf,
    },
    /// The kernel refused a user namespace. Arca never falls back to weaker isolation.
    #[error(
        "user namespaces are not available ({errno}); the sandbox needs them when not run \
         as root (check kernel.unprivileged_userns_clone, user.max_user_namespaces and any \
         AppArmor/SELinux policy)"
    )]
    UserNamespacesUnavailable {
        /// The errno of `unshare(CLONE_NEWUSER)` or of writing the id maps.
        errno: Errno,
    },
    /// A step of building the sandbox failed inside the child.
    #[error("sandbox setup failed while {step}: {errno}")]
    Setup {
        /// What was being done, with the path involved.
        step: SetupStep,
        /// The kernel's answer.
        errno: Errno,
    },
    /// `CgroupMode::Required` and no cgroup could be made.
    #[error("cannot create a cgroup for the sandbox: {0}")]
    Cgroup(String),
    /// The caller's output writer failed; the sandbox was killed.
    #[error("cannot pass on the sandbox's output")]
    Output(#[source] io::Error),
    /// A host-side operation of the supervisor failed.
    #[error("sandbox supervisor: {context}")]
    Host {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// A step of sandbox construction, as reported by the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupStep {
    /// Creating the namespaces.
    Unshare,
    /// Writing `uid_map`, `gid_map` or `setgroups` of the child.
    IdMaps,
    /// The second fork, which makes pid 1 of the new pid namespace.
    ForkInit,
    /// Making the mount tree private.
    PrivateMounts,
    /// Mounting the tmpfs that becomes the new root.
    RootTmpfs,
    /// Applying one entry of the layout.
    Layout(String),
    /// `pivot_root` and detaching the old root.
    PivotRoot,
    /// Sealing the new root read-only.
    SealRoot,
    /// Setting the host or domain name.
    Hostname,
    /// Bringing up the loopback interface.
    Loopback,
    /// Switching to the inside user and group.
    Identity,
    /// Dropping capabilities.
    Capabilities,
    /// Installing the seccomp filter.
    Seccomp,
    /// Changing to the working directory.
    Chdir(PathBuf),
    /// Executing the program.
    Exec(PathBuf),
    /// Wiring up standard input/output or closing inherited descriptors.
    FileDescriptors,
}

impl fmt::Display for SetupStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupStep::Unshare => f.write_str("creating namespaces"),
            SetupStep::IdMaps => f.write_str("writing the user namespace id maps"),
            SetupStep::ForkInit => f.write_str("forking pid 1 of the sandbox"),
            SetupStep::PrivateMounts => f.write_str("making mounts private"),
            SetupStep::RootTmpfs => f.write_str("mounting the root tmpfs"),
            SetupStep::Layout(what) => write!(f, "{what}"),
            SetupStep::PivotRoot => f.write_str("pivoting into the new root"),
            SetupStep::SealRoot => f.write_str("making the root read-only"),
            SetupStep::Hostname => f.write_str("setting the host name"),
            SetupStep::Loopback => f.write_str("bringing up the loopback interface"),
            SetupStep::Identity => f.write_str("switching to the sandbox user"),
            SetupStep::Capabilities => f.write_str("dropping capabilities"),
            SetupStep::Seccomp => f.write_str("installing the seccomp filter"),
            SetupStep::Chdir(dir) => write!(f, "changing to working directory '{}'", dir.display()),
            SetupStep::Exec(program) => write!(f, "executing '{}'", program.display()),
            SetupStep::FileDescriptors => f.write_str("setting up file descriptors"),
        }
    }
}
