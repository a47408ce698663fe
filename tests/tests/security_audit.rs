//! The audit of issue #13's "same class of hole elsewhere": each test attacks one place
//! where a client's or an archive's word could be taken for the truth, and fails if the
//! check that stops it is removed.
//!
//! - Imports whose path does not match their content address (`AddToStoreNar`,
//!   `AddMultipleToStore`, trusted or not; a text path claiming a self-reference, which
//!   Nix's `isContentAddressed` never accepts) and unsigned export archives from an
//!   untrusted client.
//! - `BuildDerivation` from an untrusted client: input-addressed outputs and repairs
//!   refused, a fixed output only at the path its hash gives, and the derivation built under the
//!   path its contents give (as Nix 2.8), not under one the client names: otherwise its
//!   log replaces another derivation's and that one becomes the output's deriver.
//! - Garbage collector roots and indirect roots that lead outside the store are
//!   ignored, and the collection touches nothing outside the store.
//! - Log requests for crafted paths (`../../etc/passwd`) are refused, reading or
//!   writing.
//! - Symlinks in build outputs are stored as symlinks: what they point to is neither
//!   read nor changed.
//!
//! The daemon is served over `--stdio` (trusted, or `--force-untrusted`), so most tests need
//! neither root nor Nix; the builds need a static busybox (skipped loudly without it, an
//! error in CI).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use arca_store_core::{ContentAddressMethod, Hash, HashAlgo, StoreDir, StorePath};
use arca_store_sqlite::{GcAction, GcOptions, LocalStore};
use arca_tests::build::{busybox_available, Scratch};
use arca_tests::daemon::{file_nar, op, version, RawClient};

// --- Shared setup -----------------------------------------------------------------------

/// `BuildDerivation`, `ImportPaths`, `AddIndirectRoot`, `AddMultipleToStore`,
/// `AddBuildLog` and Arca's `ReadLog`.
const BUILD_DERIVATION: u64 = 36;
const IMPORT_PATHS: u64 = 27;
const ADD_MULTIPLE_TO_STORE: u64 = 44;
const ADD_BUILD_LOG: u64 = 45;
const ARCA_READ_LOG: u64 = 1001;

/// `arca --store ROOT daemon --stdio [--force-untrusted]` with `TMPDIR` `tmp`, its client after
/// the handshake (protocol 1.34).
fn stdio_daemon(root: &Path, tmp: &Path, trusted: bool) -> (Child, RawClient) {
    fs::create_dir_all(tmp).unwrap();
    let mut command = Command::new(arca_tests::arca_bin());
    command
        .env("TMPDIR", tmp)
        .arg("--store")
        .arg(root)
        .args(["daemon", "--stdio"]);
    if !trusted {
        command.arg("--force-untrusted");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut client = RawClient::over(
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stdin.take().unwrap()),
    );
    client.handshake(version(1, 34)).unwrap();
    (child, client)
}

fn store_dir() -> StoreDir {
    StoreDir::new("/nix/store").unwrap()
}

/// Nix's wire string: length, bytes, zero padding to 8.
fn wire_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
    out.resize(out.len() + (8 - bytes.len() % 8) % 8, 0);
}

fn wire_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// A `ValidPathInfo` (path first) for `nar`, with its true NAR hash and size, claiming
/// `references` and the content address `ca`.
fn path_info(path: &str, references: &[&str], ca: &str, nar: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire_string(&mut out, path.as_bytes());
    wire_string(&mut out, b""); // deriver
    wire_string(
        &mut out,
        Hash::digest(HashAlgo::Sha256, nar).to_base16().as_bytes(),
    );
    wire_u64(&mut out, references.len() as u64);
    for reference in references {
        wire_string(&mut out, reference.as_bytes());
    }
    wire_u64(&mut out, 0); // registration time
    wire_u64(&mut out, nar.len() as u64);
    wire_u64(&mut out, 0); // ultimate
    wire_u64(&mut out, 0); // signatures
    wire_string(&mut out, ca.as_bytes());
    out
}

