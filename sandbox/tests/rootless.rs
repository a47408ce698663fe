//! The sandbox run by an unprivileged caller (user namespace made by the sandbox itself).
//!
//! Each outer test (run as root) re-executes this test binary as `nobody` with
//! `setpriv`, asking for one `#[ignore]`d inner test, which does the checks and which
//! does nothing unless `ARCA_ROOTLESS_INNER=1` (so that `cargo test -- --ignored` as any
//! user does not run it in the wrong setting).

mod common;

use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use arca_sandbox::{Mount, Outcome, SandboxError};
use common::{busybox, python3, require_root, run_err, run_ok, sh, HOST_BUSYBOX, HOST_PYTHON};

const INNER: &str = "ARCA_ROOTLESS_INNER";
const NOBODY: u32 = 65534;
/// The descriptor the outer test leaves open (without close-on-exec) in the inner process.
const INHERITED_FD: u32 = 9;

/// True in the inner process (as nobody); false, doing nothing, anywhere else.
fn inner() -> bool {
    if std::env::var_os(INNER).is_none_or(|v| v != "1") {
        eprintln!("{INNER} is not set: this test only runs re-executed by its outer test");
        return false;
    }
    assert_eq!(common::euid(), NOBODY, "the inner test must run as nobody");
    true
}

/// What the outer tests need on top of root.
fn outer_ready() -> bool {
    require_root()
        && busybox().is_some()
        && python3().is_some()
        && (Path::new("/usr/bin/setpriv").exists()
            || common::skip("needs setpriv at /usr/bin/setpriv"))
}

