//! What a sandboxed program must not be able to do: read or write host files it was not
//! given, escape its root, reach the host network or host processes, outlive its run,
//! make setuid files or keep capabilities. Each test also checks that the probe really
//! ran (so that it fails, rather than passes vacuously, when a protection is removed).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use arca_sandbox::{Mount, Network, Outcome, UserNamespace};
use common::{busybox, python3, require_root, run_ok, sh};

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

#[test]
fn cannot_read_unbound_host_files() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let marker = common::host_marker();
    let spec = sh(r#"
        for path in /etc/shadow /root "$MARKER"; do
            cat "$path" 2>&1; echo "cat $path status $?"
            ls "$path" 2>&1; echo "ls $path status $?"
        done
        ls /etc"#)
    .env("MARKER", &marker.path);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    let marker_path = marker.path.display().to_string();
    for path in ["/etc/shadow", "/root", marker_path.as_str()] {
        assert!(
            out.contains(&format!(
                "cat: can't open '{path}': No such file or directory"
            )),
            "{path}: {out}"
        );
        assert!(
            out.contains(&format!("cat {path} status 1")),
            "{path}: {out}"
        );
        assert!(
            out.contains(&format!("ls {path} status 1")),
            "{path}: {out}"
        );
    }
    assert!(
        !out.contains(&marker.contents),
        "the host marker was read: {out}"
    );
    // Only the generated files are in /etc.
    assert!(out.ends_with("group\nhosts\npasswd\n"), "{out}");
}

#[test]
fn read_only_bind_cannot_be_written() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let dir = common::tempdir();
    common::make_world_writable(dir.path());
    let existing = dir.path().join("existing");
    std::fs::write(&existing, "original\n").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o666)).unwrap();
    let spec = sh(r#"
        echo new > /ro/new; echo "create status $?"
        echo more >> /ro/existing; echo "append status $?"
        rm -f /ro/existing; echo "rm status $?"
        mkdir /ro/sub; echo "mkdir status $?"
        touch /ro; echo "touch status $?"
        cat /ro/existing"#)
    .mount(Mount::bind_ro(dir.path(), "/ro"));
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    for what in ["create", "append", "rm", "mkdir", "touch"] {
        assert!(
            out.contains(&format!("{what} status 1")),
            "{what} did not fail: {out}"
        );
    }
    assert_eq!(out.matches("Read-only file system").count(), 5, "{out}");
    assert!(out.ends_with("original\n"), "{out}");
    // Nothing changed on the host.
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "original\n");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["existing"]);
}

#[test]
fn writable_bind_is_writable_and_visible_on_host() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let dir = common::tempdir();
    common::make_world_writable(dir.path());
    let spec = sh("echo written-inside > /out/result && mkdir /out/sub && echo ok")
        .mount(Mount::bind_rw(dir.path(), "/out"));
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(out, "ok\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("result")).unwrap(),
        "written-inside\n"
    );
    assert!(dir.path().join("sub").is_dir());
}

#[test]
fn root_file_system_is_read_only() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let spec = sh(r#"
        touch /new-file; echo "root status $?"
        mkdir /etc/x; echo "etc status $?"
        mkdir /bin/x; echo "bin status $?""#);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    for what in ["root", "etc", "bin"] {
        assert!(out.contains(&format!("{what} status 1")), "{what}: {out}");
    }
    // The root is sealed read-only (not merely owned by root): the error is EROFS.
    assert_eq!(out.matches("Read-only file system").count(), 3, "{out}");
}

// ---------------------------------------------------------------------------------------
// Escaping the root
// ---------------------------------------------------------------------------------------

/// The classic chroot escape (chroot into a subdirectory while holding a descriptor of
/// the old root, then `..` upwards), with CAP_SYS_CHROOT gained in a nested user
/// namespace. After `pivot_root` and detaching the old root, `..` stops at the sandbox's
/// root: the host's /tmp (where the marker is) stays out of reach.
#[test]
fn chroot_escape_does_not_reach_host_root() {
    if !require_root() || python3().is_none() {
        return;
    }
    let marker = common::host_marker();
    let spec = common::python(common::CHROOT_ESCAPE).env("MARKER", &marker.path);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert!(out.contains("chroot done"), "{out}");
    assert!(out.contains("marker unreachable\n"), "{out}");
    assert!(out.contains("via /proc/1/root unreachable\n"), "{out}");
    assert!(!out.contains("REACHABLE"), "{out}");
    // `..` from the old root stopped at the sandbox's own root.
    assert!(
        out.contains(
            "root holds ['bin', 'build', 'dev', 'etc', 'lib', 'lib64', 'proc', 'tmp', 'usr']"
        ),
        "{out}"
    );
}

