//! The spec turned into a list of syscalls with every argument ready (`CString`s, flags,
//! file contents), so that the forked child only walks the list: after `fork()` in a
//! multi-threaded parent the child may not allocate or take locks (see `child.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::{stat, SFlag};
use nix::sys::statvfs::{statvfs, FsFlags};

use crate::error::SandboxError;
use crate::spec::{DeferredBinds, Mount, Network, SandboxSpec, TmpfsSize, UserNamespace};

/// One step of building the root, with paths under the staging root.
#[derive(Debug)]
pub(crate) enum Op {
    Mkdir {
        path: CString,
        mode: u32,
    },
    /// An empty file to mount a file on.
    Touch {
        path: CString,
    },
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: MsFlags,
        data: Option<CString>,
    },
    WriteFile {
        path: CString,
        contents: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// Best effort (devpts may make `ptmx` mode 0 on some kernels).
    ChmodIgnoringErrors {
        path: CString,
        mode: u32,
    },
}

/// Everything the child needs, prepared before the fork.
#[derive(Debug)]
pub(crate) struct Plan {
    pub root: CString,
    /// Mount options of the root tmpfs (see [`root_tmpfs_options`]).
    pub root_options: CString,
    pub ops: Vec<Op>,
    /// What each op does, for error messages (same index as `ops`).
    pub descriptions: Vec<String>,
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: CString,
    pub hostname: Vec<u8>,
    pub domainname: Vec<u8>,
    pub unshare_user: bool,
    pub isolate_network: bool,
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
    /// The bind sources' parent directories, which the mounts name as
    /// `/proc/self/fd/N/NAME` (see [`Builder::reachable`]).
    pub held: Vec<HeldDir>,
    /// Where the binds named at start go, when the spec has [`DeferredBinds`].
    pub deferred: Option<DeferredPlan>,
}

/// The prepared half of [`DeferredBinds`]: init joins each name it is sent to these
/// prefixes (in buffers on its stack), so nothing is allocated after the fork.
#[derive(Debug)]
pub(crate) struct DeferredPlan {
    /// `/proc/self/fd/N/`, N a held descriptor of the source directory.
    pub source_prefix: Vec<u8>,
    /// The source directory itself, of which the keeper makes a detached copy
    /// (`open_tree`) for init to bind entries from after `pivot_root`.
    pub source_dir: CString,
    /// The target directory inside the sandbox, with a trailing `/`.
    pub inner_prefix: Vec<u8>,
    /// Whether init binds the entries out of that copy rather than by path before
    /// `pivot_root`: where the kernel can (Linux 6.15), unless
    /// `ARCA_SANDBOX_DEFERRED=by-path` was in the environment of the process's first
    /// sandbox with deferred binds.
    pub from_tree: bool,
    /// The target directory under the staging root, with a trailing `/`.
    pub target_prefix: Vec<u8>,
}

/// At most this many deferred binds per sandbox: the root tmpfs has room for them (one
/// inode each, and a page for a symlink's target), and no more.
pub(crate) const DEFERRED_MAX: usize = 4096;

/// A directory the sandbox's mounts reach through a descriptor number.
#[derive(Debug)]
pub(crate) struct HeldDir {
    /// Opened by the parent, only to reserve the number (and fail early): a mount source
    /// must belong to the mount namespace of the caller, so init opens the directory
    /// again in its own namespace, before it changes identity, and puts it on this number.
    pub fd: OwnedFd,
    /// The number the children find it at (`fd`'s own, but for a plan a zygote received,
    /// see `crate::zygote`).
    pub number: RawFd,
    pub path: CString,
    /// The first op that names it (for errors).
    pub op: usize,
}

const DEVICES: [&str; 6] = ["full", "null", "random", "tty", "urandom", "zero"];

