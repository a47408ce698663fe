//! Signatures through the daemon: only trusted clients may add them (as Nix 2.8's daemon
//! says), and every signature that would enter the store is parsed first, so that a
//! string such as "a b c" cannot be stored and read back as three signatures.

use std::collections::BTreeSet;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use arca_daemon_proto::wire::{Limits, WireReader, WireWriter};
use arca_daemon_proto::{protocol, serve, DaemonClient, Peer, ServeError};
use arca_store_core::{Hash, HashAlgo, PathInfo, Store, StorePath};
use arca_store_sqlite::LocalStore;

/// Made by Nix 2.8's `nix store sign` (the signature itself need not verify here).
const SIGNATURE: &str = "test-1:uGSbsJe/iJ0qEs8Tu75m8bR0semMlugtLNlPIwOj3sG4jZkGWPTDihb/wg2W7to0//LUnbdDPb6DKYxrhU0QDQ==";

/// A client speaking the protocol by hand, for `AddSignatures`, which `DaemonClient`
/// does not send.
struct Raw {
    to: WireWriter<UnixStream>,
    from: WireReader<BufReader<UnixStream>>,
}

impl Raw {
    /// Handshake at 1.34 (Nix 2.8).
    fn handshake(stream: UnixStream) -> Raw {
        let mut raw = Raw {
            to: WireWriter::new(stream.try_clone().unwrap()),
            from: WireReader::new(BufReader::new(stream), Limits::default()),
        };
        for word in [protocol::WORKER_MAGIC_1, protocol::version(1, 34), 0, 0] {
            raw.to.write_u64(word).unwrap();
        }
        assert_eq!(raw.from.read_u64().unwrap(), protocol::WORKER_MAGIC_2);
        raw.from.read_u64().unwrap(); // server version
        raw.from.read_string("daemon version").unwrap();
        assert_eq!(raw.result(), Ok(()));
        raw
    }

    /// `STDERR_LAST`, or the message of a (1.26 and later) `STDERR_ERROR`.
    fn result(&mut self) -> Result<(), String> {
        match self.from.read_u64().unwrap() {
            protocol::stderr::LAST => Ok(()),
            protocol::stderr::ERROR => {
                self.from.read_string("type").unwrap();
                self.from.read_u64().unwrap(); // level
                self.from.read_string("name").unwrap();
                let message = self.from.read_string("message").unwrap();
                self.from.read_u64().unwrap(); // position
                self.from.read_u64().unwrap(); // traces
                Err(message)
            }
            other => panic!("unexpected log message {other:#x}"),
        }
    }

    fn add_signatures(&mut self, path: &str, signatures: &[&str]) -> Result<(), String> {
        self.to
            .write_u64(protocol::Op::AddSignatures as u64)
            .unwrap();
        self.to.write_str(path).unwrap();
        self.to.write_strings(signatures.iter()).unwrap();
        self.result()?;
        assert_eq!(self.from.read_u64().unwrap(), 1);
        Ok(())
    }

    fn is_valid_path(&mut self, path: &str) -> bool {
        self.to.write_u64(protocol::Op::IsValidPath as u64).unwrap();
        self.to.write_str(path).unwrap();
        assert_eq!(self.result(), Ok(()));
        self.from.read_bool("valid").unwrap()
    }
}

/// A store under `root` holding one text path, served to one client as `peer`.
fn served(
    root: &std::path::Path,
    peer: Peer,
) -> (String, UnixStream, JoinHandle<Result<(), ServeError>>) {
    let store = LocalStore::open(root).unwrap();
    let path = store
        .add_text("signed", b"to be signed\n", &BTreeSet::new())
        .unwrap();
    let path = store.store_dir().display(&path);
    let (client, server_end) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let output = server_end.try_clone().unwrap();
        serve(
            &arca_daemon::LocalBackend::new(&store),
            &server_end,
            output,
            peer,
            Limits::default(),
            &Default::default(),
        )
    });
    (path, client, server)
}

