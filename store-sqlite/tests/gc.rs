//! The garbage collector: each kind of root keeps its closure, dead paths go referrers
//! first, leftovers are swept, and paths added or rooted while it runs survive.
//!
//! A store handle keeps everything it added alive (its temporary roots), so each test
//! fills the store through one handle, drops it, and collects through a fresh one.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use arca_store_core::{Store, StorePath};
use arca_store_sqlite::{GcAction, GcOptions, GcReport, LocalStore, StoreError, VerifyOptions};

/// Options without runtime roots (the test runner's own processes are not the point).
fn options(action: GcAction) -> GcOptions {
    GcOptions {
        action,
        runtime_roots: false,
        ..GcOptions::default()
    }
}

fn gc(root: &Path) -> GcReport {
    let store = LocalStore::open(root).unwrap();
    store
        .collect_garbage(&options(GcAction::DeleteDead), &|_| {})
        .unwrap()
}

/// Paths `<name>-base` ← `<name>-mid` ← `<name>-top` (top refers to mid refers to base).
fn chain(store: &LocalStore, name: &str) -> [StorePath; 3] {
    let base = store
        .add_text(&format!("{name}-base"), name.as_bytes(), &BTreeSet::new())
        .unwrap();
    let mid = refer(store, &format!("{name}-mid"), &[&base]);
    let top = refer(store, &format!("{name}-top"), &[&mid]);
    [base, mid, top]
}

/// A text path that refers to `references`.
fn refer(store: &LocalStore, name: &str, references: &[&StorePath]) -> StorePath {
    let mut text = String::new();
    for reference in references {
        text.push_str(&store.store_dir().display(reference));
        text.push('\n');
    }
    let references = references.iter().map(|r| (*r).clone()).collect();
    store.add_text(name, text.as_bytes(), &references).unwrap()
}

fn valid(root: &Path, path: &StorePath) -> bool {
    let store = LocalStore::open(root).unwrap();
    store.is_valid_path(path).unwrap() && store.physical_path(path).exists()
}

fn gone(root: &Path, path: &StorePath) -> bool {
    let store = LocalStore::open(root).unwrap();
    !store.is_valid_path(path).unwrap() && !store.physical_path(path).exists()
}

fn assert_clean(root: &Path) {
    let store = LocalStore::open(root).unwrap();
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
    assert!(store.paths_with_dangling_references().unwrap().is_empty());
}

fn gcroots(root: &Path) -> std::path::PathBuf {
    root.join("nix/var/nix/gcroots")
}

#[test]
fn without_roots_everything_goes_referrers_first() {
    let dir = tempfile::tempdir().unwrap();
    let paths = {
        let store = LocalStore::open(dir.path()).unwrap();
        chain(&store, "a")
    };
    let report = gc(dir.path());
    for path in &paths {
        assert!(gone(dir.path(), path));
    }
    assert_eq!(report.paths.len(), 3, "{:?}", report.paths);
    assert!(report.bytes_freed > 0);
    assert_clean(dir.path());
}

#[test]
fn a_symlink_root_keeps_its_closure_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, other) = {
        let store = LocalStore::open(dir.path()).unwrap();
        (chain(&store, "kept"), chain(&store, "other"))
    };
    // The link may point below the path, as a profile's `bin/` link does.
    let store_dir = "/nix/store";
    symlink(
        format!("{store_dir}/{}/below", kept[1].as_str()),
        gcroots(dir.path()).join("mid"),
    )
    .unwrap();
    gc(dir.path());
    assert!(valid(dir.path(), &kept[0]) && valid(dir.path(), &kept[1]));
    assert!(
        gone(dir.path(), &kept[2]),
        "a referrer of a root is not kept"
    );
    assert!(other.iter().all(|p| gone(dir.path(), p)));
    assert_clean(dir.path());
}