/// `pivot_root` again (in a nested user and mount namespace) only stacks the sandbox's
/// own root under the new one: the host's root is not behind it.
#[test]
fn nested_pivot_root_does_not_reach_host_root() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let marker = common::host_marker();
    let spec = sh(r#"
        mkdir /tmp/new
        unshare -r -m sh -c '
            mount -t tmpfs none /tmp/new || exit 10
            mkdir /tmp/new/old || exit 11
            cat /bin/busybox > /tmp/new/busybox && chmod 755 /tmp/new/busybox || exit 12
            cd /tmp/new && pivot_root . old || exit 13
            echo "pivoted; old root holds:" $(/busybox ls /old)
            if test -e "/old$MARKER"; then echo "marker REACHABLE"; else echo "marker unreachable"; fi
            # Whatever the old root was stacked on would show up at /old now.
            /busybox umount -l /old; echo "umount status $?"
            echo "old now holds:" $(/busybox ls -A /old)
            if test -e "/old$MARKER"; then echo "marker REACHABLE"; else echo "marker unreachable"; fi
        '
        echo "status $?""#)
    .env("MARKER", &marker.path);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert!(
        out.contains("pivoted; old root holds: bin build dev etc proc tmp\n"),
        "{out}"
    );
    assert!(
        out.ends_with(
            "marker unreachable\numount status 0\nold now holds:\nmarker unreachable\nstatus 0\n"
        ),
        "{out}"
    );
    assert!(!out.contains("REACHABLE"), "{out}");
}

/// A fresh /proc in nested user, mount and pid namespaces lists only the nested
/// namespace's processes, and its pid 1's root is the sandbox's root.
#[test]
fn fresh_proc_in_nested_namespaces_shows_no_host_processes() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let marker = common::host_marker();
    let process_marker = common::unique("arca-host-process-");
    let mut host_process = Command::new(common::HOST_BUSYBOX)
        .args(["sh", "-c", "sleep 30; true", &process_marker])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let spec = sh(r#"
        unshare -r -m -p -f --mount-proc sh -c '
            echo "pids:" $(cd /proc && echo [0-9]*)
            for f in /proc/[0-9]*/cmdline; do tr "\0" " " < $f; echo; done
            if test -e "/proc/1/root$MARKER"; then echo "marker REACHABLE"; else echo "marker unreachable"; fi
        '
        echo "status $?""#)
    .env("MARKER", &marker.path);
    let result = std::panic::catch_unwind(|| run_ok(&spec));
    let _ = host_process.kill();
    let _ = host_process.wait();
    let (report, out) = result.unwrap();
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert!(out.contains("status 0"), "{out}");
    // sh (pid 1), and the subshell running `echo`, at most a few.
    let pids = out
        .lines()
        .find_map(|l| l.strip_prefix("pids: "))
        .expect("pid list");
    assert!(pids.split(' ').count() <= 3, "{out}");
    assert!(pids.starts_with("1 "), "{out}");
    assert!(
        !out.contains(&process_marker),
        "a host process is visible: {out}"
    );
    assert!(out.contains("marker unreachable\n"), "{out}");
}

/// The sandbox has no /sys, so the kernel refuses a fresh sysfs even in nested user, mount
/// and network namespaces (it would be "too revealing" compared to what is mounted).
#[test]
fn fresh_sysfs_cannot_be_mounted_in_nested_namespaces() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let spec = sh(r#"
        mkdir /tmp/sys
        unshare -r -m -n sh -c 'mount -t sysfs none /tmp/sys && echo "interfaces:" $(ls /tmp/sys/class/net)'
        echo "status $?"
        ls /sys"#);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(1), "{out}");
    assert_eq!(
        out,
        "mount: permission denied (are you root?)\nstatus 1\nls: /sys: No such file or directory\n"
    );
}

// ---------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------

const CONNECT_TCP: &str = r#"
import os, socket
try:
    c = socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=2)
    c.sendall(b"hello from the sandbox")
    print("connected")
