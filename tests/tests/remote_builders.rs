//! Arca as a remote builder and an ssh store for real Nix 2.8, through a real OpenSSH
//! server on a loopback port (issue #17, builder side):
//!
//! - `nix-store --realise --max-jobs 0 --builders 'ssh://root@localhost?remote-program=ARCA…'`
//!   builds a derivation graph on an Arca machine: `arca --serve --write` speaks Nix's
//!   serve protocol. The same over `ssh-ng://`, where `arca --stdio` is the worker
//!   protocol's remote program, trusted as `nix-daemon --stdio` is. Outputs, NAR
//!   hashes, sizes and references equal a local Nix build's; the builder's log reaches
//!   the client's log store; the outputs are valid (and verify) on the builder too.
//! - A build that fails on the builder fails the client's with Nix's message.
//! - `arca serve` answers the same requests with the same bytes as
//!   `nix-store --serve`, refuses writes without `--write` in Nix's words, and ends a
//!   connection whose requests cannot be decoded without harm to the store.
//!
//! Needs root (sshd logs in as root), OpenSSH's server, real Nix and a static busybox;
//! skipped loudly without them (an error in CI).

use std::io::Write;
use std::process::{Command, Output, Stdio};

use arca_tests::build::{busybox_available, Scratch};
use arca_tests::ssh::{arca_machine_uri, essentials, remote_tools_available, Sshd};
use arca_tests::store::{assert_arca_verify_clean, lines};
use arca_tests::{arca_bin, nix_available, NIX_CONFIG};

/// The attributes of `graphs.nix` built remotely: a chain with a builder that talks
/// (`chatty`), a diamond, and two outputs.
const ATTRS: &[&str] = &["chatty", "top", "multi"];

/// `nix-store --store NIX_ROOT --realise DRVS --max-jobs 0 --builders BUILDERS` with
/// `NIX_SSHOPTS` reaching `sshd`.
fn realise_remotely(client: &Scratch, sshd: &Sshd, builders: &str, drvs: &[String]) -> Output {
    Command::new("nix-store")
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("NIX_SSHOPTS", sshd.ssh_opts())
        .arg("--store")
        .arg(client.nix_uri())
        .args(["--realise", "--max-jobs", "0", "--builders", builders])
        .args(drvs)
        .stdin(Stdio::null())
        .output()
        .expect("nix-store can be spawned")
}