#[test]
fn an_indirect_root_keeps_its_closure_until_its_link_goes() {
    let dir = tempfile::tempdir().unwrap();
    let links = tempfile::tempdir().unwrap();
    let result = links.path().join("result");
    let paths = {
        let store = LocalStore::open(dir.path()).unwrap();
        let paths = chain(&store, "a");
        let link = store.add_perm_root(&paths[2], &result).unwrap();
        assert_eq!(link, result);
        paths
    };
    assert_eq!(
        fs::read_link(&result).unwrap(),
        Path::new("/nix/store").join(paths[2].as_str())
    );
    let auto = gcroots(dir.path()).join("auto");
    assert_eq!(fs::read_dir(&auto).unwrap().count(), 1);
    gc(dir.path());
    assert!(paths.iter().all(|p| valid(dir.path(), p)));

    // The user removes `result`: the stale auto link goes with the next collection.
    fs::remove_file(&result).unwrap();
    gc(dir.path());
    assert!(paths.iter().all(|p| gone(dir.path(), p)));
    assert_eq!(fs::read_dir(&auto).unwrap().count(), 0);
}

#[test]
fn a_regular_file_named_after_a_path_is_a_root() {
    let dir = tempfile::tempdir().unwrap();
    let paths = {
        let store = LocalStore::open(dir.path()).unwrap();
        chain(&store, "a")
    };
    fs::write(gcroots(dir.path()).join(paths[2].as_str()), b"").unwrap();
    gc(dir.path());
    assert!(paths.iter().all(|p| valid(dir.path(), p)));
}

#[test]
fn per_user_roots_and_profiles_keep_their_closures() {
    let dir = tempfile::tempdir().unwrap();
    let (user, profile, dead) = {
        let store = LocalStore::open(dir.path()).unwrap();
        (chain(&store, "u"), chain(&store, "p"), chain(&store, "d"))
    };
    let per_user = gcroots(dir.path()).join("per-user/alice");
    fs::create_dir_all(&per_user).unwrap();
    symlink(
        format!("/nix/store/{}", user[2].as_str()),
        per_user.join("x"),
    )
    .unwrap();
    let profiles = dir.path().join("nix/var/nix/profiles/per-user/alice");
    fs::create_dir_all(&profiles).unwrap();
    symlink(
        format!("/nix/store/{}", profile[2].as_str()),
        profiles.join("profile-1-link"),
    )
    .unwrap();
    symlink("profile-1-link", profiles.join("profile")).unwrap();
    gc(dir.path());
    assert!(user.iter().chain(&profile).all(|p| valid(dir.path(), p)));
    assert!(dead.iter().all(|p| gone(dir.path(), p)));
}

/// Inner half of the temporary-root tests: holds `ARCA_TEST_GC_ROOT`'s path
/// `ARCA_TEST_GC_PATH` as a temporary root, says so, and waits to be killed.
#[test]
#[ignore = "run by a_temporary_root_of_a_live_process_keeps_its_closure"]
fn hold_temporary_root() {
    let (Some(root), Some(path)) = (
        std::env::var_os("ARCA_TEST_GC_ROOT"),
        std::env::var("ARCA_TEST_GC_PATH").ok(),
    ) else {
        return;
    };
    let store = LocalStore::open(Path::new(&root)).unwrap();
    store
        .add_temp_root(&StorePath::from_base_name(&path).unwrap())
        .unwrap();
    println!("rooted");
    std::thread::sleep(std::time::Duration::from_secs(600));
}

fn spawn_holder(root: &Path, path: &StorePath) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "hold_temporary_root", "--ignored", "--nocapture"])
        .env("ARCA_TEST_GC_ROOT", root)
        .env("ARCA_TEST_GC_PATH", path.as_str())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|line| line.unwrap().contains("rooted")),
        "the holder died before rooting"
    );
    child
}

#[test]
fn a_temporary_root_of_a_live_process_keeps_its_closure() {
    let dir = tempfile::tempdir().unwrap();
    let paths = {
        let store = LocalStore::open(dir.path()).unwrap();
        chain(&store, "a")
    };
    let mut holder = spawn_holder(dir.path(), &paths[2]);
    let store = LocalStore::open(dir.path()).unwrap();
    let roots = store.find_roots(false).unwrap();
    assert_eq!(roots.len(), 1, "{roots:?}");
    assert_eq!(roots[0].link, format!("{{temp:{}}}", holder.id()));
    drop(store);
    gc(dir.path());
    assert!(paths.iter().all(|p| valid(dir.path(), p)));

    // Once its process is gone, the roots file is stale: removed, roots ignored.
    holder.kill().unwrap();
    holder.wait().unwrap();
    gc(dir.path());
    assert!(paths.iter().all(|p| gone(dir.path(), p)));
    let temproots = dir.path().join("nix/var/nix/temproots");
    let left: Vec<_> = fs::read_dir(&temproots)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy() == holder.id().to_string())
        .collect();
    assert!(left.is_empty(), "the dead holder's file is gone");
}

