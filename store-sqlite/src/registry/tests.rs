use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use arca_store_core::{
    ContentAddress, ContentAddressMethod, Hash, HashAlgo, PathInfo, StoreDir, StorePath,
};
use proptest::prelude::*;

use super::*;

/// The `sql` column of `sqlite_master` in a database made by Nix 2.8 (`nix-store --add`
/// into a fresh chroot store), in rowid order, NULLs (automatic indices) left out.
const NIX_2_8_MASTER: [&str; 8] = [
    "CREATE TABLE ValidPaths (\n    id               integer primary key autoincrement not null,\n    path             text unique not null,\n    hash             text not null,\n    registrationTime integer not null,\n    deriver          text,\n    narSize          integer,\n    ultimate         integer, -- null implies \"false\"\n    sigs             text, -- space-separated\n    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo\n)",
    "CREATE TABLE sqlite_sequence(name,seq)",
    "CREATE TABLE Refs (\n    referrer  integer not null,\n    reference integer not null,\n    primary key (referrer, reference),\n    foreign key (referrer) references ValidPaths(id) on delete cascade,\n    foreign key (reference) references ValidPaths(id) on delete restrict\n)",
    "CREATE INDEX IndexReferrer on Refs(referrer)",
    "CREATE INDEX IndexReference on Refs(reference)",
    "CREATE TRIGGER DeleteSelfRefs before delete on ValidPaths\n  begin\n    delete from Refs where referrer = old.id and reference = old.id;\n  end",
    "CREATE TABLE DerivationOutputs (\n    drv  integer not null,\n    id   text not null, -- symbolic output id, usually \"out\"\n    path text not null,\n    primary key (drv, id),\n    foreign key (drv) references ValidPaths(id) on delete cascade\n)",
    "CREATE INDEX IndexDerivationOutputs on DerivationOutputs(path)",
];

fn store_path(name: &str, seed: u64) -> StorePath {
    let digest = Hash::digest(HashAlgo::Sha256, format!("{seed}/{name}").as_bytes()).compress(20);
    let mut folded = [0u8; 20];
    folded.copy_from_slice(&digest);
    StorePath::from_hash(&folded, name).expect("test names are valid")
}

fn info(path: &StorePath, references: &[&StorePath]) -> PathInfo {
    let mut info = PathInfo::new(
        path.clone(),
        Hash::digest(HashAlgo::Sha256, path.as_str().as_bytes()),
        1000 + path.as_str().len() as u64,
    );
    info.references = references.iter().map(|p| (*p).clone()).collect();
    info.registration_time = 1_700_000_000;
    info
}

fn open(dir: &Path) -> Registry {
    Registry::open(dir, StoreDir::default()).expect("open registry")
}

fn master_sql(db: &Path) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("select sql from sqlite_master where sql is not null order by rowid")
        .unwrap();
    let rows = stmt.query_map([], |row| row.get(0)).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

fn count(registry: &Registry, table: &str) -> i64 {
    registry
        .conn
        .query_row(&format!("select count(*) from {table}"), [], |row| {
            row.get(0)
        })
        .unwrap()
}

/// Whether real Nix is installed; says so loudly when it is not.
fn nix_available(test: &str) -> bool {
    let found = Command::new("nix-store")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED {test}: nix-store (Nix 2.8) is not installed; this test needs real Nix");
    }
    found
}

/// Runs a Nix command on the chroot store at `root`, returning stdout.
fn nix(root: &Path, program: &str, args: &[&str]) -> String {
    let store = format!("local?root={}", root.display());
    let output = Command::new(program)
        .args(["--store", &store, "--option", "substituters", ""])
        .args(["--extra-experimental-features", "nix-command"])
        .args(args)
        .output()
        .expect("run nix");
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn db_dir(root: &Path) -> PathBuf {
    root.join("nix/var/nix/db")
}

#[test]
fn schema_text_is_identical_to_nix_2_8() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path());
    assert_eq!(master_sql(registry.db_path()), NIX_2_8_MASTER);
    assert_eq!(std::fs::read(dir.path().join("schema")).unwrap(), b"10");
    let big_lock = std::fs::metadata(dir.path().join("big-lock")).unwrap();
    assert_eq!(
        (big_lock.len(), big_lock.permissions().mode() & 0o777),
        (0, 0o600)
    );
    let reserved = std::fs::metadata(dir.path().join("reserved")).unwrap();
    assert_eq!(reserved.len(), RESERVED_SIZE);
    assert_eq!(reserved.permissions().mode() & 0o777, 0o600);
    let pragma = |name: &str| -> String {
        registry
            .conn
            .query_row(&format!("pragma {name}"), [], |row| {
                row.get_ref(0).map(|v| match v {
                    ValueRef::Integer(n) => n.to_string(),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    _ => String::new(),
                })
            })
            .unwrap()
    };
    assert_eq!(pragma("journal_mode"), "wal");
    assert_eq!(pragma("synchronous"), "1"); // normal
    assert_eq!(pragma("foreign_keys"), "1");
    assert_eq!(pragma("wal_autocheckpoint"), "40000");
    drop(registry);
    // Reopening an existing store runs no schema statement and changes nothing.
    let registry = open(dir.path());
    assert_eq!(master_sql(registry.db_path()), NIX_2_8_MASTER);
}

