//! `AddToStore` as clients before protocol 1.25 (Nix 2.3) send it: flags instead of a
//! content-address method, and the NAR inline, whose end only parsing finds. The path
//! must be the one `nix-store --add`/`--add-fixed` give, and the connection must stay in
//! step after it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use arca_daemon_proto::wire::{Limits, WireReader, WireWriter};
use arca_daemon_proto::{protocol, serve, Peer};
use arca_store_core::HashAlgo;
use arca_store_sqlite::LocalStore;

fn nar_of(path: &std::path::Path) -> Vec<u8> {
    let mut nar = Vec::new();
    arca_nar::dump_path(path, &mut nar, &arca_nar::DumpOptions::default()).unwrap();
    nar
}

#[test]
fn old_add_to_store_gives_the_paths_nix_store_add_gives() {
    let root = tempfile::tempdir().unwrap();
    let sources = tempfile::tempdir().unwrap();
    let tree = sources.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/file"), b"contents\n").unwrap();
    let flat = sources.path().join("flat");
    std::fs::write(&flat, b"flat file\n").unwrap();
    let (expected_tree, expected_flat) = {
        let store = LocalStore::open(root.path()).unwrap();
        let expected = (
            store.add_path(&tree, "tree").unwrap(),
            store
                .add_fixed_file(&flat, "flat", HashAlgo::Sha256)
                .unwrap(),
        );
        let store_dir = arca_store_core::StoreDir::default();
        (
            store_dir.display(&expected.0),
            store_dir.display(&expected.1),
        )
    };
    // A fresh store, so that the daemon really adds them.
    let root = tempfile::tempdir().unwrap();
    let (client, server_end) = UnixStream::pair().unwrap();
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
    let mut to = WireWriter::new(client.try_clone().unwrap());
    let mut from = WireReader::new(std::io::BufReader::new(client), Limits::default());
    to.write_u64(protocol::WORKER_MAGIC_1).unwrap();
    assert_eq!(from.read_u64().unwrap(), protocol::WORKER_MAGIC_2);
    from.read_u64().unwrap();
    to.write_u64(protocol::version(1, 24)).unwrap();
    to.write_u64(0).unwrap();
    to.write_u64(0).unwrap();
    assert_eq!(from.read_u64().unwrap(), protocol::stderr::LAST);

    for (name, recursive, source, expected) in [
        ("tree", 1, &tree, &expected_tree),
        ("flat", 0, &flat, &expected_flat),
    ] {
        to.write_u64(protocol::Op::AddToStore as u64).unwrap();
        to.write_str(name).unwrap();
        to.write_u64(1).unwrap(); // fixed
        to.write_u64(recursive).unwrap();
        to.write_str("sha256").unwrap();
        to.get_mut().write_all(&nar_of(source)).unwrap();
        assert_eq!(from.read_u64().unwrap(), protocol::stderr::LAST, "{name}");
        assert_eq!(&from.read_string("path").unwrap(), expected);
    }
    // Still in step: a query after the inline NARs.
    to.write_u64(protocol::Op::IsValidPath as u64).unwrap();
    to.write_str(&expected_tree).unwrap();
    assert_eq!(from.read_u64().unwrap(), protocol::stderr::LAST);
    assert!(from.read_bool("valid").unwrap());
    to.get_mut().shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    from.get_mut().read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing after the last reply");
    server.join().unwrap().unwrap();
}