#[test]
fn another_handle_in_this_process_is_protected_too() {
    let dir = tempfile::tempdir().unwrap();
    let paths = {
        let store = LocalStore::open(dir.path()).unwrap();
        chain(&store, "a")
    };
    let user = LocalStore::open(dir.path()).unwrap();
    user.add_temp_root(&paths[1]).unwrap();
    gc(dir.path());
    assert!(valid(dir.path(), &paths[0]) && valid(dir.path(), &paths[1]));
    assert!(gone(dir.path(), &paths[2]));
    drop(user);
    gc(dir.path());
    assert!(gone(dir.path(), &paths[1]));
}

#[test]
fn runtime_roots_keep_what_processes_use() {
    let dir = tempfile::tempdir().unwrap();
    let (cwd, environ, fd, dead) = {
        let store = LocalStore::open(dir.path()).unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/file"), b"x").unwrap();
        let cwd = store.add_path(&tree, "cwd").unwrap();
        let environ = chain(&store, "env");
        let fd = store.add_text("fd", b"fd", &BTreeSet::new()).unwrap();
        let dead = store.add_text("dead", b"dead", &BTreeSet::new()).unwrap();
        (cwd, environ, fd, dead)
    };
    let physical = |p: &StorePath| dir.path().join("nix/store").join(p.as_str());
    let mut in_cwd = Command::new("sleep")
        .arg("60")
        .current_dir(physical(&cwd).join("sub"))
        .spawn()
        .unwrap();
    let mut with_env = Command::new("sleep")
        .arg("60")
        .env(
            "SOME_PATH",
            format!("/nix/store/{}/bin:/usr/bin", environ[2].as_str()),
        )
        .spawn()
        .unwrap();
    let mut with_fd = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3<'{}'; exec sleep 60",
            physical(&fd).display()
        ))
        .spawn()
        .unwrap();
    // Until `sh` has opened the file and exec'd `sleep`.
    let fd_link = format!("/proc/{}/fd/3", with_fd.id());
    for _ in 0..500 {
        if fs::read_link(&fd_link).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    let store = LocalStore::open(dir.path()).unwrap();
    let runtime = GcOptions::default(); // runtime roots on
    store.collect_garbage(&runtime, &|_| {}).unwrap();
    drop(store);
    for child in [&mut in_cwd, &mut with_env, &mut with_fd] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(valid(dir.path(), &cwd), "cwd");
    assert!(environ.iter().all(|p| valid(dir.path(), p)), "environ");
    assert!(valid(dir.path(), &fd), "fd");
    assert!(gone(dir.path(), &dead));
}

#[test]
fn listing_deletes_nothing_and_names_what_gc_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, dead) = {
        let store = LocalStore::open(dir.path()).unwrap();
        (chain(&store, "kept"), chain(&store, "dead"))
    };
    fs::write(gcroots(dir.path()).join(kept[2].as_str()), b"").unwrap();
    let leftover = dir
        .path()
        .join(format!("nix/store/{}-leftover", "0".repeat(32)));
    fs::create_dir(&leftover).unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let full = |p: &StorePath| store.store_dir().display(p);

    let listed = store
        .collect_garbage(&options(GcAction::ReturnDead), &|_| {})
        .unwrap();
    let mut expected: Vec<String> = dead.iter().map(full).collect();
    expected.push(format!("/nix/store/{}-leftover", "0".repeat(32)));
    expected.sort();
    assert_eq!(listed.paths, expected);
    assert_eq!(listed.bytes_freed, 0);
    assert!(dead.iter().all(|p| store.is_valid_path(p).unwrap()));
    assert!(leftover.exists());

    let live = store
        .collect_garbage(&options(GcAction::ReturnLive), &|_| {})
        .unwrap();
    let mut expected_live: Vec<String> = kept.iter().map(full).collect();
    expected_live.sort();
    assert_eq!(live.paths, expected_live);

    let deleted = store
        .collect_garbage(&options(GcAction::DeleteDead), &|_| {})
        .unwrap();
    assert_eq!(deleted.paths, listed.paths);
    assert!(!leftover.exists());
}

