//! `arca build --builders …`: builds spread over machines reached through a real
//! OpenSSH server on a loopback port (issue #17, distributed builds). The "machines" are
//! store roots of their own on this host, served by real Nix (`nix-store --serve
//! --write` for `ssh://`, `nix-daemon --stdio` for `ssh-ng://`) or by Arca
//! (`arca --serve`, `arca --stdio`):
//!
//! - on each kind of machine, a graph builds with outputs, NAR hashes and references
//!   identical to a local Nix build, registered here and verifiable;
//! - a fan-out of 40 spreads over this machine and two others by their slots; a machine
//!   killed mid-build loses no step, and one that refuses connections is skipped with
//!   one warning;
//! - systems, supported and mandatory features and `preferLocalBuild` decide where each
//!   step goes; with `--max-jobs 0` and no machine that fits, the build fails with
//!   Nix's message, which names each machine and why it does not fit.
//!
//! Needs root, OpenSSH's server, real Nix and a static busybox; skipped loudly without
//! them (an error in CI).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use arca_tests::arca_bin;
use arca_tests::build::{NixArg, Scratch};
use arca_tests::ssh::{
    arca_machine_uri, essentials, nix_machine_uri, remote_tools_available, Sshd,
};
use arca_tests::store::{assert_arca_verify_clean, lines};

/// `arca --store LOCAL build ARGS` with `NIX_SSHOPTS` reaching `sshd`.
fn arca_build(sshd: &Sshd, local: &Scratch, args: &[&str]) -> Command {
    let mut command = local.arca_cmd();
    command
        .env("NIX_SSHOPTS", sshd.ssh_opts())
        .arg("build")
        .args(args)
        .stdin(Stdio::null());
    command
}

/// A machine's builders line: its URI, this system, its slots and features.
fn line(uri: &str, slots: usize, features: &str, mandatory: &str) -> String {
    format!("{uri} x86_64-linux - {slots} 1 {features} {mandatory}")
}