impl Plan {
    pub fn new(
        spec: &SandboxSpec,
        root: &Path,
        caller_is_root: bool,
    ) -> Result<Plan, SandboxError> {
        let mut builder = Builder {
            root: root.to_path_buf(),
            ops: Vec::new(),
            descriptions: Vec::new(),
            dirs: BTreeSet::new(),
            tmpfs_size: spec.limits.tmpfs_size,
            held: BTreeMap::new(),
        };
        builder.dirs.insert(PathBuf::from("/"));
        builder.dev(spec.devices.kvm)?;
        if spec.proc {
            builder.dir(Path::new("/proc"), 0o555)?;
            builder.push(
                Op::Mount {
                    source: Some(c"proc".into()),
                    target: builder.host(Path::new("/proc"))?,
                    fstype: Some(c"proc".into()),
                    flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    data: None,
                },
                "mounting /proc".into(),
            );
        }
        for mount in &spec.mounts {
            builder.mount(mount)?;
        }
        let deferred = match &spec.deferred_binds {
            Some(binds) => Some(builder.deferred(
                binds,
                spec.user_namespace == UserNamespace::Always || !caller_is_root,
            )?),
            None => None,
        };

        let program = cstring("program", spec.program.as_os_str())?;
        if spec.args.is_empty() {
            return Err(invalid("args", "", "argv must hold at least argv[0]"));
        }
        let argv = spec
            .args
            .iter()
            .map(|a| cstring("args", a))
            .collect::<Result<_, _>>()?;
        let envp = spec
            .env
            .iter()
            .map(|(name, value)| {
                if name.is_empty() || name.as_bytes().contains(&b'=') {
                    return Err(invalid(
                        "env",
                        &name.to_string_lossy(),
                        "a variable name must be non-empty and hold no '='",
                    ));
                }
                let mut entry = name.as_bytes().to_vec();
                entry.push(b'=');
                entry.extend_from_slice(value.as_bytes());
                cstring("env", OsStr::from_bytes(&entry))
            })
            .collect::<Result<_, _>>()?;
        check_absolute("cwd", &spec.cwd)?;
        for (field, name) in [
            ("hostname", &spec.hostname),
            ("domainname", &spec.domainname),
        ] {
            if name.len() > 64 || name.contains('\0') {
                return Err(invalid(field, name, "must be at most 64 bytes without NUL"));
            }
        }
        let (domainname, hostname) = (spec.domainname.as_bytes(), spec.hostname.as_bytes());
        Ok(Plan {
            root: cstring("root", root.as_os_str())?,
            root_options: root_tmpfs_options(&builder.ops, deferred.is_some()),
            ops: builder.ops,
            descriptions: builder.descriptions,
            program,
            argv,
            envp,
            cwd: cstring("cwd", spec.cwd.as_os_str())?,
            hostname: hostname.to_vec(),
            // "(none)" is the kernel's own initial value; Nix sets it explicitly too.
            domainname: domainname.to_vec(),
            unshare_user: spec.user_namespace == UserNamespace::Always || !caller_is_root,
            isolate_network: spec.network != Network::Host,
            uid: spec.identity.uid,
            gid: spec.identity.gid,
            umask: spec.umask & 0o777,
            held: builder.held.into_values().collect(),
            deferred,
        })
    }
}

struct Builder {
    root: PathBuf,
    ops: Vec<Op>,
    descriptions: Vec<String>,
    /// Directories already created (inside paths), so each is made once.
    dirs: BTreeSet<PathBuf>,
    /// The size of a tmpfs that names none.
    tmpfs_size: TmpfsSize,
    /// Directories opened for [`Builder::reachable`], by path.
    held: BTreeMap<PathBuf, HeldDir>,
}

impl Builder {
    fn push(&mut self, op: Op, description: String) {
        self.ops.push(op);
        self.descriptions.push(description);
    }