#[test]
fn schema_text_is_identical_to_a_database_real_nix_creates() {
    if !nix_available("schema_text_is_identical_to_a_database_real_nix_creates") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("hello");
    std::fs::write(&file, "hello\n").unwrap();
    nix(root.path(), "nix-store", &["--add", file.to_str().unwrap()]);
    let nix_master = master_sql(&db_dir(root.path()).join("db.sqlite"));
    assert_eq!(nix_master, NIX_2_8_MASTER);
    assert_eq!(
        std::fs::read(db_dir(root.path()).join("schema")).unwrap(),
        b"10"
    );
    let ours = tempfile::tempdir().unwrap();
    assert_eq!(master_sql(open(ours.path()).db_path()), nix_master);
}

#[test]
fn opens_a_database_made_by_real_nix_and_reads_its_paths() {
    if !nix_available("opens_a_database_made_by_real_nix_and_reads_its_paths") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("hello");
    std::fs::write(&file, "hello\n").unwrap();
    let added = nix(root.path(), "nix-store", &["--add", file.to_str().unwrap()]);
    let drv = nix(
        root.path(),
        "nix-instantiate",
        &[
            "--quiet",
            "-E",
            r#"let f = builtins.toFile "a" "x"; in derivation { name = "x"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ f ]; outputs = [ "out" "dev" ]; }"#,
        ],
    );
    let dir = StoreDir::default();
    let added = dir.parse_path(added.trim()).unwrap();
    let drv = dir.parse_path(drv.trim()).unwrap();
    let registry = open(&db_dir(root.path()));

    let info = registry
        .path_info(&added)
        .unwrap()
        .expect("added path is valid");
    let nix_hash = nix(
        root.path(),
        "nix-store",
        &["-q", "--hash", &dir.display(&added)],
    );
    assert_eq!(info.nar_hash.to_string(), nix_hash.trim());
    let nix_size = nix(
        root.path(),
        "nix-store",
        &["-q", "--size", &dir.display(&added)],
    );
    assert_eq!(info.nar_size.to_string(), nix_size.trim());
    assert!(info.is_content_addressed_correctly(&dir), "{info:?}");
    assert!(info.references.is_empty() && info.deriver.is_none() && info.signatures.is_empty());

    let drv_info = registry.path_info(&drv).unwrap().expect("drv is valid");
    assert!(matches!(drv_info.ca, Some(ContentAddress::Text(_))));
    let to_file = drv_info
        .references
        .iter()
        .next()
        .expect("drv refers to the toFile path")
        .clone();
    assert_eq!(to_file.name(), "a");
    assert_eq!(
        registry.referrers(&to_file).unwrap(),
        BTreeSet::from([drv.clone()])
    );
    let outputs = registry.derivation_outputs(&drv).unwrap();
    assert_eq!(outputs.keys().collect::<Vec<_>>(), ["dev", "out"]);
    assert_eq!(
        registry.valid_derivers(&outputs["out"]).unwrap(),
        BTreeSet::from([drv.clone()])
    );
    let requisites = registry
        .requisites(&BTreeSet::from([drv.clone()]), false)
        .unwrap();
    assert_eq!(requisites, BTreeSet::from([drv.clone(), to_file]));
    assert_eq!(
        registry.path_from_hash_part(drv.hash_part()).unwrap(),
        Some(drv.clone())
    );
    assert_eq!(registry.all_valid_paths().unwrap().len(), 3);
}

