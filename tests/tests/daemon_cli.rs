//! `arca --store unix://SOCKET …` against `arca daemon`: the commands give what they give
//! on the local store (byte-identical exports, the same paths), and the daemon keeps
//! serving other clients while one is connected. No Nix needed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arca_tests::arca_bin;
use arca_tests::store::{lines, scratch_dir};

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(root: &Path, socket: &Path) -> Daemon {
        Daemon::start_with(root, socket, &[])
    }

    fn start_with(root: &Path, socket: &Path, extra: &[&str]) -> Daemon {
        let child = Command::new(arca_bin())
            .args(["--store", root.to_str().unwrap(), "daemon", "--socket"])
            .arg(socket)
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the daemon did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            socket: socket.to_owned(),
        }
    }

    fn uri(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn arca(store: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(arca_bin())
        .args(["--store", store])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "arca --store {store} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn store_commands_through_the_daemon_match_the_local_store() {
    let scratch = scratch_dir();
    let source = scratch.path().join("tree");
    std::fs::create_dir_all(source.join("sub")).unwrap();
    std::fs::write(source.join("sub/file"), b"through the daemon\n").unwrap();
    std::fs::write(source.join("flat"), b"flat\n").unwrap();
    let served = scratch.path().join("served");
    let local = scratch.path().join("local");
    let local = local.to_str().unwrap();
    let daemon = Daemon::start(&served, &scratch.path().join("socket"));
    let remote = daemon.uri();
    let source_arg = source.to_str().unwrap();
    let flat_arg = source.join("flat");
    let flat_arg = flat_arg.to_str().unwrap();

    // The same paths as a local add.
    let added = lines(&arca(&remote, &["store", "add-path", source_arg]));
    assert_eq!(
        added,
        lines(&arca(local, &["store", "add-path", source_arg]))
    );
    let flat = lines(&arca(&remote, &["store", "add-file", flat_arg]));
    assert_eq!(flat, lines(&arca(local, &["store", "add-file", flat_arg])));
    let path = &added[0];

    // The daemon's export is byte for byte the local one, and so is path-info.
    assert_eq!(
        arca(&remote, &["store", "export", path]),
        arca(local, &["store", "export", path])
    );
    let info = |store: &str| -> serde_json::Value {
        let mut value: serde_json::Value =
            serde_json::from_slice(&arca(store, &["path-info", "--json", path])).unwrap();
        value[0].as_object_mut().unwrap().remove("registrationTime");
        value
    };
    assert_eq!(info(&remote), info(local));
    assert_eq!(
        lines(&arca(&remote, &["store", "query", "--requisites", path])),
        vec![path.clone()]
    );
    arca(&remote, &["store", "verify", "--check-contents"]);

    // Roots and collection happen in the daemon's store.
    let link = scratch.path().join("result");
    arca(
        &remote,
        &["store", "add-root", link.to_str().unwrap(), path],
    );
    let roots = lines(&arca(&remote, &["store", "query", "--roots", path]));
    assert_eq!(roots, vec![format!("{} -> {path}", link.display())]);
    let dead = lines(&arca(&remote, &["store", "gc", "--print-dead"]));
    assert!(dead.contains(&flat[0]) && !dead.contains(path), "{dead:?}");
    arca(&remote, &["store", "gc"]);
    let served_str = served.to_str().unwrap();
    drop(daemon);
    assert_eq!(
        lines(&arca(served_str, &["store", "query", "--requisites", path])),
        vec![path.clone()]
    );
    let store_entries: Vec<String> = std::fs::read_dir(served.join("nix/store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert!(
        !store_entries
            .iter()
            .any(|name| flat[0].ends_with(name.as_str())),
        "the unrooted flat path was collected: {store_entries:?}"
    );
}

/// Sends SIGTERM to the daemon, which must exit 0 within `limit`.
fn sigterm_and_wait(daemon: &mut Daemon, limit: Duration, context: &str) {
    let pid = daemon.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not exit on SIGTERM{context}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// SIGTERM: the daemon stops accepting, ends connections waiting for their next
/// request, exits 0, and the store is whole.
#[test]
fn sigterm_shuts_the_daemon_down_cleanly() {
    let scratch = scratch_dir();
    let served = scratch.path().join("served");
    let mut daemon = Daemon::start(&served, &scratch.path().join("socket"));
    let remote = daemon.uri();
    let file = scratch.path().join("file");
    std::fs::write(&file, b"before the signal\n").unwrap();
    let added = lines(&arca(
        &remote,
        &["store", "add-file", file.to_str().unwrap()],
    ));
    // An idle client stays connected while the signal comes.
    let idle = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    sigterm_and_wait(&mut daemon, Duration::from_secs(15), "");
    drop(idle);
    let served = served.to_str().unwrap();
    arca(served, &["store", "verify", "--check-contents"]);
    assert_eq!(
        lines(&arca(
            served,
            &["store", "query", "--requisites", &added[0]]
        )),
        added
    );
}

/// SIGTERM stops the daemon even when its socket file is gone (the accept loop is woken
/// by shutting the listening socket down, not by connecting to its path).
#[test]
fn sigterm_stops_the_daemon_whose_socket_was_deleted() {
    let scratch = scratch_dir();
    let mut daemon = Daemon::start(
        &scratch.path().join("served"),
        &scratch.path().join("socket"),
    );
    std::fs::remove_file(&daemon.socket).unwrap();
    sigterm_and_wait(
        &mut daemon,
        Duration::from_secs(8),
        " after its socket was deleted",
    );
}

/// systemd socket activation: a socket passed as fd 3 with `LISTEN_PID`/`LISTEN_FDS` is
/// served, and no socket of the daemon's own is made. The launcher (Python, which does
/// what systemd does: bind, listen, set the variables, exec keeping the pid) stands in
/// for systemd.
#[test]
fn a_socket_passed_by_systemd_is_served() {
    let scratch = scratch_dir();
    let served = scratch.path().join("served");
    let socket = scratch.path().join("activated");
    let launcher = format!(
        "import os, socket\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.bind({socket:?})\n\
         s.listen(16)\n\
         os.dup2(s.fileno(), 3)\n\
         os.set_inheritable(3, True)\n\
         os.environ['LISTEN_PID'] = str(os.getpid())\n\
         os.environ['LISTEN_FDS'] = '1'\n\
         os.execv({arca:?}, [{arca:?}, '--store', {served:?}, 'daemon'])\n",
        socket = socket.to_str().unwrap(),
        arca = arca_bin().to_str().unwrap(),
        served = served.to_str().unwrap(),
    );
    let mut child = match Command::new("python3").arg("-c").arg(&launcher).spawn() {
        Ok(child) => child,
        Err(error) => {
            eprintln!("SKIPPED a_socket_passed_by_systemd_is_served: no python3 ({error})");
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let remote = format!("unix://{}", socket.display());
    let file = scratch.path().join("file");
    std::fs::write(&file, b"activated\n").unwrap();
    let added = loop {
        // Bounded: a socket nobody accepts on would leave the client waiting.
        let output = Command::new("timeout")
            .arg("10")
            .arg(arca_bin())
            .args([
                "--store",
                &remote,
                "store",
                "add-file",
                file.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        if output.status.success() {
            break lines(&output.stdout);
        }
        assert!(
            Instant::now() < deadline,
            "the activated daemon never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !served.join("nix/var/nix/daemon-socket/socket").exists(),
        "the daemon used systemd's socket, not one of its own"
    );
    let served = served.to_str().unwrap();
    assert_eq!(
        lines(&arca(
            served,
            &["store", "query", "--requisites", &added[0]]
        )),
        added
    );
}

/// `--auto-optimise` (with `--durability immediate`, the mode that flushes each path):
/// files of paths added through the daemon are hard-linked to identical ones as they
/// arrive.
#[test]
fn a_daemon_can_auto_optimise_what_it_adds() {
    use std::os::unix::fs::MetadataExt;
    let scratch = scratch_dir();
    let served = scratch.path().join("served");
    let daemon = Daemon::start_with(
        &served,
        &scratch.path().join("socket"),
        &["--durability", "immediate", "--auto-optimise"],
    );
    let remote = daemon.uri();
    let mut added = Vec::new();
    for name in ["one", "two"] {
        let tree = scratch.path().join(name);
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("same"), b"identical bytes\n").unwrap();
        std::fs::write(tree.join("own"), name).unwrap();
        added.extend(lines(&arca(
            &remote,
            &["store", "add-path", tree.to_str().unwrap()],
        )));
    }
    let physical = |path: &str, file: &str| {
        served
            .join("nix/store")
            .join(path.trim_start_matches("/nix/store/"))
            .join(file)
    };
    let inode = |path: &Path| std::fs::metadata(path).unwrap().ino();
    assert_eq!(
        inode(&physical(&added[0], "same")),
        inode(&physical(&added[1], "same"))
    );
    assert_ne!(
        inode(&physical(&added[0], "own")),
        inode(&physical(&added[1], "own"))
    );
    arca(&remote, &["store", "verify", "--check-contents"]);
}

/// `store import`, `derivation add` and `derivation show` through a daemon give what
/// they give locally.
#[test]
fn import_and_derivations_through_the_daemon() {
    let scratch = scratch_dir();
    let local = scratch.path().join("local");
    let local = local.to_str().unwrap();
    let daemon = Daemon::start(
        &scratch.path().join("served"),
        &scratch.path().join("socket"),
    );
    let remote = daemon.uri();
    // A closure with a reference, exported from a local store.
    let dep_file = scratch.path().join("dep");
    std::fs::write(&dep_file, b"dependency\n").unwrap();
    let dep = lines(&arca(
        local,
        &["store", "add-file", dep_file.to_str().unwrap()],
    ))
    .remove(0);
    let drv_json = serde_json::json!({
        "name": "uses-dep",
        "outputs": { "out": { "path": "" } },
        "inputSrcs": [dep],
        "inputDrvs": {},
        "system": "x86_64-linux",
        "builder": "/bin/sh",
        "args": ["-c", "true"],
        "env": { "out": "", "dep": dep },
    })
    .to_string();
    let add_derivation = |store: &str| {
        let mut child = Command::new(arca_bin())
            .args(["--store", store, "derivation", "add"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), drv_json.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        lines(&output.stdout)
    };
    let drv = add_derivation(local);
    let export = arca(local, &["store", "export", &dep, &drv[0]]);
    let mut child = Command::new(arca_bin())
        .args(["--store", &remote, "store", "import"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &export).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(lines(&output.stdout), vec![dep.clone(), drv[0].clone()]);
    assert_eq!(arca(&remote, &["store", "export", &dep, &drv[0]]), export);
    // The same derivation added through the daemon gets the same path and JSON.
    assert_eq!(add_derivation(&remote), drv);
    assert_eq!(
        arca(&remote, &["derivation", "show", &drv[0]]),
        arca(local, &["derivation", "show", &drv[0]])
    );
}

/// `--max-frame`: a client streaming a frame over the limit gets an error naming the
/// limit (not a broken pipe), and the daemon goes on serving.
#[test]
fn wire_limits_are_set_on_the_command_line() {
    let scratch = scratch_dir();
    let daemon = Daemon::start_with(
        &scratch.path().join("served"),
        &scratch.path().join("socket"),
        &["--max-frame", "1K"],
    );
    let remote = daemon.uri();
    let big = scratch.path().join("big");
    std::fs::write(&big, vec![b'x'; 4096]).unwrap();
    let output = Command::new(arca_bin())
        .args(["--store", &remote, "store", "add-file"])
        .arg(&big)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a 4 KiB frame passed a 1 KiB limit"
    );
    assert!(
        stderr.contains("exceeds the limit of 1024"),
        "the error names the limit: {stderr}"
    );
    let small = scratch.path().join("small");
    std::fs::write(&small, b"fits\n").unwrap();
    let added = lines(&arca(
        &remote,
        &["store", "add-file", small.to_str().unwrap()],
    ));
    assert_eq!(added.len(), 1);
    // A malformed size is refused before anything starts.
    let output = Command::new(arca_bin())
        .args(["daemon", "--stdio", "--max-frame", "12X"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("'12X' is not a size"));
}

/// A tree bigger than what the daemon keeps in memory while receiving it (1 MiB) gets
/// the path and contents it gets locally; so does a small one.
#[test]
fn big_and_small_trees_added_through_the_daemon_match_local_adds() {
    let scratch = scratch_dir();
    let daemon = Daemon::start(
        &scratch.path().join("served"),
        &scratch.path().join("socket"),
    );
    let remote = daemon.uri();
    let local = scratch.path().join("local");
    let local = local.to_str().unwrap();
    for (name, size) in [("small", 100usize), ("big", 3 << 20)] {
        let tree = scratch.path().join(name);
        std::fs::create_dir_all(&tree).unwrap();
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(tree.join("data"), &bytes).unwrap();
        let tree = tree.to_str().unwrap();
        let through = lines(&arca(&remote, &["store", "add-path", tree]));
        assert_eq!(through, lines(&arca(local, &["store", "add-path", tree])));
        let physical = scratch
            .path()
            .join("served")
            .join(through[0].trim_start_matches('/'))
            .join("data");
        assert_eq!(std::fs::read(physical).unwrap(), bytes, "{name}");
    }
    arca(&remote, &["store", "verify", "--check-contents"]);
}

/// An export archive whose reference count no path could have is refused by name, not
/// read on with the count cut short (out of step with the archive).
#[test]
fn import_through_the_daemon_refuses_an_impossible_reference_count() {
    let scratch = scratch_dir();
    let local = scratch.path().join("local");
    let local = local.to_str().unwrap();
    let daemon = Daemon::start(
        &scratch.path().join("served"),
        &scratch.path().join("socket"),
    );
    let file = scratch.path().join("file");
    std::fs::write(&file, b"exported\n").unwrap();
    let path = lines(&arca(local, &["store", "add-file", file.to_str().unwrap()])).remove(0);
    let mut export = arca(local, &["store", "export", &path]);
    // After the NAR: "NIXE", the path (length, padded bytes), then the reference count.
    let marker = export
        .windows(8)
        .position(|w| w == 0x4558_494e_u64.to_le_bytes())
        .unwrap();
    let count_at = marker + 8 + 8 + path.len().div_ceil(8) * 8;
    assert_eq!(export[count_at..count_at + 8], 0u64.to_le_bytes());
    export[count_at..count_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let mut child = Command::new(arca_bin())
        .args(["--store", &daemon.uri(), "store", "import"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &export).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("'{path}' claims 1099511627776 references")),
        "{stderr}"
    );
}