    /// The staging-root path of an inside path.
    fn host(&self, inside: &Path) -> Result<CString, SandboxError> {
        let relative = inside.strip_prefix("/").unwrap_or(inside);
        let joined = if relative.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(relative)
        };
        cstring("target", joined.as_os_str())
    }

    /// A name for `source` that the sandbox user can follow even where it cannot search
    /// an ancestor directory: root's store under a 0700 `$HOME`, for one. Init opens the
    /// parent while it still has the caller's identity and the mount names the source as
    /// `/proc/self/fd/N/NAME`: the kernel jumps to the open directory without checking the
    /// directories above it. One descriptor per parent (all store paths share one).
    fn reachable(&mut self, source: &Path) -> Result<CString, SandboxError> {
        let (Some(parent), Some(name)) = (source.parent(), source.file_name()) else {
            return cstring("bind source", source.as_os_str());
        };
        let fd = self.hold(parent, source)?;
        let mut via = format!("/proc/self/fd/{fd}/").into_bytes();
        via.extend_from_slice(name.as_bytes());
        cstring("bind source", OsStr::from_bytes(&via))
    }

    /// The held descriptor of directory `parent` (opened now if it is not held yet);
    /// `source` is what an error names.
    fn hold(&mut self, parent: &Path, source: &Path) -> Result<RawFd, SandboxError> {
        Ok(match self.held.get(parent) {
            Some(held) => held.number,
            None => {
                let missing = |_| SandboxError::MissingSource {
                    path: source.to_path_buf(),
                };
                let opened = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(parent)
                    .map_err(missing)?;
                let mut fd = OwnedFd::from(opened);
                if fd.as_raw_fd() <= 2 {
                    // Init puts its own stdio on 0-2 before it mounts. (`try_clone`
                    // duplicates with F_DUPFD_CLOEXEC from 3 up.)
                    fd = fd.try_clone().map_err(missing)?;
                }
                let raw = fd.as_raw_fd();
                let held = HeldDir {
                    fd,
                    number: raw,
                    path: cstring("bind source", parent.as_os_str())?,
                    op: self.ops.len(),
                };
                self.held.insert(parent.to_path_buf(), held);
                raw
            }
        })
    }

    /// The target directory of deferred binds made, and their source directory held;
    /// `user_namespace` says whether the sandbox has one of its own.
    fn deferred(
        &mut self,
        binds: &DeferredBinds,
        user_namespace: bool,
    ) -> Result<DeferredPlan, SandboxError> {
        check_absolute("deferred bind source", &binds.source_dir)?;
        check_absolute("deferred bind target", &binds.target_dir)?;
        self.dir(&binds.target_dir, 0o755)?;
        let fd = self.hold(&binds.source_dir, &binds.source_dir)?;
        let mut target_prefix = self.host(&binds.target_dir)?.into_bytes();
        target_prefix.push(b'/');
        let mut inner_prefix = binds.target_dir.as_os_str().as_bytes().to_vec();
        inner_prefix.push(b'/');
        static BY_PATH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let by_path = *BY_PATH.get_or_init(|| {
            std::env::var_os("ARCA_SANDBOX_DEFERRED").is_some_and(|value| value == "by-path")
        });
        // Whether the kernel lets mounts be copied out of a detached copy: tried once per
        // process and kind of sandbox, in a throwaway child.
        static COPIES: [std::sync::OnceLock<bool>; 2] =
            [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
        let copies = !by_path
            && *COPIES[usize::from(user_namespace)]
                .get_or_init(|| crate::child::tree_copies_work(user_namespace));
        Ok(DeferredPlan {
            source_prefix: format!("/proc/self/fd/{fd}/").into_bytes(),
            source_dir: cstring("deferred bind source", binds.source_dir.as_os_str())?,
            inner_prefix,
            from_tree: copies,
            target_prefix,
        })
    }

    /// `mkdir -p` of an inside path: every missing ancestor (0755), then the path.
    fn dir(&mut self, inside: &Path, mode: u32) -> Result<(), SandboxError> {
        self.parents(inside)?;
        if self.dirs.insert(inside.to_path_buf()) {
            let path = self.host(inside)?;
            self.push(
                Op::Mkdir { path, mode },
                format!("creating directory {}", inside.display()),
            );
        }
        Ok(())
    }

    fn parents(&mut self, inside: &Path) -> Result<(), SandboxError> {
        if let Some(parent) = inside.parent() {
            if !self.dirs.contains(parent) {
                self.dir(parent, 0o755)?;
            }
        }
        Ok(())
    }

    fn dev(&mut self, kvm: bool) -> Result<(), SandboxError> {
        self.dir(Path::new("/dev"), 0o755)?;
        let mut devices: Vec<&str> = DEVICES.to_vec();
        if kvm && Path::new("/dev/kvm").exists() {
            devices.push("kvm");
        }
        for device in devices {
            let inside = PathBuf::from("/dev").join(device);
            let target = self.host(&inside)?;
            self.push(
                Op::Touch {
                    path: target.clone(),
                },
                format!("creating {}", inside.display()),
            );
            self.push(
                Op::Mount {
                    source: Some(cstring("device", inside.as_os_str())?),
                    target,
                    fstype: None,
                    flags: MsFlags::MS_BIND,
                    data: None,
                },
                format!("bind-mounting {}", inside.display()),
            );
        }
        self.dir(Path::new("/dev/pts"), 0o755)?;
        self.push(
            Op::Mount {
                source: Some(c"devpts".into()),
                target: self.host(Path::new("/dev/pts"))?,
                fstype: Some(c"devpts".into()),
                flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                data: Some(c"newinstance,ptmxmode=0666,mode=0620".into()),
            },
            "mounting a private devpts on /dev/pts".into(),
        );
        self.push(
            Op::ChmodIgnoringErrors {
                path: self.host(Path::new("/dev/pts/ptmx"))?,
                mode: 0o666,
            },
            "making /dev/pts/ptmx usable".into(),
        );
        self.dir(Path::new("/dev/shm"), 0o1777)?;
        self.push(
            Op::Mount {
                source: Some(c"shm".into()),
                target: self.host(Path::new("/dev/shm"))?,
                fstype: Some(c"tmpfs".into()),
                flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                data: Some(tmpfs_options(0o1777, self.tmpfs_size)?),
            },
            "mounting a tmpfs on /dev/shm".into(),
        );
        for (link, target) in [
            ("ptmx", "/dev/pts/ptmx"),
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            let inside = PathBuf::from("/dev").join(link);
            self.push(
                Op::Symlink {
                    target: cstring("symlink", OsStr::new(target))?,
                    link: self.host(&inside)?,
                },
                format!("linking {} to {target}", inside.display()),
            );
        }
        Ok(())
    }

    fn mount(&mut self, mount: &Mount) -> Result<(), SandboxError> {
        let inside = mount.target();
        check_absolute("mount target", inside)?;
        if inside == Path::new("/") {
            return Err(invalid(
                "mount target",
                "/",
                "the root itself cannot be replaced",
            ));
        }
        match mount {
            Mount::Bind {
                source,
                target,
                writable,
                optional,
            } => {
                check_absolute("bind source", source)?;
                // A symlink is recreated, not followed (as Nix does): a store path that is
                // a link to `/` must not bind the host's root.
                if let Ok(link) = std::fs::read_link(source) {
                    self.parents(target)?;
                    let path = self.host(target)?;
                    self.push(
                        Op::Symlink {
                            target: cstring("symlink target", link.as_os_str())?,
                            link: path,
                        },
                        format!(
                            "linking {} to {} (as {} is)",
                            target.display(),
                            link.display(),
                            source.display()
                        ),
                    );
                    return Ok(());
                }
                let (is_dir, locked) = match (stat(source.as_path()), statvfs(source.as_path())) {
                    (Ok(st), Ok(vfs)) => (
                        SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
                            == SFlag::S_IFDIR,
                        locked_flags(vfs.flags()),
                    ),
                    _ if *optional => return Ok(()),
                    _ => {
                        return Err(SandboxError::MissingSource {
                            path: source.clone(),
                        })
                    }
                };
                if is_dir {
                    self.dir(target, 0o755)?;
                } else {
                    self.parents(target)?;
                    let path = self.host(target)?;
                    self.push(Op::Touch { path }, format!("creating {}", target.display()));
                }
                let source_c = self.reachable(source)?;
                let target_c = self.host(target)?;
                let what = format!("bind-mounting {} on {}", source.display(), target.display());
                self.push(
                    Op::Mount {
                        source: Some(source_c),
                        target: target_c.clone(),
                        fstype: None,
                        // A read-only bind takes no submounts along: the read-only remount
                        // below only reaches the top mount.
                        flags: if *writable {
                            MsFlags::MS_BIND | MsFlags::MS_REC
                        } else {
                            MsFlags::MS_BIND
                        },
                        data: None,
                    },
                    what.clone(),
                );
                // A bind mount takes its flags from the source mount; a remount sets
                // ours. Flags the kernel locks in a user namespace (nosuid, nodev,
                // noexec, atime) must be repeated or the remount is refused.
                let mut flags = MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | locked;
                if !writable {
                    flags |= MsFlags::MS_RDONLY;
                }
                self.push(
                    Op::Mount {
                        source: None,
                        target: target_c,
                        fstype: None,
                        flags,
                        data: None,
                    },
                    format!(
                        "{what} (remounting {})",
                        if *writable { "nosuid" } else { "read-only" }
                    ),
                );
            }
            Mount::Tmpfs { target, mode, size } => {
                self.dir(target, 0o755)?;
                let data = tmpfs_options(*mode, size.unwrap_or(self.tmpfs_size))?;
                let path = self.host(target)?;
                self.push(
                    Op::Mount {
                        source: Some(c"tmpfs".into()),
                        target: path,
                        fstype: Some(c"tmpfs".into()),
                        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        data: Some(data),
                    },
                    format!("mounting a tmpfs on {}", target.display()),
                );
            }
            Mount::Dir { target, mode } => {
                self.parents(target)?;
                self.dirs.insert(target.clone());
                let path = self.host(target)?;
                self.push(
                    Op::Mkdir {
                        path,
                        mode: *mode & 0o7777,
                    },
                    format!("creating directory {}", target.display()),
                );
            }
            Mount::File {
                target,
                contents,
                mode,
            } => {
                self.parents(target)?;
                let path = self.host(target)?;
                self.push(
                    Op::WriteFile {
                        path,
                        contents: contents.clone(),
                        mode: *mode & 0o7777,
                    },
                    format!("writing {}", target.display()),
                );
            }
            Mount::Symlink { link, target } => {
                self.parents(link)?;
                let path = self.host(link)?;
                self.push(
                    Op::Symlink {
                        target: cstring("symlink target", target.as_os_str())?,
                        link: path,
                    },
                    format!("linking {} to {}", link.display(), target.display()),
                );
            }
        }
        Ok(())
    }
}