/// `AddToStoreNar` of `nar` as `path` claiming `references` and `ca` (don't check
/// signatures: ignored for the untrusted): the answer, and whether `path` is valid then.
fn add_nar_claiming(
    client: &mut RawClient,
    path: &str,
    references: &[&str],
    ca: &str,
    nar: &[u8],
) -> (Result<(), String>, bool) {
    client.send_u64(op::ADD_TO_STORE_NAR).unwrap();
    client
        .send_raw(&path_info(path, references, ca, nar))
        .unwrap();
    client.send_u64(0).unwrap(); // repair
    client.send_u64(1).unwrap(); // don't check signatures
    client.send_u64(nar.len() as u64).unwrap();
    client.send_raw(nar).unwrap();
    client.send_u64(0).unwrap(); // end of the framed NAR
    let result = client.recv_result().unwrap();
    let valid = client.is_valid_path(path).unwrap().unwrap();
    (result, valid)
}

/// `AddMultipleToStore` of one path, as [`add_nar_claiming`].
fn add_multiple_claiming(
    client: &mut RawClient,
    path: &str,
    ca: &str,
    nar: &[u8],
) -> (Result<(), String>, bool) {
    let mut stream = Vec::new();
    wire_u64(&mut stream, 1);
    stream.extend_from_slice(&path_info(path, &[], ca, nar));
    stream.extend_from_slice(nar);
    client.send_u64(ADD_MULTIPLE_TO_STORE).unwrap();
    client.send_u64(0).unwrap(); // repair
    client.send_u64(1).unwrap(); // don't check signatures
    client.send_u64(stream.len() as u64).unwrap();
    client.send_raw(&stream).unwrap();
    client.send_u64(0).unwrap(); // end of the framed stream
    let result = client.recv_result().unwrap();
    let valid = client.is_valid_path(path).unwrap().unwrap();
    (result, valid)
}

/// The path (`/nix/store/…-name`) of `fixed:r:sha256` of a file holding `contents`, and
/// that content address.
fn source_path(name: &str, contents: &[u8]) -> (String, String) {
    let hash = Hash::digest(HashAlgo::Sha256, &file_nar(contents, false));
    let path = store_dir()
        .make_source_path(name, &hash, &BTreeSet::new(), false)
        .unwrap();
    (
        store_dir().display(&path),
        format!("fixed:r:sha256:{}", hash.to_base32()),
    )
}

/// `path` with its name replaced by `name` (same hash part).
fn renamed(path: &str, name: &str) -> String {
    let (hash_part, _) = path
        .strip_prefix("/nix/store/")
        .unwrap()
        .split_once('-')
        .unwrap();
    format!("/nix/store/{hash_part}-{name}")
}

// --- Imports and content addresses ---------------------------------------------------------

/// A content address vouches for a path only if it gives that very path: the right
/// content under another name, or under the hash part of other content, is refused,
/// whoever sends it (`LocalStore::check_content_address`; for the untrusted, already
/// `add_nar_checked`).
#[test]
fn an_import_whose_path_does_not_match_its_content_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = b"good\n";
    let nar = file_nar(good, false);
    let (path, ca) = source_path("good", good);
    let (other_path, _) = source_path("good", b"other\n");
    for trusted in [false, true] {
        let root = dir.path().join(format!("trusted-{trusted}"));
        let (mut child, mut client) = stdio_daemon(&root, &dir.path().join("tmp"), trusted);
        for forged in [renamed(&path, "evil"), other_path.clone()] {
            let (result, valid) = add_nar_claiming(&mut client, &forged, &[], &ca, &nar);
            assert!(
                result.is_err() && !valid,
                "trusted {trusted}: {forged} was registered with the content address of {path}: {result:?}"
            );
        }
        // The genuine path still goes in.
        let (result, valid) = add_nar_claiming(&mut client, &path, &[], &ca, &nar);
        assert!(result.is_ok() && valid, "trusted {trusted}: {result:?}");
        drop(client);
        let _ = child.wait();
    }
}

/// `AddMultipleToStore` (what `nix copy` sends) takes the same checks as `AddToStoreNar`:
/// content that does not match its claimed address, or a path that does not match it.
#[test]
fn add_multiple_to_store_with_a_forged_content_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ca) = source_path("good", b"good\n");
    let evil = file_nar(b"evil\n", false);
    let good = file_nar(b"good\n", false);
    let (mut child, mut client) =
        stdio_daemon(&dir.path().join("root"), &dir.path().join("tmp"), false);
    for (forged, nar) in [(path.clone(), &evil), (renamed(&path, "evil"), &good)] {
        let (result, valid) = add_multiple_claiming(&mut client, &forged, &ca, nar);
        assert!(
            result.is_err() && !valid,
            "an untrusted client registered {forged} through AddMultipleToStore: {result:?}"
        );
    }
    let (result, valid) = add_multiple_claiming(&mut client, &path, &ca, &good);
    assert!(result.is_ok() && valid, "{result:?}");
    drop(client);
    let _ = child.wait();
}

