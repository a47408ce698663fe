//! Limits enforced by the supervisor (wall clock, silence, output size) and how output
//! and exit status reach the caller.

mod common;

use std::time::Duration;

use arca_sandbox::{run, CgroupMode, Outcome, SandboxSpec};
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