/// An Arca machine with the settings `config` (nix.conf lines): `arca` through a wrapper
/// that sets them (ssh passes no environment).
fn arca_uri_with_config(scheme: &str, machine: &Scratch, config: &str) -> String {
    let wrapper = machine.path().join("arca-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport NIX_CONFIG='{config}'\nexec {} \"$@\"\n",
            arca_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{scheme}://root@localhost?remote-program={}&remote-store={}",
        wrapper.display(),
        machine.arca_root().display()
    )
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn arca_builds_on_nix_and_arca_machines_as_nix_builds_locally() {
    let test = "arca_builds_on_nix_and_arca_machines_as_nix_builds_locally";
    if !remote_tools_available(test) {
        return;
    }
    let attrs = &["chatty", "top", "multi"];
    let reference = Scratch::new();
    let drvs = reference.instantiate("graphs.nix", &[], attrs);
    let drv_args: Vec<&str> = drvs.iter().map(String::as_str).collect();
    let expected_outputs = reference.nix_realise(&drv_args);
    let output_args: Vec<&str> = expected_outputs.iter().map(String::as_str).collect();
    let closure =
        lines(&reference.nix_store(&[&["--query", "--requisites"][..], &output_args].concat()));
    let closure_args: Vec<&str> = closure.iter().map(String::as_str).collect();
    let expected = essentials(&reference.nix_path_info(&closure_args));

    let ssh_dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(ssh_dir.path());
    for (kind, scheme) in [
        ("nix", "ssh"),
        ("nix", "ssh-ng"),
        ("arca", "ssh"),
        ("arca", "ssh-ng"),
    ] {
        let context = format!("{kind} machine over {scheme}://");
        let local = Scratch::new();
        assert_eq!(local.instantiate_for_both("graphs.nix", &[], attrs), drvs);
        let machine = Scratch::new();
        let uri = if kind == "nix" {
            nix_machine_uri(scheme, &machine)
        } else {
            arca_machine_uri(scheme, &machine)
        };
        let builders = line(&uri, 2, "-", "-");
        let output = arca_build(
            &sshd,
            &local,
            &[&["--max-jobs", "0", "--builders", &builders][..], &drv_args].concat(),
        )
        .output()
        .unwrap();
        let stderr = stderr_of(&output);
        assert!(
            output.status.success(),
            "{context}: {stderr}\nsshd: {}",
            sshd.log()
        );
        assert_eq!(
            lines(&output.stdout),
            expected_outputs,
            "{context}: {stderr}"
        );
        for drv in &drvs {
            assert!(
                stderr.contains(&format!("building '{drv}' on '{uri}'...")),
                "{context}: {drv} was not built there: {stderr}"
            );
        }
        // Busybox went up, the outputs came back, as Nix says it.
        assert!(
            stderr.contains("-bb' to '") && stderr.contains(&format!("-chatty' from '{uri}'...")),
            "{context}: {stderr}"
        );
        let got = essentials(&local.arca_path_info(&closure_args));
        assert_eq!(got, expected, "{context}: what was registered here");
        assert_arca_verify_clean(&local.arca_root(), &context);
    }
}

/// The leaves of the fan-out built on the machine with `uri` (`None`: here), as the
/// build's progress says.
fn leaves_built_on(stderr: &str, uri: Option<&str>) -> usize {
    stderr
        .lines()
        .filter(|line| line.contains("-fan-leaf-") && line.starts_with("building '"))
        .filter(|line| match uri {
            Some(uri) => line.ends_with(&format!(" on '{uri}'...")),
            None => !line.contains(" on '"),
        })
        .count()
}

/// Outputs of fan-out leaves in a machine's store.
fn leaves_in(root: &Path) -> usize {
    std::fs::read_dir(root.join("nix/store"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.contains("-fan-leaf-")
                        && !name.ends_with(".drv")
                        && !name.ends_with(".lock")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_fan_out_spreads_over_three_machines_and_survives_a_dead_one() {
    let test = "a_fan_out_spreads_over_three_machines_and_survives_a_dead_one";
    if !remote_tools_available(test) {
        return;
    }
    let ssh_dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(ssh_dir.path());
    let local = Scratch::new();
    let salt = format!("{test}-{}", std::process::id());
    let drvs = local.instantiate_for_both(
        "remote.nix",
        &[NixArg::Str("salt", salt), NixArg::Str("pause", "1".into())],
        &["fan"],
    );
    let a = Scratch::new();
    let b = Scratch::new();
    let a_uri = arca_machine_uri("ssh", &a);
    let b_uri = arca_machine_uri("ssh-ng", &b);
    // Nothing listens on 127.0.0.2: this one refuses connections.
    let refusing = format!(
        "ssh://root@127.0.0.2?remote-program={}&remote-store=/nonexistent",
        arca_bin().display()
    );
    let builders = [
        line(&a_uri, 2, "-", "-"),
        line(&b_uri, 2, "-", "-"),
        line(&refusing, 2, "-", "-"),
    ]
    .join(";");
    let log_path = local.path().join("build.log");
    let child = arca_build(
        &sshd,
        &local,
        &["--max-jobs", "2", "--builders", &builders, &drvs[0]],
    )
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&log_path).unwrap())
    .spawn()
    .unwrap();
    // Kill machine B once it has built something: its remote program (whose command
    // line, unlike this build's, has `--store ROOT`); its ssh connection ends with it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while leaves_in(&b.arca_root()) < 2 {
        assert!(
            Instant::now() < deadline,
            "machine B built nothing: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let b_root: PathBuf = b.arca_root();
    let killed = Command::new("pkill")
        .args(["-KILL", "-f", "--"])
        .arg(format!("--store {}", b_root.display()))
        .status()
        .unwrap();
    assert!(killed.success(), "nothing of machine B was running");
    let output = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(&log_path).unwrap();
    assert!(output.status.success(), "{stderr}");
    let root = lines(&output.stdout);
    assert_eq!(root.len(), 1, "{stderr}");
    // Every step is there, whole.
    let closure = lines(&local.arca_ok(&["store", "query", "--requisites", &root[0]]));
    assert_eq!(
        closure.iter().filter(|p| p.contains("-fan-leaf-")).count(),
        40,
        "{stderr}"
    );
    assert_arca_verify_clean(&local.arca_root(), test);
    // One warning per machine lost, none more.
    for uri in [&refusing, &b_uri] {
        let warnings = stderr
            .matches(&format!("warning: cannot build on '{uri}'"))
            .count();
        assert_eq!(warnings, 1, "warnings about {uri}: {stderr}");
    }
    // The leaves spread over here, A and B by their slots (2 each).
    let (here, on_a, on_b) = (
        leaves_built_on(&stderr, None),
        leaves_built_on(&stderr, Some(&a_uri)),
        leaves_built_on(&stderr, Some(&b_uri)),
    );
    assert!(
        here >= 5 && on_a >= 5 && on_b >= 2,
        "here {here}, A {on_a}, B {on_b}: {stderr}"
    );
    assert!(leaves_in(&a.arca_root()) >= 5);
}

#[test]
fn systems_features_and_prefer_local_build_decide_where_steps_go() {
    let test = "systems_features_and_prefer_local_build_decide_where_steps_go";
    if !remote_tools_available(test) {
        return;
    }
    let ssh_dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(ssh_dir.path());
    let local = Scratch::new();
    let salt = format!("{test}-{}", std::process::id());
    let attrs = ["kvm", "big", "plain", "local", "gpu", "arm"];
    let drvs = local.instantiate_for_both("remote.nix", &[NixArg::Str("salt", salt)], &attrs);
    let drv = |attr: &str| drvs[attrs.iter().position(|a| *a == attr).unwrap()].as_str();
    let a = Scratch::new();
    let b = Scratch::new();
    // Each machine has the features its line says (its own settings decide what it
    // builds).
    let a_uri = arca_uri_with_config("ssh", &a, "system-features = kvm");
    let b_uri = arca_uri_with_config("ssh-ng", &b, "system-features = big");
    let builders = [line(&a_uri, 1, "kvm", "-"), line(&b_uri, 1, "big", "big")].join(";");

    // This machine has no features: kvm goes to A, big to B (whose big is mandatory,
    // so nothing else goes there), prefersLocal stays here.
    let output = arca_build(
        &sshd,
        &local,
        &[
            "--max-jobs",
            "1",
            "--option",
            "system-features",
            "",
            "--builders",
            &builders,
            drv("kvm"),
            drv("big"),
            drv("local"),
        ],
    )
    .output()
    .unwrap();
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("building '{}' on '{a_uri}'...", drv("kvm"))),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("building '{}' on '{b_uri}'...", drv("big"))),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("building '{}'...\n", drv("local"))),
        "{stderr}"
    );

    // No machine fits: Nix's message, each machine with why it does not fit.
    for (attr, why) in [
        ("gpu", "it lacks the features gpu"),
        ("arm", "it does not build aarch64-linux"),
    ] {
        let output = arca_build(
            &sshd,
            &local,
            &["--max-jobs", "0", "--builders", &builders, drv(attr)],
        )
        .output()
        .unwrap();
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "{attr}: {stderr}");
        assert!(
            stderr.contains("Failed to find a machine for remote build!"),
            "{attr}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("derivation: {}", drv(attr))),
            "{attr}: {stderr}"
        );
        for uri in [&a_uri, &b_uri] {
            assert!(
                stderr.contains(&format!("{uri}: {why}")),
                "{attr}: {uri}: {stderr}"
            );
        }
        assert!(!local.arca_registered(
            &lines(&local.arca_ok(&["store", "query", "--outputs", drv(attr)]))[0]
        ));
    }
    // Without machines, --max-jobs 0 builds here, one at a time (Nix would refuse).
    let output = arca_build(
        &sshd,
        &local,
        &["--max-jobs", "0", "--builders", "", drv("plain")],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
}

