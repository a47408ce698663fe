//! Several `arca` processes on one store at once: 8 `store add-path` processes adding
//! overlapping sets of trees (each tree from several processes) while another runs
//! closure queries and `verify` in a loop; concurrent imports of the same paths in
//! opposite orders. All must succeed, each path must be added once, the registry must
//! be consistent afterwards and nothing may be left over (staging, lock files).
//! Needs no Nix.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arca_tests::store::{
    add_derivation, arca_cmd, arca_ok, assert_arca_verify_clean, lines, registry_db, run,
    scratch_dir, sql, staging_leftovers, DIAMOND,
};
use arca_tests::{random_tree, Rng};

const WRITERS: usize = 8;

/// Trees to add: random ones, and a few larger ones (hundreds of files) so that writers
/// overlap in time.
fn make_trees(dir: &Path, count: u64) -> Vec<PathBuf> {
    let mut trees = Vec::new();
    for seed in 0..count {
        let tree = dir.join(format!("tree-{seed}"));
        if seed % 6 == 0 {
            fs::create_dir(&tree).unwrap();
            for d in 0..8 {
                let sub = tree.join(format!("d{d}"));
                fs::create_dir(&sub).unwrap();
                for f in 0..50 {
                    fs::write(sub.join(format!("f{f}")), format!("{seed} {d} {f}\n")).unwrap();
                }
            }
        } else {
            random_tree(7000 + seed, &tree).unwrap();
        }
        trees.push(tree);
    }
    trees
}

fn add_diamond(root: &Path) {
    for drv in DIAMOND {
        add_derivation(root, drv);
    }
}

/// Every leftover the store must not have: staging entries and lock files anywhere in
/// the store directory.
fn leftovers(root: &Path) -> Vec<String> {
    let store = root.join("nix/store");
    let mut found = Vec::new();
    for entry in fs::read_dir(&store).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".lock") {
            found.push(name);
        }
    }
    for entry in staging_leftovers(root) {
        found.push(format!(".arca-staging/{entry}"));
    }
    found
}