/// A tmpfs holds at most one file (or directory, or link) per this many bytes of its size:
/// the kernel's default ratio (half the RAM pages for half the RAM). Without a limit
/// empty files, which take kernel memory but no pages, would escape the size limit.
const TMPFS_BYTES_PER_INODE: u64 = 4096;

/// `mode=…,size=…,nr_inodes=…` of a tmpfs.
fn tmpfs_options(mode: u32, size: TmpfsSize) -> Result<CString, SandboxError> {
    let bytes = match size {
        // The kernel reads `size=0` and `nr_inodes=0` as "no limit".
        TmpfsSize::Bytes(0) => {
            return Err(invalid("tmpfs size", "0", "must be at least one byte"));
        }
        TmpfsSize::Bytes(bytes) => bytes,
        TmpfsSize::PercentOfRam(percent) if !(1..=100).contains(&percent) => {
            return Err(invalid(
                "tmpfs size",
                &format!("{percent}%"),
                "must be from 1% to 100% of RAM",
            ));
        }
        // What the kernel's `size=N%` computes, in bytes so that the file count can follow.
        TmpfsSize::PercentOfRam(percent) => {
            let ram = nix::sys::sysinfo::sysinfo()
                .map_err(|errno| SandboxError::Host {
                    context: "reading the host's RAM size (sysinfo)".into(),
                    source: errno.into(),
                })?
                .ram_total();
            (u128::from(ram) * u128::from(percent) / 100).max(1) as u64
        }
    };
    let inodes = bytes.div_ceil(TMPFS_BYTES_PER_INODE);
    let options = format!("mode={:o},size={bytes},nr_inodes={inodes}", mode & 0o7777);
    cstring("tmpfs options", OsStr::new(&options))
}

