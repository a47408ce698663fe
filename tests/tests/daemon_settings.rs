//! `arca daemon`'s settings, driven by real Nix 2.8 clients (`nix-build`, `nix-store`,
//! `nix`):
//!
//! - the daemon reads `$NIX_CONF_DIR/nix.conf` (with `include` and `!include`; not the
//!   host's `/etc/nix/nix.conf`, which says `sandbox = false` here): `sandbox = false`
//!   builds on the host, where a builder reads a file outside the store; the default
//!   sandbox hides it and the build fails;
//! - a trusted client's `--option sandbox false` applies to its connection; an untrusted
//!   one's is refused with Nix's warning and the build stays sandboxed; `trusted-users`
//!   with `extra-trusted-users` in nix.conf makes a user trusted; an untrusted client's
//!   `substituters` keep only the daemon's `trusted-substituters`;
//! - a client's `--timeout` and `--max-silent-time` stop builds, for trusted and
//!   untrusted clients alike;
//! - `keep-derivations = false` lets the garbage collector delete the `.drv` of a live
//!   output, which the default keeps;
//! - `post-build-hook` runs with `DRV_PATH` and `OUT_PATHS`; a failing hook fails the
//!   build but leaves the output valid;
//! - `secret-key-files` sign what the daemon builds, verifiably;
//! - an unknown setting in nix.conf is a warning, a bad value stops the daemon.
//!
//! Unsandboxed builds happen only in a store at `/nix/store`, so each daemon runs in a
//! private mount namespace of its own, with a fresh directory of the test's bind-mounted
//! on `/nix` (`unshare --mount`); clients run outside it and reach the daemon through a
//! socket outside `/nix`, and see its store at `LAB/nixroot/nix/store` (their store URI
//! says `root=LAB/nixroot`): the harness is [`arca_tests::lab`]. Needs root, `unshare`
//! and real Nix; skipped loudly without them.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arca_tests::arca_bin;
use arca_tests::daemon::Unprivileged;
use arca_tests::lab::{
    build_ok, expect_success, nobody, prerequisites, stderr_of, valid, Lab, NsDaemon,
};
use serde_json::Value;

// --- Shared setup -----------------------------------------------------------------------

/// The marker file only the host has: `LAB/marker`, with `text`.
fn marker(lab: &Lab, text: &str) -> PathBuf {
    lab.write("marker", text)
}

/// A derivation `name` that copies the host file `file` to `$out`.
fn copier(lab: &Lab, name: &str, file: &Path) -> PathBuf {
    lab.derivation(name, &format!("/bin/cat {} > $out", file.display()))
}

/// The deriver of `out` through the daemon.
fn deriver(lab: &Lab, daemon: &NsDaemon, out: &str) -> String {
    let drv = lab.run_ok(daemon, "nix-store", &["--query", "--deriver", out]);
    assert!(
        drv.starts_with("/nix/store/") && drv.ends_with(".drv"),
        "the deriver of {out} is {drv:?}"
    );
    drv
}

// --- nix.conf: sandbox ------------------------------------------------------------------

/// `sandbox = false`, from a file nix.conf includes, builds on the host: the builder
/// (the host's `/bin/sh`) reads a file outside the store.
#[test]
fn nix_conf_sandbox_false_builds_on_the_host() {
    let test = "nix_conf_sandbox_false_builds_on_the_host";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some(
        "# The daemon's settings.\ninclude sandbox.conf\n!include absent.conf\n",
    ));
    lab.write(
        "daemon-conf/sandbox.conf",
        "sandbox = false  # on the host\n",
    );
    let file = marker(&lab, "seen on the host\n");
    let daemon = NsDaemon::start(&lab, &[]);

    let out = build_ok(&lab, &daemon, &copier(&lab, "probe", &file), &[]);
    assert!(out.ends_with("-probe"), "{out}");
    assert_eq!(
        fs::read_to_string(lab.physical(&out)).unwrap(),
        "seen on the host\n"
    );
    assert_eq!(fs::read_link(lab.path("result")).unwrap(), Path::new(&out));
    assert!(valid(&lab, &out));
}

