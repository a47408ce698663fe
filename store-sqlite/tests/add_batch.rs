//! The local store's `AddBatch`: NARs unpacked ahead of their references become valid
//! only with their whole closure, references first; a path whose reference never comes
//! is dropped and leaves nothing behind; many threads, and two batches racing for the
//! same closure, finish without deadlock.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use arca_nar::DumpOptions;
use arca_store_core::{AddBatch, Hash, HashAlgo, PathInfo, Store, StorePath};
use arca_store_sqlite::{LocalStore, StoreError};
use common::{staging_entries, store_entries};

/// A path of a chain: `chain-I` refers to `chain-(I-1)`; its NAR is a small file.
struct Link {
    info: PathInfo,
    nar: Vec<u8>,
}

fn chain(dir: &Path, length: usize) -> Vec<Link> {
    let mut links: Vec<Link> = Vec::new();
    for index in 0..length {
        let file = dir.join(format!("source-{index}"));
        fs::write(&file, format!("link {index}\n").repeat(index + 1)).unwrap();
        let mut nar = Vec::new();
        arca_nar::dump_path(&file, &mut nar, &DumpOptions::default()).unwrap();
        let hash = Hash::digest(HashAlgo::Sha256, format!("link {index}").as_bytes());
        let path = StorePath::from_base_name(&format!("{}-chain-{index}", &hash.to_base32()[..32]))
            .unwrap();
        let mut info = PathInfo::new(path, Hash::digest(HashAlgo::Sha256, &nar), nar.len() as u64);
        if let Some(below) = links.last() {
            info.references = BTreeSet::from([below.info.path.clone()]);
        }
        links.push(Link { info, nar });
    }
    links
}

fn add(batch: &impl AddBatch<Error = StoreError>, link: &Link) {
    batch.add_nar(&link.info, &mut &link.nar[..]).unwrap();
}

/// Exactly `valid` is valid and in the store directory, with no staging tree or lock
/// file left, and the store verifies clean.
fn assert_store_holds(store: &LocalStore, valid: &[&Link]) {
    let expected: BTreeSet<StorePath> = valid.iter().map(|l| l.info.path.clone()).collect();
    assert_eq!(store.all_valid_paths().unwrap(), expected);
    let names: BTreeSet<String> = expected.iter().map(|p| p.as_str().to_owned()).collect();
    assert_eq!(store_entries(store), names, "nothing else in the store dir");
    assert!(
        staging_entries(store).is_empty(),
        "{:?}",
        staging_entries(store)
    );
    assert!(store.verify(None, Default::default()).unwrap().is_clean());
    for link in valid {
        let mut nar = Vec::new();
        store.nar_from_path(&link.info.path, &mut nar).unwrap();
        assert!(nar == link.nar);
        assert_eq!(
            store.query_references(&link.info.path).unwrap(),
            link.info.references
        );
    }
}

/// Runs `work`, failing the test if it takes more than a minute (a deadlock).
fn within_a_minute(work: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        work();
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("finished within a minute (no deadlock, no panic)");
}

#[test]
fn a_chain_added_top_first_becomes_valid_when_its_bottom_comes() {
    let dir = tempfile::tempdir().unwrap();
    let links = chain(dir.path(), 4);
    let store = LocalStore::open(&dir.path().join("root")).unwrap();
    let batch = store.add_batch();
    assert!(batch.ahead_of_references());
    for link in links.iter().skip(1).rev() {
        add(&batch, link);
        assert!(
            !store.is_valid_path(&link.info.path).unwrap(),
            "not valid before its references"
        );
        assert!(store
            .physical_path(&link.info.path)
            .symlink_metadata()
            .is_err());
    }
    add(&batch, &links[0]);
    let finished = batch.finish().unwrap();
    let order: Vec<StorePath> = links.iter().map(|l| l.info.path.clone()).collect();
    assert_eq!(finished.valid, order, "references first");
    assert!(finished.dropped.is_empty() && finished.failed.is_empty());
    assert_store_holds(&store, &links.iter().collect::<Vec<_>>());
}

