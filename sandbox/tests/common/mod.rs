//! Shared helpers of the sandbox integration tests: skipping (or failing) when the host
//! cannot run a sandbox, specs for busybox and python3 programs, and host-side probes.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arca_sandbox::{run, Mount, Report, SandboxError, SandboxSpec};

/// Where the static busybox is on the host.
pub const HOST_BUSYBOX: &str = "/usr/bin/busybox";
/// Where a dynamic python3 is on the host (needs /usr and /lib* inside).
pub const HOST_PYTHON: &str = "/usr/bin/python3";

/// Applets the busybox scripts of the tests call by name.
const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "chmod",
    "chroot",
    "dd",
    "echo",
    "grep",
    "head",
    "hostname",
    "id",
    "kill",
    "ls",
    "mkdir",
    "mount",
    "nc",
    "pivot_root",
    "printf",
    "readlink",
    "rm",
    "seq",
    "setsid",
    "sleep",
    "stat",
    "test",
    "touch",
    "tr",
    "true",
    "umount",
    "uname",
    "unshare",
    "wc",
    "yes",
];

/// Whether the environment demands that every sandbox test really runs.
fn required() -> bool {
    std::env::var_os("ARCA_REQUIRE_SANDBOX").is_some_and(|v| v == "1")
}

/// Skips (returns false, loudly) or, under `ARCA_REQUIRE_SANDBOX=1`, fails.
pub fn skip(reason: &str) -> bool {
    if required() {
        panic!("ARCA_REQUIRE_SANDBOX=1 but {reason}");
    }
    // Straight to the process's stderr, past the test harness's output capture.
    let banner = format!(
        "\n*** SKIPPED: {reason} (set ARCA_REQUIRE_SANDBOX=1 to make this a failure) ***\n"
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), banner.as_bytes());
    false
}

/// True when the test runs as root; otherwise skips (or panics, see [`skip`]).
pub fn require_root() -> bool {
    if is_root() {
        true
    } else {
        skip("needs root")
    }
}

/// The effective uid of this process, read from `/proc/self/status`.
pub fn euid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid: line");
    line.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("effective uid")
}

pub fn is_root() -> bool {
    euid() == 0
}

/// The host busybox, or `None` after skipping.
pub fn busybox() -> Option<PathBuf> {
    let path = PathBuf::from(HOST_BUSYBOX);
    if path.is_file() {
        Some(path)
    } else {
        skip(&format!("needs a static busybox at {HOST_BUSYBOX}"));
        None
    }
}

/// The host python3, or `None` after skipping.
pub fn python3() -> Option<PathBuf> {
    let path = PathBuf::from(HOST_PYTHON);
    if path.exists() {
        Some(path)
    } else {
        skip(&format!("needs python3 at {HOST_PYTHON}"));
        None
    }
}

/// A sandbox running `script` with busybox `sh -c`: busybox at `/bin/busybox`, the applets
/// the tests use linked in `/bin`, `PATH=/bin`, a writable tmpfs `/build` as working
/// directory.
pub fn sh(script: &str) -> SandboxSpec {
    let mut spec = SandboxSpec::new("/bin/busybox", ["sh", "-c", script])
        .mount(Mount::bind_ro(HOST_BUSYBOX, "/bin/busybox"))
        .mount(Mount::Tmpfs {
            target: "/build".into(),
            mode: 0o777,
            size: None,
        })
        .cwd("/build")
        .env("PATH", "/bin")
        .env("HOME", "/build");
    for applet in APPLETS {
        spec = spec.mount(Mount::Symlink {
            link: Path::new("/bin").join(applet),
            target: "busybox".into(),
        });
    }
    spec
}

/// A sandbox running `python3 -c script` (as [`sh`], plus `/usr` and `/lib*` read-only).
pub fn python(script: &str) -> SandboxSpec {
    let mut spec = sh("");
    spec.program = "/usr/bin/python3".into();
    spec.args = ["python3", "-c", script]
        .into_iter()
        .map(OsString::from)
        .collect();
    spec = spec.mount(Mount::bind_ro("/usr", "/usr"));
    for lib in ["/lib", "/lib64"] {
        match fs::read_link(lib) {
            // Merged /usr: keep the host's links.
            Ok(target) => {
                spec = spec.mount(Mount::Symlink {
                    link: lib.into(),
                    target,
                })
            }
            Err(_) if Path::new(lib).is_dir() => spec = spec.mount(Mount::bind_ro(lib, lib)),
            Err(_) => {}
        }
    }
    spec
}