/// Without `sandbox` in nix.conf the daemon builds in the sandbox (the host's
/// `/etc/nix/nix.conf` says `sandbox = false`, but the daemon reads `$NIX_CONF_DIR`'s):
/// the same derivation fails, as neither `/bin/sh` nor the file is there.
#[test]
fn default_sandbox_hides_the_host() {
    let test = "default_sandbox_hides_the_host";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("# nothing set: the defaults\n"));
    let file = marker(&lab, "seen on the host\n");
    let daemon = NsDaemon::start(&lab, &[]);

    let probe = copier(&lab, "probe", &file);
    let output = lab.run(
        "nix-build",
        None,
        &[probe.to_str().unwrap(), "--no-out-link"],
    );
    let stderr = stderr_of(&output);
    assert!(
        !output.status.success(),
        "the build succeeded in the sandbox: {stderr}\ndaemon log:\n{}",
        daemon.log()
    );
    // The sandbox has no `/bin/sh`: the builder cannot even start.
    assert!(
        stderr.contains("'/bin/sh'") && stderr.contains("No such file or directory"),
        "{stderr}"
    );
    let drv = lab.run_ok(&daemon, "nix-instantiate", &[probe.to_str().unwrap()]);
    let out = lab.run_ok(&daemon, "nix-store", &["--query", "--outputs", &drv]);
    assert!(!valid(&lab, &out), "{out} is valid after a failed build");
    assert!(!lab.physical(&out).exists(), "{out} was left behind");
}

// --- Client settings and trust ----------------------------------------------------------

/// With `sandbox = true` in nix.conf, an untrusted client's `--option sandbox false` is
/// ignored with Nix's warning (the build fails in the sandbox); then root's (trusted)
/// builds the same derivation on the host.
#[test]
fn only_a_trusted_client_may_turn_the_sandbox_off() {
    let test = "only_a_trusted_client_may_turn_the_sandbox_off";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("sandbox = true\n"));
    let nobody = nobody(&lab);
    let file = marker(&lab, "trusted only\n");
    let probe = copier(&lab, "probe", &file);
    let probe = probe.to_str().unwrap();
    let daemon = NsDaemon::start(&lab, &[]);

    let untrusted = lab.run(
        "nix-build",
        Some(&nobody),
        &[probe, "--no-out-link", "--option", "sandbox", "false"],
    );
    let stderr = stderr_of(&untrusted);
    assert!(
        stderr.contains(
            "ignoring the client-specified setting 'sandbox', because it is a restricted setting and you are not a trusted user"
        ),
        "no warning for the untrusted client: {stderr}"
    );
    assert!(
        !untrusted.status.success(),
        "the untrusted client's build ran unsandboxed: {stderr}\ndaemon log:\n{}",
        daemon.log()
    );

    let trusted = lab.run(
        "nix-build",
        None,
        &[probe, "--no-out-link", "--option", "sandbox", "false"],
    );
    let stderr = stderr_of(&trusted);
    assert!(
        trusted.status.success(),
        "root's --option sandbox false did not apply: {stderr}\ndaemon log:\n{}",
        daemon.log()
    );
    assert!(
        !stderr.contains("ignoring the client-specified setting"),
        "{stderr}"
    );
    let out = String::from_utf8(trusted.stdout).unwrap().trim().to_owned();
    assert_eq!(
        fs::read_to_string(lab.physical(&out)).unwrap(),
        "trusted only\n"
    );
}

/// `extra-trusted-users` in nix.conf appends to `trusted-users`: `nobody` becomes
/// trusted, and their `--option sandbox false` applies.
#[test]
fn extra_trusted_users_in_nix_conf_trusts_a_user() {
    let test = "extra_trusted_users_in_nix_conf_trusts_a_user";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some(
        "sandbox = true\ntrusted-users = root\nextra-trusted-users = nobody\n",
    ));
    let nobody = nobody(&lab);
    let file = marker(&lab, "nobody is trusted\n");
    let probe = copier(&lab, "probe", &file);
    let daemon = NsDaemon::start(&lab, &[]);

    let output = lab.run(
        "nix-build",
        Some(&nobody),
        &[
            probe.to_str().unwrap(),
            "--no-out-link",
            "--option",
            "sandbox",
            "false",
        ],
    );
    let stderr = stderr_of(&output);
    assert!(
        output.status.success(),
        "nobody is not trusted: {stderr}\ndaemon log:\n{}",
        daemon.log()
    );
    assert!(
        !stderr.contains("ignoring the client-specified setting 'sandbox'"),
        "{stderr}"
    );
    let out = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(
        fs::read_to_string(lab.physical(&out)).unwrap(),
        "nobody is trusted\n"
    );
}