/// `examples/farm.rs` as built next to this test (`cargo test --workspace` builds every
/// example; the README's test command builds it first, as it builds `arca`).
fn farm_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let farm = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/farm");
    assert!(
        farm.exists(),
        "{} is missing: run `cargo build -p arca-build --example farm`",
        farm.display()
    );
    farm
}

/// The example coordinator builds a jobset on a machine of a machines file, reports
/// where each step ran, and pushes the results to a binary cache that Nix can read.
#[test]
fn the_farm_example_builds_a_jobset_remotely_and_pushes_it() {
    let test = "the_farm_example_builds_a_jobset_remotely_and_pushes_it";
    if !remote_tools_available(test) {
        return;
    }
    let ssh_dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(ssh_dir.path());
    let coordinator = Scratch::new();
    let drvs = coordinator.instantiate_for_both("graphs.nix", &[], &["chatty", "top"]);
    let machine = Scratch::new();
    let uri = arca_machine_uri("ssh-ng", &machine);
    let machines = coordinator.path().join("machines");
    std::fs::write(
        &machines,
        format!("# the farm\n{}\n", line(&uri, 2, "-", "-")),
    )
    .unwrap();
    let cache = coordinator.path().join("cache");
    let cache_url = format!("file://{}", cache.display());
    let output = Command::new(farm_example())
        .env("NIX_SSHOPTS", sshd.ssh_opts())
        .env("TMPDIR", coordinator.build_tmp())
        .arg("--store")
        .arg(coordinator.arca_root())
        .arg("--machines")
        .arg(&machines)
        .args(["--cache", &cache_url])
        .args(&drvs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", stderr_of(&output));
    assert!(
        stdout.contains(" ToMachine ") && stdout.contains(" FromMachine "),
        "{stdout}"
    );
    for drv in &drvs {
        assert!(stdout.contains(&format!("queued {drv}")), "{stdout}");
        assert!(
            stdout.contains(&format!("started {drv} on {uri}")),
            "{stdout}"
        );
        assert!(stdout.contains(&format!("built {drv}")), "{stdout}");
    }
    assert!(
        stdout.contains("log ") && stdout.contains("chatty builds on"),
        "{stdout}"
    );
    // Nix substitutes the results from the cache.
    let outputs = lines(
        &coordinator.arca_ok(
            &[
                &["store", "query", "--outputs"][..],
                &drvs.iter().map(String::as_str).collect::<Vec<_>>(),
            ]
            .concat(),
        ),
    );
    let reader = Scratch::new();
    let mut args = vec![
        "--store".to_owned(),
        reader.nix_uri(),
        "--realise".to_owned(),
        "--option".to_owned(),
        "substituters".to_owned(),
        cache_url.clone(),
        "--option".to_owned(),
        "require-sigs".to_owned(),
        "false".to_owned(),
    ];
    args.extend(outputs.iter().cloned());
    let fetched = Command::new("nix-store")
        .env("NIX_CONFIG", arca_tests::NIX_CONFIG)
        .args(&args)
        .output()
        .unwrap();
    assert!(fetched.status.success(), "{}", stderr_of(&fetched));
    assert_eq!(lines(&fetched.stdout), outputs);
}

/// With `builders-use-substitutes`, a machine fetches the inputs it can from its own
/// substituters (here a signed cache holding busybox) instead of receiving them: its
/// copy of busybox then carries the cache's signature. Without it, busybox is sent.
#[test]
fn builders_use_substitutes_lets_machines_fetch_inputs_themselves() {
    let test = "builders_use_substitutes_lets_machines_fetch_inputs_themselves";
    if !remote_tools_available(test) {
        return;
    }
    let ssh_dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(ssh_dir.path());
    let local = Scratch::new();
    let secret = local.path().join("secret");
    std::fs::write(
        &secret,
        local.arca_ok(&["key", "generate-secret", "--key-name", "farm-cache-1"]),
    )
    .unwrap();
    let public = String::from_utf8(local.arca_ok_with(
        &["key", "convert-secret-to-public"],
        &std::fs::read(&secret).unwrap(),
    ))
    .unwrap();
    let bb = local.add_busybox_to_arca();
    let cache = local.path().join("cache");
    let push = format!("file://{}?secret-key={}", cache.display(), secret.display());
    local.arca_ok(&["copy", "--to", &push, &bb]);
    let config = format!(
        "substituters = file://{}\ntrusted-public-keys = {}",
        cache.display(),
        public.trim()
    );
    for use_substitutes in [true, false] {
        let salt = format!("{test}-{use_substitutes}-{}", std::process::id());
        let drvs =
            local.instantiate_for_both("remote.nix", &[NixArg::Str("salt", salt)], &["plain"]);
        let machine = Scratch::new();
        let uri = arca_uri_with_config("ssh", &machine, &config);
        let output = arca_build(
            &sshd,
            &local,
            &[
                "--max-jobs",
                "0",
                "--option",
                "builders-use-substitutes",
                if use_substitutes { "true" } else { "false" },
                "--builders",
                &line(&uri, 1, "-", "-"),
                &drvs[0],
            ],
        )
        .output()
        .unwrap();
        assert!(output.status.success(), "{}", stderr_of(&output));
        let info = &machine.arca_path_info(&[&bb])[0];
        let signed = info["signatures"].as_array().is_some_and(|sigs| {
            sigs.iter()
                .any(|s| s.as_str().is_some_and(|s| s.starts_with("farm-cache-1:")))
        });
        assert_eq!(
            signed, use_substitutes,
            "builders-use-substitutes {use_substitutes}: {info}"
        );
    }
}

/// Slots are Nix's lock files under `current-load`: a slot another process holds is
/// taken, so a step waits for it (here: with `--max-jobs 0` and one slot, until the
/// test lets go of it), then runs there.
#[test]
fn slots_held_by_another_process_are_taken() {
    let test = "slots_held_by_another_process_are_taken";
    if !remote_tools_available(test) {
        return;
    }
    let ssh_dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(ssh_dir.path());
    let local = Scratch::new();
    let salt = format!("{test}-{}", std::process::id());
    let drvs = local.instantiate_for_both("remote.nix", &[NixArg::Str("salt", salt)], &["plain"]);
    let machine = Scratch::new();
    let uri = arca_machine_uri("ssh", &machine);
    // The slot, as Nix names it (URI with '/' as '_', then the slot number).
    let load = local.arca_root().join("nix/var/nix/current-load");
    std::fs::create_dir_all(&load).unwrap();
    let slot = std::fs::File::create(load.join(format!("{}-0", uri.replace('/', "_")))).unwrap();
    let held = nix::fcntl::Flock::lock(slot, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let log = local.path().join("build.log");
    let child = arca_build(
        &sshd,
        &local,
        &[
            "--max-jobs",
            "0",
            "--builders",
            &line(&uri, 1, "-", "-"),
            &drvs[0],
        ],
    )
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let so_far = std::fs::read_to_string(&log).unwrap();
    assert!(
        !so_far.contains("building '"),
        "it built on a taken slot: {so_far}"
    );
    drop(held);
    let output = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("building '{}' on '{uri}'...", drvs[0])),
        "{stderr}"
    );
}