#[test]
fn real_nix_reads_what_arca_registered() {
    if !nix_available("real_nix_reads_what_arca_registered") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = StoreDir::default();
    let dep = store_path("dep", 1);
    let top = store_path("top", 1);
    let drv = store_path("top.drv", 1);
    let mut top_info = info(&top, &[&dep, &top]);
    top_info.deriver = Some(drv.clone());
    top_info.ultimate = true;
    top_info.signatures = BTreeSet::from(["cache.example.org-1:c2lnbmF0dXJl".to_owned()]);
    {
        let mut registry = open(&db_dir(root.path()));
        registry
            .register(
                &[info(&drv, &[]), top_info.clone(), info(&dep, &[])],
                &[(
                    drv.clone(),
                    BTreeMap::from([("out".to_owned(), top.clone())]),
                )],
            )
            .unwrap();
    }
    let q = |what: &str, path: &StorePath| {
        nix(root.path(), "nix-store", &["-q", what, &dir.display(path)])
    };
    let lines = |text: String| text.lines().map(str::to_owned).collect::<BTreeSet<_>>();
    assert_eq!(
        lines(q("--references", &top)),
        BTreeSet::from([dir.display(&dep), dir.display(&top)])
    );
    assert_eq!(q("--deriver", &top).trim(), dir.display(&drv));
    assert_eq!(q("--hash", &top).trim(), top_info.nar_hash.to_string());
    assert_eq!(q("--size", &top).trim(), top_info.nar_size.to_string());
    assert_eq!(
        lines(q("--referrers", &dep)),
        BTreeSet::from([dir.display(&top)])
    );
    assert_eq!(
        lines(q("--requisites", &top)),
        BTreeSet::from([dir.display(&dep), dir.display(&top)])
    );
    let json = nix(
        root.path(),
        "nix",
        &["path-info", "--json", &dir.display(&top)],
    );
    assert!(json.contains("\"ultimate\":true"), "{json}");
    assert!(json.contains("cache.example.org-1:c2lnbmF0dXJl"), "{json}");
    assert!(
        json.contains(&format!(
            "\"registrationTime\":{}",
            top_info.registration_time
        )),
        "{json}"
    );
}

#[test]
fn rows_are_written_exactly_as_nix_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    let drv = store_path("x.drv", 2);
    let full = store_path("full", 2);
    let bare = store_path("bare", 2);
    let mut full_info = info(&full, &[]);
    full_info.deriver = Some(drv.clone());
    full_info.ultimate = true;
    full_info.signatures = BTreeSet::from(["b:Ymk=".to_owned(), "a:YWE=".to_owned()]);
    let ca_hash = Hash::digest(HashAlgo::Sha256, b"content");
    full_info.ca = Some(ContentAddress::Fixed {
        method: ContentAddressMethod::Recursive,
        hash: ca_hash.clone(),
    });
    let mut bare_info = info(&bare, &[]);
    bare_info.nar_size = 0;
    registry
        .register(&[full_info.clone(), bare_info.clone()], &[])
        .unwrap();

    type Raw = (
        String,
        String,
        i64,
        Option<String>,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<String>,
    );
    let row = |p: &StorePath| -> Raw {
        registry
            .conn
            .query_row(
                "select path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths where path = ?",
                [StoreDir::default().display(p)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)),
            )
            .unwrap()
    };
    assert_eq!(
        row(&full),
        (
            format!("/nix/store/{full}"),
            format!("sha256:{}", full_info.nar_hash.to_base16()),
            1_700_000_000,
            Some(format!("/nix/store/{drv}")),
            Some(full_info.nar_size as i64),
            Some(1),
            Some("a:YWE= b:Ymk=".to_owned()),
            Some(format!("fixed:r:sha256:{}", ca_hash.to_base32())),
        )
    );
    assert_eq!(
        row(&bare),
        (
            format!("/nix/store/{bare}"),
            format!("sha256:{}", bare_info.nar_hash.to_base16()),
            1_700_000_000,
            None,
            None,
            None,
            None,
            None
        )
    );
}

