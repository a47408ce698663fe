//! The garbage collector against real Nix 2.8 on the same store roots:
//!
//! - on a store Nix made (trees added with `--add`, a closure brought in with
//!   `--import`, derivations built in its sandbox with their `.drv` files) with roots of
//!   every kind (a symlink to a path and one into a path, a regular file named after a
//!   path, a `result` link registered with `--add-root`, a profile generation, a
//!   per-user root on a `.drv`) and leftovers of crashed writers (an unregistered path,
//!   stale `.lock` files), `arca store gc --print-dead`/`--print-live` (with and without
//!   keep-outputs and keep-derivations), `--print-roots` and `store query --roots` print
//!   exactly what `nix-store` prints;
//! - `arca store gc` on that store deletes exactly what Nix calls dead, after which Nix
//!   verifies the store clean and the live closures are intact; a root made with
//!   `arca store add-root` is one for Nix too;
//! - `kill -9` of `arca store gc` at several points (crashes in a row included) leaves a
//!   store both tools verify clean, and the next collection finishes the job;
//! - `nix-store --add` while `arca store gc` runs (the temporary-roots protocol across
//!   tools): the path Nix adds or re-adds is valid and complete afterwards;
//! - runtime roots (Arca only: Nix 2.8 on a chroot store looks in `/proc` for the
//!   logical store dir alone): a process's working directory, environment, open file
//!   and executable in the store keep those paths alive.
//!
//! Nix's `--print-dead` deletes the entries of the store directory that are not store
//! paths (Arca's `.arca-staging` among them), so every test asks Nix first and lets Arca
//! open the store only afterwards, or ignores `.arca-*` lines.
//!
//! Needs real Nix and a static busybox; skipped loudly without them (an error in CI).
//! The runtime-roots test needs neither.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arca_tests::build::{busybox, busybox_available, Scratch};
use arca_tests::gc::{
    assert_nix_verify_clean, copy_tree, export_archive, list_difference, nix_store_ok,
    nix_store_output, persistent_root_lines, store_entries, synthetic_closure, synthetic_paths,
    trash_entries, write_file, SyntheticPath,
};
use arca_tests::nix_available;
use arca_tests::store::{
    arca_cmd, arca_ok, arca_ok_from, assert_arca_verify_clean, lines, registry_db, run,
    scratch_dir, sql,
};

/// The derivations of `tests/oracle/builds/graphs.nix` the Nix-made store builds.
const ATTRIBUTES: &[&str] = &["chain5", "top", "multi", "selfref", "fodUser"];

/// Whether the Nix interop tests can run (see [`nix_available`]).
fn interop_available(test: &str) -> bool {
    nix_available(test) && busybox_available(test)
}

/// Sorted lines of a command's output.
fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// Asserts two sorted lists are equal, showing the lines that differ.
fn assert_same_lines(nix: &[String], arca: &[String], what: &str) {
    assert!(
        nix == arca,
        "{what}: Nix and Arca differ\n{}",
        list_difference("nix", nix, "arca", arca)
    );
}

/// The base name of a full store path.
fn base_name(path: &str) -> &str {
    path.strip_prefix("/nix/store/")
        .expect("a path in /nix/store")
}

/// Held by each [`NixMadeStore`] for its whole life. Nix's collector counts as a
/// runtime root every valid path named anywhere in `/proc` (it scans for the logical
/// `/nix/store`, whatever the store's root), so another test's Nix build of the same
/// derivations, running beside the queries, would keep paths alive for Nix alone.
static NIX_MADE_STORES: Mutex<()> = Mutex::new(());

/// A store made by real Nix with roots of every kind and leftovers of crashed writers.
struct NixMadeStore {
    /// One such store at a time (see [`NIX_MADE_STORES`]).
    _alone: MutexGuard<'static, ()>,
    scratch: Scratch,
    /// Trees added with `nix-store --add`: `t1` … `t5`.
    trees: Vec<String>,
    /// The `.drv` of each built attribute.
    drvs: BTreeMap<&'static str, String>,
    /// The output paths of each built attribute.
    outputs: BTreeMap<&'static str, Vec<String>>,
    /// A closure brought in with `nix-store --import`.
    imported: Vec<SyntheticPath>,
    /// The store paths the roots keep alive, as the roots name them.
    root_targets: Vec<String>,
    /// An unregistered path left in the store directory.
    leftover: String,
    /// Stale lock files in the store directory.
    stale_locks: Vec<String>,
}