#[test]
fn leftovers_being_written_or_rooted_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = |name: &str, c: char| {
        StorePath::from_base_name(&format!("{}-{name}", c.to_string().repeat(32))).unwrap()
    };
    let locked = store_path("locked", '1');
    let rooted = store_path("rooted", '2');
    let stale = store_path("stale", '3');
    let physical = |p: &StorePath| dir.path().join("nix/store").join(p.as_str());
    let holder = LocalStore::open(dir.path()).unwrap();
    for path in [&locked, &rooted, &stale] {
        fs::write(physical(path), b"x").unwrap();
    }
    // A stale lock file of a crashed writer, and a held one.
    fs::write(
        dir.path()
            .join(format!("nix/store/{}.lock", stale.as_str())),
        b"",
    )
    .unwrap();
    let _lock = holder
        .lock_paths(&std::collections::BTreeSet::from([locked.clone()]))
        .unwrap();
    holder.add_temp_root(&rooted).unwrap();

    gc(dir.path());
    assert!(physical(&locked).exists(), "a writer holds its lock");
    assert!(physical(&rooted).exists(), "a live process roots it");
    assert!(!physical(&stale).exists());
    assert!(!dir
        .path()
        .join(format!("nix/store/{}.lock", stale.as_str()))
        .exists());
}

#[test]
fn max_freed_stops_early_without_dangling_references() {
    let dir = tempfile::tempdir().unwrap();
    let paths = {
        let store = LocalStore::open(dir.path()).unwrap();
        let mut previous = store
            .add_text("p0", &[b'x'; 1000], &BTreeSet::new())
            .unwrap();
        let mut paths = vec![previous.clone()];
        for i in 1..10 {
            let mut text = store.store_dir().display(&previous).into_bytes();
            text.extend_from_slice(&[b'x'; 1000]);
            previous = store
                .add_text(&format!("p{i}"), &text, &BTreeSet::from([previous.clone()]))
                .unwrap();
            paths.push(previous.clone());
        }
        paths
    };
    let store = LocalStore::open(dir.path()).unwrap();
    let options = GcOptions {
        max_freed: Some(2500),
        ..options(GcAction::DeleteDead)
    };
    let report = store.collect_garbage(&options, &|_| {}).unwrap();
    assert_eq!(report.paths.len(), 3, "{:?}", report.paths);
    assert!(report.bytes_freed >= 2500);
    drop(store);
    // The three referrers at the top went; the rest is whole.
    assert!(paths[7..].iter().all(|p| gone(dir.path(), p)));
    assert!(paths[..7].iter().all(|p| valid(dir.path(), p)));
    assert_clean(dir.path());
}

#[test]
fn deleting_specific_paths_respects_roots_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let paths = {
        let store = LocalStore::open(dir.path()).unwrap();
        chain(&store, "a")
    };
    fs::write(gcroots(dir.path()).join(paths[2].as_str()), b"").unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let specific = |path: &StorePath, ignore_liveness| GcOptions {
        ignore_liveness,
        ..options(GcAction::DeleteSpecific(BTreeSet::from([path.clone()])))
    };
    let error = store
        .collect_garbage(&specific(&paths[2], false), &|_| {})
        .unwrap_err();
    assert!(
        matches!(error, StoreError::StillAlive(ref p) if p.ends_with("-a-top")),
        "{error}"
    );
    let error = store
        .collect_garbage(&specific(&paths[0], true), &|_| {})
        .unwrap_err();
    assert!(
        matches!(error, StoreError::StillReferenced { ref referrer, .. } if referrer.ends_with("-a-mid")),
        "{error}"
    );
    store
        .collect_garbage(&specific(&paths[2], true), &|_| {})
        .unwrap();
    drop(store);
    assert!(gone(dir.path(), &paths[2]));
    assert!(valid(dir.path(), &paths[1]));
}