except OSError as e:
    print("connect failed errno", e.errno)
"#;

#[test]
fn isolated_network_cannot_reach_host_tcp_listener() {
    if !require_root() || python3().is_none() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let spec = common::python(CONNECT_TCP).env("PORT", port.to_string());
    assert_eq!(spec.network, Network::Isolated);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(out, "connect failed errno 111\n"); // ECONNREFUSED: nothing listens in its netns
    listener.set_nonblocking(true).unwrap();
    let accepted = listener.accept();
    assert!(
        accepted
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "the host listener got a connection: {accepted:?}"
    );
}

#[test]
fn host_network_reaches_host_tcp_listener() {
    if !require_root() || python3().is_none() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut spec = common::python(CONNECT_TCP).env("PORT", port.to_string());
    spec.network = Network::Host;
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(out, "connected\n");
    listener.set_nonblocking(true).unwrap();
    let (mut stream, _) = listener.accept().expect("a pending connection");
    stream.set_nonblocking(false).unwrap();
    let mut received = String::new();
    stream.read_to_string(&mut received).unwrap();
    assert_eq!(received, "hello from the sandbox");
}

#[test]
fn isolated_network_has_working_loopback_only() {
    if !require_root() || python3().is_none() {
        return;
    }
    let script = r#"
import socket
print("interfaces", [name for _, name in socket.if_nameindex()])
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
client = socket.create_connection(server.getsockname(), timeout=2)
conn, _ = server.accept()
client.sendall(b"ping")
print("received", conn.recv(4).decode())
"#;
    let (report, out) = run_ok(&common::python(script));
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(out, "interfaces ['lo']\nreceived ping\n");
}

const CONNECT_ABSTRACT: &str = r#"
import os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect("\0" + os.environ["NAME"])
    print("connected")
except OSError as e:
    print("connect failed errno", e.errno)
"#;

/// Abstract unix sockets belong to the network namespace: a host one (the kind Nix's
/// CVE-2025-46416 used to pass descriptors out of a build) is unreachable.
#[test]
fn isolated_network_cannot_reach_host_abstract_socket() {
    if !require_root() || python3().is_none() {
        return;
    }
    let name = common::unique("arca-test-abstract-");
    let listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let (report, out) = run_ok(&common::python(CONNECT_ABSTRACT).env("NAME", &name));
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(out, "connect failed errno 111\n"); // ECONNREFUSED: no such name in its netns
    listener.set_nonblocking(true).unwrap();
    let accepted = listener.accept();
    assert!(
        accepted
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "the host socket got a connection: {accepted:?}"
    );
}

