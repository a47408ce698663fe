//! One suite for the operations of `StoreOps` that the `arca` command uses (adds from the
//! file system, export and import, roots, garbage collection, verification, derivations,
//! builds), run on the local store with builds (`LocalBackend`) and on a `DaemonClient`
//! served by `serve` over a socket pair: every command written once against the interface
//! behaves the same on both.

use std::collections::BTreeSet;
use std::os::unix::net::UnixStream;
use std::path::Path;

use arca_daemon::LocalBackend;
use arca_daemon_proto::wire::Limits;
use arca_daemon_proto::{serve, DaemonClient, Peer};
use arca_store_core::derivation::{Derivation, DerivationOutput, OutputName};
use arca_store_core::{
    BuildMode, DerivedPath, FindRoots, GcAction, GcOptions, HashAlgo, Settings, Store, StoreOps,
    StorePath, VerifyOptions, VerifyOutcome,
};
use arca_store_sqlite::LocalStore;

/// Everything checked on a store that `open` gives handles of (a connection, for a
/// daemon); `other` is a second, empty store of the same kind (an import target). `files`
/// is a scratch directory of the caller's.
fn exercise<S: StoreOps, T: StoreOps>(open: &dyn Fn() -> S, other: &T, files: &Path) {
    let store = &open();
    let dir = store.store_dir().clone();

    // add-path: a tree and a file, as `nix-store --add` (its path is Nix's, whatever
    // the back end).
    let tree = files.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/a"), "a\n").unwrap();
    std::fs::write(files.join("file"), "file\n").unwrap();
    let added = store
        .add_paths(
            &[
                (tree.clone(), "tree".to_owned()),
                (files.join("file"), "file".to_owned()),
            ],
            &|_, _| {},
        )
        .unwrap();
    assert_eq!(added.len(), 2);
    assert_eq!(added[0].name(), "tree");
    let mut nar = Vec::new();
    arca_nar::dump_path(&tree, &mut nar, &Default::default()).unwrap();
    let nar_hash = arca_store_core::Hash::digest(HashAlgo::Sha256, &nar);
    assert_eq!(
        added[0],
        dir.make_fixed_output_path(
            "tree",
            arca_store_core::ContentAddressMethod::Recursive,
            &nar_hash,
            &BTreeSet::new(),
            false
        )
        .unwrap()
    );
    // add-file: flat, by the file's bytes.
    let flat = store
        .add_file(&files.join("file"), "flat", HashAlgo::Sha1)
        .unwrap();
    assert_eq!(
        flat,
        dir.make_fixed_output_path(
            "flat",
            arca_store_core::ContentAddressMethod::Flat,
            &arca_store_core::Hash::digest(HashAlgo::Sha1, b"file\n"),
            &BTreeSet::new(),
            false
        )
        .unwrap()
    );
    assert!(store
        .add_file(&files.join("absent"), "absent", HashAlgo::Sha256)
        .is_err());

    // A chain of text paths, and a derivation over it.
    let base = store.add_text("base", b"base\n", &BTreeSet::new()).unwrap();
    let top_text = format!("uses {}\n", dir.display(&base));
    let top = store
        .add_text("top", top_text.as_bytes(), &BTreeSet::from([base.clone()]))
        .unwrap();
    let mut drv = Derivation {
        name: "suite".into(),
        outputs: [(OutputName::out(), DerivationOutput::Deferred)].into(),
        input_drvs: Default::default(),
        input_srcs: BTreeSet::from([top.clone()]),
        system: "x86_64-linux".into(),
        builder: "/bin/sh".into(),
        args: vec!["-c".into(), "exit 1".into()],
        env: [("out".to_owned(), String::new())].into(),
    };
    arca_store_core::derivation::ModuloHashCache::new()
        .compute_output_paths(&dir, &mut drv, |path| store.read_derivation(path))
        .unwrap();
    let drv_path = store
        .add_text(
            "suite.drv",
            drv.to_aterm(&dir).as_bytes(),
            &drv.drv_references(),
        )
        .unwrap();
    assert_eq!(store.read_derivation(&drv_path).unwrap(), drv);
    assert!(store.read_derivation(&top).is_err(), "not a derivation");

    // Queries over the graph.
    assert_eq!(
        store
            .referrers_closure(&BTreeSet::from([base.clone()]))
            .unwrap(),
        BTreeSet::from([base.clone(), top.clone(), drv_path.clone()])
    );
    let graph = store
        .closure_graph(&BTreeSet::from([top.clone()]), false)
        .unwrap();
    assert_eq!(graph.len(), 2);
    assert_eq!(graph[&top], BTreeSet::from([base.clone()]));

    // Export, then import into the other store. `top` alone is refused there: it refers
    // to `base`, which the other store lacks; nothing is left behind.
    let mut archive = Vec::new();
    store
        .export_paths(&BTreeSet::from([top.clone()]), &mut archive)
        .unwrap();
    let error = other.import_paths(&mut &archive[..]).unwrap_err();
    assert!(
        error.to_string().contains(&dir.display(&base)),
        "names the missing reference: {error}"
    );
    assert!(!other.is_valid_path(&top).unwrap());
    // The closure: the same paths, valid there, the same NARs.
    let closure = store.query_closure(&BTreeSet::from([top.clone()])).unwrap();
    let mut archive = Vec::new();
    store.export_paths(&closure, &mut archive).unwrap();
    let imported: BTreeSet<StorePath> = other
        .import_paths(&mut &archive[..])
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(imported, closure);
    assert_eq!(
        other.query_path_info(&top).unwrap().unwrap().nar_hash,
        store.query_path_info(&top).unwrap().unwrap().nar_hash
    );
    // A truncated archive is refused.
    assert!(other
        .import_paths(&mut &archive[..archive.len() / 2])
        .is_err());

    // Roots: a permanent root keeps `top` (and so `base`) alive.
    let link = files.join("result");
    let made = store.add_perm_root(&top, &link).unwrap();
    assert_eq!(
        std::fs::read_link(&made).unwrap(),
        Path::new(&dir.display(&top))
    );
    let roots = store.find_roots(FindRoots::default()).unwrap();
    assert!(
        roots.iter().any(|(l, p)| Path::new(l) == made && *p == top),
        "{roots:?}"
    );
    let kept = store.roots_of(&BTreeSet::from([base.clone()])).unwrap();
    assert!(kept.iter().any(|(_, p)| *p == top), "{kept:?}");

    // Garbage. What a handle added stays alive while the handle lives (its temporary
    // roots, as Nix's): `flat` was added through a handle that is gone (a connection's
    // roots go when its server notices, so the collector is asked until it sees it).
    std::fs::write(files.join("garbage"), "garbage\n").unwrap();
    let garbage = {
        let adder = open();
        adder
            .add_file(&files.join("garbage"), "garbage", HashAlgo::Sha256)
            .unwrap()
    };
    let return_dead = GcOptions {
        action: GcAction::ReturnDead,
        ..GcOptions::default()
    };
    let mut dead = store.collect_garbage(&return_dead, &|_| {}).unwrap();
    for _ in 0..100 {
        if dead.paths.contains(&dir.display(&garbage)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        dead = store.collect_garbage(&return_dead, &|_| {}).unwrap();
    }
    assert!(dead.paths.contains(&dir.display(&garbage)), "{dead:?}");
    assert!(!dead.paths.contains(&dir.display(&base)), "{dead:?}");
    assert!(store
        .collect_garbage(
            &GcOptions {
                action: GcAction::DeleteSpecific(BTreeSet::from([base.clone()])),
                ..GcOptions::default()
            },
            &|_| {},
        )
        .is_err());
    let deleted = store
        .collect_garbage(
            &GcOptions {
                action: GcAction::DeleteSpecific(BTreeSet::from([garbage.clone()])),
                ..GcOptions::default()
            },
            &|_| {},
        )
        .unwrap();
    assert_eq!(deleted.paths, [dir.display(&garbage)]);
    assert!(!store.is_valid_path(&garbage).unwrap());
    assert!(store.is_valid_path(&base).unwrap());

    // Verification of a sound store finds nothing.
    let outcome = store
        .verify_store(
            None,
            VerifyOptions {
                check_contents: true,
                repair: false,
            },
        )
        .unwrap();
    assert!(!outcome.errors_found(), "{outcome:?}");
    if let VerifyOutcome::Report(report) = outcome {
        assert!(report.checked >= 5, "{report:?}");
    }

    // A build that fails says so for its target, without failing the request.
    let outcomes = store
        .build_paths(
            &[DerivedPath::all_outputs(drv_path.clone())],
            BuildMode::Normal,
            &Settings::default(),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].0.path, drv_path);
    assert!(outcomes[0].1.is_err(), "{outcomes:?}");
    // An opaque path that is valid is "built" already.
    let outcomes = store
        .build_paths(
            &[DerivedPath {
                path: top.clone(),
                outputs: None,
            }],
            BuildMode::Normal,
            &Settings::default(),
            &mut |_| {},
        )
        .unwrap();
    assert!(outcomes[0].1.is_ok(), "{outcomes:?}");
}