/// An untrusted client's `--option substituters` keeps only the caches in the daemon's
/// `trusted-substituters` (Nix's rule): `nix-store -r` of a path from another cache
/// fails with Nix's warning, from a trusted one it substitutes the path, signature and
/// all.
#[test]
fn untrusted_clients_substitute_only_from_trusted_substituters() {
    let test = "untrusted_clients_substitute_only_from_trusted_substituters";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(None);
    let arca = |args: &[&str], input: &[u8]| -> Vec<u8> {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        arca_tests::arca_ok_with_stdin(&args, input)
    };
    let secret = arca(
        &["key", "generate-secret", "--key-name", "lab-cache-1"],
        b"",
    );
    let public = String::from_utf8(arca(&["key", "convert-secret-to-public"], &secret)).unwrap();
    let secret_file = lab.path("cache.sk");
    fs::write(&secret_file, &secret).unwrap();
    let trusted_cache = format!("file://{}", lab.path("trusted-cache").display());
    let other_cache = format!("file://{}", lab.path("other-cache").display());
    lab.write(
        "daemon-conf/nix.conf",
        &format!(
            "sandbox = false
trusted-public-keys = {}
trusted-substituters = {trusted_cache}
",
            public.trim()
        ),
    );
    let file = marker(&lab, "from a cache\n");
    let probe = copier(&lab, "probe", &file);
    let daemon = NsDaemon::start(&lab, &[]);

    // Built once, pushed (signed) to both caches, deleted.
    let out = lab.run_ok(
        &daemon,
        "nix-build",
        &[probe.to_str().unwrap(), "--no-out-link"],
    );
    let root = lab.path("nixroot");
    for cache in [&trusted_cache, &other_cache] {
        let url = format!("{cache}?secret-key={}", secret_file.display());
        arca(
            &[
                "--store",
                root.to_str().unwrap(),
                "copy",
                "--to",
                &url,
                &out,
            ],
            b"",
        );
    }
    lab.run_ok(&daemon, "nix-store", &["--delete", &out]);
    assert!(!valid(&lab, &out));

    let nobody = nobody(&lab);
    let refused = lab.run(
        "nix-store",
        Some(&nobody),
        &["-r", &out, "--option", "substituters", &other_cache],
    );
    let stderr = stderr_of(&refused);
    assert!(
        stderr.contains(&format!("ignoring untrusted substituter '{other_cache}'")),
        "{stderr}"
    );
    assert!(!refused.status.success(), "{stderr}");
    assert!(!valid(&lab, &out));

    let allowed = lab.run(
        "nix-store",
        Some(&nobody),
        &["-r", &out, "--option", "substituters", &trusted_cache],
    );
    let stderr = stderr_of(&allowed);
    assert!(
        allowed.status.success(),
        "{stderr}\ndaemon log:\n{}",
        daemon.log()
    );
    assert!(
        !stderr.contains("ignoring untrusted substituter"),
        "{stderr}"
    );
    assert!(valid(&lab, &out));
    let sigs = lab.run_ok(&daemon, "nix", &["path-info", "--sigs", &out]);
    assert!(
        sigs.contains("lab-cache-1:"),
        "substituted, signature and all: {sigs}"
    );
}

/// Runs `nix-build FILE --no-out-link ARGS` as `user`, which must fail within 15 s:
/// its stderr.
fn build_fails_quickly(
    lab: &Lab,
    daemon: &NsDaemon,
    user: Option<&Unprivileged>,
    file: &Path,
    args: &[&str],
) -> String {
    let mut all = vec![file.to_str().unwrap(), "--no-out-link"];
    all.extend_from_slice(args);
    let start = Instant::now();
    let output = lab.run("nix-build", user, &all);
    let elapsed = start.elapsed();
    let stderr = stderr_of(&output);
    assert!(
        !output.status.success(),
        "nix-build {all:?} succeeded: {stderr}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "nix-build {all:?} took {elapsed:?}: {stderr}\ndaemon log:\n{}",
        daemon.log()
    );
    stderr
}