#[test]
fn path_info_round_trips_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    let dep = store_path("dep", 3);
    let me = store_path("me", 3);
    let mut me_info = info(&me, &[&dep, &me]);
    me_info.deriver = Some(store_path("me.drv", 3));
    me_info.ultimate = true;
    me_info.signatures = BTreeSet::from(["k1:AAAA".to_owned(), "k2:BBBB".to_owned()]);
    me_info.ca = Some(ContentAddress::Text(Hash::digest(HashAlgo::Sha256, b"t")));
    let mut dep_info = info(&dep, &[]);
    dep_info.registration_time = 0;
    registry
        .register(&[me_info.clone(), dep_info], &[])
        .unwrap();

    assert_eq!(registry.path_info(&me).unwrap(), Some(me_info.clone()));
    assert!(me_info.has_self_reference());
    let dep_read = registry.path_info(&dep).unwrap().unwrap();
    assert!(dep_read.registration_time > 1_600_000_000, "0 means now");
    assert_eq!(registry.references(&me).unwrap(), me_info.references);
    assert_eq!(
        registry.referrers(&dep).unwrap(),
        BTreeSet::from([me.clone()])
    );
    assert_eq!(
        registry.referrers(&me).unwrap(),
        BTreeSet::from([me.clone()])
    );
    assert!(registry.is_valid(&me).unwrap());
    let missing = store_path("missing", 3);
    assert!(!registry.is_valid(&missing).unwrap());
    assert_eq!(registry.path_info(&missing).unwrap(), None);
    assert!(registry.references(&missing).unwrap().is_empty());
}

#[test]
fn missing_reference_is_rejected_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    let a = store_path("a", 4);
    let b = store_path("b", 4);
    let ghost = store_path("ghost", 4);
    let err = registry
        .register(&[info(&a, &[]), info(&b, &[&a, &ghost])], &[])
        .unwrap_err();
    match err {
        StoreError::MissingReference { path, reference } => {
            assert_eq!(path, StoreDir::default().display(&b));
            assert_eq!(reference, StoreDir::default().display(&ghost));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(count(&registry, "ValidPaths"), 0);
    assert_eq!(count(&registry, "Refs"), 0);
    // A derivation output row for a drv that is neither valid nor in the batch.
    let err = registry
        .register(
            &[info(&a, &[])],
            &[(ghost.clone(), BTreeMap::from([("out".into(), a.clone())]))],
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidPath(_)), "{err:?}");
    assert_eq!(count(&registry, "ValidPaths"), 0);
}

#[test]
fn batch_with_references_among_itself_registers_in_any_order() {
    let a = store_path("a", 5);
    let b = store_path("b", 5);
    let c = store_path("c", 5);
    let infos = [info(&a, &[&b, &c]), info(&b, &[&c]), info(&c, &[])];
    for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1]] {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = open(dir.path());
        let batch: Vec<PathInfo> = order.iter().map(|&i| infos[i].clone()).collect();
        registry.register(&batch, &[]).unwrap();
        for expected in &infos {
            assert_eq!(
                registry.path_info(&expected.path).unwrap().as_ref(),
                Some(expected)
            );
        }
        assert_eq!(count(&registry, "Refs"), 3);
    }
}

#[test]
fn reference_cycle_in_a_batch_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    let a = store_path("a", 6);
    let b = store_path("b", 6);
    let err = registry
        .register(&[info(&a, &[&b, &a]), info(&b, &[&a])], &[])
        .unwrap_err();
    assert!(matches!(err, StoreError::ReferenceCycle { .. }), "{err:?}");
    assert_eq!(count(&registry, "ValidPaths"), 0);
}

#[test]
fn reregistering_a_valid_path_updates_it_like_nix() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    let a = store_path("a", 7);
    let b = store_path("b", 7);
    let mut first = info(&a, &[]);
    first.deriver = Some(store_path("a.drv", 7));
    registry
        .register(&[first.clone(), info(&b, &[])], &[])
        .unwrap();
    let mut second = info(&a, &[&b]);
    second.nar_hash = Hash::digest(HashAlgo::Sha256, b"new");
    second.nar_size = 5;
    second.ultimate = true;
    second.signatures = BTreeSet::from(["k:c2ln".to_owned()]);
    second.registration_time = 42;
    registry.register(&[second.clone()], &[]).unwrap();
    let read = registry.path_info(&a).unwrap().unwrap();
    // Updated: hash, size, ultimate, sigs, ca; references added. Kept: deriver, time.
    assert_eq!(
        (read.nar_hash, read.nar_size, read.ultimate),
        (second.nar_hash, 5, true)
    );
    assert_eq!(read.signatures, second.signatures);
    assert_eq!(read.references, BTreeSet::from([b.clone()]));
    assert_eq!(
        (read.deriver, read.registration_time),
        (first.deriver, first.registration_time)
    );
    assert_eq!(count(&registry, "ValidPaths"), 2);
}