/// Nix 2.3's `ImportPaths` (the daemon pulls the archive with `STDERR_READ`), the old
/// `ExportPath` (the archive comes back in `STDERR_WRITE` chunks) and `AddSignatures`.
#[test]
fn import_export_and_signatures_as_old_clients_send_them() {
    use std::collections::BTreeSet;
    let source_root = tempfile::tempdir().unwrap();
    let source = LocalStore::open(source_root.path()).unwrap();
    let base =
        arca_store_core::Store::add_text(&source, "base", b"base\n", &BTreeSet::new()).unwrap();
    let text = format!("uses /nix/store/{}\n", base.as_str());
    let top = arca_store_core::Store::add_text(
        &source,
        "top",
        text.as_bytes(),
        &BTreeSet::from([base.clone()]),
    )
    .unwrap();
    let mut archive = Vec::new();
    source
        .export_paths(&BTreeSet::from([base.clone(), top.clone()]), &mut archive)
        .unwrap();
    let mut single = Vec::new();
    source
        .export_paths(&BTreeSet::from([top.clone()]), &mut single)
        .unwrap();

    let root = tempfile::tempdir().unwrap();
    let (client, server_end) = UnixStream::pair().unwrap();
    let server_root = root.path().to_owned();
    let server = std::thread::spawn(move || {
        let store = LocalStore::open(&server_root).unwrap();
        let output = server_end.try_clone().unwrap();
        serve(
            &arca_daemon::LocalBackend::new(&store),
            &server_end,
            output,
            Peer { trusted: true },
            Limits::default(),
            &Default::default(),
        )
    });
    let mut to = WireWriter::new(client.try_clone().unwrap());
    let mut from = WireReader::new(std::io::BufReader::new(client), Limits::default());
    to.write_u64(protocol::WORKER_MAGIC_1).unwrap();
    assert_eq!(from.read_u64().unwrap(), protocol::WORKER_MAGIC_2);
    from.read_u64().unwrap();
    to.write_u64(protocol::version(1, 21)).unwrap();
    to.write_u64(0).unwrap();
    to.write_u64(0).unwrap();
    assert_eq!(from.read_u64().unwrap(), protocol::stderr::LAST);

    // ImportPaths: answer every STDERR_READ from the archive.
    to.write_u64(protocol::Op::ImportPaths as u64).unwrap();
    let mut offset = 0;
    loop {
        match from.read_u64().unwrap() {
            protocol::stderr::READ => {
                let wanted = from.read_u64().unwrap() as usize;
                let end = (offset + wanted).min(archive.len());
                to.write_bytes(&archive[offset..end]).unwrap();
                offset = end;
            }
            protocol::stderr::LAST => break,
            other => panic!("unexpected message {other:#x}"),
        }
    }
    let imported = from.read_strings("paths").unwrap();
    assert_eq!(
        imported,
        vec![
            format!("/nix/store/{}", base.as_str()),
            format!("/nix/store/{}", top.as_str())
        ]
    );

    // ExportPath gives back what the source store exports for one path (without the
    // archive's leading 1 and trailing 0).
    to.write_u64(protocol::Op::ExportPath as u64).unwrap();
    to.write_str(&format!("/nix/store/{}", top.as_str()))
        .unwrap();
    to.write_u64(0).unwrap();
    let mut exported = Vec::new();
    loop {
        match from.read_u64().unwrap() {
            protocol::stderr::WRITE => exported.extend(from.read_bytes("chunk").unwrap()),
            protocol::stderr::LAST => break,
            other => panic!("unexpected message {other:#x}"),
        }
    }
    assert_eq!(from.read_u64().unwrap(), 1);
    assert_eq!(exported, single[8..single.len() - 8]);

    // AddSignatures, then the signatures are in the path info.
    let signature = format!("cache.example:{}", "A".repeat(86) + "==");
    to.write_u64(protocol::Op::AddSignatures as u64).unwrap();
    to.write_str(&format!("/nix/store/{}", top.as_str()))
        .unwrap();
    to.write_strings([&signature].iter()).unwrap();
    assert_eq!(from.read_u64().unwrap(), protocol::stderr::LAST);
    assert_eq!(from.read_u64().unwrap(), 1);
    to.get_mut().shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    from.get_mut().read_to_end(&mut rest).unwrap();
    server.join().unwrap().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    let info = arca_store_core::Store::query_path_info(&store, &top)
        .unwrap()
        .unwrap();
    assert!(info.signatures.contains(&signature), "{info:?}");
}
