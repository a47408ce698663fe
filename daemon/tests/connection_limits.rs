//! What `arca daemon` uses to bound what a client holds: `serve_socket` closes a
//! connection that keeps it waiting for a request longer than the idle timeout (but
//! never one whose request is under way), and `refuse` tells a client over a limit why.

use std::collections::BTreeSet;
use std::io::{BufReader, Read};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arca_daemon_proto::wire::{Limits, WireReader, WireWriter};
use arca_daemon_proto::{protocol, refuse, serve_socket, DaemonClient, Peer, ServeError};
use arca_store_core::Store;
use arca_store_sqlite::LocalStore;

const IDLE: Duration = Duration::from_millis(300);

/// `serve_socket` with the idle timeout [`IDLE`] on one end of a pair; the other end.
fn served(root: &std::path::Path) -> (UnixStream, JoinHandle<Result<(), ServeError>>) {
    let store = LocalStore::open(root).unwrap();
    let (client, server_end) = UnixStream::pair().unwrap();
    // A test that goes wrong fails rather than hangs.
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let server = std::thread::spawn(move || {
        serve_socket(
            &arca_daemon::LocalBackend::new(&store),
            &server_end,
            Peer { trusted: false },
            Limits::default(),
            &Default::default(),
            Some(IDLE),
        )
    });
    (client, server)
}

/// Waits for the server to hang up: how long that took.
fn closed_after(mut client: UnixStream) -> Duration {
    let start = Instant::now();
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .expect("the server closes the connection");
    start.elapsed()
}

#[test]
fn a_connection_idle_beyond_the_timeout_is_closed() {
    let root = tempfile::tempdir().unwrap();
    // Silent from the start: no handshake.
    let (client, server) = served(root.path());
    let waited = closed_after(client);
    assert!(matches!(server.join().unwrap(), Err(ServeError::Idle)));
    assert!(waited < Duration::from_secs(10), "closed after {waited:?}");

    // Idle after the handshake and a request.
    let (client, server) = served(root.path());
    let daemon = DaemonClient::handshake(client.try_clone().unwrap(), Default::default()).unwrap();
    daemon
        .add_text("before", b"served\n", &BTreeSet::new())
        .unwrap();
    let waited = closed_after(client);
    assert!(matches!(server.join().unwrap(), Err(ServeError::Idle)));
    assert!(
        waited >= IDLE / 2 && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );
}

#[test]
fn only_the_wait_for_the_next_request_counts_as_idle() {
    let root = tempfile::tempdir().unwrap();
    let (client, server) = served(root.path());
    let daemon = DaemonClient::handshake(client.try_clone().unwrap(), Default::default()).unwrap();
    // Requests closer together than the timeout, for several times its length.
    let start = Instant::now();
    while start.elapsed() < IDLE * 4 {
        daemon
            .add_text("busy", b"busy\n", &BTreeSet::new())
            .unwrap();
        std::thread::sleep(IDLE / 3);
    }
    drop(daemon);

    // A request under way that pauses longer than the timeout (as a silent build keeps
    // the server busy) is not cut short.
    let mut to = WireWriter::new(client.try_clone().unwrap());
    let mut from = WireReader::new(
        BufReader::new(client.try_clone().unwrap()),
        Limits::default(),
    );
    to.write_u64(protocol::Op::AddTextToStore as u64).unwrap();
    to.write_str("slow").unwrap();
    std::thread::sleep(IDLE * 3);
    to.write_bytes(b"slow\n").unwrap();
    to.write_strings(std::iter::empty::<&str>()).unwrap();
    assert_eq!(from.read_u64().unwrap(), protocol::stderr::LAST);
    let path = from.read_string("path").unwrap();
    assert!(path.ends_with("-slow"), "{path}");

    client.shutdown(std::net::Shutdown::Write).unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn a_refused_client_is_told_why() {
    let (client, server_end) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || refuse(&server_end, &server_end, "too many"));
    let Err(error) = DaemonClient::handshake(client, Default::default()) else {
        panic!("the handshake succeeds");
    };
    assert!(error.to_string().contains("too many"), "{error}");
    server.join().unwrap().unwrap();
}