impl NixMadeStore {
    fn new() -> NixMadeStore {
        // A test that failed while holding the lock leaves nothing behind to guard.
        let alone = NIX_MADE_STORES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let scratch = Scratch::new();
        let root = scratch.nix_root();

        // Trees: directories with a subdirectory, an executable and a symlink.
        let sources = scratch.path().join("src");
        let mut tree_args = Vec::new();
        for index in 1..=5 {
            let tree = sources.join(format!("t{index}"));
            fs::create_dir_all(tree.join("sub")).unwrap();
            fs::write(tree.join("sub/file"), format!("tree {index}\n")).unwrap();
            fs::write(tree.join("run"), "#!/bin/sh\n").unwrap();
            fs::set_permissions(tree.join("run"), fs::Permissions::from_mode(0o755)).unwrap();
            symlink("sub/file", tree.join("link")).unwrap();
            tree_args.push(tree.to_str().unwrap().to_owned());
        }
        let mut args = vec!["--add"];
        args.extend(tree_args.iter().map(String::as_str));
        let trees = lines(nix_store_ok(&root, &args, b"").as_bytes());
        assert_eq!(trees.len(), 5);

        // Derivations built by Nix: outputs with references, their `.drv` closures.
        let drv_list = scratch.instantiate("graphs.nix", &[], ATTRIBUTES);
        let drv_refs: Vec<&str> = drv_list.iter().map(String::as_str).collect();
        scratch.nix_realise(&drv_refs);
        let mut drvs = BTreeMap::new();
        let mut outputs = BTreeMap::new();
        for (attribute, drv) in ATTRIBUTES.iter().zip(&drv_list) {
            let out = lines(nix_store_ok(&root, &["-q", "--outputs", drv], b"").as_bytes());
            drvs.insert(*attribute, drv.clone());
            outputs.insert(*attribute, out);
        }

        // A closure imported from an export: chains with references across them.
        let imported = synthetic_paths("imported", 40, |i| {
            let mut refs = Vec::new();
            if i % 8 != 0 {
                refs.push(i - 1);
            }
            if i >= 13 && i % 5 == 0 {
                refs.push(i - 13);
            }
            refs
        });
        nix_store_ok(&root, &["--import"], &export_archive(&imported));

        let state = root.join("nix/var/nix");
        let gcroots = state.join("gcroots");
        let profiles = state.join("profiles");
        let store = root.join("nix/store");
        let chain5 = outputs["chain5"][0].clone();
        let top = outputs["top"][0].clone();
        // A symlink to a path, and one to a file inside a path.
        symlink(&trees[0], gcroots.join("direct")).unwrap();
        symlink(format!("{}/sub/file", trees[2]), gcroots.join("inside")).unwrap();
        // A regular file named after a path (cheap roots of build farms).
        fs::write(gcroots.join(base_name(&trees[1])), "").unwrap();
        // A `result` link registered as an indirect root through gcroots/auto.
        let result = scratch.path().join("result");
        nix_store_ok(
            &root,
            &[
                "-r",
                &chain5,
                "--add-root",
                result.to_str().unwrap(),
                "--indirect",
            ],
            b"",
        );
        // A profile with one generation, as nix-env makes them.
        symlink(&top, profiles.join("myprof-1-link")).unwrap();
        symlink("myprof-1-link", profiles.join("myprof")).unwrap();
        // A per-user root on a derivation (keep-outputs decides about its outputs).
        let per_user = gcroots.join("per-user/root");
        fs::create_dir_all(&per_user).unwrap();
        symlink(&drvs["multi"], per_user.join("drv")).unwrap();
        // A root in the middle of the imported closure.
        symlink(&imported[20].path, gcroots.join("imported")).unwrap();
        // Roots that keep nothing: to an invalid path, a file named after one, a file
        // named like no store path at all.
        let invalid = synthetic_paths("never-registered", 2, |_| Vec::new());
        symlink(&invalid[0].path, gcroots.join("invalid")).unwrap();
        fs::write(gcroots.join(invalid[1].base_name()), "").unwrap();
        fs::write(gcroots.join("not-a-store-path"), "").unwrap();

        // Leftovers of crashed writers: an unregistered, read-only path; a stale lock
        // of a valid path and one of a path that is gone.
        let leftover = synthetic_paths("leftover", 1, |_| Vec::new()).remove(0);
        let leftover_dir = leftover.write_source(&store);
        fs::rename(&leftover_dir, store.join(leftover.base_name())).unwrap();
        fs::set_permissions(
            store.join(leftover.base_name()),
            fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        let gone = synthetic_paths("gone", 1, |_| Vec::new()).remove(0);
        let stale_locks = vec![format!("{}.lock", trees[0]), format!("{}.lock", gone.path)];
        for lock in &stale_locks {
            fs::write(root.join(lock.trim_start_matches('/')), "").unwrap();
        }

        NixMadeStore {
            _alone: alone,
            root_targets: vec![
                trees[0].clone(),
                trees[1].clone(),
                trees[2].clone(),
                chain5,
                top,
                drvs["multi"].clone(),
                imported[20].path.clone(),
            ],
            scratch,
            trees,
            drvs,
            outputs,
            imported,
            leftover: leftover.path,
            stale_locks,
        }
    }

    fn root(&self) -> PathBuf {
        self.scratch.nix_root()
    }

    fn nix(&self, args: &[&str]) -> String {
        nix_store_ok(&self.root(), args, b"")
    }

    fn arca(&self, args: &[&str]) -> String {
        String::from_utf8(arca_ok(&self.root(), args, b"")).expect("arca prints UTF-8")
    }
}

/// `(Nix's options, Arca's flags)` for each setting of keep-outputs and keep-derivations.
const KEEP_VARIANTS: &[(&[&str], &[&str])] = &[
    (&[], &[]),
    (&["--option", "keep-outputs", "true"], &["--keep-outputs"]),
    (
        &["--option", "keep-derivations", "false"],
        &["--no-keep-derivations"],
    ),
    (
        &[
            "--option",
            "keep-outputs",
            "true",
            "--option",
            "keep-derivations",
            "false",
        ],
        &["--keep-outputs", "--no-keep-derivations"],
    ),
];

#[test]
fn print_dead_and_print_live_agree_with_nix() {
    if !interop_available("print_dead_and_print_live_agree_with_nix") {
        return;
    }
    let store = NixMadeStore::new();
    // Nix first (see the module documentation).
    let mut nix_results = Vec::new();
    for (nix_options, _) in KEEP_VARIANTS {
        for action in ["--print-dead", "--print-live"] {
            let args = [*nix_options, &["--gc", action]].concat();
            nix_results.push(sorted_lines(&store.nix(&args)));
        }
    }

    // The store exercises what it should: the default dead and live sets...
    let (dead, live) = (&nix_results[0], &nix_results[1]);
    let must_be_dead = [
        &store.trees[3],
        &store.trees[4],
        &store.outputs["selfref"][0],
        &store.outputs["fodUser"][0],
        &store.drvs["fodUser"],
        &store.imported[39].path,
        &store.leftover,
        &store.stale_locks[0],
        &store.stale_locks[1],
    ];
    for path in must_be_dead {
        assert!(dead.contains(path), "Nix calls {path} dead: {dead:?}");
    }
    for path in store.root_targets.iter().chain([&store.drvs["chain5"]]) {
        assert!(live.contains(path), "Nix calls {path} live: {live:?}");
    }
    // ... keep-outputs keeps the rooted derivation's outputs, and without
    // keep-derivations the built derivations die.
    for output in &store.outputs["multi"] {
        assert!(dead.contains(output) && nix_results[3].contains(output));
    }
    assert!(nix_results[4].contains(&store.drvs["chain5"]));

    // A dangling gcroots/auto link (Nix itself would have removed it): ignored.
    let auto = store.root().join("nix/var/nix/gcroots/auto");
    symlink(
        store.scratch.path().join("deleted-result"),
        auto.join("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"),
    )
    .unwrap();

    let mut results = nix_results.iter();
    for (nix_options, arca_flags) in KEEP_VARIANTS {
        for action in ["--print-dead", "--print-live"] {
            let args = [
                &["store", "gc", action, "--no-runtime-roots"][..],
                arca_flags,
            ]
            .concat();
            let arca = sorted_lines(&store.arca(&args));
            let nix = results.next().unwrap();
            assert_same_lines(nix, &arca, &format!("{action} with {nix_options:?}"));
        }
    }
    // Listing deletes nothing.
    assert!(store
        .root()
        .join("nix/store")
        .join(base_name(&store.leftover))
        .exists());
    for lock in &store.stale_locks {
        assert!(store.root().join(lock.trim_start_matches('/')).exists());
    }
}

#[test]
fn print_roots_and_query_roots_agree_with_nix() {
    if !interop_available("print_roots_and_query_roots_agree_with_nix") {
        return;
    }
    let store = NixMadeStore::new();
    let nix_roots = persistent_root_lines(&store.nix(&["--gc", "--print-roots"]));
    let state = store.root().join("nix/var/nix");
    for expected in [
        format!("{}/gcroots/direct -> {}", state.display(), store.trees[0]),
        format!("{}/gcroots/inside -> {}", state.display(), store.trees[2]),
        format!(
            "{}/gcroots/{} -> {}",
            state.display(),
            base_name(&store.trees[1]),
            store.trees[1]
        ),
        format!(
            "{}/result -> {}",
            store.scratch.path().display(),
            store.outputs["chain5"][0]
        ),
        format!(
            "{}/profiles/myprof-1-link -> {}",
            state.display(),
            store.outputs["top"][0]
        ),
        format!(
            "{}/gcroots/per-user/root/drv -> {}",
            state.display(),
            store.drvs["multi"]
        ),
    ] {
        assert!(
            nix_roots.contains(&expected),
            "Nix prints the root {expected}: {nix_roots:?}"
        );
    }
    // What keeps each path alive: through references, outputs kept by their `.drv`
    // (keep-derivations), several roots at once, none.
    let queried = [
        store.outputs["chain5"][0].clone(),
        store.drvs["chain5"].clone(),
        store.drvs["multi"].clone(),
        store.imported[0].path.clone(),
        store.trees[2].clone(),
        store.trees[3].clone(),
    ];
    let nix_queries: Vec<Vec<String>> = queried
        .iter()
        .map(|path| persistent_root_lines(&store.nix(&["-q", "--roots", path])))
        .collect();

    let arca_roots =
        persistent_root_lines(&store.arca(&["store", "gc", "--print-roots", "--no-runtime-roots"]));
    assert_same_lines(&nix_roots, &arca_roots, "--print-roots");
    for (path, nix) in queried.iter().zip(&nix_queries) {
        let arca = persistent_root_lines(&store.arca(&["store", "query", "--roots", path]));
        assert_same_lines(nix, &arca, &format!("query --roots {path}"));
    }
}

#[test]
fn nix_verifies_the_store_after_arca_collects() {
    if !interop_available("nix_verifies_the_store_after_arca_collects") {
        return;
    }
    let store = NixMadeStore::new();
    let root = store.root();
    // A root made by Arca is one for Nix.
    let link = store.scratch.path().join("arca-result");
    let selfref = store.outputs["selfref"][0].clone();
    store.arca(&["store", "add-root", link.to_str().unwrap(), &selfref]);
    let expected_root = format!("{} -> {selfref}", link.display());
    let nix_roots = store.nix(&["--gc", "--print-roots"]);
    assert!(
        nix_roots.lines().any(|line| line == expected_root),
        "Nix sees the root Arca added ({expected_root}):\n{nix_roots}"
    );
    // Nix's verdict (its --print-dead deletes Arca's staging directory: Arca copes).
    let not_arca_dirs = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .filter(|line| !line.starts_with("/nix/store/.arca-"))
            .collect()
    };
    let nix_dead = not_arca_dirs(sorted_lines(&store.nix(&["--gc", "--print-dead"])));
    let nix_live = not_arca_dirs(sorted_lines(&store.nix(&["--gc", "--print-live"])));
    assert!(!nix_dead.contains(&selfref) && nix_live.contains(&selfref));
    let mut targets = store.root_targets.clone();
    targets.push(selfref);
    let closures: Vec<String> = targets
        .iter()
        .map(|target| store.nix(&["-qR", target]))
        .collect();