/// Current behaviour, stated so that a change is noticed: with `Network::Host` the host's
/// abstract sockets are reachable and a descriptor opened inside can be passed out with
/// SCM_RIGHTS (that is why only fixed-output builds get the host network).
#[test]
fn host_network_exposes_host_abstract_sockets_and_fd_passing() {
    if !require_root() || python3().is_none() {
        return;
    }
    let name = common::unique("arca-test-abstract-");
    let receiver = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\0" + sys.argv[1])
s.listen(1)
s.settimeout(10)
print("listening", flush=True)
c, _ = s.accept()
msg, fds, _, _ = socket.recv_fds(c, 100, 4)
print("received", msg.decode(), len(fds), flush=True)
"#;
    let mut host = Command::new(common::HOST_PYTHON)
        .args(["-c", receiver, &name])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(host.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    let sender = r#"
import os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("\0" + os.environ["NAME"])
fd = os.open("/build/inside-file", os.O_CREAT | os.O_RDWR)
socket.send_fds(s, [b"fd-from-sandbox"], [fd])
print("sent")
"#;
    let mut spec = common::python(sender).env("NAME", &name);
    spec.network = Network::Host;
    let result = std::panic::catch_unwind(|| run_ok(&spec));
    let received = lines.next().map(|l| l.unwrap());
    let _ = host.kill();
    let _ = host.wait();
    let (report, out) = result.unwrap();
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(out, "sent\n");
    assert_eq!(received.as_deref(), Some("received fd-from-sandbox 1"));
}

/// Path-based unix sockets are not scoped by the network namespace: one exists inside only
/// when the caller binds its directory, and then (even read-only) it can be connected to.
#[test]
fn host_path_socket_reachable_only_through_a_bound_directory() {
    if !require_root() || python3().is_none() {
        return;
    }
    let dir = common::tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let script = r#"
import os, socket
for path in os.environ["PATHS"].split(":"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        print(path, "connected")
    except OSError as e:
        print(path, "connect failed errno", e.errno)
"#;
    let host_path = socket.display().to_string();
    let paths = format!("{host_path}:/sockets/sock");

    let (report, out) = run_ok(&common::python(script).env("PATHS", &paths));
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(
        out,
        format!("{host_path} connect failed errno 2\n/sockets/sock connect failed errno 2\n")
    );
    assert!(listener
        .accept()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock));

    let spec = common::python(script)
        .env("PATHS", &paths)
        .mount(Mount::bind_ro(dir.path(), "/sockets"));
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(
        out,
        format!("{host_path} connect failed errno 2\n/sockets/sock connected\n")
    );
    assert!(
        listener.accept().is_ok(),
        "the host listener saw no connection"
    );
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

#[test]
fn host_processes_are_invisible() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let process_marker = common::unique("arca-host-process-");
    let mut host_process = Command::new(common::HOST_BUSYBOX)
        .args(["sh", "-c", "sleep 30; true", &process_marker])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let spec = sh(r#"
        echo "pids:" $(cd /proc && echo [0-9]*)
        for f in /proc/[0-9]*/cmdline; do tr "\0" " " < $f; echo; done
        kill -0 "$HOST_PID"; echo "kill status $?""#)
    .env("HOST_PID", host_process.id().to_string());
    let result = std::panic::catch_unwind(|| run_ok(&spec));
    let _ = host_process.kill();
    let _ = host_process.wait();
    let (report, out) = result.unwrap();
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    // pid 1 (the shell) and whatever subshell expands the glob.
    let pids = out
        .lines()
        .find_map(|l| l.strip_prefix("pids: "))
        .expect("pid list");
    assert!(
        pids == "1" || pids.split(' ').count() <= 2 && pids.starts_with("1 "),
        "{out}"
    );
    assert!(
        !out.contains(&process_marker),
        "a host process is visible: {out}"
    );
    // Its pid means nothing inside.
    assert!(out.contains("No such process\nkill status 1\n"), "{out}");
}

/// `kill -9 -1` inside signals every process the sandbox can see: its own, never a host
/// process, even one running as the same uid.
#[test]
fn kill_all_inside_spares_host_processes() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let spec = sh(r#"
        sleep 100 &
        kill -9 -1
        wait $!
        echo "inside sleep status $?""#);
    // Same uid as the sandbox user: only the pid namespace protects it.
    let mut host_process = Command::new(common::HOST_BUSYBOX)
        .args(["sleep", "30"])
        .uid(spec.identity.uid)
        .gid(spec.identity.gid)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(|| run_ok(&spec));
    let alive = host_process.try_wait().unwrap().is_none();
    let _ = host_process.kill();
    let _ = host_process.wait();
    let (report, out) = result.unwrap();
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert!(
        out.ends_with("inside sleep status 137\n"),
        "kill -9 -1 did not kill inside: {out}"
    );
    assert!(alive, "kill -9 -1 inside killed a host process");
}

#[test]
fn background_processes_die_with_the_program() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let marker = common::unique("arca-background-");
    let spec = sh(r#"
        i=0
        while [ $i -lt 50 ]; do
            sh -c 'echo > /tmp/started.$$; sleep 1000; true' "$MARKER" &
            i=$((i + 1))
        done
        n=0
        while [ "$(ls /tmp | grep -c started)" -lt 50 ] && [ $n -lt 500 ]; do sleep 0.01; n=$((n + 1)); done
        echo "started $(ls /tmp | grep -c started)""#)
    .env("MARKER", &marker);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(out, "started 50\n");
    common::assert_no_survivors(&marker);
}

#[test]
fn daemonised_process_dies_with_the_program() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let marker = common::unique("arca-daemon-");
    // Double fork into a new session, stdio detached from the output pipe.
    let spec = sh(r#"
        setsid sh -c 'sh -c "echo > /tmp/daemon.\$\$; sleep 1000; true" "$MARKER" </dev/null >/dev/null 2>&1 &' &
        wait
        n=0
        while ! ls /tmp | grep -q daemon && [ $n -lt 500 ]; do sleep 0.01; n=$((n + 1)); done
        pid=$(ls /tmp | grep daemon | tr -dc 0-9)
        echo "daemon running: $(tr '\0' ' ' < /proc/$pid/cmdline | grep -c "$MARKER")"
        echo "daemon parent: $(grep PPid /proc/$pid/status | tr -dc 0-9)""#)
    .env("MARKER", &marker);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    // Reparented to pid 1 (the program), which then exited.
    assert_eq!(out, "daemon running: 1\ndaemon parent: 1\n");
    common::assert_no_survivors(&marker);
}

// ---------------------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------------------

const CHMOD_SCRIPT: &str = r#"
    touch f; chmod 644 f; mkdir d; chmod 755 d
    chmod u+s f; echo "u+s status $?"
    chmod g+s f; echo "g+s status $?"
    chmod 4755 f; echo "4755 status $?"
    chmod g+s d; echo "dir g+s status $?"
    stat -c '%a %n' f d"#;

#[test]
fn setuid_and_setgid_bits_cannot_be_set() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let (report, out) = run_ok(&sh(CHMOD_SCRIPT));
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    for what in ["u+s", "g+s", "4755", "dir g+s"] {
        assert!(
            out.contains(&format!("\n{what} status 1\n"))
                || out.starts_with(&format!("{what} status 1\n")),
            "{what}: {out}"
        );
    }
    assert_eq!(out.matches("Operation not permitted").count(), 4, "{out}");
    assert!(out.ends_with("644 f\n755 d\n"), "{out}");
}

#[test]
fn extended_attributes_cannot_be_set() {
    if !require_root() || python3().is_none() {
        return;
    }
    let (report, out) = run_ok(&common::python(XATTR_SCRIPT));
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    // ENOTSUP, as from a file system without xattrs, for setxattr, lsetxattr, fsetxattr.
    assert_eq!(
        out,
        "path errno 95\nlink errno 95\nfd errno 95\nsuid-path errno 1\nsuid-fd errno 1\n"
    );
}

const XATTR_SCRIPT: &str = r#"
import os, stat
open("/build/f", "w").close()
fd = os.open("/build/f", os.O_RDONLY)
for what, call in [
    ("path", lambda: os.setxattr("/build/f", "user.arca", b"1")),
    ("link", lambda: os.setxattr("/build/f", "user.arca", b"1", follow_symlinks=False)),
    ("fd", lambda: os.setxattr(fd, "user.arca", b"1")),
    ("suid-path", lambda: os.chmod("/build/f", 0o4644)),
    ("suid-fd", lambda: os.chmod(fd, 0o2644)),
]:
    try:
        call()
        print(what, "ok")
    except OSError as e:
        print(what, "errno", e.errno)
"#;

/// The same probes without the seccomp filter succeed: the two tests above would notice
/// the filter going missing.
#[test]
fn without_seccomp_setuid_bits_and_xattrs_can_be_set() {
    if !require_root() || busybox().is_none() || python3().is_none() {
        return;
    }
    let mut spec = sh(CHMOD_SCRIPT);
    spec.seccomp = false;
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert!(!out.contains("Operation not permitted"), "{out}");
    assert!(out.ends_with("4755 f\n2755 d\n"), "{out}");

    let mut spec = common::python(XATTR_SCRIPT);
    spec.seccomp = false;
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(out, "path ok\nlink ok\nfd ok\nsuid-path ok\nsuid-fd ok\n");
}

#[test]
fn capabilities_are_dropped_with_no_new_privs_and_seccomp() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let (report, out) = run_ok(&sh("cat /proc/self/status"));
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .trim()
            .to_string()
    };
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(set), "0000000000000000", "{set}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2");
    assert_eq!(field("Uid"), "1000\t1000\t1000\t1000");
    assert_eq!(field("Gid"), "100\t100\t100\t100");
    assert_eq!(field("Groups"), "");
}

