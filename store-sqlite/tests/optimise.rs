//! Store optimisation by hard links: what gets linked (and what never is), how it is
//! counted, the `.links` layout, full link files, concurrent optimisers, pruning, and
//! a `kill -9` in the middle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use arca_store_core::StorePath;
use arca_store_sqlite::{
    LocalStore, OptimiseOptions, OptimiseProgress, OptimiseReport, StoreError, StoreOptions,
    VerifyOptions,
};

fn open(root: &Path) -> LocalStore {
    LocalStore::open(root).unwrap()
}

/// One file of a test tree: relative name, contents, executable.
type Entry<'a> = (&'a str, &'a [u8], bool);

/// Adds a directory made of `entries` as a path named `name`.
fn add_tree(store: &LocalStore, scratch: &Path, name: &str, entries: &[Entry]) -> StorePath {
    let source = scratch.join(name);
    fs::create_dir_all(&source).unwrap();
    for (relative, contents, executable) in entries {
        let file = source.join(relative);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, contents).unwrap();
        let mode = if *executable { 0o755 } else { 0o644 };
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
    }
    store.add_path(&source, name).unwrap()
}

fn optimise(store: &LocalStore) -> OptimiseReport {
    store
        .optimise(&OptimiseOptions::default(), &|_| {})
        .unwrap()
}

fn inode(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().ino()
}

/// Where the link file of `contents` lives: `.arca-links/<2 hex>/<62 hex>` of blake3 over
/// the exec byte and the contents (the documented layout).
fn link_file(store: &LocalStore, contents: &[u8], executable: bool) -> PathBuf {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[u8::from(executable)]);
    hasher.update(contents);
    let hex = hasher.finalize().to_hex();
    store
        .physical_store()
        .join(".arca-links")
        .join(&hex[..2])
        .join(&hex[2..])
}

fn assert_verifies_clean(store: &LocalStore, context: &str) {
    let options = VerifyOptions {
        check_contents: true,
        repair: false,
    };
    let report = store.verify(None, options).unwrap();
    assert!(report.is_clean(), "{context}: {:?}", report.problems);
}

/// Every entry of every valid path has canonical metadata: mtime 1, directories 0555,
/// files 0444 or 0555.
fn assert_canonical(store: &LocalStore) {
    for path in store.all_valid_paths().unwrap() {
        let mut pending = vec![store.physical_path(&path)];
        while let Some(entry) = pending.pop() {
            let metadata = fs::symlink_metadata(&entry).unwrap();
            assert_eq!(metadata.mtime(), 1, "mtime of {}", entry.display());
            let mode = metadata.mode() & 0o7777;
            if metadata.is_dir() {
                assert_eq!(mode, 0o555, "mode of {}", entry.display());
                pending.extend(fs::read_dir(&entry).unwrap().map(|e| e.unwrap().path()));
            } else if metadata.is_file() {
                assert!(
                    mode == 0o444 || mode == 0o555,
                    "mode of {}",
                    entry.display()
                );
            }
        }
    }
}

/// The regular files of every valid path, grouped by (contents, executable).
fn files_by_contents(store: &LocalStore) -> BTreeMap<(Vec<u8>, bool), Vec<PathBuf>> {
    let mut groups: BTreeMap<_, Vec<PathBuf>> = BTreeMap::new();
    for path in store.all_valid_paths().unwrap() {
        let mut pending = vec![store.physical_path(&path)];
        while let Some(entry) = pending.pop() {
            let metadata = fs::symlink_metadata(&entry).unwrap();
            if metadata.is_dir() {
                pending.extend(fs::read_dir(&entry).unwrap().map(|e| e.unwrap().path()));
            } else if metadata.is_file() {
                let key = (fs::read(&entry).unwrap(), metadata.mode() & 0o100 != 0);
                groups.entry(key).or_default().push(entry);
            }
        }
    }
    groups
}

/// Every group of identical files is one inode, the one of its link file.
fn assert_fully_linked(store: &LocalStore) {
    for ((contents, executable), files) in files_by_contents(store) {
        let link = inode(&link_file(store, &contents, executable));
        for file in &files {
            assert_eq!(inode(file), link, "{} is not linked", file.display());
        }
    }
}