    let output = run(arca_cmd(&root).args(["store", "gc"]), b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "arca store gc failed: {stderr}");
    let mut deleted: Vec<String> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("deleting '")?.strip_suffix('\''))
        .map(str::to_owned)
        .collect();
    deleted.sort();
    assert_same_lines(&nix_dead, &deleted, "the paths deleted");
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        summary.starts_with(&format!("{} store paths deleted, ", nix_dead.len())),
        "arca store gc sums up: {summary}"
    );

    assert_nix_verify_clean(&root, "after arca store gc");
    assert_arca_verify_clean(&root, "after arca store gc");
    // Exactly the live paths are left: no dead path, leftover or stale lock.
    let left: BTreeSet<String> = store_entries(&root)
        .into_iter()
        .map(|name| format!("/nix/store/{name}"))
        .collect();
    assert_same_lines(
        &nix_live,
        &left.into_iter().collect::<Vec<_>>(),
        "the store directory after arca store gc",
    );
    let mut check = vec!["--check-validity"];
    check.extend(nix_live.iter().map(String::as_str));
    store.nix(&check);
    for (target, before) in targets.iter().zip(&closures) {
        assert_eq!(
            &store.nix(&["-qR", target]),
            before,
            "the closure of {target}"
        );
    }
    let dead_now = not_arca_dirs(sorted_lines(&store.nix(&["--gc", "--print-dead"])));
    assert!(dead_now.is_empty(), "Nix finds garbage left: {dead_now:?}");
    assert_arca_verify_clean(&root, "after Nix listed the store again");
}