/// A client's `--timeout 1` stops a build that keeps talking for 30 s, for root and
/// for an untrusted user (`timeout` is one of the settings anyone may set).
#[test]
fn client_timeout_stops_a_long_build() {
    let test = "client_timeout_stops_a_long_build";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("sandbox = false\n"));
    let nobody = nobody(&lab);
    let daemon = NsDaemon::start(&lab, &[]);
    for (name, user) in [("chatty-root", None), ("chatty-nobody", Some(&nobody))] {
        // Output every 0.2 s: only the total time can stop it.
        let chatty = lab.derivation(
            name,
            "i=0; while [ $i -lt 150 ]; do echo tick $i; /bin/sleep 0.2; i=$((i+1)); done; echo done > $out",
        );
        let stderr = build_fails_quickly(&lab, &daemon, user, &chatty, &["--timeout", "1"]);
        assert!(
            stderr.contains("timed out after 1 seconds") && !stderr.contains("of silence"),
            "{name}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("-{name}.drv'")),
            "{name}: {stderr}"
        );
    }
}

/// A client's `--max-silent-time 1` stops a build silent for 30 s (root and untrusted),
/// but not one that talks more often than that for 3 s.
#[test]
fn client_max_silent_time_stops_a_silent_build() {
    let test = "client_max_silent_time_stops_a_silent_build";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("sandbox = false\n"));
    let nobody = nobody(&lab);
    let daemon = NsDaemon::start(&lab, &[]);
    for (name, user) in [("silent-root", None), ("silent-nobody", Some(&nobody))] {
        let silent = lab.derivation(name, "/bin/sleep 30; echo done > $out");
        let stderr = build_fails_quickly(&lab, &daemon, user, &silent, &["--max-silent-time", "1"]);
        assert!(
            stderr.contains("timed out after 1 seconds of silence"),
            "{name}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("-{name}.drv'")),
            "{name}: {stderr}"
        );
    }

    let talker = lab.derivation(
        "talker",
        "i=0; while [ $i -lt 10 ]; do echo tick $i; /bin/sleep 0.3; i=$((i+1)); done; echo done > $out",
    );
    let out = build_ok(&lab, &daemon, &talker, &["--max-silent-time", "1"]);
    assert_eq!(fs::read_to_string(lab.physical(&out)).unwrap(), "done\n");
}

/// `arca build` through a daemon sends its settings as Nix's client does (`SetOptions`):
/// `--timeout 1` and `--max-silent-time 1` stop builds that would run 30 s, for root and
/// for an untrusted user (both are settings anyone may set).
#[test]
fn arca_client_sends_timeouts_to_the_daemon() {
    let test = "arca_client_sends_timeouts_to_the_daemon";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("sandbox = false\n"));
    let nobody = nobody(&lab);
    let daemon = NsDaemon::start(&lab, &[]);
    let arca = arca_bin();
    let store = lab.store_uri();
    let cases = [
        ("arca-chatty", "i=0; while [ $i -lt 150 ]; do echo tick $i; /bin/sleep 0.2; i=$((i+1)); done; echo done > $out", "--timeout", "timed out after 1 seconds"),
        ("arca-silent", "/bin/sleep 30; echo done > $out", "--max-silent-time", "timed out after 1 seconds of silence"),
    ];
    for (name, script, flag, says) in cases {
        let file = lab.derivation(name, script);
        let drv = lab.run_ok(&daemon, "nix-instantiate", &[file.to_str().unwrap()]);
        for user in [None, Some(&nobody)] {
            let start = Instant::now();
            let output = lab.run(
                arca.to_str().unwrap(),
                user,
                &["--store", &store, "build", flag, "1", &drv],
            );
            let elapsed = start.elapsed();
            let stderr = stderr_of(&output);
            assert!(!output.status.success(), "{name}: {stderr}");
            assert!(
                elapsed < Duration::from_secs(15),
                "{name} took {elapsed:?}: {stderr}\ndaemon log:\n{}",
                daemon.log()
            );
            assert!(
                stderr.contains(says),
                "{name} (as nobody: {}): {stderr}",
                user.is_some()
            );
        }
    }
}

// --- keep-derivations -------------------------------------------------------------------

/// Builds a derivation with a GC root on its output (`nix-build -o`, an indirect root
/// registered through the daemon), runs `nix-store --gc` through the daemon: whether
/// the output and its `.drv` are still there (and valid).
fn gc_keeps(nix_conf: &str) -> (bool, bool) {
    let lab = Lab::new(Some(nix_conf));
    let file = marker(&lab, "rooted\n");
    let daemon = NsDaemon::start(&lab, &[]);
    let out = build_ok(&lab, &daemon, &copier(&lab, "rooted", &file), &[]);
    let drv = deriver(&lab, &daemon, &out);
    assert!(lab.physical(&drv).exists() && valid(&lab, &drv));

    lab.run_ok(&daemon, "nix-store", &["--gc"]);
    let out_kept = lab.physical(&out).exists();
    assert_eq!(out_kept, valid(&lab, &out), "{out}: on disk vs valid");
    let drv_kept = lab.physical(&drv).exists();
    assert_eq!(drv_kept, valid(&lab, &drv), "{drv}: on disk vs valid");
    (out_kept, drv_kept)
}