fn stored_signatures(root: &std::path::Path, path: &str) -> BTreeSet<String> {
    let store = LocalStore::open(root).unwrap();
    let path = store.store_dir().parse_path(path).unwrap();
    store.query_path_info(&path).unwrap().unwrap().signatures
}

#[test]
fn untrusted_clients_are_refused_adding_signatures_as_by_nix() {
    let root = tempfile::tempdir().unwrap();
    let (path, client, server) = served(root.path(), Peer { trusted: false });
    let mut raw = Raw::handshake(client);
    assert_eq!(
        raw.add_signatures(&path, &[SIGNATURE]),
        Err("you are not privileged to add signatures".to_owned())
    );
    // An operation error: the connection goes on.
    assert!(raw.is_valid_path(&path));
    drop(raw);
    server.join().unwrap().unwrap();
    assert!(stored_signatures(root.path(), &path).is_empty());
}

#[test]
fn trusted_clients_add_signatures_that_read_back_whole() {
    let root = tempfile::tempdir().unwrap();
    let (path, client, server) = served(root.path(), Peer { trusted: true });
    let mut raw = Raw::handshake(client);
    assert_eq!(raw.add_signatures(&path, &[SIGNATURE]), Ok(()));
    drop(raw);
    server.join().unwrap().unwrap();
    assert_eq!(
        stored_signatures(root.path(), &path),
        BTreeSet::from([SIGNATURE.to_owned()])
    );
}

#[test]
fn malformed_signatures_are_refused_and_nothing_is_stored() {
    let root = tempfile::tempdir().unwrap();
    let (path, client, server) = served(root.path(), Peer { trusted: true });
    let mut raw = Raw::handshake(client);
    let encoded = SIGNATURE.split_once(':').unwrap().1;
    let two_in_one = format!("{SIGNATURE} other:{encoded}");
    for bad in ["x y z", "test-1:c2lnbmF0dXJl", &two_in_one] {
        // With a good one beside it: the request is refused whole.
        let error = raw.add_signatures(&path, &[SIGNATURE, bad]).expect_err(bad);
        assert!(
            error.contains(&format!("'{bad}'")) && error.contains(&format!("'{path}'")),
            "the error names neither the signature nor the path: {error}"
        );
    }
    assert!(raw.is_valid_path(&path), "the connection is still in step");
    drop(raw);
    server.join().unwrap().unwrap();
    assert!(stored_signatures(root.path(), &path).is_empty());
}

#[test]
fn a_path_added_with_a_malformed_signature_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (_, client, server) = served(root.path(), Peer { trusted: true });
    let client = DaemonClient::handshake(client, Default::default()).unwrap();
    let mut nar = Vec::new();
    let mut encoder = arca_nar::NarEncoder::new(&mut nar);
    encoder.regular(false, 6, &mut &b"added\n"[..]).unwrap();
    encoder.finish().unwrap();
    let path = StorePath::from_base_name(&format!("{}-added", "1".repeat(32))).unwrap();
    let mut info = PathInfo::new(
        path.clone(),
        Hash::digest(HashAlgo::Sha256, &nar),
        nar.len() as u64,
    );
    info.signatures = BTreeSet::from(["x y z".to_owned()]);
    let error = client.add_nar(&info, &mut &nar[..]).unwrap_err();
    assert!(error.to_string().contains("'x y z'"), "{error}");
    assert!(!client.is_valid_path(&path).unwrap(), "nothing is stored");
    // The same path with a well-formed signature is added, the signature with it.
    info.signatures = BTreeSet::from([SIGNATURE.to_owned()]);
    client.add_nar(&info, &mut &nar[..]).unwrap();
    let stored = client.query_path_info(&path).unwrap().unwrap();
    assert_eq!(stored.signatures, info.signatures);
    drop(client);
    server.join().unwrap().unwrap();
}