/// Mount options of the root tmpfs: room for what the layout writes in it and little
/// more. The program cannot write there (the root is sealed read-only before `execve`),
/// so only the layout needs room: one inode per entry it makes and the pages of file
/// contents and long symlinks, counted in 64 KiB pages (the largest common page size, so
/// that no page size undercounts), plus 1 MiB and 64 inodes to spare. Entries made inside
/// other mounts (a writable bind, a tmpfs) are counted too, which only adds room. With
/// `deferred`, room for [`DEFERRED_MAX`] more entries, symlinks with 4 KiB targets at most.
fn root_tmpfs_options(ops: &[Op], deferred: bool) -> CString {
    const PAGE: u64 = 64 * 1024;
    let (mut pages, mut inodes) = (16u64, 1 + 64u64);
    if deferred {
        inodes += DEFERRED_MAX as u64;
        pages += (DEFERRED_MAX as u64 * 4096).div_ceil(PAGE);
    }
    for op in ops {
        match op {
            Op::Mkdir { .. } | Op::Touch { .. } => inodes += 1,
            Op::WriteFile { contents, .. } => {
                inodes += 1;
                pages += (contents.len() as u64).div_ceil(PAGE);
            }
            Op::Symlink { .. } => {
                inodes += 1;
                pages += 1;
            }
            Op::Mount { .. } | Op::ChmodIgnoringErrors { .. } => {}
        }
    }
    let options = format!("mode=0755,size={},nr_inodes={inodes}", pages * PAGE);
    CString::new(options).expect("mount options built from numbers hold no NUL byte")
}