#[test]
fn a_path_whose_reference_is_abandoned_is_dropped_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let links = chain(dir.path(), 4);
    let store = LocalStore::open(&dir.path().join("root")).unwrap();
    let batch = store.add_batch();
    add(&batch, &links[3]);
    add(&batch, &links[2]);
    add(&batch, &links[0]);
    batch.abandon(&links[1].info.path);
    // Dropped at once, not at the end: only the bottom's tree and its lock file are
    // still staged (it waits to be committed).
    assert_eq!(
        staging_entries(&store).len(),
        2,
        "{:?}",
        staging_entries(&store)
    );
    let finished = batch.finish().unwrap();
    assert_eq!(finished.valid, [links[0].info.path.clone()]);
    let dropped: BTreeSet<StorePath> = finished.dropped.into_iter().collect();
    assert_eq!(
        dropped,
        BTreeSet::from([links[2].info.path.clone(), links[3].info.path.clone()])
    );
    assert_store_holds(&store, &[&links[0]]);
}

#[test]
fn a_referrer_whose_reference_never_comes_is_dropped_at_finish() {
    let dir = tempfile::tempdir().unwrap();
    let links = chain(dir.path(), 2);
    let store = LocalStore::open(&dir.path().join("root")).unwrap();
    let batch = store.add_batch();
    add(&batch, &links[1]);
    let finished = batch.finish().unwrap();
    assert!(finished.valid.is_empty());
    assert_eq!(finished.dropped, [links[1].info.path.clone()]);
    assert_store_holds(&store, &[]);
}

#[test]
fn a_reference_valid_from_before_completes_the_closure() {
    let dir = tempfile::tempdir().unwrap();
    let links = chain(dir.path(), 2);
    let store = LocalStore::open(&dir.path().join("root")).unwrap();
    store
        .add_nar(&links[0].info, &mut &links[0].nar[..])
        .unwrap();
    let batch = store.add_batch();
    add(&batch, &links[1]);
    // Adding a valid path again is nothing.
    add(&batch, &links[0]);
    let finished = batch.finish().unwrap();
    assert_eq!(finished.valid, [links[1].info.path.clone()]);
    assert_store_holds(&store, &[&links[0], &links[1]]);
}

#[test]
fn a_bad_nar_is_refused_at_once_and_its_referrers_dropped_when_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let links = chain(dir.path(), 3);
    let store = LocalStore::open(&dir.path().join("root")).unwrap();
    let batch = store.add_batch();
    add(&batch, &links[0]);
    add(&batch, &links[2]);
    let mut tampered = links[1].nar.clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 1;
    let error = batch
        .add_nar(&links[1].info, &mut &tampered[..])
        .unwrap_err();
    assert!(
        matches!(error, StoreError::NarHashMismatch { .. }),
        "{error:?}"
    );
    batch.abandon(&links[1].info.path);
    let finished = batch.finish().unwrap();
    assert_eq!(finished.valid, [links[0].info.path.clone()]);
    assert_eq!(finished.dropped, [links[2].info.path.clone()]);
    assert_store_holds(&store, &[&links[0]]);
}

#[test]
fn threads_and_two_batches_racing_for_one_chain_finish() {
    room_for_22();
    within_a_minute(|| {
        let dir = tempfile::tempdir().unwrap();
        let links = chain(dir.path(), 120);
        let store = LocalStore::open(&dir.path().join("root")).unwrap();
        // Two batches (two substitutions of one closure), three threads each, handing
        // the chain out references first as a substituter does.
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    let batch = store.add_batch();
                    let next = AtomicUsize::new(0);
                    std::thread::scope(|workers| {
                        for _ in 0..3 {
                            workers.spawn(|| loop {
                                let index = next.fetch_add(1, Ordering::Relaxed);
                                let Some(link) = links.get(index) else { break };
                                add(&batch, link);
                            });
                        }
                    });
                    let finished = batch.finish().unwrap();
                    assert!(finished.dropped.is_empty() && finished.failed.is_empty());
                });
            }
        });
        assert_store_holds(&store, &links.iter().collect::<Vec<_>>());
    });
}

/// Sets the soft descriptor limit to 300, which leaves room for (300 - 256) / 2 = 22
/// staged paths (two open files each), committed once 11 are ready. The limit is the
/// process's, but every test here needs few.
fn room_for_22() {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 300, hard).unwrap();
}

#[test]
fn ready_paths_are_committed_eleven_at_a_time() {
    room_for_22();
    let dir = tempfile::tempdir().unwrap();
    let links = chain(dir.path(), 12);
    let store = LocalStore::open(&dir.path().join("root")).unwrap();
    let batch = store.add_batch();
    for link in &links[..10] {
        add(&batch, link);
    }
    // Ten ready: not committed yet, still staged.
    assert!(store.all_valid_paths().unwrap().is_empty());
    add(&batch, &links[10]);
    // Eleven: committed together.
    assert_eq!(store.all_valid_paths().unwrap().len(), 11);
    add(&batch, &links[11]);
    assert!(!store.is_valid_path(&links[11].info.path).unwrap());
    let finished = batch.finish().unwrap();
    assert_eq!(finished.valid.len(), 12);
    assert_store_holds(&store, &links.iter().collect::<Vec<_>>());
}