#[test]
fn unregister_refuses_while_referenced_and_works_with_self_references() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    let lib = store_path("lib", 8);
    let app = store_path("app", 8);
    let drv = store_path("app.drv", 8);
    registry
        .register(
            &[
                info(&lib, &[&lib]),
                info(&app, &[&lib, &app]),
                info(&drv, &[&lib]),
            ],
            &[(drv.clone(), BTreeMap::from([("out".into(), app.clone())]))],
        )
        .unwrap();
    let err = registry.unregister(&lib).unwrap_err();
    assert!(matches!(err, StoreError::StillReferenced { .. }), "{err:?}");
    assert!(registry.is_valid(&lib).unwrap());

    registry.unregister(&app).unwrap();
    assert!(!registry.is_valid(&app).unwrap());
    assert_eq!(
        registry.valid_derivers(&app).unwrap(),
        BTreeSet::from([drv.clone()])
    );
    registry.unregister(&drv).unwrap();
    assert_eq!(
        count(&registry, "DerivationOutputs"),
        0,
        "output rows cascade"
    );
    registry.unregister(&lib).unwrap();
    assert_eq!(count(&registry, "ValidPaths") + count(&registry, "Refs"), 0);
    registry.unregister(&lib).unwrap(); // not valid: nothing to do, as Nix
}

#[test]
fn derivation_outputs_and_valid_derivers() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    let drv = store_path("x.drv", 9);
    let other = store_path("y.drv", 9);
    let out = store_path("x", 9);
    let dev = store_path("x-dev", 9);
    registry
        .register(
            &[info(&drv, &[]), info(&other, &[])],
            &[
                (
                    drv.clone(),
                    BTreeMap::from([("out".into(), out.clone()), ("dev".into(), dev.clone())]),
                ),
                (other.clone(), BTreeMap::from([("out".into(), out.clone())])),
            ],
        )
        .unwrap();
    assert_eq!(
        registry.derivation_outputs(&drv).unwrap(),
        BTreeMap::from([
            ("dev".to_owned(), dev.clone()),
            ("out".to_owned(), out.clone())
        ])
    );
    assert_eq!(
        registry.valid_derivers(&out).unwrap(),
        BTreeSet::from([drv.clone(), other.clone()])
    );
    assert_eq!(
        registry.valid_derivers(&dev).unwrap(),
        BTreeSet::from([drv.clone()])
    );
    assert!(matches!(
        registry.derivation_outputs(&store_path("z.drv", 9)),
        Err(StoreError::InvalidPath(_))
    ));
    // Outputs need not be valid, but include_outputs only follows valid ones.
    let closure = registry
        .requisites(&BTreeSet::from([drv.clone()]), true)
        .unwrap();
    assert_eq!(closure, BTreeSet::from([drv.clone()]));
    registry.register(&[info(&out, &[])], &[]).unwrap();
    let closure = registry
        .requisites(&BTreeSet::from([drv.clone()]), true)
        .unwrap();
    assert_eq!(closure, BTreeSet::from([drv, out]));
}

