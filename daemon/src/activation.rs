//! systemd socket activation: the one place this crate needs `unsafe`, to take
//! ownership of the listening socket systemd passes as file descriptor 3.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `SD_LISTEN_FDS_START`.
const LISTEN_FD: RawFd = 3;

/// Takes fd 3 if it is open and a socket. Call once, and only when `LISTEN_PID` names
/// this process (the caller checks).
pub(crate) fn take_listen_fd() -> Option<OwnedFd> {
    let stat = nix::sys::stat::fstat(LISTEN_FD).ok()?;
    if stat.st_mode & libc_s_ifmt() != libc_s_ifsock() {
        return None;
    }
    // SAFETY: systemd's socket-activation protocol hands fd 3 to this process (checked
    // by the caller through LISTEN_PID/LISTEN_FDS), it is open (fstat succeeded) and is a
    // socket, and nothing else in the process owns it: this is its only owner.
    Some(unsafe { OwnedFd::from_raw_fd(LISTEN_FD) })
}

const fn libc_s_ifmt() -> u32 {
    0o170000
}

const fn libc_s_ifsock() -> u32 {
    0o140000
}