fn staging_entries(store: &LocalStore) -> Vec<String> {
    fs::read_dir(store.physical_store().join(".arca-staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn duplicates_across_paths_share_one_inode_and_are_counted_as_nix_counts() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let shared = vec![b's'; 1000];
    let mut paths = Vec::new();
    for name in ["a", "b", "c"] {
        let own = format!("only in {name}");
        paths.push(add_tree(
            &store,
            scratch.path(),
            name,
            &[
                ("shared", &shared, false),
                ("sub/dir/shared", &shared, false),
                ("own", own.as_bytes(), false),
                ("empty", b"", false),
            ],
        ));
    }
    // A flat path (a file directly in the store directory) with the same bytes.
    let flat_source = scratch.path().join("flat");
    fs::write(&flat_source, &shared).unwrap();
    let flat = store
        .add_fixed_file(&flat_source, "flat", arca_store_core::HashAlgo::Sha256)
        .unwrap();

    let steps = std::cell::RefCell::new(Vec::new());
    let report = store
        .optimise(&OptimiseOptions::default(), &|p| steps.borrow_mut().push(p))
        .unwrap();

    // 7 copies of `shared`: one becomes the link file, 6 are replaced; 3 empty files: 2
    // replaced (Nix links empty files too); unique files are never replaced.
    assert_eq!(
        report,
        OptimiseReport {
            paths: 4,
            files_scanned: 13,
            files_hashed: 13,
            files_linked: 8,
            bytes_saved: 6000,
            files_differing: 0,
        }
    );
    let steps = steps.into_inner();
    assert_eq!(
        steps.first(),
        Some(&OptimiseProgress::Path { done: 0, total: 4 })
    );
    assert_eq!(
        steps.last(),
        Some(&OptimiseProgress::Path { done: 4, total: 4 })
    );
    let link = link_file(&store, &shared, false);
    let link_inode = inode(&link);
    assert_eq!(
        fs::metadata(&link).unwrap().nlink(),
        8,
        "7 files and the link file"
    );
    for path in &paths {
        let dir = store.physical_path(path);
        assert_eq!(inode(&dir.join("shared")), link_inode);
        assert_eq!(inode(&dir.join("sub/dir/shared")), link_inode);
        assert_eq!(fs::metadata(dir.join("own")).unwrap().nlink(), 2);
    }
    assert_eq!(inode(&store.physical_path(&flat)), link_inode);
    assert_fully_linked(&store);
    assert_canonical(&store);
    assert_verifies_clean(&store, "after optimising");
    assert!(staging_entries(&store).is_empty());
}

#[test]
fn the_exec_bit_separates_link_files() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let mut dirs = Vec::new();
    for name in ["a", "b"] {
        let path = add_tree(
            &store,
            scratch.path(),
            name,
            &[
                ("tool", b"same bytes", true),
                ("data", b"same bytes", false),
            ],
        );
        dirs.push(store.physical_path(&path));
    }

    let report = optimise(&store);

    assert_eq!((report.files_linked, report.bytes_saved), (2, 20));
    assert_eq!(inode(&dirs[0].join("tool")), inode(&dirs[1].join("tool")));
    assert_eq!(inode(&dirs[0].join("data")), inode(&dirs[1].join("data")));
    assert_ne!(inode(&dirs[0].join("tool")), inode(&dirs[0].join("data")));
    let mode = |p: PathBuf| fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(dirs[1].join("tool")), 0o555);
    assert_eq!(mode(dirs[1].join("data")), 0o444);
    assert_fully_linked(&store);
    assert_verifies_clean(&store, "after optimising");
}

#[test]
fn a_second_run_links_nothing_and_reads_nothing() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = open(root.path());
    for i in 0..5 {
        let own = format!("own {i}");
        add_tree(
            &store,
            scratch.path(),
            &format!("p{i}"),
            &[("common", b"common", false), ("own", own.as_bytes(), true)],
        );
    }
    let first = optimise(&store);
    assert_eq!((first.files_hashed, first.files_linked), (10, 4));

    let second = optimise(&open(root.path()));

    assert_eq!(
        second,
        OptimiseReport {
            paths: 5,
            files_scanned: 10,
            ..OptimiseReport::default()
        },
        "every file is recognised as linked by its inode, without being read"
    );
}

