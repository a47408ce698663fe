//! One test suite for the `Store` trait, run twice: on a `LocalStore` directly and on a
//! `DaemonClient` talking to `serve` over a socket pair (the daemon's code path with
//! Arca's own client), so both sides of the protocol agree with the local store.

use std::collections::BTreeSet;
use std::os::unix::net::UnixStream;

use arca_daemon_proto::wire::Limits;
use arca_daemon_proto::{protocol, serve, DaemonClient, Peer};
use arca_store_core::{Hash, HashAlgo, PathInfo, Store, StoreOps, StorePath};
use arca_store_sqlite::LocalStore;

/// Everything the trait promises, checked on `store`.
fn exercise<S: Store>(store: &S)
where
    S::Error: std::fmt::Debug,
{
    let dir = store.store_dir().clone();
    // Text paths with references, as `builtins.toFile` makes them.
    let base = store.add_text("base", b"base\n", &BTreeSet::new()).unwrap();
    let top_text = format!("uses {}\n", dir.display(&base));
    let top = store
        .add_text("top", top_text.as_bytes(), &BTreeSet::from([base.clone()]))
        .unwrap();
    assert_eq!(
        top,
        dir.make_text_path(
            "top",
            &Hash::digest(HashAlgo::Sha256, top_text.as_bytes()),
            &BTreeSet::from([base.clone()])
        )
        .unwrap()
    );
    // Adding again is idempotent.
    assert_eq!(
        store.add_text("base", b"base\n", &BTreeSet::new()).unwrap(),
        base
    );

    assert!(store.is_valid_path(&top).unwrap());
    let missing = StorePath::from_base_name(&format!("{}-missing", "0".repeat(32))).unwrap();
    assert!(!store.is_valid_path(&missing).unwrap());
    assert!(store.query_path_info(&missing).unwrap().is_none());

    let info = store.query_path_info(&top).unwrap().unwrap();
    assert_eq!(info.path, top);
    assert_eq!(info.references, BTreeSet::from([base.clone()]));
    assert!(info.ca.is_some());
    assert!(info.registration_time > 0);

    assert_eq!(
        store.query_referrers(&base).unwrap(),
        BTreeSet::from([top.clone()])
    );
    assert_eq!(
        store.query_references(&top).unwrap(),
        BTreeSet::from([base.clone()])
    );
    assert_eq!(
        store.query_closure(&BTreeSet::from([top.clone()])).unwrap(),
        BTreeSet::from([base.clone(), top.clone()])
    );
    assert_eq!(
        store.query_path_from_hash_part(top.hash_part()).unwrap(),
        Some(top.clone())
    );
    assert_eq!(
        store
            .query_path_from_hash_part(missing.hash_part())
            .unwrap(),
        None
    );

    // The NAR of a path hashes to its registered NAR hash, and is exactly that long.
    let mut nar = Vec::new();
    store.nar_from_path(&top, &mut nar).unwrap();
    assert_eq!(nar.len() as u64, info.nar_size);
    assert_eq!(Hash::digest(HashAlgo::Sha256, &nar), info.nar_hash);
    // Queries still work after a NAR went over the connection.
    assert!(store.is_valid_path(&base).unwrap());

    // A path from its NAR: a copy of `top` under another name is a different path, so
    // build a fresh one: the NAR of a text file, content-addressed correctly.
    let contents = b"imported\n";
    let imported_path = dir
        .make_text_path(
            "imported",
            &Hash::digest(HashAlgo::Sha256, contents),
            &BTreeSet::new(),
        )
        .unwrap();
    let mut imported_nar = Vec::new();
    let mut encoder = arca_nar::NarEncoder::new(&mut imported_nar);
    encoder
        .regular(false, contents.len() as u64, &mut &contents[..])
        .unwrap();
    encoder.finish().unwrap();
    let mut imported = PathInfo::new(
        imported_path.clone(),
        Hash::digest(HashAlgo::Sha256, &imported_nar),
        imported_nar.len() as u64,
    );
    imported.ca = Some(arca_store_core::ContentAddress::Text(Hash::digest(
        HashAlgo::Sha256,
        contents,
    )));
    // A wrong NAR hash is refused and leaves nothing.
    let mut wrong = imported.clone();
    wrong.nar_hash = Hash::digest(HashAlgo::Sha256, b"something else");
    assert!(store.add_nar(&wrong, &mut &imported_nar[..]).is_err());
    assert!(!store.is_valid_path(&imported_path).unwrap());
    store.add_nar(&imported, &mut &imported_nar[..]).unwrap();
    assert!(store.is_valid_path(&imported_path).unwrap());
    let mut back = Vec::new();
    store.nar_from_path(&imported_path, &mut back).unwrap();
    assert_eq!(back, imported_nar);
}

#[test]
fn the_store_suite_passes_on_a_local_store() {
    let root = tempfile::tempdir().unwrap();
    exercise(&LocalStore::open(root.path()).unwrap());
}