/// Where to kill a running collector.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// Right after starting it (before or while it reads the roots).
    Start,
    /// Once at most this many entries are left in the store directory.
    EntriesLeft(usize),
}

/// Runs `arca store gc` on `root` and kills it with SIGKILL at `at`. Returns whether it
/// finished before the kill.
fn gc_and_kill(root: &Path, at: KillAt) -> bool {
    let mut child = arca_cmd(root)
        .args(["store", "gc"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if let KillAt::EntriesLeft(left) = at {
        wait_for_entries(root, left, &mut child);
    }
    let finished = child.try_wait().unwrap().is_some();
    if !finished {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    finished
}

/// Polls until at most `left` entries are in the store directory of `root`, or
/// `child` has exited.
fn wait_for_entries(root: &Path, left: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let store = root.join("nix/store");
    loop {
        let entries = fs::read_dir(&store).map_or(usize::MAX, Iterator::count);
        if entries <= left || child.try_wait().unwrap().is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "the collector makes no progress");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The registered paths of the store at `root`.
fn registered(root: &Path) -> BTreeSet<String> {
    sql(&registry_db(root), "select path from ValidPaths")
        .into_iter()
        .collect()
}

#[test]
fn kill_9_during_gc_leaves_a_store_both_tools_verify_clean() {
    if !nix_available("kill_9_during_gc_leaves_a_store_both_tools_verify_clean") {
        return;
    }
    const PATHS: usize = 2500;
    const LEFTOVERS: usize = 30;
    let scratch = scratch_dir();
    // Chains of ten, some linked to the chain a hundred paths below.
    let paths = synthetic_paths("doomed", PATHS, |i| {
        let mut refs = Vec::new();
        if i % 10 != 0 {
            refs.push(i - 1);
        }
        if i % 10 == 5 && i >= 100 {
            refs.push(i - 100);
        }
        refs
    });
    let live_indices = synthetic_closure(&paths, &[9, PATHS - 1]);
    let live: BTreeSet<String> = live_indices
        .iter()
        .map(|&i| paths[i].path.clone())
        .collect();
    assert!(live.len() > 50 && live.len() < PATHS / 4, "{}", live.len());

    let template = scratch.path().join("template");
    let archive = scratch.path().join("archive");
    write_file(&archive, &export_archive(&paths));
    arca_ok_from(
        &template,
        &["store", "import"],
        fs::File::open(&archive).unwrap(),
    );
    let gcroots = template.join("nix/var/nix/gcroots");
    fs::create_dir_all(&gcroots).unwrap();
    symlink(&paths[9].path, gcroots.join("first-chain")).unwrap();
    fs::write(gcroots.join(paths[PATHS - 1].base_name()), "").unwrap();
    // Leftovers for the sweep: unregistered read-only paths and stale locks.
    let store = template.join("nix/store");
    for leftover in synthetic_paths("leftover", LEFTOVERS, |_| Vec::new()) {
        let dir = leftover.write_source(&store);
        let at = store.join(leftover.base_name());
        fs::rename(&dir, &at).unwrap();
        fs::set_permissions(&at, fs::Permissions::from_mode(0o555)).unwrap();
    }
    for path in &paths[100..100 + LEFTOVERS] {
        fs::write(store.join(format!("{}.lock", path.base_name())), "").unwrap();
    }
    let entries = fs::read_dir(&store).unwrap().count();

    let kill_points = [
        KillAt::Start,
        KillAt::EntriesLeft(entries - 1),
        KillAt::EntriesLeft(entries * 3 / 4),
        KillAt::EntriesLeft(entries / 2),
        KillAt::EntriesLeft(entries / 5),
        // In the sweep of leftovers.
        KillAt::EntriesLeft(live.len() + LEFTOVERS),
    ];
    let mut killed = 0;
    for (index, first) in kill_points.into_iter().enumerate() {
        let root = scratch.path().join(format!("root-{index}"));
        copy_tree(&template, &root);
        // A crash, a crash of the collection that follows it half way, then a complete
        // collection.
        let entries_now = fs::read_dir(root.join("nix/store")).unwrap().count();
        let second = KillAt::EntriesLeft(live.len() + (entries_now - live.len()) / 2);
        for (round, at) in [first, second].into_iter().enumerate() {
            let context = format!("kill {index} round {round} at {at:?}");
            if !gc_and_kill(&root, at) {
                killed += 1;
            }
            assert_nix_verify_clean(&root, &context);
            assert_arca_verify_clean(&root, &context);
            let valid = registered(&root);
            let missing: Vec<&String> = live.difference(&valid).collect();
            assert!(
                missing.is_empty(),
                "{context}: live paths lost: {missing:?}"
            );
            for path in &live {
                assert!(
                    root.join(path.trim_start_matches('/'))
                        .join("data")
                        .is_file(),
                    "{context}: {path} is registered but not on disk"
                );
            }
        }
        let context = format!("kill {index}, then a complete collection");
        arca_ok(&root, &["store", "gc"], b"");
        assert_eq!(registered(&root), live, "{context}: the registry");
        let left: BTreeSet<String> = store_entries(&root)
            .into_iter()
            .map(|name| format!("/nix/store/{name}"))
            .collect();
        assert_same_lines(
            &live.iter().cloned().collect::<Vec<_>>(),
            &left.into_iter().collect::<Vec<_>>(),
            &format!("{context}: the store directory"),
        );
        assert!(
            trash_entries(&root).is_empty(),
            "{context}: the trash is not empty: {:?}",
            trash_entries(&root)
        );
        assert_nix_verify_clean(&root, &context);
        fs::remove_dir_all(&root).unwrap_or_else(|_| {
            // Read-only directories of an interrupted run: make them writable first.
            Command::new("chmod")
                .arg("-R")
                .arg("u+w")
                .arg(&root)
                .status()
                .unwrap();
            fs::remove_dir_all(&root).unwrap();
        });
    }
    assert!(killed >= 4, "only {killed} collections were killed mid-way");
}

#[test]
fn nix_adds_paths_while_arca_collects() {
    if !nix_available("nix_adds_paths_while_arca_collects") {
        return;
    }
    const PATHS: usize = 3000;
    let scratch = scratch_dir();
    // No references: `nix-store --add` of the same directory gives the same path.
    let paths = synthetic_paths("busy", PATHS, |_| Vec::new());
    let sources = scratch.path().join("src");
    let probe = scratch.path().join("probe");
    let added = nix_store_ok(
        &probe,
        &["--add", paths[0].write_source(&sources).to_str().unwrap()],
        b"",
    );
    assert_eq!(added.trim(), paths[0].path, "synthetic paths are Nix's");

    let template = scratch.path().join("template");
    let archive = scratch.path().join("archive");
    write_file(&archive, &export_archive(&paths));
    arca_ok_from(
        &template,
        &["store", "import"],
        fs::File::open(&archive).unwrap(),
    );
    let entries = fs::read_dir(template.join("nix/store")).unwrap().count();

    // Each round picks paths deleted early, in the middle and late (the collector goes
    // in registration order), and a path new to the store.
    for (round, left) in [entries, entries * 3 / 4, entries / 2, entries / 10]
        .into_iter()
        .enumerate()
    {
        let root = scratch.path().join(format!("root-{round}"));
        copy_tree(&template, &root);
        let mut picks: Vec<SyntheticPath> = [round * 3 + 1, 1000 + round * 3, 2990 - round]
            .iter()
            .map(|&i| paths[i].clone())
            .collect();
        picks.extend(synthetic_paths(&format!("fresh{round}"), 1, |_| Vec::new()));
        let picked_sources: Vec<PathBuf> = picks.iter().map(|p| p.write_source(&sources)).collect();

        let mut collector = arca_cmd(&root)
            .args(["store", "gc"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_entries(&root, left, &mut collector);
        let adders: Vec<_> = picked_sources
            .iter()
            .map(|source| {
                let root = root.clone();
                let source = source.clone();
                std::thread::spawn(move || {
                    nix_store_output(&root, &["--add", source.to_str().unwrap()], b"")
                })
            })
            .collect();
        for (adder, pick) in adders.into_iter().zip(&picks) {
            let output = adder.join().unwrap();
            assert!(
                output.status.success(),
                "round {round}: nix-store --add {} failed: {}",
                pick.name,
                String::from_utf8_lossy(&output.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), pick.path);
        }
        let output = collector.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "round {round}: arca store gc failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );

        let context = format!("round {round} (Nix added with {left} entries left)");
        let mut check = vec!["--check-validity"];
        check.extend(picks.iter().map(|p| p.path.as_str()));
        let validity = nix_store_output(&root, &check, b"");
        assert!(
            validity.status.success(),
            "{context}: a path Nix added is not valid: {}",
            String::from_utf8_lossy(&validity.stderr)
        );
        for pick in &picks {
            let data = root.join(pick.path.trim_start_matches('/')).join("data");
            assert_eq!(
                fs::read(&data).ok().as_ref(),
                Some(&pick.data),
                "{context}: the contents of {}",
                pick.path
            );
        }
        assert_nix_verify_clean(&root, &context);
        assert_arca_verify_clean(&root, &context);
        fs::remove_dir_all(&root).unwrap();
    }
}

/// Processes started by a test, killed when it ends however it ends.
struct Processes(Vec<Child>);

impl Processes {
    fn spawn(&mut self, command: &mut Command) -> u32 {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the process starts");
        let pid = child.id();
        self.0.push(child);
        pid
    }

    fn kill_all(&mut self) {
        for mut child in self.0.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.kill_all();
    }
}

#[test]
fn runtime_roots_keep_paths_used_by_processes() {
    let scratch = scratch_dir();
    let root = scratch.path().join("root");
    let sources = scratch.path().join("src");
    let mut names = vec!["runtime-cwd", "runtime-env", "runtime-fd", "runtime-unused"];
    for name in &names {
        fs::create_dir_all(sources.join(name).join("sub")).unwrap();
        fs::write(sources.join(name).join("sub/data"), *name).unwrap();
    }
    // A program run from the store, when there is a static one to copy.
    let with_exe = busybox().is_file();
    if with_exe {
        fs::create_dir_all(sources.join("runtime-exe")).unwrap();
        fs::copy(busybox(), sources.join("runtime-exe/busybox")).unwrap();
        names.push("runtime-exe");
    } else {
        eprintln!("runtime_roots_keep_paths_used_by_processes: no busybox, exe roots not checked");
    }
    let mut args = vec!["store".to_owned(), "add-path".to_owned()];
    args.extend(
        names
            .iter()
            .map(|n| sources.join(n).to_str().unwrap().to_owned()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let added = lines(&arca_ok(&root, &args, b""));
    let path: BTreeMap<&str, String> = names.iter().copied().zip(added).collect();
    let physical = |name: &str| root.join(path[name].trim_start_matches('/'));

    let mut processes = Processes(Vec::new());
    // Working directory inside a path, under its physical name.
    let cwd_pid = processes.spawn(
        Command::new("sleep")
            .arg("1000")
            .current_dir(physical("runtime-cwd").join("sub")),
    );
    // The logical name of a path in the environment.
    let env_pid = processes.spawn(Command::new("sleep").arg("1000").env(
        "ARCA_TEST_RUNTIME_ROOT",
        format!("{}/sub", path["runtime-env"]),
    ));
    // A file of a path open.
    let fd_pid = processes.spawn(
        Command::new("sleep")
            .arg("1000")
            .stdin(fs::File::open(physical("runtime-fd").join("sub/data")).unwrap()),
    );
    let mut expected = vec![
        format!("/proc/{cwd_pid}/cwd -> {}", path["runtime-cwd"]),
        format!("/proc/{env_pid}/environ -> {}", path["runtime-env"]),
        format!("/proc/{fd_pid}/fd/0 -> {}", path["runtime-fd"]),
    ];
    if with_exe {
        let exe_pid = processes
            .spawn(Command::new(physical("runtime-exe").join("busybox")).args(["sleep", "1000"]));
        expected.push(format!("/proc/{exe_pid}/exe -> {}", path["runtime-exe"]));
    }
    let used: Vec<&String> = names
        .iter()
        .filter(|n| **n != "runtime-unused")
        .map(|n| &path[n])
        .collect();

    let roots = lines(&arca_ok(&root, &["store", "gc", "--print-roots"], b""));
    for line in &expected {
        assert!(
            roots.contains(line),
            "--print-roots lists {line}: {roots:?}"
        );
    }
    let cwd_roots = lines(&arca_ok(
        &root,
        &["store", "query", "--roots", &path["runtime-cwd"]],
        b"",
    ));
    assert_eq!(cwd_roots, [expected[0].clone()], "query --roots");
    let dead = lines(&arca_ok(&root, &["store", "gc", "--print-dead"], b""));
    assert_eq!(dead, [path["runtime-unused"].clone()], "--print-dead");
    let all_dead = lines(&arca_ok(
        &root,
        &["store", "gc", "--print-dead", "--no-runtime-roots"],
        b"",
    ));
    assert_eq!(
        all_dead.len(),
        names.len(),
        "--no-runtime-roots: {all_dead:?}"
    );

    arca_ok(&root, &["store", "gc"], b"");
    assert_eq!(
        registered(&root),
        used.iter().map(|p| (*p).clone()).collect(),
        "the paths in use stay registered"
    );
    for name in names.iter().filter(|n| **n != "runtime-unused") {
        assert!(physical(name).exists(), "{name} stays on disk");
    }
    assert!(!physical("runtime-unused").exists());

    processes.kill_all();
    arca_ok(&root, &["store", "gc"], b"");
    assert!(registered(&root).is_empty(), "nothing is in use any more");
    assert!(store_entries(&root).is_empty());
}