#[test]
fn path_from_hash_part_finds_only_the_exact_hash() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    let paths: Vec<StorePath> = (0..50).map(|i| store_path("p", i)).collect();
    let infos: Vec<PathInfo> = paths.iter().map(|p| info(p, &[])).collect();
    registry.register(&infos, &[]).unwrap();
    for p in &paths {
        assert_eq!(
            registry
                .path_from_hash_part(p.hash_part())
                .unwrap()
                .as_ref(),
            Some(p)
        );
    }
    // A hash part sorting just before a valid one is not a prefix match.
    let absent = store_path("p", 1000);
    assert_eq!(
        registry.path_from_hash_part(absent.hash_part()).unwrap(),
        None
    );
    assert_eq!(registry.path_from_hash_part(&"z".repeat(32)).unwrap(), None);
    assert_eq!(registry.path_from_hash_part(&"0".repeat(32)).unwrap(), None);
    for bad in ["", "abc", &"e".repeat(32), &"0".repeat(33)] {
        assert!(
            matches!(
                registry.path_from_hash_part(bad),
                Err(StoreError::InvalidHashPart(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn other_schema_version_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema"), "7").unwrap();
    let err = Registry::open(dir.path(), StoreDir::default()).unwrap_err();
    match err {
        StoreError::SchemaVersion {
            found, expected, ..
        } => assert_eq!((found.as_str(), expected), ("7", 10)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(!dir.path().join("db.sqlite").exists());
}

#[test]
fn corrupt_rows_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    let a = store_path("a", 10);
    registry.register(&[info(&a, &[])], &[]).unwrap();
    let full = StoreDir::default().display(&a);
    registry
        .conn
        .execute(
            "update ValidPaths set hash = 'sha256:zz' where path = ?",
            [&full],
        )
        .unwrap();
    match registry.path_info(&a).unwrap_err() {
        StoreError::CorruptRegistry { path, .. } => assert_eq!(path, full),
        other => panic!("unexpected {other:?}"),
    }
    registry
        .conn
        .execute("update ValidPaths set hash = 42 where path = ?", [&full])
        .unwrap();
    assert!(matches!(
        registry.path_info(&a),
        Err(StoreError::CorruptRegistry { .. })
    ));
    registry.conn.execute("insert into ValidPaths (path, hash, registrationTime) values ('/nix/store/bogus', 'x', 0)", []).unwrap();
    assert!(matches!(
        registry.all_valid_paths(),
        Err(StoreError::CorruptRegistry { .. })
    ));
}

#[test]
fn update_nar_hash_replaces_hash_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    let a = store_path("a", 11);
    registry.register(&[info(&a, &[])], &[]).unwrap();
    let hash = Hash::digest(HashAlgo::Sha256, b"repaired");
    registry.update_nar_hash(&a, &hash, 77).unwrap();
    let read = registry.path_info(&a).unwrap().unwrap();
    assert_eq!((read.nar_hash, read.nar_size), (hash.clone(), 77));
    assert!(matches!(
        registry.update_nar_hash(&store_path("b", 11), &hash, 1),
        Err(StoreError::InvalidPath(_))
    ));
}

/// A generated DAG: node `i` refers to some nodes `j < i` (and maybe itself); some nodes
/// are derivations whose outputs are other nodes.
#[derive(Debug, Clone)]
struct Dag {
    references: Vec<BTreeSet<usize>>,
    outputs: Vec<(usize, BTreeSet<usize>)>,
    order: Vec<usize>,
}

fn dag() -> impl Strategy<Value = Dag> {
    (2usize..40).prop_flat_map(|n| {
        let references = (0..n)
            .map(|i| proptest::collection::btree_set(0..=i, 0..4.min(i + 1)))
            .collect::<Vec<_>>();
        let outputs =
            proptest::collection::vec((0..n, proptest::collection::btree_set(0..n, 1..3)), 0..4);
        let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        (references, outputs, order).prop_map(|(references, outputs, order)| Dag {
            references,
            outputs,
            order,
        })
    })
}

fn dag_path(i: usize, is_drv: bool) -> StorePath {
    store_path(
        &if is_drv {
            format!("n{i}.drv")
        } else {
            format!("n{i}")
        },
        12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn graph_queries_match_a_naive_model(dag in dag(), roots in proptest::collection::btree_set(0usize..40, 1..4)) {
        let n = dag.references.len();
        // One output map per drv node (later entries for the same drv win, as in the db).
        let mut outputs: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for (drv, outs) in &dag.outputs {
            outputs.insert(*drv, outs.iter().copied().filter(|o| o != drv).collect());
        }
        let is_drv = |i: usize| outputs.contains_key(&i);
        let paths: Vec<StorePath> = (0..n).map(|i| dag_path(i, is_drv(i))).collect();
        let infos: Vec<PathInfo> = dag.order.iter().map(|&i| {
            let refs: Vec<&StorePath> = dag.references[i].iter().map(|&j| &paths[j]).collect();
            info(&paths[i], &refs)
        }).collect();
        let drv_outputs: Vec<(StorePath, BTreeMap<String, StorePath>)> = outputs.iter().map(|(&d, outs)| {
            (paths[d].clone(), outs.iter().enumerate().map(|(k, &o)| (format!("o{k}"), paths[o].clone())).collect())
        }).collect();
        let dir = tempfile::tempdir().unwrap();
        let mut registry = open(dir.path());
        registry.register(&infos, &drv_outputs).unwrap();

        let set = |ids: BTreeSet<usize>| ids.into_iter().map(|i| paths[i].clone()).collect::<BTreeSet<_>>();
        let closure = |start: &BTreeSet<usize>, next: &dyn Fn(usize) -> Vec<usize>| {
            let mut seen = start.clone();
            let mut todo: Vec<usize> = start.iter().copied().collect();
            while let Some(i) = todo.pop() {
                for j in next(i) {
                    if seen.insert(j) { todo.push(j); }
                }
            }
            seen
        };
        let referrers_of = |i: usize| (0..n).filter(|&k| dag.references[k].contains(&i)).collect::<Vec<_>>();
        for (i, path) in paths.iter().enumerate() {
            prop_assert_eq!(registry.referrers(path).unwrap(), set(referrers_of(i).into_iter().collect()));
            prop_assert_eq!(registry.references(path).unwrap(), set(dag.references[i].clone()));
        }
        let roots: BTreeSet<usize> = roots.into_iter().map(|r| r % n).collect();
        let root_paths = set(roots.clone());
        let down = closure(&roots, &|i| dag.references[i].iter().copied().collect());
        prop_assert_eq!(registry.requisites(&root_paths, false).unwrap(), set(down));
        let down_with_outputs = closure(&roots, &|i| {
            let mut next: Vec<usize> = dag.references[i].iter().copied().collect();
            next.extend(outputs.get(&i).into_iter().flatten().copied());
            next
        });
        prop_assert_eq!(registry.requisites(&root_paths, true).unwrap(), set(down_with_outputs));
        let up = closure(&roots, &referrers_of);
        prop_assert_eq!(registry.referrers_closure(&root_paths).unwrap(), set(up));
    }
}

#[test]
fn requisites_of_an_invalid_root_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path());
    let roots = BTreeSet::from([store_path("nope", 13)]);
    assert!(matches!(
        registry.requisites(&roots, false),
        Err(StoreError::InvalidPath(_))
    ));
}

#[test]
fn concurrent_registries_register_overlapping_batches_consistently() {
    const PATHS: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<StorePath> = (0..PATHS)
        .map(|i| store_path(&format!("c{i}"), 14))
        .collect();
    // Path i refers to i-1, i/2 and i/3 (when they differ from i): a DAG in index order.
    let infos: Vec<PathInfo> = (0..PATHS)
        .map(|i| {
            let refs: BTreeSet<usize> = [i.wrapping_sub(1), i / 2, i / 3]
                .into_iter()
                .filter(|&j| j < i)
                .collect();
            info(
                &paths[i],
                &refs.iter().map(|&j| &paths[j]).collect::<Vec<_>>(),
            )
        })
        .collect();
    let expected_refs: usize = infos.iter().map(|i| i.references.len()).sum();
    let done = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for t in 0..8usize {
            let (dir, infos, paths, done) = (dir.path(), &infos, &paths, &done);
            scope.spawn(move || {
                let mut registry = open(dir);
                // Every thread registers every path, in topological order, but with its
                // own batch size: the batches overlap across threads.
                let batch = 7 + 5 * t;
                for chunk in infos.chunks(batch) {
                    let outputs = [(
                        chunk[0].path.clone(),
                        BTreeMap::from([("out".to_owned(), paths[PATHS - 1].clone())]),
                    )];
                    registry.register(chunk, &outputs).unwrap();
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let (dir, paths, done) = (dir.path(), &paths, &done);
        scope.spawn(move || {
            let registry = open(dir);
            while done.load(std::sync::atomic::Ordering::SeqCst) < 8 {
                let top = paths.iter().rev().find(|p| registry.is_valid(p).unwrap());
                if let Some(top) = top {
                    let closure = registry
                        .requisites(&BTreeSet::from([top.clone()]), false)
                        .unwrap();
                    // A closure read in one snapshot is closed under references.
                    for p in &closure {
                        assert!(registry.references(p).unwrap().is_subset(&closure));
                    }
                    registry
                        .referrers_closure(&BTreeSet::from([paths[0].clone()]))
                        .unwrap();
                }
            }
        });
    });
    let registry = open(dir.path());
    assert_eq!(count(&registry, "ValidPaths") as usize, PATHS);
    assert_eq!(count(&registry, "Refs") as usize, expected_refs);
    let distinct: i64 = registry
        .conn
        .query_row("select count(distinct path) from ValidPaths", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(distinct as usize, PATHS);
    for expected in &infos {
        assert_eq!(
            registry.path_info(&expected.path).unwrap().as_ref(),
            Some(expected)
        );
    }
    let all = registry
        .requisites(&BTreeSet::from([paths[PATHS - 1].clone()]), false)
        .unwrap();
    assert_eq!(all.len(), PATHS);
    let fk: i64 = registry
        .conn
        .query_row("select count(*) from pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(fk, 0);
}

// --- Realisations (ca-derivations) ---

fn realisation_of(drv: &str, output: &str, path: &StorePath) -> arca_store_core::Realisation {
    arca_store_core::Realisation::new(
        arca_store_core::DrvOutput {
            drv_hash: Hash::digest(arca_store_core::HashAlgo::Sha256, drv.as_bytes()),
            output: arca_store_core::OutputName::new(output).unwrap(),
        },
        path.clone(),
    )
}

#[test]
fn realisations_round_trip_merge_signatures_and_refuse_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    let dep = store_path("dep", 1);
    let top = store_path("top", 1);
    let other = store_path("other", 1);
    registry
        .register(
            &[info(&dep, &[]), info(&top, &[&dep]), info(&other, &[])],
            &[],
        )
        .unwrap();
    let id_of = |r: &arca_store_core::Realisation| r.id.clone();
    // A store without the tables knows no realisation.
    let dep_real = realisation_of("dep.drv", "out", &dep);
    assert_eq!(registry.realisation(&id_of(&dep_real)).unwrap(), None);

    registry.register_realisation(&dep_real).unwrap();
    assert_eq!(std::fs::read(dir.path().join("ca-schema")).unwrap(), b"3");
    let mut top_real = realisation_of("top.drv", "out", &top);
    top_real.signatures.insert("k1:AAAA".into());
    top_real
        .dependent_realisations
        .insert(id_of(&dep_real), dep.clone());
    registry.register_realisation(&top_real).unwrap();
    assert_eq!(
        registry.realisation(&id_of(&top_real)).unwrap(),
        Some(top_real.clone())
    );

    // Again with another signature: merged.
    let mut again = realisation_of("top.drv", "out", &top);
    again.signatures.insert("k2:BBBB".into());
    registry.register_realisation(&again).unwrap();
    let merged = registry.realisation(&id_of(&top_real)).unwrap().unwrap();
    assert_eq!(
        merged.signatures,
        BTreeSet::from(["k1:AAAA".to_owned(), "k2:BBBB".to_owned()])
    );
    // Another path for the same output: refused, nothing changed.
    let conflict = realisation_of("top.drv", "out", &other);
    assert!(matches!(
        registry.register_realisation(&conflict),
        Err(StoreError::RealisationConflict { .. })
    ));
    // An invalid path, or an unknown dependency: refused.
    let invalid = realisation_of("x.drv", "out", &store_path("invalid", 1));
    assert!(matches!(
        registry.register_realisation(&invalid),
        Err(StoreError::InvalidPath(_))
    ));
    let mut orphan = realisation_of("y.drv", "out", &other);
    orphan.dependent_realisations.insert(
        id_of(&realisation_of("nowhere.drv", "out", &dep)),
        dep.clone(),
    );
    assert!(matches!(
        registry.register_realisation(&orphan),
        Err(StoreError::MissingRealisation { .. })
    ));
    assert_eq!(registry.realisation(&id_of(&orphan)).unwrap(), None);

    // A realisation goes with its path (referrers first, as the collector deletes).
    registry.unregister(&top).unwrap();
    assert_eq!(registry.realisation(&id_of(&top_real)).unwrap(), None);
    registry.unregister(&dep).unwrap();
    assert_eq!(registry.realisation(&id_of(&dep_real)).unwrap(), None);
    assert_eq!(count(&registry, "Realisations"), 0);
    assert_eq!(count(&registry, "RealisationsRefs"), 0);
}

#[test]
fn realisation_schema_is_identical_to_nix_2_8() {
    if !nix_available("realisation_schema_is_identical_to_nix_2_8") {
        return;
    }
    let ours = tempfile::tempdir().unwrap();
    let mut registry = open(ours.path());
    registry.enable_realisations().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let status = Command::new("nix-store")
        .args(["--init", "--store"])
        .arg(format!("local?root={}", theirs.path().display()))
        .args(["--extra-experimental-features", "ca-derivations"])
        .status()
        .unwrap();
    assert!(status.success());
    let db = theirs.path().join("nix/var/nix/db");
    assert_eq!(
        master_sql(registry.db_path()),
        master_sql(&db.join("db.sqlite"))
    );
    assert_eq!(std::fs::read(db.join("ca-schema")).unwrap(), b"3");
}