/// A text path's hash covers its references, and a text path cannot refer to itself
/// (its hash would have to contain itself): Nix 2.8's `isContentAddressed` computes the
/// text path with the self-reference among the references, which never gives the path,
/// so an untrusted client cannot register it. Arca used to drop the self-reference
/// before computing, and took the path with a reference Nix would refuse.
#[test]
fn a_text_path_claiming_a_self_reference_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = b"a text\n";
    let hash = Hash::digest(HashAlgo::Sha256, text);
    let path = store_dir().display(
        &store_dir()
            .make_text_path("t", &hash, &BTreeSet::new())
            .unwrap(),
    );
    let ca = format!("text:sha256:{}", hash.to_base32());
    let nar = file_nar(text, false);
    let (mut child, mut client) =
        stdio_daemon(&dir.path().join("root"), &dir.path().join("tmp"), false);
    let (result, valid) = add_nar_claiming(&mut client, &path, &[&path], &ca, &nar);
    assert!(
        result.is_err() && !valid,
        "{path} was registered as a text path referring to itself: {result:?}"
    );
    // Without the self-reference it is the genuine text path.
    let (result, valid) = add_nar_claiming(&mut client, &path, &[], &ca, &nar);
    assert!(result.is_ok() && valid, "{result:?}");
    drop(client);
    let _ = child.wait();
}

/// An export archive carries no content address and no signature Arca checks: only a
/// trusted client may import one (Nix: "lacks a signature by a trusted key").
#[test]
fn untrusted_clients_cannot_import_export_archives() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut client) =
        stdio_daemon(&dir.path().join("root"), &dir.path().join("tmp"), false);
    client.send_u64(IMPORT_PATHS).unwrap();
    let result = client.recv_result().unwrap();
    assert!(
        result.as_ref().is_err_and(|m| m.contains("trusted-users")),
        "{result:?}"
    );
    // Refused before anything was pulled: the connection is still in step.
    assert_eq!(
        client.query_all_valid_paths().unwrap(),
        Ok(Vec::<String>::new())
    );
    drop(client);
    let _ = child.wait();
}

// --- BuildDerivation ------------------------------------------------------------------------

/// One output of a `BasicDerivation` as sent: name, path, hash algorithm, base-16 hash.
type WireOutput<'a> = (&'a str, &'a str, &'a str, &'a str);

