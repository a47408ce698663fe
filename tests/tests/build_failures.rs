//! Failing builds under `arca build`: a non-zero exit, a missing output, `--timeout`,
//! `--max-silent-time`, `--max-log-size`, `disallowedReferences` and `allowedReferences`.
//! Each must exit 1 with a typed message in Nix's words, register nothing for the failed
//! derivation, leave no staging entry, no build directory and no process behind
//! (builders start `sleep <unique number>` in the background, looked for in `/proc`
//! afterwards). Also `--keep-failed`, `arca log` (the whole output even when a builder
//! writes fast then fails, Nix #10289, and the failure message after it, Nix #13509),
//! `--check` and `--keep-going`.
//!
//! Derivations are added with `arca derivation add` from JSON, so real Nix is not needed;
//! a static busybox is (skipped loudly without it, an error in CI).

use std::process::Stdio;
use std::time::{Duration, Instant};

use arca_tests::build::{assert_no_process, processes_with_args, Scratch};
use arca_tests::store::{assert_arca_verify_clean, lines};

/// The stored log of `path` (`arca log`), which must exist.
fn stored_log(scratch: &Scratch, path: &str) -> String {
    String::from_utf8(scratch.arca_ok(&["log", path])).expect("the log is UTF-8")
}

#[test]
fn failing_builder_reports_its_exit_code_and_last_log_lines() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("failing_builder_reports_its_exit_code_and_last_log_lines")
    else {
        return;
    };
    let drv = scratch.add_derivation(
        &bb,
        "exit-three",
        "for i in $(seq 1 20); do echo line $i; done; sleep 4001 & exit 3",
        &[],
        &[],
    );
    let out = scratch.arca_output(&drv);
    let stderr = scratch.arca_build_fails(&[&drv]);
    assert_no_process("4001", "after a builder exited 3");
    assert!(
        stderr.contains(&format!("builder for '{drv}' failed with exit code 3")),
        "{stderr}"
    );
    // Nix's `log-lines` default: the last 10 lines, quoted.
    let quoted: Vec<&str> = stderr.lines().filter(|l| l.starts_with("> ")).collect();
    let expected: Vec<String> = (11..=20).map(|i| format!("> line {i}")).collect();
    assert_eq!(quoted, expected, "{stderr}");
    assert!(stderr.contains("last 10 log lines:"), "{stderr}");
    scratch.assert_nothing_left(&drv, &out);
    assert_arca_verify_clean(&scratch.arca_root(), "after a failed build");
}

#[test]
fn missing_output_fails_and_the_log_records_why() {
    let Some((scratch, bb)) = Scratch::with_busybox("missing_output_fails_and_the_log_records_why")
    else {
        return;
    };
    let drv = scratch.add_derivation(
        &bb,
        "no-output",
        "echo writing nothing; sleep 4002 &",
        &[],
        &[],
    );
    let out = scratch.arca_output(&drv);
    let stderr = scratch.arca_build_fails(&[&drv]);
    assert_no_process("4002", "after a builder wrote no output");
    let message =
        format!("builder for '{drv}' failed to produce output path for output 'out' at '{out}'");
    assert!(stderr.contains(&message), "{stderr}");
    scratch.assert_nothing_left(&drv, &out);
    // The failure found after the build is in the stored log too (Nix #13509).
    let log = stored_log(&scratch, &drv);
    assert!(log.starts_with("writing nothing\n"), "{log}");
    assert!(log.contains(&message), "the log lacks the failure: {log}");
}