/// The per-mount flags a user namespace locks on a bind of a mount with these flags.
pub(crate) fn locked_flags(flags: FsFlags) -> MsFlags {
    let mut locked = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if flags.contains(fs) {
            locked |= ms;
        }
    }
    locked
}

fn check_absolute(field: &'static str, path: &Path) -> Result<(), SandboxError> {
    // Byte by byte: `Path::components` hides a `.` or an empty component.
    let bytes = path.as_os_str().as_bytes();
    let normal = bytes.first() == Some(&b'/')
        && (bytes.len() == 1
            || bytes[1..]
                .split(|&b| b == b'/')
                .all(|part| !part.is_empty() && part != b"." && part != b".."));
    if normal {
        Ok(())
    } else {
        Err(invalid(
            field,
            &path.to_string_lossy(),
            "must be an absolute path without '.' or '..'",
        ))
    }
}

fn cstring(field: &'static str, value: &OsStr) -> Result<CString, SandboxError> {
    CString::new(value.as_bytes())
        .map_err(|_| invalid(field, &value.to_string_lossy(), "contains a NUL byte"))
}

fn invalid(field: &'static str, value: &str, reason: &'static str) -> SandboxError {
    SandboxError::InvalidSpec {
        field,
        value: value.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tmpfs_size_is_half_of_ram_with_one_inode_per_4_kib() {
        let ram = nix::sys::sysinfo::sysinfo()
            .expect("sysinfo never fails")
            .ram_total();
        let options = tmpfs_options(0o1777, TmpfsSize::default()).expect("valid size");
        assert_eq!(
            options.to_str(),
            Ok(format!(
                "mode=1777,size={},nr_inodes={}",
                ram / 2,
                (ram / 2).div_ceil(4096)
            )
            .as_str())
        );
    }

    #[test]
    fn every_tmpfs_of_the_default_spec_is_limited() {
        let mut spec = SandboxSpec::new("/bin/sh", ["sh"]);
        spec.limits.tmpfs_size = TmpfsSize::Bytes(1 << 20);
        let plan = Plan::new(&spec, Path::new("/staging"), true).expect("a valid spec");
        let tmpfs: Vec<(&str, &str)> = plan
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Mount {
                    target,
                    fstype: Some(fstype),
                    data: Some(data),
                    ..
                } if fstype.as_c_str() == c"tmpfs" => {
                    Some((target.to_str().ok()?, data.to_str().ok()?))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            tmpfs,
            [
                ("/staging/dev/shm", "mode=1777,size=1048576,nr_inodes=256"),
                ("/staging/tmp", "mode=1777,size=1048576,nr_inodes=256"),
            ]
        );
        // Three small files and the /dev links: the 1 MiB spare plus a page each.
        let root = plan.root_options.to_str().expect("ASCII options");
        assert!(root.starts_with("mode=0755,size="), "{root}");
        let size: u64 = root
            .split(',')
            .find_map(|option| option.strip_prefix("size="))
            .and_then(|size| size.parse().ok())
            .expect("a size");
        assert!(size <= 2 << 20, "{root}");
    }
}