#[test]
fn a_link_file_with_other_bytes_is_never_linked_to() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let real = b"the real contents".to_vec();
    let forged_bytes = b"forged, same size".to_vec();
    assert_eq!(real.len(), forged_bytes.len());
    let dirs: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            let path = add_tree(&store, scratch.path(), name, &[("f", &real, false)]);
            store.physical_path(&path)
        })
        .collect();
    // A corrupt link file (or a key collision): the key of `real`, other bytes.
    let forged = link_file(&store, &real, false);
    fs::create_dir_all(forged.parent().unwrap()).unwrap();
    fs::write(&forged, &forged_bytes).unwrap();
    fs::set_permissions(&forged, fs::Permissions::from_mode(0o444)).unwrap();

    let report = optimise(&store);

    assert_eq!((report.files_linked, report.files_differing), (0, 2));
    for dir in &dirs {
        assert_eq!(fs::read(dir.join("f")).unwrap(), real);
        assert_eq!(fs::metadata(dir.join("f")).unwrap().nlink(), 1);
    }
    assert_eq!(fs::read(&forged).unwrap(), forged_bytes);
    assert_verifies_clean(&store, "after optimising beside a forged link file");
}

#[test]
fn full_link_files_continue_in_numbered_ones() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let contents = b"seven copies".to_vec();
    let paths: Vec<StorePath> = (0..7)
        .map(|i| {
            add_tree(
                &store,
                scratch.path(),
                &format!("p{i}"),
                &[("f", &contents, false)],
            )
        })
        .collect();
    let options = OptimiseOptions {
        max_links_per_file: Some(3),
    };

    // Path by path: the order decides which files become link files.
    let mut report = OptimiseReport::default();
    for path in &paths {
        report.merge(&store.optimise_path(path, &options).unwrap());
    }

    // Three files per link file: 7 files need `name`, `name.1` and `name.2`; the three
    // files that became link files are not counted as replaced.
    let base = link_file(&store, &contents, false);
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", base.display()));
    let link_files = [base.clone(), numbered(1), numbered(2)];
    let nlinks: Vec<u64> = link_files
        .iter()
        .map(|l| fs::metadata(l).unwrap().nlink())
        .collect();
    assert_eq!(nlinks, [4, 4, 2]);
    assert!(!numbered(3).exists());
    assert_eq!((report.files_linked, report.bytes_saved), (4, 4 * 12));
    let link_inodes: BTreeSet<u64> = link_files.iter().map(|l| inode(l)).collect();
    for path in &paths {
        let file = store.physical_path(path).join("f");
        assert!(link_inodes.contains(&inode(&file)));
        assert_eq!(fs::read(&file).unwrap(), contents);
    }
    assert_verifies_clean(&store, "after optimising with full link files");

    let again = store.optimise(&options, &|_| {}).unwrap();
    assert_eq!((again.files_linked, again.files_hashed), (0, 0));
}

#[test]
fn optimise_path_links_a_new_path_to_existing_link_files() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = open(root.path());
    add_tree(&store, scratch.path(), "old", &[("lib", b"library", false)]);
    optimise(&store);
    let new = add_tree(
        &store,
        scratch.path(),
        "new",
        &[("lib", b"library", false), ("again", b"library", false)],
    );

    let report = store
        .optimise_path(&new, &OptimiseOptions::default())
        .unwrap();

    assert_eq!((report.paths, report.files_linked), (1, 2));
    assert_fully_linked(&store);
    assert_canonical(&store);
    let report = store
        .optimise_path(&new, &OptimiseOptions::default())
        .unwrap();
    assert_eq!(report.files_linked, 0, "found linked through the link file");
}

#[test]
fn a_directory_left_open_by_a_crash_is_closed_again() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let path = add_tree(
        &store,
        scratch.path(),
        "p",
        &[("sub/f", b"x", false), ("sub/g", b"y", false)],
    );
    optimise(&store);
    // What a crash between opening a directory and closing it leaves.
    let sub = store.physical_path(&path).join("sub");
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
    filetime_now(&sub);

    let report = optimise(&store);

    assert_eq!(report.files_hashed, 0);
    assert_canonical(&store);
}

/// Sets a directory's mtime to now (renaming a file into it does that).
fn filetime_now(dir: &Path) {
    let probe = dir.join(".probe");
    fs::write(&probe, "").unwrap();
    fs::remove_file(&probe).unwrap();
    assert_ne!(fs::metadata(dir).unwrap().mtime(), 1);
}