#[test]
fn timeout_kills_the_builder_and_all_its_processes() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("timeout_kills_the_builder_and_all_its_processes")
    else {
        return;
    };
    let drv = scratch.add_derivation(
        &bb,
        "too-slow",
        "echo started; sleep 4003 & sleep 4004",
        &[],
        &[],
    );
    let out = scratch.arca_output(&drv);
    let start = Instant::now();
    let child = scratch
        .arca_cmd()
        .args(["build", "--timeout", "1", &drv])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Control: the scan of /proc does see the builder's processes while they run.
    let mut seen = Vec::new();
    while seen.is_empty() && start.elapsed() < Duration::from_secs(5) {
        seen = processes_with_args(&["sleep", "4003"]);
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    let elapsed = start.elapsed();
    assert!(
        !seen.is_empty(),
        "the background sleep was never seen in /proc"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_no_process("4003", "after --timeout");
    assert_no_process("4004", "after --timeout");
    assert!(
        elapsed < Duration::from_secs(8),
        "--timeout 1 took {elapsed:?}"
    );
    assert!(
        stderr.contains(&format!("builder for '{drv}' timed out after 1 seconds")),
        "{stderr}"
    );
    assert!(
        stderr.contains("> started"),
        "the log tail is quoted: {stderr}"
    );
    scratch.assert_nothing_left(&drv, &out);
}

#[test]
fn max_silent_time_kills_a_silent_builder() {
    let Some((scratch, bb)) = Scratch::with_busybox("max_silent_time_kills_a_silent_builder")
    else {
        return;
    };
    let drv = scratch.add_derivation(
        &bb,
        "silent",
        "echo started; sleep 4005 & sleep 4006",
        &[],
        &[],
    );
    let out = scratch.arca_output(&drv);
    let start = Instant::now();
    let stderr = scratch.arca_build_fails(&["--max-silent-time", "1", &drv]);
    let elapsed = start.elapsed();
    assert_no_process("4005", "after --max-silent-time");
    assert_no_process("4006", "after --max-silent-time");
    assert!(
        elapsed < Duration::from_secs(8),
        "--max-silent-time 1 took {elapsed:?}"
    );
    assert!(
        stderr.contains(&format!(
            "builder for '{drv}' timed out after 1 seconds of silence"
        )),
        "{stderr}"
    );
    scratch.assert_nothing_left(&drv, &out);
}

#[test]
fn max_log_size_kills_a_chatty_builder() {
    let Some((scratch, bb)) = Scratch::with_busybox("max_log_size_kills_a_chatty_builder") else {
        return;
    };
    // 100 KB of output (1000 lines of 100 bytes), then a long sleep.
    let drv = scratch.add_derivation(
        &bb,
        "chatty",
        "line=$(printf '%099d' 0); i=0; while [ $i -lt 1000 ]; do echo $line; i=$((i+1)); done; sleep 4007",
        &[],
        &[],
    );
    let out = scratch.arca_output(&drv);
    let start = Instant::now();
    let stderr = scratch.arca_build_fails(&["--max-log-size", "1000", &drv]);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    assert_no_process("4007", "after --max-log-size");
    assert!(
        stderr.contains(&format!(
            "builder for '{drv}' killed after more than 1000 bytes of output"
        )),
        "{stderr}"
    );
    scratch.assert_nothing_left(&drv, &out);
    let log = stored_log(&scratch, &drv);
    assert!(
        log.len() < 10_000,
        "the stored log holds {} bytes past a 1000-byte limit",
        log.len()
    );
}

/// `a` writes a file; each other derivation refers to `a`'s output (or not) under a
/// reference policy.
#[test]
fn reference_policies_reject_forbidden_references() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("reference_policies_reject_forbidden_references")
    else {
        return;
    };
    let a = scratch.add_derivation(&bb, "a", "echo a > $out", &[], &[]);
    let a_out = scratch.arca_output(&a);
    let refers = format!("echo {a_out} > $out; sleep 4008 &");
    let silent = "echo nothing > $out".to_owned();
    let cases: [(&str, &str, &str, &String, bool); 5] = [
        ("disallowed", "disallowedReferences", &a_out, &refers, false),
        ("allowed-none", "allowedReferences", "", &refers, false),
        (
            "disallowed-unused",
            "disallowedReferences",
            &a_out,
            &silent,
            true,
        ),
        ("allowed-a", "allowedReferences", &a_out, &refers, true),
        (
            "allowed-self-name",
            "allowedReferences",
            "out",
            &refers,
            false,
        ),
    ];
    for (name, variable, value, script, succeeds) in cases {
        let drv = scratch.add_derivation(&bb, name, script, &[(variable, value)], &[&a]);
        let out = scratch.arca_output(&drv);
        if succeeds {
            let printed = scratch.arca_build_ok(&[&drv]);
            assert_eq!(printed, std::slice::from_ref(&out), "{name}");
            assert!(scratch.arca_registered(&out), "{name}");
            continue;
        }
        let stderr = scratch.arca_build_fails(&[&drv]);
        assert_no_process("4008", name);
        let message =
            format!("output '{out}' is not allowed to refer to the following paths:\n  {a_out}");
        assert!(stderr.contains(&message), "{name}: {stderr}");
        scratch.assert_nothing_left(&drv, &out);
        assert!(
            stored_log(&scratch, &drv).contains(&message),
            "{name}: the log lacks the failure"
        );
    }
    assert!(scratch.arca_registered(&a_out), "the input was built");
    assert_arca_verify_clean(&scratch.arca_root(), "after reference policy failures");
}

