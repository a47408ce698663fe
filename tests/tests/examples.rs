//! The README's main job: `examples/build-hello.sh` builds the sample derivation into a
//! store and prints its output path — as root, and as an unprivileged user (rootless
//! builds through user namespaces, issue #5) — and the README's first run exactly as a new
//! user makes it (issue #15): no `--store`, so the default store under a `$HOME` of mode
//! 0700, and `arca` built by the script itself into a `CARGO_TARGET_DIR` set elsewhere.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use arca_tests::{arca_bin, workspace_root};

/// Whether this process is root (`/proc/self` belongs to the effective user).
fn is_root() -> bool {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

/// Whether a static busybox is installed (the example's builder); says loudly when not.
fn busybox_available(test: &str) -> bool {
    let found = ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !found {
        assert!(
            std::env::var("ARCA_REQUIRE_NIX").as_deref() != Ok("1"),
            "{test}: busybox-static is required (ARCA_REQUIRE_NIX=1) but not installed"
        );
        eprintln!("SKIPPED {test}: no static busybox (apt-get install busybox-static)");
    }
    found
}

fn run_example(store: &Path, as_nobody: bool) -> (String, String) {
    let script = workspace_root().join("examples/build-hello.sh");
    let mut command = if as_nobody {
        let mut command = Command::new("setpriv");
        command.args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "bash",
        ]);
        command
    } else {
        Command::new("bash")
    };
    let output = command
        .arg(&script)
        .arg("--store")
        .arg(store)
        .env("ARCA_BIN", arca_bin())
        .env(
            "HOME",
            store.parent().expect("the store is inside a temp dir"),
        )
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "build-hello.sh failed:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

fn check_hello(store: &Path, stdout: &str, stderr: &str) {
    let out = stdout.trim();
    assert!(
        out.starts_with("/nix/store/") && out.ends_with("-hello"),
        "prints the output path: {stdout:?}"
    );
    let greeting =
        std::fs::read_to_string(store.join(out.trim_start_matches('/')).join("greeting")).unwrap();
    assert_eq!(
        greeting,
        "Hello from hello, built by nixbld on localhost in a sandbox\n"
    );
    assert!(
        stderr.contains("hello> Hello from hello"),
        "-L shows the build log: {stderr}"
    );
}

#[test]
fn readme_example_builds_hello_into_a_store() {
    if !busybox_available("readme_example_builds_hello_into_a_store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (stdout, stderr) = run_example(&store, false);
    check_hello(&store, &stdout, &stderr);
}

#[test]
fn readme_example_builds_rootless_as_an_unprivileged_user() {
    let test = "readme_example_builds_rootless_as_an_unprivileged_user";
    if !busybox_available(test) {
        return;
    }
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root to switch to the unprivileged user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let store = dir.path().join("store");
    let (stdout, stderr) = run_example(&store, true);
    check_hello(&store, &stdout, &stderr);
    // The store belongs to the user who built into it; the build user inside was 1000.
    let owner =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(store.join("nix/store")).unwrap());
    assert_eq!(owner, 65534);
}

/// `bash examples/build-hello.sh` with no arguments, `HOME` = `home` and nothing else
/// of the caller's arca settings; `user` runs it as that uid (through `setpriv`).
fn first_run(home: &Path, user: Option<u32>, env: &[(&str, &Path)]) -> (String, String) {
    let script = workspace_root().join("examples/build-hello.sh");
    let mut command = match user {
        Some(uid) => {
            let mut command = Command::new("setpriv");
            let id = uid.to_string();
            command.args(["--reuid", &id, "--regid", &id, "--clear-groups", "bash"]);
            command
        }
        None => Command::new("bash"),
    };
    command.arg(&script).env("HOME", home);
    for name in [
        "ARCA_BIN",
        "ARCA_STORE",
        "ARCA_CONFIG",
        "XDG_DATA_HOME",
        "CARGO_TARGET_DIR",
    ] {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "the first run failed:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

/// The README's first command on a fresh machine: as root with `HOME` in a 0700 directory
/// (the sandbox must reach the default store below it) and the script building `arca`
/// itself into a `CARGO_TARGET_DIR` elsewhere, showing that it does; then as an ordinary
/// user with a 0700 home of its own.
#[test]
fn first_run_works_with_a_private_home_and_a_target_dir_elsewhere() {
    let test = "first_run_works_with_a_private_home_and_a_target_dir_elsewhere";
    if !busybox_available(test) {
        return;
    }
    if !is_root() {
        assert!(
            std::env::var("ARCA_REQUIRE_SANDBOX").as_deref() != Ok("1"),
            "{test}: must run as root (ARCA_REQUIRE_SANDBOX=1)"
        );
        eprintln!("SKIPPED {test}: needs root (a 0700 home of root, and another user)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("root-home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Kept between runs so that only the first one builds from scratch; not `target/`.
    let target_dir = workspace_root().join("target/first-run");
    let (stdout, stderr) = first_run(&home, None, &[("CARGO_TARGET_DIR", &target_dir)]);
    let store = home.join(".local/share/arca");
    check_hello(&store, &stdout, &stderr);
    assert!(
        stderr.contains("building arca (release)"),
        "says that it builds arca: {stderr}"
    );
    let built = target_dir.join("release/arca");
    assert!(built.is_file(), "{} was built", built.display());

    // An ordinary user: its own 0700 home, the arca just built (cargo's files are root's).
    let arca = dir.path().join("arca");
    std::fs::copy(&built, &arca).unwrap();
    let home = dir.path().join("user-home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (stdout, stderr) = first_run(&home, Some(65534), &[("ARCA_BIN", &arca)]);
    let store = home.join(".local/share/arca");
    check_hello(&store, &stdout, &stderr);
    let owner =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(store.join("nix/store")).unwrap());
    assert_eq!(owner, 65534, "the user's store is the user's");
}