#[test]
fn adds_wait_for_room_while_a_reference_is_slow() {
    room_for_22();
    within_a_minute(|| {
        let dir = tempfile::tempdir().unwrap();
        let links = chain(dir.path(), 60);
        let store = LocalStore::open(&dir.path().join("root")).unwrap();
        let batch = store.add_batch();
        let added = AtomicUsize::new(0);
        let next = AtomicUsize::new(1);
        std::thread::scope(|scope| {
            // The bottom of the chain is taken first but arrives late.
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(400));
                let waiting = added.load(Ordering::SeqCst);
                // The room, and one more per worker for a path let in because a
                // staged path needs it.
                assert!(
                    (20..=25).contains(&waiting),
                    "{waiting} paths wait staged, the room is 22"
                );
                add(&batch, &links[0]);
            });
            for _ in 0..3 {
                scope.spawn(|| loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(link) = links.get(index) else { break };
                    add(&batch, link);
                    added.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        let finished = batch.finish().unwrap();
        assert_eq!(finished.valid.len(), 60);
        assert_store_holds(&store, &links.iter().collect::<Vec<_>>());
    });
}

#[test]
fn a_commit_that_fails_names_the_path_at_fault_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let links = chain(dir.path(), 2);
    // A `.drv` that is no derivation: committing it fails (as Nix, the store checks
    // every derivation that becomes valid), and with it the batch it is committed in.
    let file = dir.path().join("bogus.drv");
    fs::write(&file, "not a derivation").unwrap();
    let mut nar = Vec::new();
    arca_nar::dump_path(&file, &mut nar, &DumpOptions::default()).unwrap();
    let path = StorePath::from_base_name(&format!("{}-bogus.drv", "b".repeat(32))).unwrap();
    let bogus = Link {
        info: PathInfo::new(path, Hash::digest(HashAlgo::Sha256, &nar), nar.len() as u64),
        nar,
    };
    let store = LocalStore::open(&dir.path().join("root")).unwrap();
    let batch = store.add_batch();
    add(&batch, &bogus);
    add(&batch, &links[0]);
    add(&batch, &links[1]);
    let finished = batch.finish().unwrap();
    assert!(finished.valid.is_empty(), "{:?}", finished.valid);
    let reasons: Vec<(StorePath, String)> = finished
        .failed
        .iter()
        .map(|(path, error)| (path.clone(), error.to_string()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    let (first, why) = &reasons[0];
    assert_eq!(*first, bogus.info.path, "{reasons:?}");
    assert!(why.contains("bogus.drv"), "{why}");
    for (_, why) in &reasons[1..] {
        assert!(
            why.contains("was not made valid") && why.contains("bogus.drv"),
            "{why}"
        );
    }
    assert_store_holds(&store, &[]);
}

/// Both batches read exactly each NAR off a stream of several (a daemon connection's
/// `AddMultipleToStore`), also a NAR of a path that is valid already.
#[test]
fn a_batch_reads_exactly_each_nar_of_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let links = chain(dir.path(), 3);
    let mut stream = Vec::new();
    for link in &links {
        stream.extend_from_slice(&link.nar);
    }
    stream.extend_from_slice(b"what follows");
    for one_by_one in [false, true] {
        let store = LocalStore::open(&dir.path().join(format!("root-{one_by_one}"))).unwrap();
        store
            .add_nar(&links[1].info, &mut &links[1].nar[..])
            .unwrap_err(); // no reference yet
        store
            .add_nar(&links[0].info, &mut &links[0].nar[..])
            .unwrap();
        let mut rest = &stream[..];
        if one_by_one {
            let batch = arca_store_core::OneByOne::new(&store);
            for link in &links {
                batch.add_nar(&link.info, &mut rest).unwrap();
            }
            batch.finish().unwrap();
        } else {
            let batch = store.add_batch();
            for link in &links {
                batch.add_nar(&link.info, &mut rest).unwrap();
            }
            batch.finish().unwrap();
        }
        assert_eq!(rest, b"what follows", "one by one: {one_by_one}");
        assert_store_holds(&store, &links.iter().collect::<Vec<_>>());
    }
}