#[test]
fn keep_failed_keeps_the_build_directory_and_prints_it() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("keep_failed_keeps_the_build_directory_and_prints_it")
    else {
        return;
    };
    let drv = scratch.add_derivation(
        &bb,
        "kept",
        "echo left behind > marker; mkdir sub; exit 1",
        &[],
        &[],
    );
    let out = scratch.arca_output(&drv);
    let stderr = scratch.arca_build_fails(&["--keep-failed", &drv]);
    let kept = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("note: keeping build directory '")
                .and_then(|rest| rest.strip_suffix('\''))
        })
        .unwrap_or_else(|| panic!("no kept build directory printed: {stderr}"));
    let kept = std::path::Path::new(kept);
    assert!(
        kept.starts_with(scratch.build_tmp()),
        "{} is not in TMPDIR {}",
        kept.display(),
        scratch.build_tmp().display()
    );
    assert_eq!(
        std::fs::read_to_string(kept.join("marker")).unwrap(),
        "left behind\n"
    );
    assert!(kept.join("sub").is_dir());
    assert!(!scratch.arca_registered(&out));
    assert!(arca_tests::store::staging_leftovers(&scratch.arca_root()).is_empty());
}

/// Nix #10289: a builder that writes 10000 lines fast and fails at once must still have
/// every line, the last one included (also without a final newline), in the stored log
/// and in the failure message; the log ends with the failure (Nix #13509).
#[test]
fn log_keeps_everything_a_fast_failing_builder_wrote() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("log_keeps_everything_a_fast_failing_builder_wrote")
    else {
        return;
    };
    let drv = scratch.add_derivation(
        &bb,
        "fast-fail",
        "seq 1 10000; echo last-line; printf no-newline; exit 1",
        &[],
        &[],
    );
    let out = scratch.arca_output(&drv);
    let stderr = scratch.arca_build_fails(&[&drv]);
    let log = stored_log(&scratch, &drv);
    let expected: String = (1..=10000).map(|i| format!("{i}\n")).collect();
    assert!(
        log.starts_with(&expected),
        "the stored log lacks some of the 10000 lines"
    );
    let rest = &log[expected.len()..];
    assert!(
        rest.starts_with("last-line\nno-newline\n"),
        "the log after line 10000: {rest:?}"
    );
    assert!(
        rest.contains(&format!("builder for '{drv}' failed with exit code 1")),
        "the log ends with the failure: {rest:?}"
    );
    scratch.assert_nothing_left(&drv, &out);
    // Nix 2.8 (`-Q`) ends its "last 10 log lines" with `> last-line`, `> no-newline`.
    let quoted: Vec<&str> = stderr.lines().filter(|l| l.starts_with("> ")).collect();
    assert_eq!(
        quoted.last().copied(),
        Some("> no-newline"),
        "the failure message quotes the last, unterminated line: {stderr}"
    );
    assert!(quoted.contains(&"> last-line"), "{stderr}");
}