#[test]
fn keep_derivations_false_lets_gc_delete_the_drv() {
    let test = "keep_derivations_false_lets_gc_delete_the_drv";
    if !prerequisites(test) {
        return;
    }
    let (out_kept, drv_kept) = gc_keeps("sandbox = false\nkeep-derivations = false\n");
    assert!(out_kept, "the rooted output was collected");
    assert!(
        !drv_kept,
        "the .drv stayed although keep-derivations = false"
    );
}

#[test]
fn keep_derivations_by_default_gc_keeps_the_drv() {
    let test = "keep_derivations_by_default_gc_keeps_the_drv";
    if !prerequisites(test) {
        return;
    }
    let (out_kept, drv_kept) = gc_keeps("sandbox = false\n");
    assert!(out_kept, "the rooted output was collected");
    assert!(
        drv_kept,
        "the .drv was collected although keep-derivations is true"
    );
}

// --- post-build-hook --------------------------------------------------------------------

/// A trusted client's `--post-build-hook` runs after the build with `DRV_PATH` and
/// `OUT_PATHS`.
#[test]
fn post_build_hook_sees_the_drv_and_out_paths() {
    let test = "post_build_hook_sees_the_drv_and_out_paths";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("sandbox = false\n"));
    let seen = lab.path("hook-saw");
    let hook = lab.script(
        "hook.sh",
        &format!(
            "echo \"DRV_PATH=$DRV_PATH\" > {seen}\necho \"OUT_PATHS=$OUT_PATHS\" >> {seen}",
            seen = seen.display()
        ),
    );
    let file = marker(&lab, "hooked\n");
    let daemon = NsDaemon::start(&lab, &[]);

    let out = build_ok(
        &lab,
        &daemon,
        &copier(&lab, "hooked", &file),
        &["--post-build-hook", hook.to_str().unwrap()],
    );
    let drv = deriver(&lab, &daemon, &out);
    let saw = fs::read_to_string(&seen).unwrap_or_else(|error| {
        panic!(
            "the hook did not run ({error}); daemon log:\n{}",
            daemon.log()
        )
    });
    assert_eq!(saw, format!("DRV_PATH={drv}\nOUT_PATHS={out}\n"));
}

/// A `post-build-hook` (from nix.conf) that exits 1 fails the build, but the output it
/// ran after stays valid.
#[test]
fn failing_post_build_hook_fails_the_build_but_keeps_the_output() {
    let test = "failing_post_build_hook_fails_the_build_but_keeps_the_output";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(None);
    let hook = lab.script("fail.sh", "exit 1");
    lab.write(
        "daemon-conf/nix.conf",
        &format!("sandbox = false\npost-build-hook = {}\n", hook.display()),
    );
    let file = marker(&lab, "hook fails\n");
    let probe = copier(&lab, "hookfails", &file);
    let daemon = NsDaemon::start(&lab, &[]);

    let drv = lab.run_ok(&daemon, "nix-instantiate", &[probe.to_str().unwrap()]);
    let out = lab.run_ok(&daemon, "nix-store", &["--query", "--outputs", &drv]);
    let output = lab.run("nix-build", None, &[&drv, "--no-out-link"]);
    let stderr = stderr_of(&output);
    assert!(
        !output.status.success(),
        "nix-build succeeded although the hook failed: {stderr}\ndaemon log:\n{}",
        daemon.log()
    );
    assert!(stderr.contains(hook.to_str().unwrap()), "{stderr}");
    assert!(
        valid(&lab, &out),
        "{out} is not valid after the hook failed; daemon log:\n{}",
        daemon.log()
    );
    assert_eq!(
        fs::read_to_string(lab.physical(&out)).unwrap(),
        "hook fails\n"
    );
}

// --- secret-key-files -------------------------------------------------------------------