/// Sends `BuildDerivation` of a basic derivation (`drv_path`, outputs, input sources,
/// `command`: the builder then its arguments, environment) in `mode` (0 normal, 1 repair); reads the answer: `Err` for a refused
/// operation, else the build status and error message.
fn build_derivation(
    client: &mut RawClient,
    drv_path: &str,
    outputs: &[WireOutput<'_>],
    input_srcs: &[&str],
    command: &[&str],
    env: &[(&str, &str)],
    mode: u64,
) -> Result<(u64, String), String> {
    client.send_u64(BUILD_DERIVATION).unwrap();
    client.send_bytes(drv_path.as_bytes()).unwrap();
    client.send_u64(outputs.len() as u64).unwrap();
    for (name, path, algo, hash) in outputs {
        for field in [name, path, algo, hash] {
            client.send_bytes(field.as_bytes()).unwrap();
        }
    }
    client.send_strings(input_srcs).unwrap();
    client.send_bytes(b"x86_64-linux").unwrap();
    client.send_bytes(command[0].as_bytes()).unwrap();
    client.send_strings(&command[1..]).unwrap();
    client.send_u64(env.len() as u64).unwrap();
    for (key, value) in env {
        client.send_bytes(key.as_bytes()).unwrap();
        client.send_bytes(value.as_bytes()).unwrap();
    }
    client.send_u64(mode).unwrap();
    client.recv_result().unwrap()?;
    let status = client.recv_u64().unwrap();
    let message = client.recv_string().unwrap();
    client.recv_u64().unwrap(); // times built
    client.recv_u64().unwrap(); // non-deterministic
    client.recv_u64().unwrap(); // start
    client.recv_u64().unwrap(); // stop
    for _ in 0..client.recv_u64().unwrap() {
        client.recv_string().unwrap();
        client.recv_string().unwrap();
    }
    Ok((status, message))
}

/// The flat sha256 fixed output path of `name` holding `contents`, and that hash in
/// base 16.
fn flat_fixed_output(name: &str, contents: &[u8]) -> (String, String) {
    let hash = Hash::digest(HashAlgo::Sha256, contents);
    let path = store_dir()
        .make_fixed_output_path(
            name,
            ContentAddressMethod::Flat,
            &hash,
            &BTreeSet::new(),
            false,
        )
        .unwrap();
    (store_dir().display(&path), hash.to_base16())
}

/// An untrusted client may not claim input-addressed output paths (nothing it sends
/// proves them), nor put a fixed output anywhere but at the path its hash gives (the
/// server's `read_basic_derivation`; Nix ignores the path sent and recomputes it), nor
/// ask for a repair, which replaces valid paths (refused by `BuildPaths` already; Nix
/// 2.8 does not check it for `BuildDerivation`). Refused before anything is built, so
/// no builder is needed.
#[test]
fn untrusted_build_derivation_is_refused_unless_fixed_output_at_its_own_path() {
    let dir = tempfile::tempdir().unwrap();
    let (victim, _) = source_path("victim", b"a path someone else relies on\n");
    let (fixed, hash) = flat_fixed_output("victim", b"fixed\n");
    let drv = "/nix/store/00000000000000000000000000000000-victim.drv";
    let (mut child, mut client) =
        stdio_daemon(&dir.path().join("root"), &dir.path().join("tmp"), false);

    let input_addressed = build_derivation(
        &mut client,
        drv,
        &[("out", &victim, "", "")],
        &[],
        &["/bin/sh"],
        &[("out", &victim)],
        0,
    );
    assert!(
        input_addressed
            .as_ref()
            .is_err_and(|m| m.contains("input-addressed")),
        "{input_addressed:?}"
    );
    let misplaced = build_derivation(
        &mut client,
        drv,
        &[("out", &victim, "sha256", &hash)],
        &[],
        &["/bin/sh"],
        &[("out", &victim)],
        0,
    );
    assert!(
        misplaced
            .as_ref()
            .is_err_and(|m| m.contains(&format!("but its hash gives '{fixed}'"))),
        "{misplaced:?}"
    );
    let repair = build_derivation(
        &mut client,
        drv,
        &[("out", &fixed, "sha256", &hash)],
        &[],
        &["/bin/sh"],
        &[("out", &fixed)],
        1,
    );
    assert!(
        repair.as_ref().is_err_and(|m| m.contains("trusted-users")),
        "{repair:?}"
    );
    assert_eq!(client.is_valid_path(&victim).unwrap(), Ok(false));
    drop(client);
    let _ = child.wait();
}

/// An untrusted client names the `.drv` path of what it asks to build, but nothing
/// proves that name: Nix 2.8 writes the derivation and builds it under the path its
/// contents give. Arca used to build it under the name sent, so an untrusted client's
/// fixed-output build replaced the stored log of any derivation it named and registered
/// that derivation as its output's deriver.
#[test]
fn untrusted_build_derivation_cannot_take_another_derivations_log_or_deriver() {
    let test = "untrusted_build_derivation_cannot_take_another_derivations_log_or_deriver";
    if !busybox_available(test) {
        return;
    }
    let scratch = Scratch::new();
    let bb = scratch.add_busybox_to_arca();
    let victim =
        scratch.add_derivation(&bb, "victim", "echo victim-log-line; mkdir $out", &[], &[]);
    scratch.arca_build_ok(&[&victim]);
    let log_dir = scratch.arca_root().join("nix/var/log/nix/drvs");
    let victim_path =
        StorePath::from_base_name(victim.strip_prefix("/nix/store/").unwrap()).unwrap();
    let victim_log = || {
        String::from_utf8_lossy(&arca_build::read_log(&log_dir, &victim_path).unwrap()).into_owned()
    };
    assert!(victim_log().contains("victim-log-line"));

    // A fixed output named like the victim (the name comes from the `.drv` path sent).
    let (out, hash) = flat_fixed_output("victim", b"fixed\n");
    let builder = format!("{bb}/busybox");
    let (mut child, mut client) = stdio_daemon(&scratch.arca_root(), &scratch.build_tmp(), false);
    let result = build_derivation(
        &mut client,
        &victim,
        &[("out", &out, "sha256", &hash)],
        &[&bb],
        &[
            &builder,
            "sh",
            "-c",
            "echo attacker-log-line; echo fixed > $out",
        ],
        &[("out", &out), ("PATH", &bb)],
        0,
    );
    drop(client);
    let _ = child.wait();
    assert!(
        matches!(result, Ok((0, _))),
        "the fixed-output build failed: {result:?}"
    );
    let log = victim_log();
    assert!(
        log.contains("victim-log-line") && !log.contains("attacker-log-line"),
        "an untrusted client's build replaced the log of {victim}: {log}"
    );
    let store = LocalStore::open(&scratch.arca_root()).unwrap();
    let out_path = store_dir().parse_path(&out).unwrap();
    let info = arca_store_core::Store::query_path_info(&store, &out_path)
        .unwrap()
        .expect("the fixed output is valid");
    assert_ne!(
        info.deriver.as_ref(),
        Some(&victim_path),
        "an untrusted client made {victim} the deriver of {out}"
    );
}

// --- Garbage collector roots -----------------------------------------------------------------

/// Roots and indirect roots that lead outside the store (to a file, a directory, a
/// path climbing out of the store with `..`) keep nothing alive and are never followed
/// into a deletion: the collector deletes only registered store paths by name
/// (`gc/roots.rs` `StoreLocation::store_path_of`, `find_link_roots`).
#[test]
fn roots_leading_outside_the_store_are_ignored_by_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("file"), "precious\n").unwrap();
    fs::write(outside.join("dir/inner"), "precious too\n").unwrap();
    let source = dir.path().join("source");
    fs::write(&source, "kept\n").unwrap();
    let dead_source = dir.path().join("dead");
    fs::write(&dead_source, "dead\n").unwrap();

    let (kept, dead) = {
        let store = LocalStore::open(&root).unwrap();
        let kept = store.add_path(&source, "kept").unwrap();
        let dead = store.add_path(&dead_source, "dead").unwrap();
        let links = dir.path().join("links");
        fs::create_dir_all(&links).unwrap();
        // Indirect roots: a link to a file, a directory, a climb out of the store, and
        // one genuine root.
        let physical = store.physical_store().to_owned();
        for (name, target) in [
            ("to-file", outside.join("file")),
            ("to-dir", outside.join("dir")),
            (
                "climbing",
                physical.join("..").join("..").join("..").join("outside"),
            ),
            ("dotdot", physical.join("..")),
        ] {
            symlink(&target, links.join(name)).unwrap();
            store.add_indirect_root(&links.join(name)).unwrap();
        }
        symlink(store.physical_path(&kept), links.join("result")).unwrap();
        store.add_indirect_root(&links.join("result")).unwrap();
        // Direct roots in gcroots pointing outside.
        let gcroots = store.state_dir().join("gcroots");
        symlink(outside.join("dir"), gcroots.join("direct-dir")).unwrap();
        symlink("/", gcroots.join("slash")).unwrap();
        (kept, dead)
    };

    let store = LocalStore::open(&root).unwrap();
    let roots = store.find_roots(false).unwrap();
    assert!(
        roots.iter().all(|r| r.path == kept),
        "a root outside the store was taken for a store path: {roots:?}"
    );
    let options = GcOptions {
        action: GcAction::DeleteDead,
        runtime_roots: false,
        ..GcOptions::default()
    };
    let report = store.collect_garbage(&options, &|_| {}).unwrap();
    assert_eq!(report.paths, [store_dir().display(&dead)]);
    assert!(arca_store_core::Store::is_valid_path(&store, &kept).unwrap());
    assert_eq!(
        fs::read_to_string(outside.join("file")).unwrap(),
        "precious\n"
    );
    assert_eq!(
        fs::read_to_string(outside.join("dir/inner")).unwrap(),
        "precious too\n"
    );
}

