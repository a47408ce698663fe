//! Limits enforced by the supervisor (wall clock, silence, output size), the tmpfs sizes
//! enforced by the kernel, and how output and exit status reach the caller.

mod common;

use std::time::Duration;

use arca_sandbox::{run, CgroupMode, Mount, Outcome, SandboxSpec, TmpfsSize, UserNamespace};
use common::{busybox, require_root, run_ok, sh};

#[test]
fn output_over_the_limit_kills_and_passes_exactly_the_limit() {
    if !require_root() || busybox().is_none() {
        return;
    }
    check_output_limit(sh("yes 0123456789abcdef"));
}

#[test]
fn output_over_the_limit_kills_and_passes_exactly_the_limit_without_cgroup() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let mut spec = sh("yes 0123456789abcdef");
    spec.cgroup = CgroupMode::Off;
    check_output_limit(spec);
}

fn check_output_limit(mut spec: SandboxSpec) {
    spec.limits.max_output_bytes = Some(10_000);
    let mut output = Vec::new();
    let report = run(&spec, &mut output).unwrap();
    assert_eq!(report.outcome, Outcome::OutputLimit(10_000));
    assert_eq!(output.len(), 10_000);
    assert!(output.starts_with(b"0123456789abcdef\n0123456789abcdef\n"));
    assert!(report.output_bytes > 10_000, "{report:?}");
}

#[test]
fn output_at_the_limit_is_not_killed() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let mut spec = sh("printf 0123456789");
    spec.limits.max_output_bytes = Some(10);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0));
    assert_eq!(out, "0123456789");
}

#[test]
fn silence_timeout_kills_a_quiet_program() {
    if !require_root() || busybox().is_none() {
        return;
    }
    check_silence_timeout(sh("echo start; sleep 30; echo never"));
}

#[test]
fn silence_timeout_kills_a_quiet_program_without_cgroup() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let mut spec = sh("echo start; sleep 30; echo never");
    spec.cgroup = CgroupMode::Off;
    check_silence_timeout(spec);
}

fn check_silence_timeout(mut spec: SandboxSpec) {
    spec.limits.silence_timeout = Some(Duration::from_millis(300));
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Silent(Duration::from_millis(300)));
    assert_eq!(out, "start\n");
    assert!(
        report.elapsed >= Duration::from_millis(300),
        "{:?}",
        report.elapsed
    );
    assert!(
        report.elapsed < Duration::from_secs(2),
        "{:?}",
        report.elapsed
    );
}

/// Output resets the silence clock: a program printing more often than the limit runs
/// to its end.
#[test]
fn regular_output_keeps_silence_timeout_away() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let mut spec = sh("for i in 1 2 3 4 5 6; do echo $i; sleep 0.1; done; exit 3");
    spec.limits.silence_timeout = Some(Duration::from_millis(400));
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(3));
    assert_eq!(out, "1\n2\n3\n4\n5\n6\n");
}

#[test]
fn many_lines_all_arrive_and_exit_status_is_kept() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let (report, out) = run_ok(&sh("seq 1 100000; echo last line >&2; exit 1"));
    assert_eq!(report.outcome, Outcome::Exited(1));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 100_001);
    assert!(lines[..100_000]
        .iter()
        .zip(1..)
        .all(|(line, n)| *line == n.to_string()));
    assert_eq!(lines[100_000], "last line");
    assert_eq!(report.output_bytes, out.len() as u64);
}

#[test]
fn timeout_kills_program_and_its_background_processes() {
    if !require_root() || busybox().is_none() {
        return;
    }
    check_timeout(CgroupMode::Auto);
}

#[test]
fn timeout_kills_program_and_its_background_processes_without_cgroup() {
    if !require_root() || busybox().is_none() {
        return;
    }
    check_timeout(CgroupMode::Off);
}