/// A trusted client's `--secret-key-files` signs what the daemon builds: `nix path-info`
/// lists the signature, and `nix store verify` accepts it with the public key (and not
/// with another key).
#[test]
fn secret_key_files_sign_built_paths() {
    let test = "secret_key_files_sign_built_paths";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("sandbox = false\n"));
    let daemon = NsDaemon::start(&lab, &[]);
    for name in ["test-1", "other-1"] {
        lab.run_ok(
            &daemon,
            "nix-store",
            &[
                "--generate-binary-cache-key",
                name,
                &format!("{name}.sk"),
                &format!("{name}.pk"),
            ],
        );
    }
    let file = marker(&lab, "signed\n");
    let secret = lab.path("test-1.sk");
    let out = build_ok(
        &lab,
        &daemon,
        &copier(&lab, "signed", &file),
        &["--secret-key-files", secret.to_str().unwrap()],
    );

    let json = lab.run_ok(&daemon, "nix", &["path-info", "--json", &out]);
    let infos: Value = serde_json::from_str(&json).expect("nix path-info prints JSON");
    let signatures: Vec<&str> = infos[0]["signatures"]
        .as_array()
        .unwrap_or_else(|| panic!("no signatures: {json}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        signatures.iter().any(|s| s.starts_with("test-1:")),
        "{signatures:?}"
    );

    let verify = |key: &str| {
        let public = fs::read_to_string(lab.path(&format!("{key}.pk"))).unwrap();
        lab.run(
            "nix",
            None,
            &[
                "store",
                "verify",
                "--trusted-public-keys",
                public.trim(),
                "--sigs-needed",
                "1",
                &out,
            ],
        )
    };
    let good = verify("test-1");
    assert!(
        good.status.success(),
        "nix store verify rejects the signature: {}",
        stderr_of(&good)
    );
    let other = verify("other-1");
    assert!(
        !other.status.success(),
        "nix store verify accepts the path with an unrelated key: {}",
        stderr_of(&other)
    );
}

// --- Bad configuration ------------------------------------------------------------------

/// An unknown setting in nix.conf is a warning in the daemon's log; the daemon starts
/// and serves.
#[test]
fn unknown_setting_is_only_a_warning() {
    let test = "unknown_setting_is_only_a_warning";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("no-such-setting = 1\n"));
    let daemon = NsDaemon::start(&lab, &[]);
    assert!(
        daemon
            .log()
            .contains("warning: unknown setting 'no-such-setting'"),
        "daemon log:\n{}",
        daemon.log()
    );
    let file = lab.write("added", "served\n");
    let path = lab.run_ok(&daemon, "nix-store", &["--add", file.to_str().unwrap()]);
    assert!(path.ends_with("-added"), "{path}");
    assert!(valid(&lab, &path));
    assert_eq!(fs::read_to_string(lab.physical(&path)).unwrap(), "served\n");
}

/// A bad value in nix.conf stops `arca daemon` with an error naming the setting and the
/// value.
#[test]
fn bad_value_stops_the_daemon() {
    let test = "bad_value_stops_the_daemon";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("sandbox = maybe\n"));
    let mut command = NsDaemon::command(&lab, &[]);
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare can be spawned");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("the daemon still runs after 20 s: {}", stderr_of(&output));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "the daemon exited 0: {stderr}");
    assert!(
        stderr.contains("invalid value 'maybe' for setting 'sandbox'"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

/// The builder's output reaches the client while it builds, as Nix's daemon sends it:
/// `nix-build` prints the `building '…'` activity and each line; `nix build -L` prefixes
/// each line with the derivation's name.
#[test]
fn build_output_streams_to_the_client() {
    let test = "build_output_streams_to_the_client";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("sandbox = false\n"));
    let daemon = NsDaemon::start(&lab, &[]);
    let file = lab.derivation(
        "chatty",
        "echo first line; echo second line >&2; echo done > $out",
    );
    let output = lab.run(
        "nix-build",
        None,
        &[file.to_str().unwrap(), "--no-out-link"],
    );
    expect_success(&daemon, "nix-build", &[], &output);
    let stderr = stderr_of(&output);
    let drv = stderr
        .lines()
        .find_map(|line| line.trim().strip_suffix(".drv").map(|d| format!("{d}.drv")))
        .unwrap_or_else(|| panic!("no derivation named in {stderr}"));
    assert!(
        stderr.contains(&format!("building '{drv}'...\nfirst line\nsecond line\n")),
        "{stderr}"
    );
    // Again, rebuilt (--check: the valid output is redirected and compared), with -L.
    let output = lab.run(
        "nix",
        None,
        &[
            "--extra-experimental-features",
            "nix-command",
            "build",
            "-L",
            "--rebuild",
            "--no-link",
            "-f",
            file.to_str().unwrap(),
        ],
    );
    expect_success(&daemon, "nix build --rebuild", &[], &output);
    let stderr = stderr_of(&output);
    assert!(stderr.contains("chatty> first line"), "{stderr}");
    assert!(stderr.contains("chatty> second line"), "{stderr}");
}

/// A trusted client's `--auto-optimise-store` links the files of what it builds to
/// identical ones already in the store.
#[test]
fn auto_optimise_store_from_a_client_links_built_files() {
    let test = "auto_optimise_store_from_a_client_links_built_files";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("sandbox = false\n"));
    let daemon = NsDaemon::start(&lab, &[]);
    let script = "/bin/mkdir $out; echo same contents > $out/file";
    let one = lab.derivation("one", script);
    let two = lab.derivation("two", script);
    let no_link = "--no-out-link";
    let out_one = lab.run_ok(
        &daemon,
        "nix-build",
        &[one.to_str().unwrap(), no_link, "--auto-optimise-store"],
    );
    let out_two = lab.run_ok(
        &daemon,
        "nix-build",
        &[two.to_str().unwrap(), no_link, "--auto-optimise-store"],
    );
    let inode = |out: &str| fs::metadata(lab.physical(out).join("file")).unwrap().ino();
    assert_eq!(inode(&out_one), inode(&out_two), "the two files are one");
    // Without the option, nothing is linked.
    let three = lab.derivation("three", script);
    let out_three = lab.run_ok(&daemon, "nix-build", &[three.to_str().unwrap(), no_link]);
    assert_ne!(inode(&out_one), inode(&out_three));
}

