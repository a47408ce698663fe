//! The seccomp filter Nix installs in its builds, compiled with `seccompiler`:
//!
//! - `chmod`, `fchmod`, `fchmodat` (and `fchmodat2`) with `S_ISUID` or `S_ISGID` in the
//!   mode fail with `EPERM`: no setuid/setgid file can be made;
//! - `setxattr`, `lsetxattr`, `fsetxattr` (and `setxattrat`) fail with `ENOTSUP`:
//!   extended attributes and ACLs cannot be represented in a NAR. Nix answers `ENOTSUP`
//!   rather than `EPERM` so that tools such as `cp -a` treat it as a file system without
//!   xattrs and go on.
//!
//! Everything else is allowed. The x32 ABI shares the x86-64 audit arch but sets bit 30 of
//! the syscall number, so each rule is repeated for the x32 number. System calls of
//! another architecture (i386 `int 0x80`) kill the process: `seccompiler` checks the arch
//! first, which fails closed.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The two filters (one per errno); both are installed.
pub(crate) fn filters() -> Result<Vec<BpfProgram>, seccompiler::Error> {
    let arch = target_arch();
    let mode_has_suid = |arg: u8| -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        [libc::S_ISUID, libc::S_ISGID]
            .into_iter()
            .map(|bit| {
                let bit = u64::from(bit);
                SeccompRule::new(vec![SeccompCondition::new(
                    arg,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(bit),
                    bit,
                )?])
            })
            .collect()
    };

    let mut chmod_rules = BTreeMap::new();
    for (nr, mode_arg) in chmod_syscalls() {
        for nr in abi_variants(nr) {
            chmod_rules.insert(nr, mode_has_suid(mode_arg)?);
        }
    }
    let mut xattr_rules = BTreeMap::new();
    for nr in xattr_syscalls() {
        for nr in abi_variants(nr) {
            xattr_rules.insert(nr, Vec::new());
        }
    }
    let chmod = SeccompFilter::new(
        chmod_rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let xattr = SeccompFilter::new(
        xattr_rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOTSUP as u32),
        arch,
    )?;
    Ok(vec![chmod.try_into()?, xattr.try_into()?])
}

/// (syscall number, index of the mode argument).
fn chmod_syscalls() -> Vec<(i64, u8)> {
    let mut calls = vec![(libc::SYS_fchmod, 1), (libc::SYS_fchmodat, 2)];
    #[cfg(target_arch = "x86_64")]
    calls.push((libc::SYS_chmod, 1));
    // fchmodat2 (Linux 6.6) has the same number on every architecture.
    calls.push((452, 2));
    calls
}

fn xattr_syscalls() -> Vec<i64> {
    // setxattrat (Linux 6.13) has the same number on every architecture.
    vec![
        libc::SYS_setxattr,
        libc::SYS_lsetxattr,
        libc::SYS_fsetxattr,
        463,
    ]
}

#[cfg(target_arch = "x86_64")]
fn abi_variants(nr: i64) -> [i64; 2] {
    const X32_SYSCALL_BIT: i64 = 0x4000_0000;
    [nr, nr | X32_SYSCALL_BIT]
}

#[cfg(not(target_arch = "x86_64"))]
fn abi_variants(nr: i64) -> [i64; 1] {
    [nr]
}

#[cfg(target_arch = "x86_64")]
fn target_arch() -> TargetArch {
    TargetArch::x86_64
}

#[cfg(target_arch = "aarch64")]
fn target_arch() -> TargetArch {
    TargetArch::aarch64
}

#[cfg(target_arch = "riscv64")]
fn target_arch() -> TargetArch {
    TargetArch::riscv64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_this_architecture() {
        let filters = filters().expect("the fixed rule set is valid");
        assert_eq!(filters.len(), 2);
        assert!(filters.iter().all(|f| !f.is_empty()));
    }
}
