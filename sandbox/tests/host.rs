//! The unsandboxed runner (`sandbox = false`): output, environment, identity, limits,
//! and nothing of the process group left running.

use std::time::{Duration, Instant};

use arca_sandbox::{run_on_host, HostSpec, Outcome};

fn sh(script: &str) -> HostSpec {
    let mut spec = HostSpec::new("/bin/sh", ["sh", "-c", script]);
    spec.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    spec
}

fn run(spec: &HostSpec) -> (Outcome, String) {
    let mut output = Vec::new();
    let report = run_on_host(spec, &mut output).expect("the run");
    (report.outcome, String::from_utf8(output).expect("utf-8"))
}

#[test]
fn output_is_merged_and_the_environment_is_exactly_the_given_one() {
    let mut spec = sh("echo out; echo err >&2; echo \"FOO=$FOO HOME=${HOME-unset}\"; pwd; exit 3");
    spec.env.push(("FOO".into(), "bar".into()));
    let dir = tempfile::tempdir().unwrap();
    spec.cwd = dir.path().to_path_buf();
    let (outcome, output) = run(&spec);
    assert_eq!(outcome, Outcome::Exited(3));
    let expected = format!("out\nerr\nFOO=bar HOME=unset\n{}\n", dir.path().display());
    assert_eq!(output, expected);
}

#[test]
fn umask_is_the_specs() {
    let mut spec = sh("umask");
    spec.umask = 0o027;
    assert_eq!(run(&spec), (Outcome::Exited(0), "0027\n".into()));
}

#[test]
fn a_relative_program_is_refused() {
    let spec = HostSpec::new("sh", ["sh"]);
    let error = run_on_host(&spec, &mut Vec::new()).unwrap_err();
    assert!(error.to_string().contains("absolute"), "{error}");
}

#[test]
fn a_missing_program_is_an_error_naming_it() {
    let spec = HostSpec::new("/nonexistent/builder", ["builder"]);
    let error = run_on_host(&spec, &mut Vec::new()).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/builder"),
        "{error}"
    );
}

#[test]
fn what_the_program_leaves_in_its_group_is_killed_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("late");
    // The background job holds the output pipe open and would write the marker later.
    let spec = sh(&format!(
        "(sleep 1; touch {}) & echo started",
        marker.display()
    ));
    let start = Instant::now();
    let (outcome, output) = run(&spec);
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(output, "started\n");
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!marker.exists(), "a process of the build outlived it");
}

#[test]
fn the_timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("late");
    let mut spec = sh(&format!(
        "(sleep 2; touch {}) & while true; do echo tick; sleep 0.1; done",
        marker.display()
    ));
    spec.limits.timeout = Some(Duration::from_millis(500));
    let start = Instant::now();
    let (outcome, _) = run(&spec);
    assert_eq!(outcome, Outcome::TimedOut(Duration::from_millis(500)));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !marker.exists(),
        "a process of the build outlived the timeout"
    );
}

#[test]
fn silence_and_output_limits_are_enforced() {
    let mut spec = sh("echo hi; sleep 5");
    spec.limits.silence_timeout = Some(Duration::from_millis(300));
    let (outcome, output) = run(&spec);
    assert_eq!(outcome, Outcome::Silent(Duration::from_millis(300)));
    assert_eq!(output, "hi\n");

    let mut spec = sh("while true; do echo 0123456789; done");
    spec.limits.max_output_bytes = Some(100);
    let (outcome, output) = run(&spec);
    assert_eq!(outcome, Outcome::OutputLimit(100));
    assert_eq!(output.len(), 100);
}

#[test]
fn root_can_run_it_as_another_user_without_its_groups() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut spec = sh("id -u; id -g; id -G");
    spec.user = Some((65534, 65534));
    assert_eq!(
        run(&spec),
        (Outcome::Exited(0), "65534\n65534\n65534\n".into())
    );
}

/// A uid no account uses, for processes to kill.
const STRAY_UID: u32 = 872_000_123;

#[test]
fn kill_user_ends_every_process_of_the_uid_and_refuses_root_and_the_caller() {
    assert!(arca_sandbox::kill_user(0).is_err());
    assert!(arca_sandbox::kill_user(nix::unistd::geteuid().as_raw()).is_err());
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED kill_user test: needs root to start processes as another uid");
        return;
    }
    // A daemonised process of that uid, out of any process group of ours.
    let mut spec = sh("setsid sleep 1000 > /dev/null 2>&1 < /dev/null & echo started");
    spec.user = Some((STRAY_UID, STRAY_UID));
    let (outcome, _) = run(&spec);
    assert!(outcome.success());
    let running = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| {
                let status = std::fs::read_to_string(entry.ok()?.path().join("status")).ok()?;
                // A killed process may stay a zombie until reaped: it no longer runs.
                let state = status.lines().find(|l| l.starts_with("State:"))?;
                if state.contains('Z') {
                    return None;
                }
                let uid_line = status.lines().find(|l| l.starts_with("Uid:"))?;
                uid_line.split_whitespace().nth(1)?.parse::<u32>().ok()
            })
            .filter(|uid| *uid == STRAY_UID)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while running() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(running(), 1, "the stray process runs");
    arca_sandbox::kill_user(STRAY_UID).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while running() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(running(), 0, "kill_user left a process of the uid running");
}