/// Paths added, re-added and rooted by other handles while collections run back to back
/// all survive whole: the temporary-root protocol and the pending-deletion handshake at
/// work (Nix #15469 was a race of exactly this kind).
#[test]
fn paths_added_and_rooted_during_collections_survive() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    const CHAIN: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Chains of dead paths: link i refers to link i-1.
    let text = |chain: usize, i: usize, previous: Option<&StorePath>| {
        let mut text = format!("chain {chain} link {i}\n").into_bytes();
        if let Some(previous) = previous {
            text.extend_from_slice(format!("/nix/store/{}\n", previous.as_str()).as_bytes());
        }
        text
    };
    let add_link = |store: &LocalStore, chain: usize, i: usize, previous: Option<&StorePath>| {
        let references = previous.into_iter().cloned().collect();
        store
            .add_text(
                &format!("c{chain}-{i}"),
                &text(chain, i, previous),
                &references,
            )
            .unwrap()
    };
    let chains: Vec<Vec<StorePath>> = {
        let store = LocalStore::open(root).unwrap();
        (0..6)
            .map(|chain| {
                let mut links: Vec<StorePath> = Vec::new();
                for i in 0..CHAIN {
                    let path = add_link(&store, chain, i, links.last());
                    links.push(path);
                }
                links
            })
            .collect()
    };

    let stop = AtomicBool::new(false);
    let collections = std::thread::scope(|scope| {
        let collector = scope.spawn(|| {
            let mut runs = 0;
            // Bounded even if an adder panics before saying stop.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let store = LocalStore::open(root).unwrap();
                store
                    .collect_garbage(&options(GcAction::DeleteDead), &|_| {})
                    .unwrap();
                runs += 1;
            }
            runs
        });
        let adders: Vec<_> = (0..2)
            .map(|adder| {
                let chains = &chains;
                let stop = &stop;
                scope.spawn(move || {
                    let store = LocalStore::open(root).unwrap();
                    let mut seed = 0x9e37_79b9_u64 + adder;
                    let mut kept = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while Instant::now() < deadline {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let chain = (seed >> 33) as usize % chains.len();
                        let upto = (seed >> 17) as usize % CHAIN;
                        if seed & 1 == 0 {
                            // Re-add a prefix of a chain: each link's reference was
                            // rooted when it was added, so none may go missing.
                            let mut previous: Option<StorePath> = None;
                            for (i, expected) in chains[chain][..=upto].iter().enumerate() {
                                let path = add_link(&store, chain, i, previous.as_ref());
                                assert_eq!(&path, expected);
                                previous = Some(path);
                            }
                            let on_top = refer(
                                &store,
                                &format!("top-{adder}-{}", kept.len()),
                                &[previous.as_ref().unwrap()],
                            );
                            kept.push(on_top);
                            kept.push(previous.unwrap());
                        } else {
                            // Root an existing path, then look: if it is valid now, it
                            // stays valid, closure included.
                            let path = &chains[chain][upto];
                            store.add_temp_root(path).unwrap();
                            if store.is_valid_path(path).unwrap() {
                                kept.push(path.clone());
                            }
                        }
                    }
                    stop.store(true, Ordering::SeqCst);
                    (store, kept)
                })
            })
            .collect();
        let adders: Vec<(LocalStore, Vec<StorePath>)> =
            adders.into_iter().map(|a| a.join().unwrap()).collect();
        let runs = collector.join().unwrap();
        // The adders' handles are still open: everything they kept is there.
        for (_, kept) in &adders {
            for path in kept {
                assert!(valid(root, path), "{} vanished", path.as_str());
            }
        }
        assert_clean(root);
        runs
    });
    assert!(collections >= 3, "only {collections} collections ran");
    // Handles closed: nothing is rooted any more.
    gc(root);
    assert!(chains.iter().flatten().all(|p| gone(root, p)));
}