#[test]
fn prune_links_removes_only_unused_link_files_both_sharded_and_flat() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let a = add_tree(
        &store,
        scratch.path(),
        "a",
        &[
            ("unique", b"only a has this", false),
            ("s", b"shared", false),
        ],
    );
    let b = add_tree(&store, scratch.path(), "b", &[("s", b"shared", false)]);
    optimise(&store);
    store.delete_path(&a).unwrap();
    // Nix's optimiser names link files by nix-base32 sha256, flat in `.links`: one
    // nothing uses, one still linked to a store file.
    let links = store.physical_store().join(".links");
    assert!(
        links.is_dir(),
        "the store has Nix's .links from the start, as Nix makes it"
    );
    let nix_unused = links.join("0".repeat(52));
    fs::write(&nix_unused, "ten bytes!").unwrap();
    let nix_used = links.join("1".repeat(52));
    fs::hard_link(store.physical_path(&b).join("s"), &nix_used).unwrap();
    let unique_link = link_file(&store, b"only a has this", false);
    let shared_link = link_file(&store, b"shared", false);

    let pruned = store.prune_links().unwrap();

    assert_eq!((pruned.files, pruned.bytes), (2, 15 + 10));
    assert!(!unique_link.exists());
    assert!(!nix_unused.exists());
    assert!(shared_link.exists() && nix_used.exists());
    assert!(
        unique_link.parent().unwrap().is_dir(),
        "shard directories stay"
    );
    assert_eq!(store.prune_links().unwrap().files, 0);
    assert_verifies_clean(&store, "after pruning");
}

#[test]
fn a_file_linked_by_both_arca_and_nix_goes_once_no_path_uses_it() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let a = add_tree(&store, scratch.path(), "a", &[("s", b"shared", false)]);
    let b = add_tree(&store, scratch.path(), "b", &[("s", b"shared", false)]);
    optimise(&store);
    // Nix's `nix-store --optimise` links the same inode into its flat `.links`.
    let arca_link = link_file(&store, b"shared", false);
    let nix_link = store.physical_store().join(".links").join("2".repeat(52));
    fs::hard_link(&arca_link, &nix_link).unwrap();
    store.delete_path(&a).unwrap();
    assert_eq!(store.prune_links().unwrap().files, 0, "b still uses it");
    assert!(arca_link.exists() && nix_link.exists());
    store.delete_path(&b).unwrap();

    let pruned = store.prune_links().unwrap();

    assert_eq!((pruned.files, pruned.bytes), (2, 6));
    assert!(!arca_link.exists() && !nix_link.exists());
}

#[test]
fn a_valid_path_whose_files_are_gone_is_an_error_naming_them() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let path = add_tree(&store, scratch.path(), "p", &[("f", b"x", false)]);
    let physical = store.physical_path(&path);
    fs::set_permissions(&physical, fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(physical.join("f")).unwrap();
    fs::remove_dir(&physical).unwrap();

    let error = optimise_error(&store);

    assert!(
        matches!(&error, StoreError::Io { path: at, .. } if *at == physical),
        "{error:?}"
    );
}

fn optimise_error(store: &LocalStore) -> StoreError {
    store
        .optimise(&OptimiseOptions::default(), &|_| {})
        .unwrap_err()
}

/// `count` paths of `files` files each: half the files have contents shared with other
/// paths (from a small pool, some executable), half are unique.
fn populate(store: &LocalStore, scratch: &Path, count: usize, files: usize) {
    for p in 0..count {
        let contents: Vec<(String, Vec<u8>, bool)> = (0..files)
            .map(|f| {
                let shared = f % 2 == 0;
                let bytes = if shared {
                    format!("pool {}\n", (p + f) % 7).repeat(1 + f * 37)
                } else {
                    format!("path {p} file {f}\n").repeat(1 + f)
                };
                (
                    format!("d{}/f{f}", f % 3),
                    bytes.into_bytes(),
                    shared && f % 4 == 0,
                )
            })
            .collect();
        let entries: Vec<Entry> = contents
            .iter()
            .map(|(name, bytes, executable)| (name.as_str(), bytes.as_slice(), *executable))
            .collect();
        add_tree(store, scratch, &format!("path-{p}"), &entries);
    }
}