/// The registry is consistent: no duplicate rows, foreign keys hold, SQLite's own
/// integrity check passes, and the store directory holds exactly the valid paths.
fn assert_registry_consistent(root: &Path, expected_paths: &BTreeSet<String>) {
    let db = registry_db(root);
    assert_eq!(sql(&db, "pragma integrity_check"), ["ok"]);
    assert_eq!(sql(&db, "pragma foreign_key_check"), Vec::<String>::new());
    assert_eq!(
        sql(
            &db,
            "select path, count(*) from ValidPaths group by path having count(*) > 1"
        ),
        Vec::<String>::new(),
        "duplicate ValidPaths rows"
    );
    assert_eq!(
        sql(
            &db,
            "select referrer, reference, count(*) from Refs group by referrer, reference \
             having count(*) > 1"
        ),
        Vec::<String>::new(),
        "duplicate Refs rows"
    );
    let valid: BTreeSet<String> = sql(&db, "select path from ValidPaths")
        .into_iter()
        .collect();
    assert_eq!(
        &valid, expected_paths,
        "the valid paths are exactly the added ones"
    );
    let on_disk: BTreeSet<String> = fs::read_dir(root.join("nix/store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.') && !name.ends_with(".lock"))
        .map(|name| format!("/nix/store/{name}"))
        .collect();
    assert_eq!(
        on_disk, valid,
        "the store directory holds exactly the valid paths"
    );
}

/// Waits for `child` at most until `deadline`; kills it (and fails) if it hangs.
fn wait_or_kill(mut child: Child, deadline: Instant, what: &str) -> Output {
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish in time (deadlock?): {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn eight_writers_with_overlapping_trees_and_a_querier() {
    let scratch = scratch_dir();
    let trees = make_trees(&scratch.path().join("trees").tap_mkdir(), 24);
    let tree_args: Vec<&str> = trees.iter().map(|t| t.to_str().unwrap()).collect();

    // The paths one writer alone gives.
    let reference_root = scratch.path().join("reference");
    let expected: Vec<String> = lines(&arca_ok(
        &reference_root,
        &[&["store", "add-path"][..], &tree_args].concat(),
        b"",
    ));
    assert_eq!(expected.len(), trees.len());

    for round in 0..2u64 {
        let root = scratch.path().join(format!("root-{round}"));
        add_diamond(&root);
        let top_closure = arca_ok(&root, &["store", "query", "--requisites", DIAMOND[3]], b"");
        assert_eq!(lines(&top_closure).len(), 4);

        // Writer i adds every tree j with (i + j) % 3 != 0, in its own random order:
        // each tree comes from five or six writers.
        let mut rng = Rng::new(round);
        let assignments: Vec<Vec<usize>> = (0..WRITERS)
            .map(|i| {
                let mut mine: Vec<usize> = (0..trees.len()).filter(|j| (i + j) % 3 != 0).collect();
                for k in (1..mine.len()).rev() {
                    mine.swap(k, rng.below(k as u64 + 1) as usize);
                }
                mine
            })
            .collect();

        // The querier: closure queries and `verify` (every registered path must exist)
        // while the writers run.
        let stop = Arc::new(AtomicBool::new(false));
        let querier = {
            let (stop, root, top_closure) = (stop.clone(), root.clone(), top_closure.clone());
            std::thread::spawn(move || {
                let mut rounds = 0;
                loop {
                    let done = stop.load(Ordering::SeqCst);
                    let query = run(
                        arca_cmd(&root).args(["store", "query", "--requisites", DIAMOND[3]]),
                        b"",
                    );
                    assert!(
                        query.status.success(),
                        "query during writes failed: {}",
                        String::from_utf8_lossy(&query.stderr)
                    );
                    assert_eq!(query.stdout, top_closure, "closure changed during writes");
                    let verify = run(arca_cmd(&root).args(["store", "verify"]), b"");
                    assert!(
                        verify.status.success(),
                        "verify during writes found problems: {}{}",
                        String::from_utf8_lossy(&verify.stdout),
                        String::from_utf8_lossy(&verify.stderr)
                    );
                    rounds += 1;
                    if done {
                        return rounds;
                    }
                }
            })
        };

        let started = Instant::now();
        let writers: Vec<Child> = assignments
            .iter()
            .map(|mine| {
                let args: Vec<&str> = mine.iter().map(|&j| tree_args[j]).collect();
                arca_cmd(&root)
                    .args(["store", "add-path"])
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let deadline = started + Duration::from_secs(60);
        let outputs: Vec<Output> = writers
            .into_iter()
            .enumerate()
            .map(|(i, child)| wait_or_kill(child, deadline, &format!("writer {i}")))
            .collect();
        stop.store(true, Ordering::SeqCst);
        let query_rounds = querier.join().expect("the querier saw no problem");
        eprintln!(
            "round {round}: {WRITERS} writers in {:?}, {query_rounds} query rounds",
            started.elapsed()
        );

        // Each writer succeeded and printed, for each of its trees, the one right path.
        let mut printed: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
        for (i, output) in outputs.iter().enumerate() {
            assert!(
                output.status.success(),
                "writer {i} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let paths = lines(&output.stdout);
            assert_eq!(
                paths.len(),
                assignments[i].len(),
                "writer {i} printed one path per tree"
            );
            for (&j, path) in assignments[i].iter().zip(&paths) {
                printed.entry(j).or_default().insert(path.clone());
            }
        }
        for (j, paths) in &printed {
            assert_eq!(
                paths,
                &BTreeSet::from([expected[*j].clone()]),
                "tree {j} got one path, the same as a lone writer's"
            );
        }

        let mut all: BTreeSet<String> = expected.iter().cloned().collect();
        all.extend(DIAMOND.iter().map(|d| d.to_string()));
        assert_registry_consistent(&root, &all);
        assert_arca_verify_clean(&root, "after the concurrent runs");
        assert_eq!(
            leftovers(&root),
            Vec::<String>::new(),
            "leftovers after the writers"
        );
        // And the closure is still what it was.
        assert_eq!(
            arca_ok(&root, &["store", "query", "--requisites", DIAMOND[3]], b""),
            top_closure
        );
    }
}

/// Export entries (`1`, NAR, metadata) of each of `paths`, one by one.
fn entries(source: &Path, paths: &[String]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .map(|path| {
            let export = arca_ok(source, &["store", "export", path], b"");
            export[..export.len() - 8].to_vec()
        })
        .collect()
}

#[test]
fn concurrent_imports_of_the_same_paths_in_opposite_orders() {
    let scratch = scratch_dir();
    let trees = make_trees(&scratch.path().join("trees").tap_mkdir(), 30);
    let tree_args: Vec<&str> = trees.iter().map(|t| t.to_str().unwrap()).collect();
    let source = scratch.path().join("source");
    let paths = lines(&arca_ok(
        &source,
        &[&["store", "add-path"][..], &tree_args].concat(),
        b"",
    ));
    let entries = entries(&source, &paths);
    let archive = |order: &mut dyn Iterator<Item = &Vec<u8>>| -> Vec<u8> {
        let mut out = Vec::new();
        for entry in order {
            out.extend_from_slice(entry);
        }
        out.extend_from_slice(&0u64.to_le_bytes());
        out
    };
    let forward = archive(&mut entries.iter());
    let backward = archive(&mut entries.iter().rev());

    for round in 0..3 {
        let root = scratch.path().join(format!("root-{round}"));
        arca_ok(&root, &["store", "verify"], b""); // create it
        let started = Instant::now();
        let importers: Vec<(Child, std::thread::JoinHandle<()>)> = (0..4)
            .map(|i| {
                let mut child = arca_cmd(&root)
                    .args(["store", "import"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut pipe = child.stdin.take().unwrap();
                let input = if i % 2 == 0 {
                    forward.clone()
                } else {
                    backward.clone()
                };
                let feeder = std::thread::spawn(move || {
                    let _ = pipe.write_all(&input);
                });
                (child, feeder)
            })
            .collect();
        let deadline = started + Duration::from_secs(20);
        for (i, (child, feeder)) in importers.into_iter().enumerate() {
            let output = wait_or_kill(child, deadline, &format!("importer {i}"));
            feeder.join().unwrap();
            assert!(
                output.status.success(),
                "importer {i} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert_eq!(lines(&output.stdout).len(), paths.len());
        }
        let all: BTreeSet<String> = paths.iter().cloned().collect();
        assert_registry_consistent(&root, &all);
        assert_arca_verify_clean(&root, "after the concurrent runs");
        assert_eq!(leftovers(&root), Vec::<String>::new());
    }
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        fs::create_dir_all(&self).unwrap();
        self
    }
}
