//! The README's main job: `examples/build-hello.sh` builds the sample derivation into a
//! store and prints its output path — as root, and as an unprivileged user (rootless
//! builds through user namespaces, issue #5).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use arca_tests::{arca_bin, workspace_root};

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
    // /proc/self belongs to the effective user.
    let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    if euid != 0 {
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