/// Recursive Nix: a build asking for it (`requiredSystemFeatures = [ "recursive-nix" ]`,
/// offered with the experimental feature) talks to a daemon of its own, which shows only
/// its inputs and what it adds; what it added may be referred to by its output.
#[test]
fn recursive_nix_serves_a_restricted_store_to_the_build() {
    let test = "recursive_nix_serves_a_restricted_store_to_the_build";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some(
        "sandbox = false\nexperimental-features = nix-command recursive-nix\n",
    ));
    let daemon = NsDaemon::start(&lab, &[]);
    // Valid in the store, but no input of the build: invisible to it.
    let unreachable = lab.write("unreachable", "not for the build\n");
    let unreachable = lab.run_ok(
        &daemon,
        "nix-store",
        &["--add", unreachable.to_str().unwrap()],
    );
    let nix_bin = "/usr/bin";
    let file = lab.write(
        "recursive.nix",
        &format!(
            r#"derivation {{
  name = "recursive";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  requiredSystemFeatures = [ "recursive-nix" ];
  dummy = builtins.toFile "dummy" "bla";
  unreachable = "{unreachable}";
  args = [ "-c" ''
    set -e
    export PATH={nix_bin}:/bin
    nix-store --query --hash $dummy > /dev/null
    if nix-store --query --hash $unreachable 2> /dev/null; then exit 10; fi
    echo added > added
    added=$(nix-store --add ./added)
    mkdir $out
    ln -s $added $out/added
    echo $NIX_REMOTE > $out/remote
  '' ];
}}
"#
        ),
    );
    let out = build_ok(&lab, &daemon, &file, &[]);
    let remote = fs::read_to_string(lab.physical(&out).join("remote")).unwrap();
    assert!(
        remote.starts_with("unix://") && remote.trim_end().ends_with("/.nix-socket"),
        "{remote}"
    );
    let added = fs::read_link(lab.physical(&out).join("added")).unwrap();
    let added = added.to_str().unwrap().to_owned();
    assert!(added.ends_with("-added"), "{added}");
    // The output refers to what the build added, which stays valid with it.
    let references = lab.run_ok(&daemon, "nix-store", &["--query", "--references", &out]);
    assert!(references.lines().any(|line| line == added), "{references}");
    assert!(valid(&lab, &added));
}

/// Arca's own client prints the log its daemon streams: `arca build -L` through the
/// daemon shows the builder's lines prefixed with the derivation's name, as a local
/// build does.
#[test]
fn arca_build_through_the_daemon_prints_the_streamed_log() {
    let test = "arca_build_through_the_daemon_prints_the_streamed_log";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("sandbox = false\n"));
    let daemon = NsDaemon::start(&lab, &[]);
    let file = lab.derivation("talker", "echo a line from the builder; echo done > $out");
    let drv = lab.run_ok(&daemon, "nix-instantiate", &[file.to_str().unwrap()]);
    let output = Command::new(arca_bin())
        .args(["--store", &lab.store_uri(), "build", "-L", &drv])
        .env("NIX_CONF_DIR", lab.path("client-conf"))
        .output()
        .unwrap();
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("building '{drv}'...")), "{stderr}");
    assert!(
        stderr.contains("talker> a line from the builder"),
        "{stderr}"
    );
}