#[test]
fn the_store_ops_suite_passes_on_the_local_store() {
    let root = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let open = || LocalBackend::owning(LocalStore::open(root.path()).unwrap());
    let other = LocalStore::open(other.path()).unwrap();
    exercise(&open, &LocalBackend::new(&other), files.path());
}

/// A client of a trusted connection served on its own thread from a store at `root`.
fn served(root: &Path) -> (DaemonClient, std::thread::JoinHandle<()>) {
    let (client_end, server_end) = UnixStream::pair().unwrap();
    let root = root.to_owned();
    let server = std::thread::spawn(move || {
        let store = LocalStore::open(&root).unwrap();
        let output = server_end.try_clone().unwrap();
        serve(
            &LocalBackend::new(&store),
            &server_end,
            output,
            Peer { trusted: true },
            Limits::default(),
            &Default::default(),
        )
        .unwrap();
    });
    (
        DaemonClient::handshake(client_end, Default::default()).unwrap(),
        server,
    )
}

#[test]
fn the_store_ops_suite_passes_through_the_daemon() {
    let root = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let open = || served(root.path()).0;
    let (other_client, other_server) = served(other.path());
    exercise(&open, &other_client, files.path());
    let (client, server) = served(root.path());
    // What the protocol cannot carry is refused with a reason, not done differently.
    let some = BTreeSet::from([client.add_text("x", b"x", &BTreeSet::new()).unwrap()]);
    let error = StoreOps::verify_store(&client, Some(&some), VerifyOptions::default()).unwrap_err();
    assert!(error.to_string().contains("whole store"), "{error}");
    let error = StoreOps::collect_garbage(
        &client,
        &GcOptions {
            action: GcAction::DeleteSpecific(some),
            ignore_liveness: true,
            ..GcOptions::default()
        },
        &|_| {},
    )
    .unwrap_err();
    assert!(error.to_string().contains("liveness"), "{error}");
    let error = StoreOps::collect_garbage(
        &client,
        &GcOptions {
            keep_outputs: true,
            ..GcOptions::default()
        },
        &|_| {},
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("the daemon's configuration"),
        "{error}"
    );
    drop((client, other_client));
    server.join().unwrap();
    other_server.join().unwrap();
}