// --- Logs -----------------------------------------------------------------------------------

/// A log is looked up by a parsed store path (`StorePath` has no `/` and no `..`), so
/// `../../etc/passwd` and friends end the request, reading (anyone) or writing (trusted
/// clients only), and nothing outside the log directory is read or written
/// (`builder/src/log.rs` `log_path`, the server's `read_path` and `AddBuildLog`).
#[test]
fn log_requests_for_crafted_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let crafted = [
        "../../etc/passwd",
        "/nix/store/../../etc/passwd",
        "/nix/store/00000000000000000000000000000000-x/../../../etc/passwd",
        "/etc/passwd",
    ];
    for path in crafted {
        let (mut child, mut client) = stdio_daemon(&root, &dir.path().join("tmp"), false);
        client.send_u64(ARCA_READ_LOG).unwrap();
        client.send_bytes(path.as_bytes()).unwrap();
        let reply = client.recv_until_closed().unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&reply).contains("root:"),
            "ReadLog {path} answered with /etc/passwd"
        );
        let _ = child.wait();
    }

    let target = dir.path().join("written-outside");
    let climbing = format!("../../../../../../../..{}", target.display());
    for path in [
        climbing.as_str(),
        "00000000000000000000000000000000-x/../../y",
    ] {
        let (mut child, mut client) = stdio_daemon(&root, &dir.path().join("tmp"), true);
        client.send_u64(ADD_BUILD_LOG).unwrap();
        client.send_bytes(path.as_bytes()).unwrap();
        client.send_u64(4).unwrap();
        client.send_raw(b"pwn\n\0\0\0\0").unwrap();
        client.send_u64(0).unwrap();
        let _ = client.recv_until_closed();
        let _ = child.wait();
    }
    assert!(!target.exists(), "AddBuildLog wrote {}", target.display());
    let mut written = Vec::new();
    let mut pending = vec![dir.path().to_owned()];
    while let Some(path) = pending.pop() {
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            pending.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "bz2") {
            written.push(path);
        }
    }
    assert!(written.is_empty(), "logs were written: {written:?}");
}

