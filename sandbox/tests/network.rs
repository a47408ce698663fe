//! `Network::UserMode`: a network namespace of its own with `slirp4netns` as the way
//! out. It reaches what the host reaches (here: the host's loopback, allowed for the
//! test), and shares no abstract unix socket with the host, unlike `Network::Host`
//! (through which a fixed-output builder could hand descriptors to local processes).
//! Needs root and `slirp4netns` (Debian's package; installed by `scripts/test.sh`).

mod common;

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::PathBuf;

use arca_sandbox::{Network, Outcome};

fn slirp4netns() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/slirp4netns");
    if path.is_file() {
        Some(path)
    } else {
        common::skip("slirp4netns is not installed (apt-get install slirp4netns)");
        None
    }
}

/// Serves one HTTP request on 127.0.0.1 with `body`; its port.
fn one_shot_server(body: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn user_mode_network_reaches_out_and_shares_no_abstract_socket() {
    if !common::require_root() || common::busybox().is_none() {
        return;
    }
    let Some(program) = slirp4netns() else {
        return;
    };
    let name = common::unique("arca-abstract");
    let _socket =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let port = one_shot_server("hello from the host");
    let script = format!("grep -c {name} /proc/net/unix; wget -q -O - http://10.0.2.2:{port}/");
    let mut spec = common::sh(&script);
    spec.network = Network::UserMode {
        program,
        host_loopback: true,
    };
    let (report, out) = common::run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"0"),
        "the host's abstract socket is visible: {out}"
    );
    assert!(out.contains("hello from the host"), "no way out: {out}");

    // The host's namespace shows it (what the user-mode network protects against).
    let mut spec = common::sh(&format!("grep -c {name} /proc/net/unix"));
    spec.network = Network::Host;
    let (_, out) = common::run_ok(&spec);
    assert_eq!(out.trim(), "1", "{out}");
}

/// Without `host_loopback` (what builds use), the host's loopback is out of reach.
#[test]
fn user_mode_network_keeps_the_host_loopback_out_of_reach() {
    if !common::require_root() || common::busybox().is_none() {
        return;
    }
    let Some(program) = slirp4netns() else {
        return;
    };
    let port = one_shot_server("must not be read");
    let mut spec = common::sh(&format!(
        "wget -q -T 3 -O - http://10.0.2.2:{port}/ || echo refused"
    ));
    spec.network = Network::UserMode {
        program,
        host_loopback: false,
    };
    let (_, out) = common::run_ok(&spec);
    assert!(
        out.contains("refused") && !out.contains("must not"),
        "{out}"
    );
}