/// Inherited descriptors are closed: the program starts with stdin, stdout and stderr only
/// (stdin is /dev/null, stdout and stderr the output pipe).
#[test]
fn only_standard_descriptors_reach_the_program() {
    if !require_root() || busybox().is_none() {
        return;
    }
    // Keep descriptors of this process open while the sandbox starts.
    let _open: Vec<_> = (0..8)
        .map(|_| std::fs::File::open("/proc/self/status").unwrap())
        .collect();
    let (report, out) = run_ok(&sh("ls /proc/1/fd; readlink /proc/1/fd/0"));
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    // pid 1 is the shell, which has opened nothing itself at this point.
    assert_eq!(out, "0\n1\n2\n/dev/null\n");
}

/// Run by `nothing_survives_a_killed_supervisor` in a child process: a sandbox whose
/// program sleeps under a marker given in the environment.
#[test]
#[ignore = "run by nothing_survives_a_killed_supervisor"]
fn supervisor_to_be_killed() {
    let Ok(marker) = std::env::var("ARCA_SANDBOX_TEST_MARKER") else {
        return;
    };
    let mut spec = common::sh(&format!(
        "sh -c 'sleep 30; true' {marker} & sh -c 'sleep 30; true' {marker}; true"
    ));
    spec.cgroup = arca_sandbox::CgroupMode::Off;
    let _ = arca_sandbox::run(&spec, &mut std::io::sink());
}