#[test]
fn nix_builds_a_graph_on_an_arca_builder_over_ssh_and_ssh_ng() {
    let test = "nix_builds_a_graph_on_an_arca_builder_over_ssh_and_ssh_ng";
    if !remote_tools_available(test) {
        return;
    }
    // The reference: Nix building the same derivations locally.
    let reference = Scratch::new();
    let drvs = reference.instantiate("graphs.nix", &[], ATTRS);
    let drv_args: Vec<&str> = drvs.iter().map(String::as_str).collect();
    let expected_outputs = reference.nix_realise(&drv_args);
    let closure = lines(
        &reference.nix_store(
            &[
                &["--query", "--requisites"][..],
                &expected_outputs
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            ]
            .concat(),
        ),
    );
    let closure_args: Vec<&str> = closure.iter().map(String::as_str).collect();
    let expected = essentials(&reference.nix_path_info(&closure_args));

    let ssh_dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(ssh_dir.path());
    for scheme in ["ssh", "ssh-ng"] {
        let client = Scratch::new();
        let builder = Scratch::new();
        assert_eq!(client.instantiate("graphs.nix", &[], ATTRS), drvs);
        let output = realise_remotely(
            &client,
            &sshd,
            &format!("{} x86_64-linux - 2", arca_machine_uri(scheme, &builder)),
            &drvs,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{scheme}: nix-store --realise on an Arca builder failed: {stderr}\nsshd: {}",
            sshd.log()
        );
        assert_eq!(
            lines(&output.stdout),
            expected_outputs,
            "{scheme}: {stderr}"
        );
        // Everything was built there: the client only copied.
        assert!(
            stderr.contains(&format!("on '{scheme}://root@localhost")),
            "{scheme}: nothing was built remotely: {stderr}"
        );
        let got = essentials(&client.nix_path_info(&closure_args));
        assert_eq!(
            got, expected,
            "{scheme}: the client's outputs differ from a local build"
        );
        // The builder's log reached the client's log store.
        let chatty = &drvs[0];
        let log = client.nix_store(&["--read-log", chatty]);
        assert!(
            String::from_utf8_lossy(&log).contains("chatty builds on /nix/store/"),
            "{scheme}: the log of {chatty} on the client: {}",
            String::from_utf8_lossy(&log)
        );
        // The builder has them too, valid and intact.
        let on_builder = builder.arca_path_info(
            &expected_outputs
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert_eq!(on_builder.len(), expected_outputs.len(), "{scheme}");
        for (path, info) in essentials(&on_builder) {
            assert_eq!(info, expected[&path], "{scheme}: {path} on the builder");
        }
        assert_arca_verify_clean(&builder.arca_root(), scheme);
    }
}

#[test]
fn a_build_failing_on_an_arca_builder_fails_the_nix_client() {
    let test = "a_build_failing_on_an_arca_builder_fails_the_nix_client";
    if !remote_tools_available(test) {
        return;
    }
    let ssh_dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(ssh_dir.path());
    for scheme in ["ssh", "ssh-ng"] {
        let client = Scratch::new();
        let builder = Scratch::new();
        let drvs = client.instantiate("graphs.nix", &[], &["fodWrong"]);
        let output = realise_remotely(
            &client,
            &sshd,
            &format!("{} x86_64-linux - 2", arca_machine_uri(scheme, &builder)),
            &drvs,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{scheme}: {stderr}");
        assert!(
            stderr.contains("hash mismatch in fixed-output derivation"),
            "{scheme}: the builder's reason is lost: {stderr}"
        );
        if scheme == "ssh" {
            // Nix's build hook's words around the builder's message.
            assert!(
                stderr.contains(&format!("build of '{}' on 'ssh://root@localhost?", drvs[0])),
                "{stderr}"
            );
        }
    }
}

// --- The serve protocol, byte for byte beside `nix-store --serve` -------------------

fn u64_bytes(value: u64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

fn string_bytes(text: &str) -> Vec<u8> {
    let mut bytes = u64_bytes(text.len() as u64);
    bytes.extend_from_slice(text.as_bytes());
    bytes.resize(bytes.len() + (8 - text.len() % 8) % 8, 0);
    bytes
}

fn strings_bytes(texts: &[&str]) -> Vec<u8> {
    let mut bytes = u64_bytes(texts.len() as u64);
    for text in texts {
        bytes.extend(string_bytes(text));
    }
    bytes
}

/// Runs `command` with `request` on its stdin (closed after it): its output.
fn converse(command: &mut Command, request: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the server can be spawned");
    let mut stdin = child.stdin.take().unwrap();
    let request = request.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&request);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

fn nix_serve(scratch: &Scratch, write: bool) -> Command {
    let mut command = Command::new("nix-store");
    command
        .env("NIX_CONFIG", NIX_CONFIG)
        .arg("--store")
        .arg(scratch.nix_uri())
        .arg("--serve");
    if write {
        command.arg("--write");
    }
    command
}

/// `arca --serve [--write] --store ROOT`, as Nix's `ssh://` store runs it.
fn arca_serve(scratch: &Scratch, write: bool) -> Command {
    let mut command = Command::new(arca_bin());
    command.env("TMPDIR", scratch.build_tmp()).arg("--serve");
    if write {
        command.arg("--write");
    }
    command.arg("--store").arg(scratch.arca_root());
    command
}

#[test]
fn arca_serve_answers_as_nix_store_serve_does() {
    let test = "arca_serve_answers_as_nix_store_serve_does";
    if !(nix_available(test) && busybox_available(test)) {
        return;
    }
    // The same paths in both stores, with the same metadata: the closure of a
    // derivation (text and source paths, with references) imported from one export
    // archive, and a tree each adds itself (a content address).
    let scratch = Scratch::new();
    let drvs = scratch.instantiate_for_both("graphs.nix", &[], &["chatty"]);
    let mut closure = lines(&scratch.nix_store(&["--query", "--requisites", &drvs[0]]));
    let nix = Scratch::new();
    let export = scratch.nix_store(
        &[
            &["--export"][..],
            &closure.iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat(),
    );
    let imported = arca_tests::nix(
        "nix-store",
        &arca_tests::daemon::os_args(&["--store", &nix.nix_uri(), "--import"]),
        Some(&export),
    );
    assert_eq!(lines(&imported).len(), closure.len());
    let tree = scratch.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("file"), "added by each\n").unwrap();
    let tree = tree.to_str().unwrap();
    let added = lines(&nix.nix_store(&["--add", tree]));
    assert_eq!(lines(&scratch.arca_ok(&["store", "add-path", tree])), added);
    closure.extend(added);
    let all: Vec<&str> = closure.iter().map(String::as_str).collect();
    let absent = "/nix/store/00000000000000000000000000000000-absent";

    let mut request = u64_bytes(0x390c_9deb);
    request.extend(u64_bytes(0x207));
    // QueryValidPaths, lock and substitute (ignored without --write).
    request.extend(u64_bytes(1));
    request.extend(u64_bytes(1));
    request.extend(u64_bytes(0));
    request.extend(strings_bytes(&[&all[..], &[absent]].concat()));
    // QueryPathInfos, an absent path among them.
    request.extend(u64_bytes(2));
    request.extend(strings_bytes(&[&[absent], &all[..]].concat()));
    // QueryClosure of the .drv, without and with outputs.
    for include_outputs in [0, 1] {
        request.extend(u64_bytes(7));
        request.extend(u64_bytes(include_outputs));
        request.extend(strings_bytes(&[&drvs[0]]));
    }
    // DumpStorePath of each path.
    for path in &all {
        request.extend(u64_bytes(3));
        request.extend(string_bytes(path));
    }
    // ExportPaths of all.
    request.extend(u64_bytes(5));
    request.extend(u64_bytes(0));
    request.extend(strings_bytes(&all));

    for write in [false, true] {
        let theirs = converse(&mut nix_serve(&nix, write), &request);
        let ours = converse(&mut arca_serve(&scratch, write), &request);
        assert!(
            theirs.status.success(),
            "nix-store --serve: {}",
            String::from_utf8_lossy(&theirs.stderr)
        );
        assert!(
            ours.status.success(),
            "arca --serve: {}",
            String::from_utf8_lossy(&ours.stderr)
        );
        assert!(theirs.stdout.len() > 1000, "Nix said too little");
        assert!(
            ours.stdout == theirs.stdout,
            "write={write}: the replies differ from {} bytes on ({} vs {} bytes)",
            ours.stdout
                .iter()
                .zip(&theirs.stdout)
                .position(|(a, b)| a != b)
                .unwrap_or(ours.stdout.len().min(theirs.stdout.len())),
            ours.stdout.len(),
            theirs.stdout.len()
        );
    }
}

/// `AddToStoreNar` of a small file NAR under `path`.
fn add_to_store_nar(path: &str) -> Vec<u8> {
    let nar = arca_tests::daemon::file_nar(b"sent over ssh\n", false);
    let hash = arca_store_core::Hash::digest(arca_store_core::HashAlgo::Sha256, &nar);
    let mut request = u64_bytes(9);
    request.extend(string_bytes(path));
    request.extend(string_bytes("")); // deriver
    request.extend(string_bytes(&hash.to_base16()));
    request.extend(strings_bytes(&[])); // references
    request.extend(u64_bytes(0)); // registration time
    request.extend(u64_bytes(nar.len() as u64));
    request.extend(u64_bytes(0)); // ultimate
    request.extend(strings_bytes(&[])); // signatures
    request.extend(string_bytes("")); // content address
    request.extend(nar);
    request
}

#[test]
fn arca_serve_writes_only_with_write_and_survives_garbage() {
    let test = "arca_serve_writes_only_with_write_and_survives_garbage";
    if !nix_available(test) {
        return;
    }
    let scratch = Scratch::new();
    let path = "/nix/store/11111111111111111111111111111111-sent";
    let mut hello = u64_bytes(0x390c_9deb);
    hello.extend(u64_bytes(0x207));
    let request = [hello.clone(), add_to_store_nar(path)].concat();

    // Without --write: refused in Nix's words, by both, and nothing added.
    for (name, mut command) in [
        ("nix-store", nix_serve(&scratch, false)),
        ("arca", arca_serve(&scratch, false)),
    ] {
        let output = converse(&mut command, &request);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains("importing paths is not allowed"),
            "{name}: {stderr}"
        );
    }
    assert!(!scratch.arca_registered(path));

    // With --write: added, unsigned (the stream is trusted), and acknowledged with 1.
    let output = converse(&mut arca_serve(&scratch, true), &request);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout[16..], u64_bytes(1)[..]);
    assert!(scratch.arca_registered(path));

    // Garbage ends the connection with an error; the store is untouched and serves the
    // next connection.
    for garbage in [
        [hello.clone(), u64_bytes(77)].concat(),
        [hello.clone(), u64_bytes(2), u64_bytes(u64::MAX)].concat(),
        [hello.clone(), u64_bytes(3), string_bytes("/etc/passwd")].concat(),
        [u64_bytes(0x6e69_7863), u64_bytes(0x207)].concat(),
    ] {
        let output = converse(&mut arca_serve(&scratch, true), &garbage);
        assert!(!output.status.success());
        assert!(
            String::from_utf8_lossy(&output.stderr).starts_with("error: "),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_arca_verify_clean(&scratch.arca_root(), "after garbage");
    assert!(scratch.arca_registered(path));
}
