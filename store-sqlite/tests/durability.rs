//! Durability: deferred registrations are journalled until a flush, and after a power
//! loss (simulated: journal records from an earlier boot, files truncated or missing as a
//! lost page cache leaves them) the damaged paths and their referrers are invalidated,
//! while intact ones stay.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use arca_store_core::{Store, StorePath};
use arca_store_sqlite::{boot_id, Durability, LocalStore, StoreOptions, VerifyOptions};
use rusqlite::Connection;

fn db(root: &Path) -> Connection {
    let conn = Connection::open(root.join("nix/var/nix/db/db.sqlite")).unwrap();
    conn.execute_batch("pragma foreign_keys = 1").unwrap();
    conn
}

fn text(store: &LocalStore, name: &str, contents: &str, refs: &[&StorePath]) -> StorePath {
    let refs: BTreeSet<StorePath> = refs.iter().map(|p| (*p).clone()).collect();
    store
        .add_text_path(name, contents.as_bytes(), &refs)
        .unwrap()
}

fn journal(root: &Path) -> Vec<(String, String)> {
    let conn = db(root);
    let mut stmt = conn
        .prepare(
            "select v.path, u.boot from ArcaUnsynced u join ValidPaths v on v.id = u.id \
             order by u.id",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

fn open_immediate(root: &Path) -> LocalStore {
    let options = StoreOptions {
        durability: Durability::Immediate,
        ..StoreOptions::default()
    };
    LocalStore::open_with(root, options).unwrap()
}

#[test]
fn deferred_is_the_default_here() {
    // The machines this runs on tell their boot id; without it the test below would
    // pass vacuously.
    assert!(boot_id().is_some());
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    assert_eq!(store.durability(), Durability::Deferred);
    assert_eq!(
        open_immediate(root.path()).durability(),
        Durability::Immediate
    );
}

#[test]
fn deferred_registrations_are_journalled_until_a_flush() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    let a = text(&store, "a", "a", &[]);
    let b = text(&store, "b", "b", &[&a]);
    let boot = boot_id().unwrap();
    let display = |p: &StorePath| store.store_dir().display(p);
    assert_eq!(
        journal(root.path()),
        vec![(display(&a), boot.clone()), (display(&b), boot.clone())]
    );
    store.sync().unwrap();
    assert_eq!(journal(root.path()), vec![]);
    // Dropping the handle has its thread flush what it added since (not waited for),
    // when due: a second after the add, not at once (a process cannot exit while one of
    // its threads is in `syncfs`, so a command would wait for the whole flush).
    let added = Instant::now();
    let c = text(&store, "c", "c", &[]);
    assert_eq!(journal(root.path()).len(), 1);
    drop(store);
    std::thread::sleep(Duration::from_millis(300));
    let journalled = journal(root.path()).len();
    // Only when this thread was not held up for the whole second.
    if added.elapsed() < Duration::from_millis(900) {
        assert_eq!(journalled, 1, "flushed at once when dropped");
    }
    assert!(journal_empties_within(root.path(), Duration::from_secs(5)));
    let store = open_immediate(root.path());
    assert!(store.is_valid_path(&c).unwrap());
}

/// Polls the journal until it is empty or `limit` has passed.
fn journal_empties_within(root: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if journal(root).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A handle dropped while the journal holds records of this boot older than 30 s
/// flushes them itself, before it is gone: a program that never lives a second still
/// keeps the journal short.
#[test]
fn a_handle_dropped_with_old_records_flushes_them_itself() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    text(&store, "old", "old", &[]);
    db(root.path())
        .execute(
            "update ValidPaths set registrationTime = registrationTime - 60",
            [],
        )
        .unwrap();
    let store2 = LocalStore::open(root.path()).unwrap();
    drop(store2);
    assert_eq!(
        journal(root.path()),
        vec![],
        "flushed before the drop returned"
    );
    drop(store);
}

#[test]
fn immediate_durability_journals_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store = open_immediate(root.path());
    text(&store, "a", "a", &[]);
    let conn = db(root.path());
    let tables: i64 = conn
        .query_row(
            "select count(*) from sqlite_master where name = 'ArcaUnsynced'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "an immediate store leaves Nix's schema as it is");
}

/// A handle's adds are flushed about a second later by its thread, busy or idle, with
/// no further call on the handle.
#[test]
fn an_idle_handles_adds_are_flushed_within_about_a_second() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    let start = Instant::now();
    text(&store, "first", "1", &[]);
    assert_eq!(journal(root.path()).len(), 1, "not flushed inline");
    assert!(journal_empties_within(root.path(), Duration::from_secs(5)));
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    text(&store, "second", "2", &[]);
    assert!(journal_empties_within(root.path(), Duration::from_secs(5)));
    drop(store);
}

