//! Parent-side system calls the `nix` crate does not wrap.
#![allow(unsafe_code)]

use std::time::Duration;

use nix::errno::Errno;

use crate::outcome::Usage;

/// `wait4`: reaps `pid` and returns the resource use of it and of every descendant it
/// reaped (for the keeper: init, which reaped the rest of the sandbox).
pub(crate) fn wait_with_usage(pid: i32) -> Result<Usage, Errno> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child, writing into the status and rusage we own.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        if Errno::last() != Errno::EINTR {
            return Err(Errno::last());
        }
    }
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    Ok(Usage {
        user_time: time(usage.ru_utime),
        system_time: time(usage.ru_stime),
        max_rss_bytes: (usage.ru_maxrss as u64) * 1024,
        cgroup: None,
    })
}