// --- Symlinks in outputs --------------------------------------------------------------------

/// A builder's symlinks to host files (an output that is one, and one inside an output
/// directory) are stored as symlinks: registering the output reads nothing through them
/// (NAR dump) and changes nothing behind them (`canonicalise` acts on the link itself:
/// `lchown`, no `chmod`, `utimensat` without following).
#[test]
fn symlinks_in_build_outputs_leave_their_targets_untouched() {
    let test = "symlinks_in_build_outputs_leave_their_targets_untouched";
    if !busybox_available(test) {
        return;
    }
    let scratch = Scratch::new();
    let host = scratch.path().join("host-secret");
    fs::write(&host, "secret\n").unwrap();
    fs::set_permissions(&host, fs::Permissions::from_mode(0o600)).unwrap();
    let before = fs::metadata(&host).unwrap();
    let bb = scratch.add_busybox_to_arca();
    let target = host.to_str().unwrap();
    let as_link = scratch.add_derivation(&bb, "as-link", &format!("ln -s {target} $out"), &[], &[]);
    let inside = scratch.add_derivation(
        &bb,
        "inside",
        &format!("mkdir $out; ln -s {target} $out/link; ln -s / $out/slash"),
        &[],
        &[],
    );
    let outputs = scratch.arca_build_ok(&[&as_link, &inside]);
    assert_eq!(outputs.len(), 2);

    let link = scratch.arca_physical(&scratch.arca_output(&as_link));
    let dir = scratch.arca_physical(&scratch.arca_output(&inside));
    for path in [link.clone(), dir.join("link"), dir.join("slash")] {
        assert!(
            fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{} is not a symlink",
            path.display()
        );
    }
    assert_eq!(fs::read_link(&link).unwrap(), host);
    let after = fs::metadata(&host).unwrap();
    assert_eq!(after.mode() & 0o7777, 0o600, "the host file's mode changed");
    assert_eq!(
        (after.uid(), after.gid(), after.mtime(), after.mtime_nsec()),
        (
            before.uid(),
            before.gid(),
            before.mtime(),
            before.mtime_nsec()
        ),
        "the host file's owner or time changed"
    );
    assert_eq!(fs::read_to_string(&host).unwrap(), "secret\n");
    let root = fs::metadata("/").unwrap();
    assert_ne!(root.mtime(), 1, "/ got the store's time");
}