fn check_timeout(cgroup: CgroupMode) {
    let marker = common::unique("arca-timeout-");
    let mut spec = sh(r#"
        for i in 1 2 3 4 5; do sh -c 'echo > /tmp/s.$$; while :; do sleep 1; done' "$MARKER" & done
        n=0
        while [ "$(ls /tmp | grep -c '^s\.')" -lt 5 ] && [ $n -lt 500 ]; do sleep 0.01; n=$((n + 1)); done
        echo ready
        while :; do :; done"#)
    .env("MARKER", &marker);
    spec.cgroup = cgroup;
    spec.limits.timeout = Some(Duration::from_millis(500));
    let (report, out) = run_ok(&spec);
    assert_eq!(
        report.outcome,
        Outcome::TimedOut(Duration::from_millis(500)),
        "{out}"
    );
    assert_eq!(out, "ready\n");
    assert!(
        report.elapsed < Duration::from_secs(2),
        "{:?}",
        report.elapsed
    );
    common::assert_no_survivors(&marker);
}

/// The report accounts for the program's CPU time and memory (from init's resource use,
/// which covers every process it reaped), with and without a cgroup.
#[test]
fn usage_accounts_for_the_programs_cpu_time_and_memory() {
    if !require_root() || busybox().is_none() {
        return;
    }
    for cgroup in [CgroupMode::Auto, CgroupMode::Off] {
        let mut spec = sh("i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; (i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done)");
        spec.cgroup = cgroup;
        let (report, out) = run_ok(&spec);
        assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
        let cpu = report.usage.user_time + report.usage.system_time;
        assert!(
            cpu >= Duration::from_millis(20),
            "{cgroup:?}: {:?}",
            report.usage
        );
        assert!(
            report.usage.max_rss_bytes > 100 * 1024,
            "{cgroup:?}: {:?}",
            report.usage
        );
    }
}

// ---------------------------------------------------------------------------------------
// Tmpfs sizes
// ---------------------------------------------------------------------------------------

const MIB: u64 = 1024 * 1024;

/// Writes half a MiB, then 2 MiB more, to each directory: with a 1 MiB limit the first
/// write fits (so the probe really writes) and the second fails with ENOSPC.
const FILL_TMPFS: &str = r#"
    for dir in $DIRS; do
        dd if=/dev/zero of=$dir/half bs=64k count=8 2>/dev/null; echo "$dir half status $?"
        dd if=/dev/zero of=$dir/big bs=64k count=32; echo "$dir big status $?"
        echo "$dir holds $(cat $dir/half $dir/big | wc -c)"
    done"#;

#[test]
fn writes_past_the_tmpfs_size_fail_with_enospc() {
    if !require_root() || busybox().is_none() {
        return;
    }
    // As root and in a user namespace (as `arca-build` runs it).
    for user_namespace in [UserNamespace::Auto, UserNamespace::Always] {
        let mut spec = sh(FILL_TMPFS).env("DIRS", "/tmp /dev/shm /build");
        spec.user_namespace = user_namespace;
        spec.limits.tmpfs_size = TmpfsSize::Bytes(MIB);
        let (report, out) = run_ok(&spec);
        assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
        for dir in ["/tmp", "/dev/shm", "/build"] {
            assert!(
                out.contains(&format!("{dir} half status 0\n")),
                "{dir}: {out}"
            );
            assert!(
                out.contains(&format!("{dir} big status 1\n")),
                "{dir}: {out}"
            );
            let held: u64 = out
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{dir} holds ")))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("{dir}: {out}"));
            assert!(held <= MIB, "{dir} holds {held} bytes: {out}");
        }
        assert_eq!(
            out.matches("No space left on device").count(),
            3,
            "{user_namespace:?}: {out}"
        );
    }
}

/// A tmpfs holds one file per 4 KiB of its size: empty files cannot escape the limit.
#[test]
fn files_past_the_tmpfs_inode_limit_fail_with_enospc() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let mut spec = sh(r#"
        for dir in /tmp /dev/shm; do
            n=0
            while [ $n -lt 1000 ] && touch $dir/f$n; do n=$((n + 1)); done
            echo "$dir files $n"
        done"#);
    spec.limits.tmpfs_size = TmpfsSize::Bytes(MIB);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    for dir in ["/tmp", "/dev/shm"] {
        let files: u32 = out
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{dir} files ")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{dir}: {out}"));
        // 256 inodes, the tmpfs's own root directory among them.
        assert!((200..=256).contains(&files), "{dir}: {files} files: {out}");
    }
    assert!(out.contains("No space left on device"), "{out}");
}

/// A `Mount::Tmpfs` with its own size keeps it, larger or smaller than the default.
#[test]
fn tmpfs_mount_with_its_own_size_overrides_the_limit() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let mut spec = sh(FILL_TMPFS)
        .env("DIRS", "/large /small")
        .mount(Mount::Tmpfs {
            target: "/large".into(),
            mode: 0o777,
            size: Some(TmpfsSize::Bytes(4 * MIB)),
        })
        .mount(Mount::Tmpfs {
            target: "/small".into(),
            mode: 0o777,
            size: Some(TmpfsSize::Bytes(MIB)),
        });
    spec.limits.tmpfs_size = TmpfsSize::Bytes(MIB / 2);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert!(out.contains("/large big status 0\n"), "{out}");
    assert!(out.contains("/large holds 2621440\n"), "{out}");
    assert!(out.contains("/small half status 0\n"), "{out}");
    assert!(out.contains("/small big status 1\n"), "{out}");
}

/// The root tmpfs is sized to what the layout writes in it: small, yet a large generated
/// file still fits.
#[test]
fn root_tmpfs_is_sized_to_the_layout() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let spec = sh("wc -c < /etc/large; grep ' / / ' /proc/self/mountinfo").mount(Mount::File {
        target: "/etc/large".into(),
        contents: vec![b'x'; 5 * MIB as usize],
        mode: 0o444,
    });
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert!(out.starts_with("5242880\n"), "{out}");
    let size_kib: u64 = out
        .split(',')
        .find_map(|option| option.strip_prefix("size="))
        .and_then(|size| size.strip_suffix('k'))
        .and_then(|size| size.parse().ok())
        .unwrap_or_else(|| panic!("no size= on the root: {out}"));
    assert!(
        (5 * 1024..16 * 1024).contains(&size_kib),
        "root size {size_kib} KiB: {out}"
    );
}

/// A size the kernel would read as "no limit" is refused before anything runs.
#[test]
fn zero_tmpfs_sizes_are_invalid() {
    if !require_root() || busybox().is_none() {
        return;
    }
    for size in [
        TmpfsSize::Bytes(0),
        TmpfsSize::PercentOfRam(0),
        TmpfsSize::PercentOfRam(101),
    ] {
        let mut spec = sh("true");
        spec.limits.tmpfs_size = size;
        let err = common::run_err(&spec);
        assert!(
            matches!(
                &err,
                arca_sandbox::SandboxError::InvalidSpec {
                    field: "tmpfs size",
                    ..
                }
            ),
            "{size:?}: {err:?}"
        );
    }
}
