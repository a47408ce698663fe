//! An optional cgroup v2 per sandbox: `cgroup.kill` ends every process at once, and
//! `cpu.stat`/`memory.peak` account for all of them, reaped or not. Made as a child of the
//! caller's own cgroup; where that is not possible (no cgroup v2, no permission, a
//! controller layout that forbids it) the sandbox runs without one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::outcome::CgroupUsage;

/// A cgroup made for one run; removed on drop.
#[derive(Debug)]
pub(crate) struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Makes a fresh cgroup below the caller's.
    pub fn create() -> io::Result<Cgroup> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = own_cgroup()?;
        let name = format!(
            "arca-sandbox-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = base.join(name);
        fs::create_dir(&path)?;
        Ok(Cgroup { path })
    }

    /// The cgroup's directory, for `clone3(CLONE_INTO_CGROUP)`.
    pub fn open_dir(&self) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&self.path)?;
        Ok(dir.into())
    }

    /// Moves a process (and so its future children) into the cgroup.
    pub fn add(&self, pid: i32) -> io::Result<()> {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }

    /// Kills every process in the cgroup (a safety net when removing it).
    fn kill(&self) {
        if fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        // Kernels before 5.14 have no cgroup.kill.
        if let Ok(procs) = fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs
                .lines()
                .filter_map(|line| line.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// CPU time and peak memory of everything that ran in the cgroup.
    pub fn usage(&self) -> CgroupUsage {
        let cpu_time = fs::read_to_string(self.path.join("cpu.stat"))
            .ok()
            .and_then(|stat| {
                stat.lines().find_map(|line| {
                    line.strip_prefix("usage_usec ")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
            })
            .map(Duration::from_micros)
            .unwrap_or_default();
        let memory_peak_bytes = fs::read_to_string(self.path.join("memory.peak"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
        CgroupUsage {
            cpu_time,
            memory_peak_bytes,
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // By now every process has been reaped; a cgroup may still read as busy for a
        // moment after its last process died.
        for _ in 0..200 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
    }
}

/// The caller's cgroup v2 directory: the `cgroup2` mount plus the `0::` line of
/// `/proc/self/cgroup`.
fn own_cgroup() -> io::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mount_point = mountinfo
        .lines()
        .find_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            (rest.split(' ').next()? == "cgroup2")
                .then(|| fields.split(' ').nth(4).map(unescape_octal))?
        })
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no cgroup2 file system is mounted")
        })?;
    let membership = fs::read_to_string("/proc/self/cgroup")?;
    let relative = membership
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "this process is in no cgroup v2")
        })?;
    Ok(Path::new(&mount_point).join(relative.trim_start_matches('/')))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_octal(r"/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape_octal(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_octal(r"/x\134"), "/x\\");
    }
}