/// If the process running `run()` dies (SIGKILL), the sandbox dies with it: the keeper by
/// its parent-death signal, init by its own, which the switch to the build user would
/// clear if it were not asked for again.
#[test]
fn nothing_survives_a_killed_supervisor() {
    if !common::require_root() || common::busybox().is_none() {
        return;
    }
    let marker = common::unique("arca-orphan-marker-");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "supervisor_to_be_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("ARCA_SANDBOX_TEST_MARKER", &marker)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while common::processes_with(&marker).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sandbox never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !common::processes_with(&marker).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    common::assert_no_survivors(&marker);
}

/// A bind source that is a symlink is recreated as a symlink, never followed: a "store
/// path" that links to `/` shows the sandbox's own root, not the host's (in Nix too).
#[test]
fn symlink_bind_source_is_recreated_not_followed() {
    if !common::require_root() || common::busybox().is_none() {
        return;
    }
    let marker = common::host_marker();
    let dir = common::tempdir();
    let link = dir.path().join("evil-store-path");
    std::os::unix::fs::symlink(marker.dir.path(), &link).unwrap();
    let spec = common::sh("readlink /nix/store/evil; ls /nix/store/evil/ 2>&1; echo done")
        .mount(arca_sandbox::Mount::bind_ro(&link, "/nix/store/evil"));
    let (report, out) = common::run_ok(&spec);
    assert_eq!(report.outcome, arca_sandbox::Outcome::Exited(0), "{out}");
    assert!(
        out.starts_with(&format!("{}\n", marker.dir.path().display())),
        "{out}"
    );
    assert!(
        !out.contains("host-only-marker"),
        "the host directory leaked in: {out}"
    );
    assert!(out.ends_with("done\n"), "{out}");
}

/// A read-only bind does not bring the source's submounts along (they would stay
/// writable: the read-only remount reaches the top mount only).
#[test]
fn read_only_bind_takes_no_writable_submounts() {
    if !common::require_root() || common::busybox().is_none() {
        return;
    }
    let spec = common::sh("ls /host-sys/fs/cgroup | head -1; grep -c host-sys /proc/mounts")
        .mount(arca_sandbox::Mount::bind_ro("/sys", "/host-sys"));
    let (report, out) = common::run_ok(&spec);
    assert_eq!(report.outcome, arca_sandbox::Outcome::Exited(0), "{out}");
    assert_eq!(out.lines().last(), Some("1"), "only the top mount: {out}");
}