// --- build-users-group ------------------------------------------------------------------

/// The uids of `group`'s members, from the host's account database.
fn group_members(group: &str) -> Option<(u32, Vec<u32>)> {
    let group = nix::unistd::Group::from_name(group).ok()??;
    let uids = group
        .mem
        .iter()
        .filter_map(|name| nix::unistd::User::from_name(name).ok()?)
        .map(|user| user.uid.as_raw())
        .collect();
    Some((group.gid.as_raw(), uids))
}

/// A daemon run as root builds unsandboxed as a member of `build-users-group` (`nixbld`
/// by default, as Nix), never as root; the store directory becomes writable by that
/// group (root:nixbld 1775, as Nix makes it); and whatever the build left running as
/// that account (a daemonised process, out of its process group) is killed when it ends.
#[test]
fn unsandboxed_root_builds_run_as_a_build_user() {
    let test = "unsandboxed_root_builds_run_as_a_build_user";
    if !prerequisites(test) {
        return;
    }
    let Some((gid, members)) = group_members("nixbld").filter(|(_, m)| !m.is_empty()) else {
        eprintln!("SKIPPED {test}: no group 'nixbld' with members (installed with nix-bin)");
        return;
    };
    let lab = Lab::new(Some("sandbox = false\n"));
    let pid_file = lab.path("tmp/stray.pid");
    let file = lab.derivation(
        "whoami",
        &format!(
            "echo $(/usr/bin/id -u):$(/usr/bin/id -g) > $out; \
             /usr/bin/setsid /bin/sh -c 'echo $$ > {pid}; exec /bin/sleep 1000' \
             > /dev/null 2>&1 < /dev/null & \
             while [ ! -s {pid} ]; do /bin/sleep 0.01; done",
            pid = pid_file.display()
        ),
    );
    let sticky = std::os::unix::fs::PermissionsExt::from_mode(0o1777);
    fs::set_permissions(lab.path("tmp"), sticky).unwrap();
    let daemon = NsDaemon::start(&lab, &[]);
    let out = build_ok(&lab, &daemon, &file, &[]);

    let seen = fs::read_to_string(lab.physical(&out)).unwrap();
    let (uid, group) = seen.trim().split_once(':').unwrap();
    let uid: u32 = uid.parse().unwrap();
    assert!(
        members.contains(&uid),
        "built as uid {uid}, not a nixbld member"
    );
    assert_eq!(group.parse::<u32>().unwrap(), gid);
    let store = fs::metadata(lab.path("nixroot/nix/store")).unwrap();
    assert_eq!((store.gid(), store.mode() & 0o7777), (gid, 0o1775));

    // The stray process is gone (or a zombie nobody has reaped yet).
    let pid = fs::read_to_string(&pid_file).unwrap();
    let status = format!("/proc/{}/status", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(10);
    let alive = || {
        fs::read_to_string(&status).is_ok_and(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
    };
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(), "the build's daemonised process still runs");
}

// --- temporary roots ------------------------------------------------------------------

/// A connection's temporary roots end with the connection, before the daemon flushes
/// what it registered: a path built through the daemon can be deleted by the very next
/// command, as with nix-daemon (whose connection process exits).
#[test]
fn a_path_built_through_the_daemon_can_be_deleted_at_once() {
    let test = "a_path_built_through_the_daemon_can_be_deleted_at_once";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("sandbox = false\nbuild-users-group =\n"));
    let daemon = NsDaemon::start(&lab, &[]);
    for round in 0..3 {
        let file = lab.derivation(&format!("fleeting-{round}"), "echo hi > $out");
        let out = lab.run_ok(
            &daemon,
            "nix-build",
            &[file.to_str().unwrap(), "--no-out-link"],
        );
        let deleted = lab.run("nix-store", None, &["--delete", &out]);
        expect_success(&daemon, "nix-store", &["--delete", &out], &deleted);
        assert!(!valid(&lab, &out), "round {round}: {out} is still valid");
    }
}