/// Python: the classic chroot escape in a nested user and mount namespace (CAP_SYS_CHROOT),
/// then a look for the host file named by `$MARKER`.
pub const CHROOT_ESCAPE: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs("/tmp/jail/inner", exist_ok=True)
if libc.unshare(0x10000000 | 0x00020000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
    raise SystemExit("unshare failed: errno %d" % ctypes.get_errno())
old_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
os.chroot("/tmp/jail")
os.chdir("/inner")
print("chroot done")
os.fchdir(old_root)
for _ in range(100):
    os.chdir("..")
os.chroot(".")
marker = os.environ["MARKER"]
print("root holds", sorted(os.listdir("/")))
print("marker", "REACHABLE" if os.path.exists(marker) else "unreachable")
print("via /proc/1/root", "REACHABLE" if os.path.exists("/proc/1/root" + marker) else "unreachable")
"#;

/// Runs the spec and returns its report and its output as text; panics on a setup error.
pub fn run_ok(spec: &SandboxSpec) -> (Report, String) {
    let mut output = Vec::new();
    let report = run(spec, &mut output).unwrap_or_else(|err| panic!("run failed: {err} ({err:?})"));
    (report, String::from_utf8_lossy(&output).into_owned())
}

/// Runs the spec, which must fail to start.
pub fn run_err(spec: &SandboxSpec) -> SandboxError {
    let mut output = Vec::new();
    match run(spec, &mut output) {
        Ok(report) => {
            panic!(
                "run unexpectedly succeeded: {report:?}, output {:?}",
                String::from_utf8_lossy(&output)
            )
        }
        Err(err) => err,
    }
}

/// A string no other process on this host carries: for argv markers and file names.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{}x{}x{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Host pids whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("listing /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// A directory in the host's /tmp, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("arca-sandbox-test-")
        .tempdir_in("/tmp")
        .expect("creating a temporary directory")
}

/// A host file that no sandbox binds: a unique file in a fresh host temporary directory
/// (mode 0755 directory, 0644 file, so any uid could read it if it were reachable).
pub struct HostMarker {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub contents: String,
}

pub fn host_marker() -> HostMarker {
    let dir = tempdir();
    let mut perms = fs::metadata(dir.path()).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(dir.path(), perms).expect("chmod");
    let path = dir.path().join("host-only-marker");
    let contents = unique("host-only-contents-");
    fs::write(&path, &contents).expect("writing the marker");
    HostMarker {
        dir,
        path,
        contents,
    }
}

/// Makes a host directory writable by anyone (for sandboxes running as uid 1000).
pub fn make_world_writable(path: &Path) {
    let mut perms = fs::metadata(path).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
    fs::set_permissions(path, perms).expect("chmod 0777");
}

/// Fails if any host process's command line holds `marker` (killing those first).
pub fn assert_no_survivors(marker: &str) {
    let survivors = processes_with(marker);
    for pid in &survivors {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    assert!(
        survivors.is_empty(),
        "sandbox processes outlived run(): host pids {survivors:?}"
    );
}

/// Pids of this process's children whose name (`comm`) is `name`.
pub fn children_named(name: &str) -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("listing /proc").flatten() {
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .map(str::trim)
                .unwrap_or("")
                .to_owned()
        };
        if field("PPid:") == me && field("Name:") == name {
            found.extend(field("Pid:").parse::<u32>());
        }
    }
    found
}

/// A run whose layout holds a directory for its binds and takes deferred binds: it reads
/// `late` (made after preparing) and a file bound from `source` by the spec.
pub fn prepared_run_with_binds() -> (Report, String) {
    let store = tempdir();
    let bound = tempdir();
    fs::write(bound.path().join("early"), "early\n").unwrap();
    let spec = SandboxSpec {
        deferred_binds: Some(arca_sandbox::DeferredBinds {
            source_dir: store.path().to_path_buf(),
            target_dir: "/nix/store".into(),
        }),
        ..sh("cat /early /nix/store/late")
    }
    .mount(Mount::bind_ro(bound.path().join("early"), "/early"));
    let prepared = arca_sandbox::prepare(&spec).expect("preparing");
    fs::write(store.path().join("late"), "late\n").unwrap();
    let mut output = Vec::new();
    let report = prepared.run(&["late"], &mut output).expect("running");
    (report, String::from_utf8_lossy(&output).into_owned())
}