#[test]
fn check_accepts_a_deterministic_build_and_rejects_a_non_deterministic_one() {
    let Some((scratch, bb)) = Scratch::with_busybox(
        "check_accepts_a_deterministic_build_and_rejects_a_non_deterministic_one",
    ) else {
        return;
    };
    let same = scratch.add_derivation(&bb, "same", "echo same > $out", &[], &[]);
    let random = scratch.add_derivation(
        &bb,
        "random",
        "mkdir $out; head -c 32 /dev/urandom | od -x > $out/noise; date +%N >> $out/noise",
        &[],
        &[],
    );
    let (same_out, random_out) = (scratch.arca_output(&same), scratch.arca_output(&random));
    scratch.arca_build_ok(&[&same, &random]);
    let before = scratch.arca_path_info(&[&same_out, &random_out]);
    let noise = std::fs::read(scratch.arca_physical(&random_out).join("noise")).unwrap();

    assert_eq!(
        scratch.arca_build_ok(&["--check", &same]),
        std::slice::from_ref(&same_out),
        "--check of a deterministic derivation succeeds"
    );
    let stderr = scratch.arca_build_fails(&["--check", &random]);
    assert!(
        stderr.contains(&format!("derivation '{random}' may not be deterministic")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("output '{random_out}' differs")),
        "{stderr}"
    );
    // Checking registers nothing and leaves the valid outputs alone.
    assert_eq!(scratch.arca_path_info(&[&same_out, &random_out]), before);
    assert_eq!(
        std::fs::read(scratch.arca_physical(&random_out).join("noise")).unwrap(),
        noise
    );
    assert!(arca_tests::store::staging_leftovers(&scratch.arca_root()).is_empty());
    assert!(std::fs::read_dir(scratch.build_tmp())
        .unwrap()
        .next()
        .is_none());
    assert_arca_verify_clean(&scratch.arca_root(), "after --check");
}

/// `fail` fails at once while `slow` (which `ok-1` and `ok-2` need) still runs; `dep`
/// needs `fail`. Without `--keep-going` the run stops (`ok-*` are never started); with
/// it, `ok-1` and `ok-2` are built and printed, `dep` is not built.
#[test]
fn keep_going_builds_what_does_not_depend_on_the_failure() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("keep_going_builds_what_does_not_depend_on_the_failure")
    else {
        return;
    };
    let fail = scratch.add_derivation(&bb, "fail", "exit 1", &[], &[]);
    let slow = scratch.add_derivation(&bb, "slow", "sleep 1; echo slow > $out", &[], &[]);
    let ok1 = scratch.add_derivation(&bb, "ok-1", "echo 1 > $out", &[], &[&slow]);
    let ok2 = scratch.add_derivation(&bb, "ok-2", "echo 2 > $out", &[], &[&slow]);
    let dep = scratch.add_derivation(&bb, "dep", "echo dep > $out", &[], &[&fail]);
    let outputs: Vec<String> = [&fail, &ok1, &ok2, &dep]
        .iter()
        .map(|d| scratch.arca_output(d))
        .collect();
    let targets = [fail.as_str(), &ok1, &ok2, &dep];

    scratch.arca_build_fails(&[&["--max-jobs", "2"][..], &targets].concat());
    assert!(
        !scratch.arca_registered(&outputs[1]) && !scratch.arca_registered(&outputs[2]),
        "without --keep-going the run should stop at the failure (test premise)"
    );

    let output =
        scratch.arca(&[&["build", "--max-jobs", "2", "--keep-going"][..], &targets].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        lines(&output.stdout),
        [outputs[1].clone(), outputs[2].clone()],
        "the outputs that were built are printed: {stderr}"
    );
    assert!(scratch.arca_registered(&outputs[1]), "{stderr}");
    assert!(scratch.arca_registered(&outputs[2]), "{stderr}");
    assert!(!scratch.arca_registered(&outputs[0]));
    assert!(
        !scratch.arca_registered(&outputs[3]),
        "dep needs the failed build"
    );
    assert!(
        stderr.contains(&format!("builder for '{fail}' failed with exit code 1")),
        "{stderr}"
    );
    assert_arca_verify_clean(&scratch.arca_root(), "after --keep-going");
}

/// Builds a derivation whose output holds `file` = "good", then corrupts that file as a
/// careless admin would (the store is read-only by mode only): the `.drv`, the output
/// and the file.
fn build_and_corrupt(scratch: &Scratch, bb: &str) -> (String, String, std::path::PathBuf) {
    let drv = scratch.add_derivation(bb, "fixme", "mkdir $out; echo good > $out/file", &[], &[]);
    let out = scratch.arca_output(&drv);
    scratch.arca_build_ok(&[&drv]);
    let file = scratch.arca_physical(&out).join("file");
    let dir = scratch.arca_physical(&out);
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&file, "bad\n").unwrap();
    (drv, out, file)
}