/// Makes the records of the current boot look as if a power loss had ended their boot.
fn age_journal(root: &Path) {
    db(root)
        .execute("update ArcaUnsynced set boot = 'an-earlier-boot'", [])
        .unwrap();
}

fn make_writable(path: &Path) {
    for entry in walk(path) {
        let mode = fs::symlink_metadata(&entry).unwrap().permissions().mode();
        fs::set_permissions(&entry, fs::Permissions::from_mode(mode | 0o200)).unwrap();
    }
}

fn walk(path: &Path) -> Vec<std::path::PathBuf> {
    let mut all = vec![path.to_owned()];
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            all.extend(walk(&entry.unwrap().path()));
        }
    }
    all
}

#[test]
fn after_a_power_loss_damaged_paths_and_their_referrers_are_invalidated() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    // Flushed before the "power loss": never checked, whatever happens to them.
    let old = text(&store, "old", "flushed long ago", &[]);
    store.sync().unwrap();
    // Not flushed: intact, truncated (delayed allocation lost), missing (rename lost).
    let intact = text(&store, "intact", "survived", &[&old]);
    let tree = scratch.path().join("tree");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::write(tree.join("bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
    let truncated = store.add_path(&tree, "truncated").unwrap();
    let missing = text(&store, "missing", "gone", &[]);
    // Intact itself, but referring to a damaged path: must go too.
    let referrer = text(&store, "referrer", "uses it", &[&truncated]);
    let referrer_of_referrer = text(&store, "outer", "uses that", &[&referrer]);
    age_journal(root.path());
    drop(store);
    assert_eq!(
        journal(root.path()).len(),
        5,
        "a flush keeps earlier boots' records"
    );

    let file = root
        .path()
        .join("nix/store")
        .join(truncated.as_str())
        .join("bin/tool");
    make_writable(&root.path().join("nix/store").join(truncated.as_str()));
    fs::File::create(&file).unwrap();
    let missing_dir = root.path().join("nix/store").join(missing.as_str());
    make_writable(&missing_dir);
    fs::remove_file(&missing_dir).unwrap();

    let store = LocalStore::open(root.path()).unwrap();
    for (path, valid) in [
        (&old, true),
        (&intact, true),
        (&truncated, false),
        (&missing, false),
        (&referrer, false),
        (&referrer_of_referrer, false),
    ] {
        assert_eq!(store.is_valid_path(path).unwrap(), valid, "{path}");
        assert_eq!(store.physical_path(path).exists(), valid, "{path}");
    }
    assert_eq!(journal(root.path()), vec![]);
    let report = store
        .verify(
            None,
            VerifyOptions {
                check_contents: true,
                repair: false,
            },
        )
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    // The names are free again: adding the same contents makes them valid anew.
    let again = store.add_path(&tree, "truncated").unwrap();
    assert_eq!(again, truncated);
    assert_eq!(fs::read(&file).unwrap(), b"#!/bin/sh\necho hi\n");
}

#[test]
fn records_of_the_current_boot_are_not_checked_but_flushed_away() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    let path = text(&store, "left", "by a killed writer", &[]);
    // As a writer killed with -9 leaves it: its record, its files in the page cache.
    std::mem::forget(store);
    assert_eq!(journal(root.path()).len(), 1);
    let store = LocalStore::open(root.path()).unwrap();
    assert!(store.is_valid_path(&path).unwrap());
    assert_eq!(journal(root.path()).len(), 1, "no reboot: nothing to check");
    text(&store, "another", "add", &[]);
    store.sync().unwrap();
    assert_eq!(
        journal(root.path()),
        vec![],
        "any flush covers every writer's records"
    );
}

/// Nix's garbage collector deletes rows of `ValidPaths` with foreign keys on: the
/// journal's records go with them.
#[test]
fn deleting_a_path_deletes_its_record() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    text(&store, "doomed", "x", &[]);
    assert_eq!(journal(root.path()).len(), 1);
    db(root.path())
        .execute("delete from ValidPaths", [])
        .unwrap();
    assert_eq!(journal(root.path()), vec![]);
    drop(store);
}