#[test]
fn two_concurrent_optimisers_both_succeed() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    populate(&open(root.path()), scratch.path(), 150, 12);

    let reports: Vec<OptimiseReport> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| optimise(&open(root.path()))))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });

    assert!(reports.iter().all(|r| r.paths == 150), "{reports:?}");
    assert!(
        reports.iter().all(|r| r.files_differing == 0),
        "{reports:?}"
    );
    let store = open(root.path());
    assert_verifies_clean(&store, "after two concurrent optimisers");
    assert_fully_linked(&store);
    assert_canonical(&store);
    assert!(staging_entries(&store).is_empty());
    let third = optimise(&store);
    assert_eq!((third.files_linked, third.files_hashed), (0, 0));
}

const CRASH_ROOT: &str = "ARCA_TEST_OPTIMISE_ROOT";

/// The child of [`kill_9_during_optimise_leaves_a_store_that_verifies`]: optimises the
/// store at `$ARCA_TEST_OPTIMISE_ROOT`, printing `done N` after each path, until killed.
#[test]
#[ignore = "run by kill_9_during_optimise_leaves_a_store_that_verifies"]
fn optimise_until_killed() {
    let Some(root) = std::env::var_os(CRASH_ROOT) else {
        return;
    };
    let store = open(Path::new(&root));
    let stdout = std::io::stdout();
    store
        .optimise(&OptimiseOptions::default(), &|progress| {
            let OptimiseProgress::Path { done, .. } = progress;
            let mut out = stdout.lock();
            let _ = writeln!(out, "done {done}");
            let _ = out.flush();
        })
        .unwrap();
}

#[test]
fn kill_9_during_optimise_leaves_a_store_that_verifies() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    populate(&open(root.path()), scratch.path(), 120, 16);

    // Each run resumes where the killed one stopped; paths already done go by quickly.
    let mut interrupted = 0;
    for kill_after in (2..120).step_by(6) {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "optimise_until_killed",
                "--ignored",
                "--nocapture",
            ])
            .env(CRASH_ROOT, root.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        for line in stdout.lines() {
            if line.unwrap() == format!("done {kill_after}") {
                child.kill().unwrap(); // SIGKILL, while the workers are mid-path
                break;
            }
        }
        child.wait().unwrap();
        // A run killed midway leaves its staging directory (and maybe temporary links).
        if fs::read_dir(root.path().join("nix/store/.arca-staging"))
            .unwrap()
            .next()
            .is_some()
        {
            interrupted += 1;
        }

        // The next open removes the dead run's temporary links.
        let store = open(root.path());
        assert!(
            staging_entries(&store).is_empty(),
            "after a kill at {kill_after}: {:?}",
            staging_entries(&store)
        );
        assert_verifies_clean(&store, &format!("after a kill at {kill_after}"));
    }

    assert!(interrupted > 0, "no kill landed in the middle of a run");
    let store = open(root.path());
    let report = optimise(&store);
    assert_eq!(report.files_differing, 0);
    assert_verifies_clean(&store, "after the final run");
    assert_fully_linked(&store);
    assert_canonical(&store);
}

/// With `auto_optimise`, a path is linked to identical files as it is added (Nix's
/// `auto-optimise-store`), and an explicit optimise later finds nothing left to do.
#[test]
fn auto_optimise_links_files_as_paths_are_added() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        auto_optimise: true,
        ..StoreOptions::default()
    };
    let store = LocalStore::open_with(root.path(), options).unwrap();
    let shared: &[u8] = b"the same bytes in both paths\n";
    let first = add_tree(
        &store,
        scratch.path(),
        "first",
        &[("a", shared, false), ("x", b"1", false)],
    );
    let second = add_tree(
        &store,
        scratch.path(),
        "second",
        &[("b", shared, false), ("y", b"2", false)],
    );
    assert_eq!(
        inode(&store.physical_path(&first).join("a")),
        inode(&store.physical_path(&second).join("b")),
        "the shared file is one inode"
    );
    assert_ne!(
        inode(&store.physical_path(&first).join("x")),
        inode(&store.physical_path(&second).join("y"))
    );
    assert_eq!(optimise(&store).files_linked, 0);
    assert_verifies_clean(&store, "after auto-optimise");
    assert_canonical(&store);
}