/// `--repair` rebuilds an output whose files no longer match the registration and swaps
/// the rebuilt tree in; a sound output is left alone.
#[test]
fn repair_restores_a_corrupted_output() {
    let Some((scratch, bb)) = Scratch::with_busybox("repair_restores_a_corrupted_output") else {
        return;
    };
    let (drv, out, file) = build_and_corrupt(&scratch, &bb);
    let verify = scratch.arca(&["store", "verify", "--check-contents"]);
    assert!(!verify.status.success(), "verify notices the corruption");

    assert_eq!(
        scratch.arca_build_ok(&["--repair", &drv]),
        std::slice::from_ref(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "good\n");
    let verify = scratch.arca(&["store", "verify", "--check-contents"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let staging = scratch.arca_physical("/nix/store/.arca-staging");
    let leftovers: Vec<_> = std::fs::read_dir(staging).unwrap().collect();
    assert!(leftovers.is_empty(), "the old tree is gone: {leftovers:?}");
}

/// `store verify --check-contents --repair` restores a corrupted built output by
/// building its deriver again in repair mode, as Nix's `verifyStore` does without a
/// substituter ("repairing outputs of …"); the store is then sound, and the verification
/// succeeds. A corrupted path without a deriver stays a problem.
#[test]
fn verify_repair_rebuilds_a_corrupted_built_output() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("verify_repair_rebuilds_a_corrupted_built_output")
    else {
        return;
    };
    let (drv, out, file) = build_and_corrupt(&scratch, &bb);

    let repair = scratch.arca(&["store", "verify", "--check-contents", "--repair", "--json"]);
    let stdout = String::from_utf8_lossy(&repair.stdout);
    let stderr = String::from_utf8_lossy(&repair.stderr);
    assert!(repair.status.success(), "repaired: {stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["kind"], "modified");
    assert_eq!(problems[0]["path"], out.as_str());
    assert_eq!(problems[0]["repaired"], true);
    assert!(
        stderr.contains(&format!("repairing outputs of '{drv}'")),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "good\n");
    let verify = scratch.arca(&["store", "verify", "--check-contents"]);
    assert!(
        verify.status.success(),
        "sound again: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The builder (an added path, no deriver) cannot be rebuilt: still a problem.
    let busybox = scratch.arca_physical(&bb).join("busybox");
    let bb_dir = scratch.arca_physical(&bb);
    std::fs::set_permissions(&bb_dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        &busybox,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut bytes = std::fs::read(&busybox).unwrap();
    bytes.push(0);
    std::fs::write(&busybox, bytes).unwrap();
    let repair = scratch.arca(&["store", "verify", "--check-contents", "--repair"]);
    let stdout = String::from_utf8_lossy(&repair.stdout);
    let stderr = String::from_utf8_lossy(&repair.stderr);
    assert_eq!(repair.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("path '{bb}' was modified!")) && !stdout.contains("repaired"),
        "{stdout}"
    );
    assert!(stderr.contains("it has no deriver"), "{stderr}");
}

/// `--sandbox-path TARGET=SOURCE` with a source inside a store path binds that file at
/// the target and brings the store path's closure along, as Nix does.
#[test]
fn sandbox_path_from_the_store_is_bound_with_its_closure() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("sandbox_path_from_the_store_is_bound_with_its_closure")
    else {
        return;
    };
    // Not an input of the derivation: it reaches the sandbox only through sandbox-paths.
    let other = scratch.add_derivation(
        &bb,
        "other-tools",
        "mkdir $out; echo tool > $out/t",
        &[],
        &[],
    );
    let other_out = scratch.arca_output(&other);
    scratch.arca_build_ok(&[&other]);
    let drv = scratch.add_derivation(
        &bb,
        "uses-sandbox-path",
        &format!("/bin/sh -c 'cat {other_out}/t' > $out"),
        &[("salt", "1")],
        &[],
    );
    let out = scratch.arca_output(&drv);
    scratch.arca_build_ok(&[
        "--sandbox-path",
        &format!("/bin/sh={bb}/busybox"),
        "--sandbox-path",
        &other_out,
        &drv,
    ]);
    assert_eq!(
        std::fs::read_to_string(scratch.arca_physical(&out)).unwrap(),
        "tool\n"
    );
}