/// Layout steps never act through a symlink found in a writable bind: such a link can
/// name a host directory or file, which the (root) setup must not chmod or create.
#[test]
fn layout_never_follows_symlinks_planted_in_a_writable_bind() {
    if !common::require_root() || common::busybox().is_none() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let victim = common::tempdir();
    std::fs::set_permissions(victim.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let planted = common::tempdir();
    std::os::unix::fs::symlink(victim.path(), planted.path().join("sub")).unwrap();
    std::os::unix::fs::symlink(victim.path().join("created"), planted.path().join("file")).unwrap();

    for extra in [
        arca_sandbox::Mount::Dir {
            target: "/w/sub".into(),
            mode: 0o777,
        },
        arca_sandbox::Mount::bind_ro("/usr/bin/busybox", "/w/file"),
    ] {
        let spec = common::sh("true")
            .mount(arca_sandbox::Mount::bind_rw(planted.path(), "/w"))
            .mount(extra);
        let _ = arca_sandbox::run(&spec, &mut std::io::sink());
        let mode = std::fs::metadata(victim.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755, "the host directory was not chmodded");
        assert!(
            !victim.path().join("created").exists(),
            "no host file was created"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Mount table
// ---------------------------------------------------------------------------------------

/// What the sandbox's mount table tells about the host. Hidden: the staging directory the
/// root is built in, and every host path in `/proc/self/mounts` (mount points are inside
/// paths, sources are device or file system names). Shown, because the kernel computes
/// it from the mount itself: the fourth field of `/proc/self/mountinfo`, the path of a
/// bind mount's source within the file system that holds it (see the crate docs).
#[test]
fn mount_table_hides_the_staging_directory_and_shows_host_paths_only_as_bind_roots() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let dir = common::tempdir();
    let store_path = dir.path().join("nix/store/abc-foo");
    std::fs::create_dir_all(&store_path).unwrap();
    let host = dir.path().to_str().unwrap();
    let staging = format!("arca-sandbox-{}-", std::process::id());
    for user_namespace in [UserNamespace::Auto, UserNamespace::Always] {
        let mut spec = sh("cat /proc/self/mounts; echo ---; cat /proc/self/mountinfo")
            .mount(Mount::bind_ro(&store_path, "/nix/store/abc-foo"));
        spec.user_namespace = user_namespace;
        let (report, out) = run_ok(&spec);
        assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
        assert!(!out.contains(&staging), "{user_namespace:?}: {out}");
        let (mounts, mountinfo) = out.split_once("---\n").expect("both tables");
        assert!(!mounts.contains(host), "{user_namespace:?}: {mounts}");

        let expected = [
            "/",
            "/dev/full",
            "/dev/null",
            "/dev/random",
            "/dev/tty",
            "/dev/urandom",
            "/dev/zero",
            "/dev/pts",
            "/dev/shm",
            "/proc",
            "/tmp",
            "/bin/busybox",
            "/build",
            "/nix/store/abc-foo",
        ];
        let points: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split(' ').nth(1))
            .collect();
        assert_eq!(points, expected, "{mounts}");
        let mut info_points = Vec::new();
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (root, point) = (fields[3], fields[4]);
            info_points.push(point);
            match point {
                // The kernel's path of the source within its file system.
                "/nix/store/abc-foo" => assert!(
                    store_path.to_str().unwrap().ends_with(root)
                        && root.ends_with("/nix/store/abc-foo"),
                    "{line}"
                ),
                "/bin/busybox" => assert!(common::HOST_BUSYBOX.ends_with(root), "{line}"),
                _ if point.starts_with("/dev/")
                    && !point.ends_with("/pts")
                    && point != "/dev/shm" =>
                {
                    assert_eq!(&point["/dev".len()..], root, "{line}")
                }
                // Fresh file systems show their own root.
                _ => assert_eq!(root, "/", "{line}"),
            }
            let without_root: Vec<&str> = fields
                .iter()
                .enumerate()
                .filter(|(index, _)| *index != 3)
                .map(|(_, field)| *field)
                .collect();
            assert!(!without_root.join(" ").contains(host), "{line}");
        }
        assert_eq!(info_points, expected, "{mountinfo}");
    }
}

/// The cgroup the program is in reads as `/`: no host cgroup path (which named the
/// supervisor's pid) shows through `/proc/self/cgroup`.
#[test]
fn proc_self_cgroup_shows_no_host_path() {
    if !common::require_root() || common::busybox().is_none() {
        return;
    }
    for cgroup in [
        arca_sandbox::CgroupMode::Off,
        arca_sandbox::CgroupMode::Auto,
    ] {
        let mut spec = common::sh("cat /proc/self/cgroup");
        spec.cgroup = cgroup;
        let (report, out) = common::run_ok(&spec);
        assert_eq!(report.outcome, arca_sandbox::Outcome::Exited(0), "{out}");
        assert!(!out.is_empty(), "{cgroup:?}: nothing read");
        for line in out.lines() {
            assert!(
                line.ends_with(":/"),
                "{cgroup:?}: a host cgroup path shows: {out}"
            );
        }
    }
}
