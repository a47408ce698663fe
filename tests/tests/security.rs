//! The security suite: every attack of issue #13, each test failing if the protection it
//! names is removed.
//!
//! - Forged derivations: a `.drv` that claims another derivation's output path is refused
//!   when it would enter the store (CLI `store add-path`, `derivation add`, `store import`,
//!   the library's adds) and, if one is in the store already (made by an older Arca),
//!   when it would be built.
//!
//! Builds need a static busybox (skipped loudly without it, an error in CI); the tests
//! that act as another host user need root.

use std::fs;
use std::os::unix::process::CommandExt;

use arca_store_core::{Hash, HashAlgo, Store, StoreDir, StorePath};
use arca_tests::build::{busybox_available, Scratch};
use arca_tests::store::lines;

/// A scratch area with busybox in its Arca store, and two derivations `good` and `bad`
/// whose outputs each hold a file of their own name: (scratch, good drv, bad drv).
fn good_and_bad(test: &str) -> Option<(Scratch, String, String)> {
    if !busybox_available(test) {
        return None;
    }
    let scratch = Scratch::new();
    let bb = scratch.add_busybox_to_arca();
    let good = scratch.add_derivation(&bb, "good", "mkdir $out; echo good > $out/good", &[], &[]);
    let bad = scratch.add_derivation(&bb, "bad", "mkdir $out; echo bad > $out/bad", &[], &[]);
    Some((scratch, good, bad))
}

/// `bad.drv` with `bad`'s output path replaced by `good`'s everywhere (the attack of
/// Nix's `secure-drv-outputs.sh`), written to `<scratch>/forged/bad.drv`.
fn forge(scratch: &Scratch, good: &str, bad: &str) -> std::path::PathBuf {
    let good_out = scratch.arca_output(good);
    let bad_out = scratch.arca_output(bad);
    let text = fs::read_to_string(scratch.arca_physical(bad)).unwrap();
    assert!(text.contains(&bad_out));
    let dir = scratch.path().join("forged");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.drv");
    fs::write(&file, text.replace(&bad_out, &good_out)).unwrap();
    file
}

/// After the attack, building `good` gives `good`'s own contents.
fn assert_good_builds_good(scratch: &Scratch, good: &str) {
    let out = scratch.arca_build_ok(&[good]);
    assert_eq!(out, [scratch.arca_output(good)]);
    let file = scratch.arca_physical(&out[0]).join("good");
    assert_eq!(
        fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())),
        "good\n",
        "the bad derivation stole the output path of the good one"
    );
}