/// The inner test invocation: this binary, one exact test, ignored tests included.
fn inner_args(test: &str) -> Vec<String> {
    let exe = std::env::current_exe()
        .expect("current_exe")
        .display()
        .to_string();
    [
        exe.as_str(),
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// Checks that the inner test ran, alone, and passed.
fn assert_inner_passed(test: &str, output: Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "inner test {test} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
}

/// Runs `test` as nobody (no supplementary groups), through a shell that leaves
/// descriptor 9 open without close-on-exec, as a careless caller might.
fn run_inner_as_nobody(test: &str) {
    let output = Command::new("/usr/bin/setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .args([
            HOST_BUSYBOX,
            "sh",
            "-c",
            "exec 9</dev/null; exec \"$@\"",
            "sh",
        ])
        .args(inner_args(test))
        .env(INNER, "1")
        .env("ARCA_REQUIRE_SANDBOX", "1")
        .env("TMPDIR", "/tmp")
        .env_remove("RUST_TEST_THREADS")
        .current_dir("/tmp")
        .output()
        .expect("running setpriv");
    assert_inner_passed(test, output);
}

// ---------------------------------------------------------------------------------------
// Outer tests (root)
// ---------------------------------------------------------------------------------------

#[test]
fn rootless_identity_and_host_files() {
    if outer_ready() {
        run_inner_as_nobody("inner_identity_and_host_files");
    }
}

#[test]
fn rootless_root_escape_does_not_reach_host() {
    if outer_ready() {
        run_inner_as_nobody("inner_root_escape_does_not_reach_host");
    }
}

#[test]
fn rootless_privileges_dropped_and_setuid_blocked() {
    if outer_ready() {
        run_inner_as_nobody("inner_privileges_dropped_and_setuid_blocked");
    }
}

#[test]
fn rootless_network_isolated() {
    if outer_ready() {
        run_inner_as_nobody("inner_network_isolated");
    }
}

#[test]
fn rootless_no_process_survives() {
    if outer_ready() {
        run_inner_as_nobody("inner_no_process_survives");
    }
}

#[test]
fn rootless_inherited_descriptor_does_not_reach_the_program() {
    if outer_ready() {
        run_inner_as_nobody("inner_inherited_descriptor_does_not_reach_the_program");
    }
}

/// The kernel refusing user namespaces is simulated without touching global settings:
/// `user.max_user_namespaces` is per user namespace, so the inner test runs as nobody in
/// a user namespace of its own (root and nobody mapped 1:1) whose limit is 0.
#[test]
fn rootless_refused_user_namespace_is_reported() {
    if !outer_ready() {
        return;
    }
    // Root maps ids of the child's namespace (a privileged writer may map several), the
    // child sets the limit there, becomes nobody and runs the inner test.
    let orchestrator = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(ready_r); os.close(go_w)
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        os.write(2, b"unshare(CLONE_NEWUSER) failed: errno %d\n" % ctypes.get_errno())
        os._exit(90)
    os.write(ready_w, b"r"); os.close(ready_w)
    if os.read(go_r, 1) != b"g":
        os._exit(91)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    os.execv(sys.argv[1], sys.argv[1:])
os.close(ready_w); os.close(go_r)
if os.read(ready_r, 1) != b"r":
    sys.exit(92)
for name in ("uid_map", "gid_map"):
    with open("/proc/%d/%s" % (pid, name), "w") as f:
        f.write("0 0 1\n65534 65534 1\n")
os.write(go_w, b"g"); os.close(go_w)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let test = "inner_refused_user_namespace_is_reported";
    let output = Command::new(HOST_PYTHON)
        .args(["-c", orchestrator])
        .args(inner_args(test))
        .env(INNER, "1")
        .env("ARCA_REQUIRE_SANDBOX", "1")
        .env("TMPDIR", "/tmp")
        .current_dir("/tmp")
        .output()
        .expect("running python3");
    assert_inner_passed(test, output);
}

// ---------------------------------------------------------------------------------------
// Inner tests (nobody)
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "run as nobody by rootless_identity_and_host_files"]
fn inner_identity_and_host_files() {
    if !inner() || busybox().is_none() {
        return;
    }
    let marker = common::host_marker();
    let out_dir = common::tempdir();
    let spec = sh(r#"
        id; cat /proc/self/uid_map /proc/self/gid_map
        cat /etc/shadow; ls /root; cat "$MARKER"
        echo written > /out/file && stat -c '%u %g' /out/file"#)
    .env("MARKER", &marker.path)
    .mount(Mount::bind_rw(out_dir.path(), "/out"));
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    let marker_path = marker.path.display();
    let words: Vec<&str> = out
        .lines()
        .take(3)
        .flat_map(str::split_whitespace)
        .collect();
    assert_eq!(
        words,
        [
            "uid=1000(nixbld)",
            "gid=100(nixbld)",
            "1000",
            "65534",
            "1",
            "100",
            "65534",
            "1"
        ],
        "{out}"
    );
    assert!(
        out.contains("cat: can't open '/etc/shadow': No such file or directory\n"),
        "{out}"
    );
    assert!(
        out.contains("ls: /root: No such file or directory\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "cat: can't open '{marker_path}': No such file or directory\n"
        )),
        "{out}"
    );
    assert!(out.ends_with("1000 100\n"), "{out}");
    let meta = std::fs::metadata(out_dir.path().join("file")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY));
}

#[test]
#[ignore = "run as nobody by rootless_root_escape_does_not_reach_host"]
fn inner_root_escape_does_not_reach_host() {
    if !inner() || python3().is_none() {
        return;
    }
    let marker = common::host_marker();
    let (report, out) = run_ok(&common::python(common::CHROOT_ESCAPE).env("MARKER", &marker.path));
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert!(out.contains("chroot done"), "{out}");
    assert!(out.contains("marker unreachable\n"), "{out}");
    assert!(!out.contains("REACHABLE"), "{out}");
    assert!(
        out.contains(
            "root holds ['bin', 'build', 'dev', 'etc', 'lib', 'lib64', 'proc', 'tmp', 'usr']"
        ),
        "{out}"
    );
}

#[test]
#[ignore = "run as nobody by rootless_privileges_dropped_and_setuid_blocked"]
fn inner_privileges_dropped_and_setuid_blocked() {
    if !inner() || busybox().is_none() {
        return;
    }
    let spec = sh(r#"
        touch f
        chmod u+s f; echo "u+s status $?"
        chmod g+s f; echo "g+s status $?"
        stat -c '%a' f
        grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\t'"#);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(
        out,
        "chmod: f: Operation not permitted\nu+s status 1\nchmod: f: Operation not permitted\ng+s status 1\n644\n\
         CapInh:0000000000000000\nCapPrm:0000000000000000\nCapEff:0000000000000000\n\
         CapBnd:0000000000000000\nCapAmb:0000000000000000\nNoNewPrivs:1\nSeccomp:2\n"
    );
}