/// Entries made after a sandbox was prepared and named as it starts appear read-only,
/// nosuid and nodev, and nothing unnamed appears (see `prepared.rs`); with a user
/// namespace of the sandbox's own (as builds run) or without.
pub fn check_deferred_binds(user_namespace: arca_sandbox::UserNamespace) {
    if !require_root() || busybox().is_none() {
        return;
    }
    let store = tempdir();
    let spec = SandboxSpec {
        user_namespace,
        deferred_binds: Some(arca_sandbox::DeferredBinds {
            source_dir: store.path().to_path_buf(),
            target_dir: "/nix/store".into(),
        }),
        ..sh(
            r#"cat /nix/store/dir-a/x /nix/store/file-b; readlink /nix/store/link-c
              ls /nix/store | tr '\n' ' '; echo
              (echo y > /nix/store/dir-a/y) 2>&1
              (echo z >> /nix/store/file-b) 2>&1
              grep -q ' /nix/store/dir-a ro,nosuid,nodev' /proc/self/mountinfo && echo sealed
              grep -q ' /nix/store/file-b ro,nosuid,nodev' /proc/self/mountinfo && echo sealed
              true"#,
        )
    };
    let prepared = arca_sandbox::prepare(&spec).expect("preparing");
    // The entries only come into being now, after the sandbox was prepared.
    fs::create_dir(store.path().join("dir-a")).unwrap();
    fs::write(store.path().join("dir-a/x"), "in a\n").unwrap();
    fs::write(store.path().join("file-b"), "in b\n").unwrap();
    // Writable by anyone on the host: only the read-only mount stops the program.
    for entry in ["dir-a", "file-b"] {
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o777);
        fs::set_permissions(store.path().join(entry), mode).unwrap();
    }
    std::os::unix::fs::symlink("dir-a", store.path().join("link-c")).unwrap();
    fs::write(store.path().join("not-named"), "hidden\n").unwrap();
    let mut output = Vec::new();
    let report = prepared
        .run(&["dir-a", "file-b", "link-c"], &mut output)
        .expect("running");
    let output = String::from_utf8_lossy(&output);
    assert_eq!(report.outcome, arca_sandbox::Outcome::Exited(0), "{output}");
    assert_eq!(
        output,
        "in a\nin b\ndir-a\ndir-a file-b link-c \n\
         sh: can't create /nix/store/dir-a/y: Read-only file system\n\
         sh: can't create /nix/store/file-b: Read-only file system\n\
         sealed\nsealed\n"
    );
    assert!(!store.path().join("dir-a/y").exists());
    assert_eq!(fs::read(store.path().join("file-b")).unwrap(), b"in b\n");
}

/// Sandboxes of every kind the zygote tests care about work: binds through held
/// directories and deferred binds, with a cgroup and without.
pub fn check_sandboxes_work() {
    let (report, output) = prepared_run_with_binds();
    assert_eq!(report.outcome, arca_sandbox::Outcome::Exited(0), "{output}");
    assert_eq!(output, "early\nlate\n");
    for cgroup in [
        arca_sandbox::CgroupMode::Auto,
        arca_sandbox::CgroupMode::Off,
    ] {
        // The program runs under the caller's scheduling policy (SCHED_OTHER, 0: the
        // 41st field of `stat`), whatever the keeper that made it ran under.
        let mut spec = sh("echo $$; read -r stat < /proc/self/stat; set -- $stat; echo ${41}");
        spec.cgroup = cgroup;
        let mut output = Vec::new();
        let report = run(&spec, &mut output).expect("running");
        assert_eq!(report.outcome, arca_sandbox::Outcome::Exited(0));
        assert_eq!(String::from_utf8_lossy(&output), "1\n0\n");
    }
}