#[test]
fn forged_drv_is_refused_by_store_add_path() {
    let Some((scratch, good, bad)) = good_and_bad("forged_drv_is_refused_by_store_add_path") else {
        return;
    };
    let forged = forge(&scratch, &good, &bad);
    let output = scratch.arca(&["store", "add-path", forged.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let good_out = scratch.arca_output(&good);
    let bad_out = scratch.arca_output(&bad);
    assert!(
        stderr.contains(&format!(
            "has incorrect output '{good_out}', should be '{bad_out}'"
        )),
        "{stderr}"
    );
    assert!(lines(&output.stdout).is_empty());
    assert_good_builds_good(&scratch, &good);
}

#[test]
fn forged_drv_is_refused_by_derivation_add() {
    let Some((scratch, good, bad)) = good_and_bad("forged_drv_is_refused_by_derivation_add") else {
        return;
    };
    let good_out = scratch.arca_output(&good);
    let mut json: serde_json::Value =
        serde_json::from_slice(&scratch.arca_ok(&["derivation", "show", &bad])).unwrap();
    let mut drv = json.as_object_mut().unwrap().remove(&bad).unwrap();
    drv["name"] = "bad".into();
    drv["outputs"]["out"]["path"] = good_out.clone().into();
    drv["env"]["out"] = good_out.clone().into();
    let output = scratch
        .arca_cmd()
        .args(["derivation", "add"])
        .output_with(&drv);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // The CLI names the path it computed before the store would refuse it.
    assert!(stderr.contains(&format!("'{good_out}'")), "{stderr}");
    assert_good_builds_good(&scratch, &good);
}

/// The library's `add_derivation` (what `derivation add` and the daemon's adds end in)
/// refuses it too, naming the output, the path claimed and the right one.
#[test]
fn forged_drv_is_refused_by_the_library() {
    let Some((scratch, good, bad)) = good_and_bad("forged_drv_is_refused_by_the_library") else {
        return;
    };
    let good_out = scratch.arca_output(&good);
    let bad_out = scratch.arca_output(&bad);
    let forged = forge(&scratch, &good, &bad);
    let store_dir = StoreDir::default();
    let drv =
        arca_store_core::Derivation::parse(&store_dir, "bad", &fs::read(&forged).unwrap()).unwrap();
    let store = arca_store_sqlite::LocalStore::open(&scratch.arca_root()).unwrap();
    let error = store.add_derivation(&drv).unwrap_err();
    assert!(
        matches!(error, arca_store_sqlite::StoreError::IncorrectDerivation(_)),
        "{error:?}"
    );
    assert!(
        error.to_string().ends_with(&format!(
            "has incorrect output '{good_out}', should be '{bad_out}'"
        )),
        "{error}"
    );
    drop(store);
    assert_good_builds_good(&scratch, &good);
}

#[test]
fn forged_drv_is_refused_by_store_import() {
    let Some((scratch, good, bad)) = good_and_bad("forged_drv_is_refused_by_store_import") else {
        return;
    };
    // The export archive another store would make of the forged file.
    let forged = forge(&scratch, &good, &bad);
    let nar = scratch.arca_ok(&["nar", "dump-path", forged.to_str().unwrap()]);
    let text = fs::read(&forged).unwrap();
    let store_dir = StoreDir::default();
    let references: std::collections::BTreeSet<StorePath> = text_references(&text);
    let path = store_dir
        .make_text_path(
            "bad.drv",
            &Hash::digest(HashAlgo::Sha256, &text),
            &references,
        )
        .unwrap();
    let archive = export_archive(&store_dir, &path, &nar, &references);
    let output = arca_tests::store::run(scratch.arca_cmd().args(["store", "import"]), &archive);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has incorrect output"), "{stderr}");
    assert!(!scratch.arca_registered(&store_dir.display(&path)));
    assert_good_builds_good(&scratch, &good);
}

/// A forged `.drv` registered by something that did not check (an older Arca), built
/// through the library: refused before anything runs.
#[test]
fn forged_drv_already_in_the_store_is_never_built() {
    let Some((scratch, good, bad)) = good_and_bad("forged_drv_already_in_the_store_is_never_built")
    else {
        return;
    };
    let forged = forge(&scratch, &good, &bad);
    let text = fs::read(&forged).unwrap();
    let store_dir = StoreDir::default();
    let references = text_references(&text);
    let path = store_dir
        .make_text_path(
            "bad.drv",
            &Hash::digest(HashAlgo::Sha256, &text),
            &references,
        )
        .unwrap();
    // Written and registered behind the store's back, as a store without the check
    // would have: the file, and its rows in the registry (SQLite directly).
    let file = scratch.arca_physical(&store_dir.display(&path));
    fs::write(&file, &text).unwrap();
    let (nar_hash, nar_size) = arca_store_sqlite::nar_hash_of(&file).unwrap();
    let db = arca_tests::store::registry_db(&scratch.arca_root());
    let references: Vec<String> = references.iter().map(|r| store_dir.display(r)).collect();
    let script = "import sqlite3, sys\n\
        db = sqlite3.connect(sys.argv[1])\n\
        cur = db.execute('insert into ValidPaths (path, hash, registrationTime, narSize) \
        values (?, ?, 1, ?)', (sys.argv[2], sys.argv[3], int(sys.argv[4])))\n\
        for reference in sys.argv[5:]:\n\
        \x20   db.execute('insert into Refs (referrer, reference) select ?, id from ValidPaths \
        where path = ?', (cur.lastrowid, reference))\n\
        db.commit()\n";
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&db)
        .arg(store_dir.display(&path))
        .arg(format!("sha256:{}", nar_hash.to_base16()))
        .arg(nar_size.to_string())
        .args(&references)
        .status()
        .unwrap();
    assert!(status.success());
    let store = arca_store_sqlite::LocalStore::open(&scratch.arca_root()).unwrap();
    assert!(store.is_valid_path(&path).unwrap());

    let error = arca_build::build(
        &store,
        &[arca_build::BuildTarget::all(path.clone())],
        &arca_build::BuildOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    let good_out = scratch.arca_output(&good);
    assert!(
        error
            .to_string()
            .contains(&format!("has incorrect output '{good_out}'")),
        "{error}"
    );
    drop(store);
    // The CLI refuses it the same way.
    let stderr = scratch.arca_build_fails(&[&store_dir.display(&path)]);
    assert!(stderr.contains("has incorrect output"), "{stderr}");
    assert!(!scratch.arca_registered(&good_out));
    assert_good_builds_good(&scratch, &good);
}

/// The store paths named in a `.drv`'s text that are its references (input sources and
/// input derivations): every `/nix/store/…` string but the outputs. Enough for the
/// derivations of these tests, which have no input derivations.
fn text_references(text: &[u8]) -> std::collections::BTreeSet<StorePath> {
    let store_dir = StoreDir::default();
    let drv = arca_store_core::Derivation::parse(&store_dir, "bad", text).unwrap();
    drv.drv_references()
}

/// Nix's export format for one path without deriver or signature.
fn export_archive(
    store_dir: &StoreDir,
    path: &StorePath,
    nar: &[u8],
    references: &std::collections::BTreeSet<StorePath>,
) -> Vec<u8> {
    fn int(out: &mut Vec<u8>, n: u64) {
        out.extend_from_slice(&n.to_le_bytes());
    }
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        int(out, s.len() as u64);
        out.extend_from_slice(s);
        out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
    }
    let mut out = Vec::new();
    int(&mut out, 1);
    out.extend_from_slice(nar);
    int(&mut out, 0x4558_494e);
    string(&mut out, store_dir.display(path).as_bytes());
    int(&mut out, references.len() as u64);
    for reference in references {
        string(&mut out, store_dir.display(reference).as_bytes());
    }
    string(&mut out, b"");
    int(&mut out, 0);
    int(&mut out, 0);
    out
}

trait OutputWith {
    fn output_with(&mut self, json: &serde_json::Value) -> std::process::Output;
}

impl OutputWith for std::process::Command {
    fn output_with(&mut self, json: &serde_json::Value) -> std::process::Output {
        arca_tests::store::run(self, &serde_json::to_vec(json).unwrap())
    }
}

// --- Builds as root: one host uid per build, outputs out of reach -------------------

/// A scratch area with busybox in its Arca store, when running as root (else the test
/// is skipped, saying `why` it needs root) with busybox: the scratch and busybox's path.
fn root_scratch(test: &str, why: &str) -> Option<(Scratch, String)> {
    if !arca_tests::daemon::running_as_root() {
        eprintln!("SKIPPED {test}: needs root ({why})");
        return None;
    }
    if !busybox_available(test) {
        return None;
    }
    let scratch = Scratch::new();
    let bb = scratch.add_busybox_to_arca();
    Some((scratch, bb))
}

/// The host uid and gid of the process running `sleep MARKER` (a builder's child).
fn builder_ids(marker: &str) -> Option<(u32, u32, u32)> {
    let found = arca_tests::build::processes_with_args(&["sleep", marker]);
    let pid: u32 = found.first()?.split(':').next()?.parse().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((pid, field("Uid:")?, field("Gid:")?))
}

/// Waits up to 20 s for `check` to give something.
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Where a running build keeps the output `out` (a store path) on the host: inside its
/// scratch store directory, under the staging area or (fixed-output builds) in the
/// build directories' parent.
fn scratch_output(scratch: &Scratch, out: &str) -> Option<std::path::PathBuf> {
    let base = out.rsplit('/').next()?;
    [
        scratch.arca_root().join("nix/store/.arca-staging"),
        scratch.build_tmp(),
    ]
    .iter()
    .filter_map(|dir| fs::read_dir(dir).ok())
    .flat_map(|entries| entries.flatten())
    .find_map(|entry| {
        let candidate = entry.path().join("store").join(base);
        fs::symlink_metadata(&candidate).ok().map(|_| candidate)
    })
}

/// Two builds running at once as root get host ids no other build has, and one build's
/// identity can neither reach nor write the other's output before it is registered
/// (the attack: a fixed-output build, run with the other's uid, opens its output for
/// writing and passes the descriptor on).
#[test]
fn concurrent_root_builds_have_distinct_ids_and_cannot_touch_each_other() {
    let test = "concurrent_root_builds_have_distinct_ids_and_cannot_touch_each_other";
    let Some((scratch, bb)) = root_scratch(test, "builds as root map to host build ids") else {
        return;
    };
    let a = scratch.add_derivation(
        &bb,
        "victim-a",
        "mkdir $out; echo a > $out/file; sleep 4.301",
        &[],
        &[],
    );
    let b = scratch.add_derivation(
        &bb,
        "victim-b",
        "mkdir $out; echo b > $out/file; sleep 4.302",
        &[],
        &[],
    );
    let b_out = scratch.arca_output(&b);
    let child = scratch
        .arca_cmd()
        .args(["build", "-j", "2", &a, &b])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (_, a_uid, a_gid) = wait_for("builder a", || builder_ids("4.301"));
    let (_, b_uid, b_gid) = wait_for("builder b", || builder_ids("4.302"));
    assert_ne!(a_uid, b_uid, "two running builds share host uid {a_uid}");
    assert_ne!(a_gid, b_gid, "two running builds share host gid {a_gid}");
    assert!(
        a_uid >= 872_415_232 && b_uid >= 872_415_232,
        "{a_uid} {b_uid}"
    );

    // As a's identity, and as any other user (nobody): b's output can be neither
    // written nor read, nor its directory listed (a shared uid could do all three), so
    // no descriptor to it can exist outside the build.
    let file = wait_for("b's output", || scratch_output(&scratch, &b_out)).join("file");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let identities = [
        ("build a", a_uid, a_gid),
        ("nobody", nobody.uid.as_raw(), nobody.gid.as_raw()),
    ];
    for (who, uid, gid) in identities {
        for script in [
            format!("echo evil >> {}", file.display()),
            format!("cat {}", file.display()),
            format!("ls {}", file.parent().unwrap().display()),
        ] {
            let output = std::process::Command::new(arca_tests::build::busybox())
                .args(["sh", "-c", &script])
                .uid(uid)
                .gid(gid)
                .output()
                .unwrap();
            assert!(
                !output.status.success(),
                "as {who} ({uid}:{gid}), `{script}` succeeded: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        fs::read_to_string(scratch.arca_physical(&b_out).join("file")).unwrap(),
        "b\n"
    );
    arca_tests::store::assert_arca_verify_clean(&scratch.arca_root(), "after both builds");
}

/// The attacker of the fixed-output races, run as `nobody` outside the sandbox with a
/// descriptor (its number in argv) of the build's scratch store directory, as a
/// fixed-output builder could hand it out over an abstract socket: until its deadline it
/// exchanges any directory that shows up beside the output (a copy being hashed) with one
/// of its own, reads every file it can reach looking for the secret, and in `flip` mode
/// also flips each output file with a symlink to a root-only secret
/// (`renameat2(RENAME_EXCHANGE)`), so that a walk by path follows it. Prints what it
/// achieved: `read-secret`, `swapped-copy` (a directory that appeared after the builder
/// ran was exchanged), or `clean`.
const FD_ATTACKER: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
out, secret, marker, seconds, fd = sys.argv[1], sys.argv[2], sys.argv[3].encode(), float(sys.argv[4]), int(sys.argv[5])
flip = sys.argv[6] == "flip"
deadline = time.time() + seconds
results = set()
# What is there while the builder runs: its output and the mount points of its inputs.
present = set(os.listdir(fd))
def exchange(dfd, a, b):
    return libc.renameat2(dfd, a.encode(), dfd, b.encode(), 2) == 0
while time.time() < deadline:
    try:
        names = os.listdir(fd)
    except OSError:
        names = []
    for name in names:
        if name not in present and not name.startswith("evil-"):
            try:
                os.mkdir("evil-" + name, dir_fd=fd)
            except OSError:
                pass
            if exchange(fd, name, "evil-" + name):
                results.add("swapped-copy")
    try:
        outfd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd) if flip else None
    except OSError:
        outfd = None
    if outfd is not None and flip:
        for i in range(1, 41):
            try:
                os.symlink(secret, "s%d" % i, dir_fd=outfd)
            except OSError:
                pass
            exchange(outfd, "f%d" % i, "s%d" % i)
        os.close(outfd)
    try:
        for _, _, files, dfd in os.fwalk(".", dir_fd=fd):
            for name in files:
                try:
                    h = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
                    if marker in os.read(h, 1 << 16):
                        results.add("read-secret")
                    os.close(h)
                except OSError:
                    pass
    except OSError:
        pass
print(" ".join(sorted(results)) or "clean")
"#;

/// Attack 3 of issue #13: a fixed-output build whose scratch store directory is in the
/// hands of an unprivileged local user while Arca takes its output in. The copy that is
/// hashed and published must be out of their reach (a copy made beside the output, as
/// before, is exchanged every time).
#[test]
fn fixed_output_copy_is_out_of_reach_of_a_passed_descriptor() {
    fixed_output_attack(
        "fixed_output_copy_is_out_of_reach_of_a_passed_descriptor",
        "swap",
    );
}

/// Attack 2 of issue #13: the same, with output files flipped to symlinks to a root-only
/// secret while the output is read: nothing outside the output may be read into
/// anything that user can reach, or into the store. (A race: a walk by path loses it
/// now and then, not every time.)
#[test]
fn fixed_output_walk_never_follows_a_symlink_swapped_in_through_a_passed_descriptor() {
    fixed_output_attack(
        "fixed_output_walk_never_follows_a_symlink_swapped_in_through_a_passed_descriptor",
        "flip",
    );
}

fn fixed_output_attack(test: &str, mode: &str) {
    let Some((scratch, bb)) = root_scratch(test, "the attacker runs as nobody") else {
        return;
    };
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("shadow");
    let marker = "ROOT-ONLY-SECRET-4fa1c3";
    fs::write(&secret, format!("{marker}\n")).unwrap();
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // 40 small files, then a big one so that taking the output in takes a while; the
    // builder opens everything up and waits for the attacker to have its descriptor.
    let script = "mkdir $out; for i in $(seq 1 40); do echo $i > $out/f$i; done; \
                  head -c 30000000 /dev/zero > $out/zz; chmod -R 777 $out; chmod 777 /nix/store; \
                  sleep 2";
    let drv = add_fixed_output(
        &scratch,
        &bb,
        "fetched",
        script,
        ("recursive", &"0".repeat(64)),
    );
    let out = scratch.arca_output(&drv);
    let shown = String::from_utf8(scratch.arca_ok(&["derivation", "show", &drv])).unwrap();
    assert!(
        shown.contains("\"hashAlgo\": \"r:sha256\""),
        "not fixed-output: {shown}"
    );
    let out_base = out.rsplit('/').next().unwrap().to_owned();
    let build = scratch
        .arca_cmd()
        .args(["build", &drv])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output_dir = wait_for("the fixed output", || scratch_output(&scratch, &out));
    // What the builder could hand out is not on the store's file system.
    assert!(
        !output_dir.starts_with(scratch.arca_root()),
        "a fixed-output builder writes inside the store: {}",
        output_dir.display()
    );
    let store_dir = fs::File::open(output_dir.parent().unwrap()).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let attacker = {
        use std::os::fd::AsRawFd;
        // Inherited across exec, as a descriptor received from a builder would be held.
        nix::fcntl::fcntl(
            store_dir.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .unwrap();
        std::process::Command::new("python3")
            .args(["-c", FD_ATTACKER, &out_base])
            .arg(&secret)
            .args([marker, "6", &store_dir.as_raw_fd().to_string(), mode])
            .uid(nobody.uid.as_raw())
            .gid(nobody.gid.as_raw())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    drop(store_dir);
    let built = build.wait_with_output().unwrap();
    let attack = attacker.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&attack.stdout).trim().to_owned();
    assert!(
        attack.status.success(),
        "the attacker failed: {}",
        String::from_utf8_lossy(&attack.stderr)
    );
    assert_eq!(report, "clean", "the attacker got somewhere");
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert_eq!(
        built.status.code(),
        Some(1),
        "stdout {} stderr {stderr}",
        String::from_utf8_lossy(&built.stdout)
    );
    // Refused either way: the contents do not have the declared hash, or they changed
    // kind while being read (the attacker's flips).
    assert!(
        stderr.contains("hash mismatch") || stderr.contains("cannot read output"),
        "{stderr}"
    );
    assert!(!scratch.arca_registered(&out));
    // Nothing in the store holds the secret.
    let grep = std::process::Command::new("grep")
        .args(["-r", "-l", marker])
        .arg(scratch.arca_root())
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "the secret reached the store: {}",
        String::from_utf8_lossy(&grep.stdout)
    );
}

/// Adds a sha256 fixed-output derivation (`busybox sh -c SCRIPT`, with `hash_hex`
/// declared, `recursive` or `flat`) with `arca derivation add`: its `.drv` path.
fn add_fixed_output(
    scratch: &Scratch,
    bb: &str,
    name: &str,
    script: &str,
    (mode, hash_hex): (&str, &str),
) -> String {
    let builder = format!("{bb}/busybox");
    let algo = if mode == "recursive" {
        "r:sha256"
    } else {
        "sha256"
    };
    let drv = serde_json::json!({
        "name": name,
        "outputs": { "out": { "path": "", "hashAlgo": algo, "hash": hash_hex } },
        "inputSrcs": [bb],
        "inputDrvs": {},
        "system": "x86_64-linux",
        "builder": builder,
        "args": ["sh", "-c", script],
        "env": {
            "builder": builder,
            "name": name,
            "out": "",
            "outputHash": hash_hex,
            "outputHashAlgo": "sha256",
            "outputHashMode": mode,
            "system": "x86_64-linux",
            "PATH": bb,
        },
    });
    let printed =
        lines(&scratch.arca_ok_with(&["derivation", "add"], &serde_json::to_vec(&drv).unwrap()));
    assert_eq!(printed.len(), 1, "{printed:?}");
    printed[0].clone()
}

/// Through a daemon, the forged `.drv` is refused for untrusted and trusted clients
/// alike, in the words of nix-daemon 2.8 (which is run beside it on the same file).
#[test]
fn forged_drv_is_refused_through_the_daemon_as_by_nix_daemon() {
    use arca_tests::daemon::{open_up_to_root, Daemon, Unprivileged};
    let test = "forged_drv_is_refused_through_the_daemon_as_by_nix_daemon";
    if !arca_tests::nix_available(test) {
        return;
    }
    if !arca_tests::daemon::running_as_root() {
        eprintln!("SKIPPED {test}: needs root, to run the daemons as root and a client as nobody");
        return;
    }
    let Some((scratch, good, bad)) = good_and_bad(test) else {
        return;
    };
    let good_out = scratch.arca_output(&good);
    let bad_out = scratch.arca_output(&bad);
    let forged = forge(&scratch, &good, &bad);
    let dir = tempfile::tempdir().unwrap();
    open_up_to_root(dir.path());
    let shared = dir.path().join("bad.drv");
    fs::copy(&forged, &shared).unwrap();
    fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let nobody = Unprivileged::nobody(&dir.path().join("home"));
    let expected = format!("has incorrect output '{good_out}', should be '{bad_out}'");
    for daemon in [
        Daemon::arca(&dir.path().join("arca"), &[]),
        Daemon::nix(&dir.path().join("nix")),
    ] {
        for user in [Some(&nobody), None] {
            let output = arca_tests::store::run(
                daemon
                    .nix_store_command(user)
                    .args(["--add", shared.to_str().unwrap()]),
                b"",
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !output.status.success(),
                "{:?} daemon accepted the forged drv (trusted: {}): {}",
                daemon.kind(),
                user.is_none(),
                String::from_utf8_lossy(&output.stdout)
            );
            assert!(stderr.contains(&expected), "{:?}: {stderr}", daemon.kind());
        }
    }
}

// --- BuildDerivation: what a client may claim --------------------------------------

/// Sends `BuildDerivation` for the derivation `drv` of `arca derivation show` JSON (as a
/// basic derivation: outputs, sources, platform, builder, args, env), with the fixed
/// output's path replaced by `claim` when given. Returns the operation's error, or the
/// build status and message (protocol 1.21).
fn send_build_derivation(
    client: &mut arca_tests::daemon::RawClient,
    drv_path: &str,
    drv: &serde_json::Value,
    claim: Option<&str>,
) -> Result<(u64, String), String> {
    client.send_u64(36).unwrap(); // wopBuildDerivation
    client.send_bytes(drv_path.as_bytes()).unwrap();
    let outputs = drv["outputs"].as_object().unwrap();
    client.send_u64(outputs.len() as u64).unwrap();
    for (name, output) in outputs {
        let path = claim.unwrap_or_else(|| output["path"].as_str().unwrap());
        client.send_bytes(name.as_bytes()).unwrap();
        client.send_bytes(path.as_bytes()).unwrap();
        client
            .send_bytes(output["hashAlgo"].as_str().unwrap_or("").as_bytes())
            .unwrap();
        client
            .send_bytes(output["hash"].as_str().unwrap_or("").as_bytes())
            .unwrap();
    }
    let sources: Vec<&str> = drv["inputSrcs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    client.send_strings(&sources).unwrap();
    client
        .send_bytes(drv["system"].as_str().unwrap().as_bytes())
        .unwrap();
    client
        .send_bytes(drv["builder"].as_str().unwrap().as_bytes())
        .unwrap();
    let args: Vec<&str> = drv["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    client.send_strings(&args).unwrap();
    let env = drv["env"].as_object().unwrap();
    client.send_u64(env.len() as u64).unwrap();
    for (key, value) in env {
        client.send_bytes(key.as_bytes()).unwrap();
        client
            .send_bytes(value.as_str().unwrap().as_bytes())
            .unwrap();
    }
    client.send_u64(0).unwrap(); // bmNormal
    client.recv_result().unwrap()?;
    let status = client.recv_u64().unwrap();
    let message = client.recv_string().unwrap();
    Ok((status, message))
}

/// Nix 2.8's rule: a client that is not trusted may build only fixed-output
/// derivations sent whole, and a fixed output's path must be the one its hash gives
/// (else any client could build content of its choosing into another derivation's
/// output path); a trusted client's input-addressed derivation is built as sent.
#[test]
fn build_derivation_trusts_input_addressed_paths_only_from_trusted_clients() {
    let test = "build_derivation_trusts_input_addressed_paths_only_from_trusted_clients";
    let Some((scratch, good, _bad)) = good_and_bad(test) else {
        return;
    };
    let bb = lines(&scratch.arca_ok(&["store", "query", "--references", &good]))
        .into_iter()
        .find(|p| p.ends_with("-bb"))
        .unwrap();
    let contents = b"fixed\n";
    let hash = Hash::digest(HashAlgo::Sha256, contents).to_base16();
    let fixed = add_fixed_output(
        &scratch,
        &bb,
        "fetched-flat",
        "echo fixed > $out",
        ("flat", &hash),
    );
    let show = |drv: &str| -> serde_json::Value {
        let mut json: serde_json::Value =
            serde_json::from_slice(&scratch.arca_ok(&["derivation", "show", drv])).unwrap();
        json.as_object_mut().unwrap().remove(drv).unwrap()
    };
    let (good_json, fixed_json) = (show(&good), show(&fixed));
    let good_out = scratch.arca_output(&good);
    let fixed_out = scratch.arca_output(&fixed);
    // The daemons serve the same store (moved where `Daemon` wants it).
    let root = scratch.path().join("daemon");
    fs::create_dir(&root).unwrap();
    fs::rename(scratch.arca_root(), root.join("root")).unwrap();
    // Root is not trusted by this daemon.
    let daemon = arca_tests::daemon::Daemon::arca(&root, &["--trusted-users", "nobody-at-all"]);
    let mut client = daemon.connect();
    client
        .handshake(arca_tests::daemon::version(1, 21))
        .unwrap();
    let refused = send_build_derivation(&mut client, &good, &good_json, None).unwrap_err();
    assert!(
        refused.contains("not privileged to build input-addressed derivations"),
        "{refused}"
    );
    // A fixed output claiming the input-addressed path of `good`.
    let refused =
        send_build_derivation(&mut client, &fixed, &fixed_json, Some(&good_out)).unwrap_err();
    assert!(refused.contains("but its hash gives"), "{refused}");
    assert_eq!(client.is_valid_path(&good_out).unwrap(), Ok(false));
    // The connection is still in step, and the honest fixed output builds.
    let (status, message) = send_build_derivation(&mut client, &fixed, &fixed_json, None).unwrap();
    assert_eq!((status, message.as_str()), (0, ""), "{message}");
    assert_eq!(client.is_valid_path(&fixed_out).unwrap(), Ok(true));
    drop(client);
    drop(daemon);

    // A trusted client's input-addressed derivation is built as sent.
    let trusting = arca_tests::daemon::Daemon::arca(&root, &[]);
    let mut client = trusting.connect();
    client
        .handshake(arca_tests::daemon::version(1, 21))
        .unwrap();
    let (status, message) = send_build_derivation(&mut client, &good, &good_json, None).unwrap();
    assert_eq!((status, message.as_str()), (0, ""), "{message}");
    assert_eq!(client.is_valid_path(&good_out).unwrap(), Ok(true));
    assert_eq!(
        fs::read_to_string(trusting.physical(&good_out).join("good")).unwrap(),
        "good\n"
    );
}

/// Other users can neither list the staging area (where paths and builds are written)
/// nor reach into a build's scratch directory by name.
#[test]
fn other_users_cannot_list_the_staging_area() {
    let test = "other_users_cannot_list_the_staging_area";
    let Some((scratch, _)) = root_scratch(test, "the lister runs as nobody") else {
        return;
    };
    arca_tests::daemon::open_up_to_root(&scratch.arca_root().join("nix/store"));
    let staging = scratch.arca_root().join("nix/store/.arca-staging");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&staging).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o711, "{}", staging.display());
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let output = std::process::Command::new(arca_tests::build::busybox())
        .args(["ls", staging.to_str().unwrap()])
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "nobody listed {}",
        staging.display()
    );
}

/// A build that signals everything it can (`kill -9 -1`) and looks through `/proc` for
/// other processes while a concurrent build runs: it sees only its own processes and
/// the other build finishes untouched (a pid namespace and a host uid of its own each).
#[test]
fn a_build_cannot_signal_or_see_a_concurrent_build() {
    let test = "a_build_cannot_signal_or_see_a_concurrent_build";
    if !busybox_available(test) {
        return;
    }
    let scratch = Scratch::new();
    let bb = scratch.add_busybox_to_arca();
    let attacker = scratch.add_derivation(
        &bb,
        "attacker",
        "mkdir $out; i=0; while [ $i -lt 40 ]; do kill -9 -1; ls /proc | grep '^[0-9]' >> $out/pids; \
         cat /proc/*/root/nix/store/*/victim 2>/dev/null >> $out/stolen; sleep 0.05; i=$((i+1)); done",
        &[],
        &[],
    );
    let victim = scratch.add_derivation(
        &bb,
        "victim",
        "sleep 1.5; mkdir $out; echo victim > $out/victim",
        &[],
        &[],
    );
    let outputs = scratch.arca_build_ok(&["-j", "2", &attacker, &victim]);
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    let victim_out = scratch.arca_output(&victim);
    assert_eq!(
        fs::read_to_string(scratch.arca_physical(&victim_out).join("victim")).unwrap(),
        "victim\n"
    );
    let attacker_out = scratch.arca_physical(&scratch.arca_output(&attacker));
    let stolen = fs::read_to_string(attacker_out.join("stolen")).unwrap_or_default();
    assert!(
        stolen.is_empty(),
        "the attacker read the victim's output: {stolen}"
    );
    // Only its own few processes: pid 1 (the builder's shell) and its children.
    let pids: std::collections::BTreeSet<u32> = fs::read_to_string(attacker_out.join("pids"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        pids.contains(&1) && pids.iter().all(|&p| p < 1000),
        "{pids:?}"
    );
}

/// A fixed-output build gets its network through a namespace of its own (slirp4netns):
/// it cannot see, so cannot connect to, an abstract unix socket of the host, over which
/// it could otherwise hand descriptors to a local process. The builder's output is how
/// many of the host's sockets named so it sees; declared as "0\n".
#[test]
fn fixed_output_build_shares_no_abstract_socket_with_the_host() {
    use std::os::linux::net::SocketAddrExt;
    let test = "fixed_output_build_shares_no_abstract_socket_with_the_host";
    let Some((scratch, bb)) =
        root_scratch(test, "the sandbox's user-mode network runs as root here")
    else {
        return;
    };
    if arca_build::BuildOptions::default()
        .user_mode_network
        .is_none()
    {
        if std::env::var("ARCA_REQUIRE_SANDBOX").as_deref() == Ok("1") {
            panic!("{test}: slirp4netns is required (ARCA_REQUIRE_SANDBOX=1) but not on PATH");
        }
        eprintln!("SKIPPED {test}: slirp4netns is not installed");
        return;
    }
    let name = format!("arca-fod-channel-{}", std::process::id());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind_addr(&address).unwrap();
    let expected = Hash::digest(HashAlgo::Sha256, b"0\n").to_base16();
    let drv = add_fixed_output(
        &scratch,
        &bb,
        "no-channel",
        &format!("grep -c {name} /proc/net/unix > $out || true"),
        ("flat", &expected),
    );
    let out = scratch.arca_build_ok(&[&drv]);
    assert_eq!(
        fs::read_to_string(scratch.arca_physical(&out[0])).unwrap(),
        "0\n"
    );
}