#[test]
#[ignore = "run as nobody by rootless_network_isolated"]
fn inner_network_isolated() {
    if !inner() || python3().is_none() {
        return;
    }
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let name = common::unique("arca-test-abstract-");
    let abstract_socket =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let script = r#"
import os, socket
print("interfaces", [n for _, n in socket.if_nameindex()])
try:
    socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=2)
    print("tcp connected")
except OSError as e:
    print("tcp errno", e.errno)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("\0" + os.environ["NAME"])
    print("abstract connected")
except OSError as e:
    print("abstract errno", e.errno)
"#;
    let spec = common::python(script)
        .env("PORT", tcp.local_addr().unwrap().port().to_string())
        .env("NAME", &name);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(
        out,
        "interfaces ['lo']\ntcp errno 111\nabstract errno 111\n"
    );
    tcp.set_nonblocking(true).unwrap();
    abstract_socket.set_nonblocking(true).unwrap();
    assert!(tcp
        .accept()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock));
    assert!(abstract_socket
        .accept()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock));
}

#[test]
#[ignore = "run as nobody by rootless_no_process_survives"]
fn inner_no_process_survives() {
    if !inner() || busybox().is_none() {
        return;
    }
    // Background children and a double-forked daemon, then the program exits.
    let marker = common::unique("arca-rootless-");
    let spec = sh(r#"
        for i in 1 2 3 4 5 6 7 8 9 10; do sh -c 'echo > /tmp/s.$$; sleep 1000; true' "$MARKER" & done
        setsid sh -c 'sh -c "echo > /tmp/s.\$\$; sleep 1000; true" "$MARKER" </dev/null >/dev/null 2>&1 &' &
        n=0
        while [ "$(ls /tmp | grep -c '^s\.')" -lt 11 ] && [ $n -lt 500 ]; do sleep 0.01; n=$((n + 1)); done
        echo "started $(ls /tmp | grep -c '^s\.')""#)
    .env("MARKER", &marker);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(out, "started 11\n");
    common::assert_no_survivors(&marker);

    // The same, killed by the wall-clock limit while it loops.
    let marker = common::unique("arca-rootless-timeout-");
    let mut spec = sh(r#"
        for i in 1 2 3; do sh -c 'echo > /tmp/s.$$; sleep 1000; true' "$MARKER" & done
        n=0
        while [ "$(ls /tmp | grep -c '^s\.')" -lt 3 ] && [ $n -lt 500 ]; do sleep 0.01; n=$((n + 1)); done
        echo ready
        while :; do sleep 1; done"#)
    .env("MARKER", &marker);
    spec.limits.timeout = Some(Duration::from_millis(400));
    let (report, out) = run_ok(&spec);
    assert_eq!(
        report.outcome,
        Outcome::TimedOut(Duration::from_millis(400)),
        "{out}"
    );
    assert_eq!(out, "ready\n");
    common::assert_no_survivors(&marker);
}

#[test]
#[ignore = "run as nobody by rootless_inherited_descriptor_does_not_reach_the_program"]
fn inner_inherited_descriptor_does_not_reach_the_program() {
    if !inner() || busybox().is_none() {
        return;
    }
    let inherited = format!("/proc/self/fd/{INHERITED_FD}");
    assert_eq!(
        std::fs::read_link(&inherited).expect("the outer test left fd 9 open"),
        Path::new("/dev/null")
    );
    let (report, out) = run_ok(&sh("ls /proc/1/fd; true"));
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(out, "0\n1\n2\n");
}

#[test]
#[ignore = "run as nobody in a user namespace allowing no more by rootless_refused_user_namespace_is_reported"]
fn inner_refused_user_namespace_is_reported() {
    if !inner() || busybox().is_none() {
        return;
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .unwrap()
            .trim(),
        "0"
    );
    let err = run_err(&sh("true"));
    assert!(
        matches!(err, SandboxError::UserNamespacesUnavailable { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("user namespaces are not available"),
        "{err}"
    );
}
