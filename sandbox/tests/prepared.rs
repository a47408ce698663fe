//! Prepared sandboxes: built ahead, started later with deferred binds named then.

mod common;

use std::fs;
use std::time::Duration;

use arca_sandbox::{prepare, DeferredBinds, Mount, Outcome, SandboxError, SandboxSpec};
use common::{busybox, processes_with, require_root, sh, tempdir, unique};

fn deferred(spec: SandboxSpec, source: &std::path::Path) -> SandboxSpec {
    SandboxSpec {
        deferred_binds: Some(DeferredBinds {
            source_dir: source.to_path_buf(),
            target_dir: "/nix/store".into(),
        }),
        ..spec
    }
}

fn run_prepared(spec: &SandboxSpec, names: &[&str]) -> (Outcome, String) {
    let prepared = prepare(spec).expect("preparing");
    let mut output = Vec::new();
    let report = prepared
        .run(names, &mut output)
        .unwrap_or_else(|err| panic!("run failed: {err} ({err:?})"));
    (
        report.outcome,
        String::from_utf8_lossy(&output).into_owned(),
    )
}

#[test]
fn deferred_binds_made_after_preparing_appear_read_only_and_alone() {
    common::check_deferred_binds(arca_sandbox::UserNamespace::Auto);
}

#[test]
fn deferred_binds_in_a_user_namespace_appear_read_only_and_alone() {
    common::check_deferred_binds(arca_sandbox::UserNamespace::Always);
}

#[test]
fn a_prepared_sandbox_without_deferred_names_runs_as_run_does() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let store = tempdir();
    let (outcome, output) = run_prepared(&deferred(sh("ls -a /nix/store"), store.path()), &[]);
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(output, ".\n..\n");
    let (outcome, output) = run_prepared(&sh("echo plain"), &[]);
    assert_eq!((outcome, output.as_str()), (Outcome::Exited(0), "plain\n"));
}

#[test]
fn a_dropped_prepared_sandbox_never_runs_its_program() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let out = tempdir();
    fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let marker = unique("arca-prepared-dropped-");
    let store = tempdir();
    let spec = deferred(
        sh(&format!("touch /out/ran; sleep 5 # {marker}")),
        store.path(),
    )
    .mount(Mount::bind_rw(out.path(), "/out"));
    let prepared = prepare(&spec).expect("preparing");
    std::thread::sleep(Duration::from_millis(100));
    drop(prepared);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!out.path().join("ran").exists(), "the program ran");
    assert_eq!(processes_with(&marker), Vec::<u32>::new());
}

#[test]
fn limits_count_from_the_start_not_from_preparing() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let mut spec = sh("echo started");
    spec.limits.timeout = Some(Duration::from_millis(300));
    let prepared = prepare(&spec).expect("preparing");
    std::thread::sleep(Duration::from_millis(500));
    let mut output = Vec::new();
    let report = prepared.run(&[] as &[&str], &mut output).expect("running");
    assert_eq!(report.outcome, Outcome::Exited(0));
    assert_eq!(output, b"started\n");
}

#[test]
fn bad_deferred_names_are_refused_before_anything_runs() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let store = tempdir();
    fs::write(store.path().join("there"), "x").unwrap();
    let spec = deferred(sh("echo ran"), store.path());
    let error = |names: &[&str], spec: &SandboxSpec| {
        let mut output = Vec::new();
        let result = prepare(spec).expect("preparing").run(names, &mut output);
        assert!(output.is_empty(), "the program ran: {output:?}");
        result.expect_err("a bad name must be refused")
    };
    match error(&["missing"], &spec) {
        SandboxError::MissingSource { path } => assert_eq!(path, store.path().join("missing")),
        other => panic!("wrong error {other:?}"),
    }
    for bad in ["..", "a/b", ""] {
        match error(&[bad], &spec) {
            SandboxError::InvalidSpec { field, value, .. } => {
                assert_eq!((field, value.as_str()), ("deferred bind", bad))
            }
            other => panic!("wrong error for {bad:?}: {other:?}"),
        }
    }
    // Names for a spec without deferred binds.
    match error(&["there"], &sh("echo ran")) {
        SandboxError::InvalidSpec { field, .. } => assert_eq!(field, "deferred binds"),
        other => panic!("wrong error {other:?}"),
    }
}

#[test]
fn a_sandbox_prepared_on_one_thread_starts_on_another_and_runs_before_anyone_waits() {
    if !require_root() || busybox().is_none() {
        return;
    }
    fn send<T: Send>(value: T) -> T {
        value
    }
    let out = tempdir();
    fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let store = tempdir();
    let spec = deferred(
        sh("cat /nix/store/late > /out/started; echo done"),
        store.path(),
    )
    .mount(Mount::bind_rw(out.path(), "/out"));
    let prepared = send(prepare(&spec).expect("preparing"));
    fs::write(store.path().join("late"), "late input\n").unwrap();
    let started = std::thread::spawn(move || send(prepared.start(&["late"]).expect("starting")))
        .join()
        .unwrap();
    // Nobody waits yet, and the program runs all the same.
    let marker = out.path().join("started");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !marker.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(marker.exists(), "the program did not start before wait");
    let mut output = Vec::new();
    let report = started.wait(&mut output).expect("waiting");
    assert_eq!(report.outcome, Outcome::Exited(0));
    assert_eq!(output, b"done\n");
    assert_eq!(fs::read(&marker).unwrap(), b"late input\n");
}

#[test]
fn a_dropped_started_sandbox_is_killed_with_everything_in_it() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let marker = unique("arca-started-dropped-");
    let started = prepare(&sh(&format!("sleep 30 & sleep 30; true # {marker}")))
        .expect("preparing")
        .start(&[] as &[&str])
        .expect("starting");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while processes_with(&marker).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!processes_with(&marker).is_empty(), "the program never ran");
    drop(started);
    assert_eq!(processes_with(&marker), Vec::<u32>::new());
}