/// Runs the suite through `serve`, the client offering protocol 1.`minor`.
fn through_the_daemon_at(minor: u64) {
    let root = tempfile::tempdir().unwrap();
    let (client_end, server_end) = UnixStream::pair().unwrap();
    let server_root = root.path().to_owned();
    let server = std::thread::spawn(move || {
        let store = LocalStore::open(&server_root).unwrap();
        let output = server_end.try_clone().unwrap();
        let peer = Peer { trusted: true };
        serve(
            &arca_daemon::LocalBackend::new(&store),
            &server_end,
            output,
            peer,
            Limits::default(),
            &Default::default(),
        )
    });
    let offered = protocol::version(1, minor);
    let client = DaemonClient::handshake_at(client_end, Default::default(), offered).unwrap();
    assert_eq!(client.protocol_version(), offered);
    // The version string exists from 1.33 on.
    assert_eq!(client.daemon_version().is_some(), minor >= 33, "1.{minor}");
    exercise(&client);
    drop(client);
    server.join().unwrap().unwrap();
}

#[test]
fn the_store_suite_passes_through_the_daemon() {
    through_the_daemon_at(protocol::MAX_VERSION & 0xff);
}

#[test]
fn the_store_suite_passes_at_every_supported_protocol_version() {
    // 1.21 (Nix 2.3) pulls NARs with STDERR_READ; 1.23 frames them; 1.26 changes errors;
    // 1.33 adds the version string, 1.35 the trusted flag, 1.37 CPU times, 1.38
    // exchanges feature names.
    for minor in 21..=38 {
        through_the_daemon_at(minor);
    }
}

#[test]
fn an_untrusted_client_cannot_import_an_input_addressed_path() {
    let root = tempfile::tempdir().unwrap();
    let (client_end, server_end) = UnixStream::pair().unwrap();
    let server_root = root.path().to_owned();
    let server = std::thread::spawn(move || {
        let store = LocalStore::open(&server_root).unwrap();
        let output = server_end.try_clone().unwrap();
        serve(
            &arca_daemon::LocalBackend::new(&store),
            &server_end,
            output,
            Peer { trusted: false },
            Limits::default(),
            &Default::default(),
        )
    });
    let client = DaemonClient::handshake(client_end, Default::default()).unwrap();
    let mut nar = Vec::new();
    let mut encoder = arca_nar::NarEncoder::new(&mut nar);
    encoder.regular(false, 8, &mut &b"claimed\n"[..]).unwrap();
    encoder.finish().unwrap();
    let path = StorePath::from_base_name(&format!("{}-claimed", "1".repeat(32))).unwrap();
    let info = PathInfo::new(
        path.clone(),
        Hash::digest(HashAlgo::Sha256, &nar),
        nar.len() as u64,
    );
    let error = client.add_nar(&info, &mut &nar[..]).unwrap_err();
    assert!(error.to_string().contains("lacks a signature"), "{error}");
    // The connection is still in step: the next operation works.
    assert!(!client.is_valid_path(&path).unwrap());
    assert!(client
        .add_text("fine", b"text is content-addressed", &BTreeSet::new())
        .is_ok());
    drop(client);
    server.join().unwrap().unwrap();
}

/// Arca's own closure request gives what the registry gives, in one round trip, and a
/// client that falls back to per-level queries gets the same.
#[test]
fn closure_graphs_through_the_daemon_are_the_registry_s() {
    let root = tempfile::tempdir().unwrap();
    let local = LocalStore::open(root.path()).unwrap();
    let mut previous: Option<StorePath> = None;
    for i in 0..30 {
        let references: BTreeSet<StorePath> = previous.iter().cloned().collect();
        let text = format!(
            "{i} {:?}",
            previous.as_ref().map(|p| local.store_dir().display(p))
        );
        previous = Some(
            local
                .add_text(&format!("link-{i}"), text.as_bytes(), &references)
                .unwrap(),
        );
    }
    let top = BTreeSet::from([previous.unwrap()]);
    let expected = local
        .requisites_graph(&top, arca_store_sqlite::DerivationOutputs::Excluded)
        .unwrap();
    assert_eq!(expected.len(), 30);
    // 1.25: no version string, so no extension: per-level queries. 1.37: one request.
    for minor in [25, 37] {
        let (client_end, server_end) = UnixStream::pair().unwrap();
        let server_root = root.path().to_owned();
        let server = std::thread::spawn(move || {
            let store = LocalStore::open(&server_root).unwrap();
            let output = server_end.try_clone().unwrap();
            let peer = Peer { trusted: false };
            serve(
                &arca_daemon::LocalBackend::new(&store),
                &server_end,
                output,
                peer,
                Limits::default(),
                &Default::default(),
            )
        });
        let client =
            DaemonClient::handshake_at(client_end, Default::default(), protocol::version(1, minor))
                .unwrap();
        assert_eq!(client.closure_graph(&top, false).unwrap(), expected);
        assert_eq!(
            client.query_closure(&top).unwrap(),
            expected.keys().cloned().collect()
        );
        drop(client);
        server.join().unwrap().unwrap();
    }
}
