//! `arca build` beside real Nix 2.8: the same `.drv` files (instantiated by Nix from
//! `tests/oracle/builds/*.nix` into a chroot store, then exported into an Arca store) are
//! built by `arca build --max-jobs 2` and by `nix-store --realise --option sandbox true`,
//! and must give
//!
//! - the same output paths, NAR hashes and sizes, references (to inputs and to
//!   themselves), derivers and content addresses: chains, diamonds, a fan-out of 20,
//!   multiple outputs, fixed outputs (flat and recursive, sha1/sha256/sha512);
//! - byte-identical dumps of what a builder sees (environment, `/`, `/dev`, `/etc`, ids,
//!   host name, limits, capabilities), and the same refusals of every way out of the
//!   sandbox (host files, undeclared store paths, network);
//!
//! and a fixed output with a wrong hash fails with Nix's message and leaves nothing,
//! and two `arca build` processes on one store build each derivation once.
//!
//! Needs real Nix and a static busybox; skipped loudly without them (an error in CI).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Stdio};

use arca_store_core::{Hash, HashAlgo};
use arca_tests::build::{busybox_available, line_diff, NixArg, Scratch};
use arca_tests::nix_available;
use arca_tests::store::{assert_arca_verify_clean, lines, staging_leftovers};
use serde_json::Value;

/// Whether real Nix and busybox are both there (skips loudly otherwise).
fn tools_available(test: &str) -> bool {
    nix_available(test) && busybox_available(test)
}

/// The valid paths of the Arca store that are not `.drv` files, sorted.
fn arca_non_drv_paths(scratch: &Scratch) -> Vec<String> {
    let db = arca_tests::store::registry_db(&scratch.arca_root());
    arca_tests::store::sql(&db, "select path from ValidPaths order by path")
        .into_iter()
        .filter(|p| !p.ends_with(".drv"))
        .collect()
}

/// A path-info object without what legitimately differs between two stores (the
/// registration time).
fn comparable(mut info: Value) -> Value {
    info.as_object_mut()
        .expect("path-info entries are objects")
        .remove("registrationTime");
    info
}

/// Builds `drvs` with Arca (`--max-jobs 2`) and with Nix, and checks that both print
/// the same output paths and register the same paths with the same NAR hashes, sizes,
/// references, derivers and content addresses. Returns the output paths.
fn assert_builds_like_nix(scratch: &Scratch, drvs: &[String]) -> Vec<String> {
    let drv_args: Vec<&str> = drvs.iter().map(String::as_str).collect();
    let ours = scratch.arca_build_ok(&[&["--max-jobs", "2"][..], &drv_args].concat());
    let theirs = scratch.nix_realise(&drv_args);
    assert_eq!(
        ours.iter().collect::<BTreeSet<_>>(),
        theirs.iter().collect::<BTreeSet<_>>(),
        "arca build (left) and nix-store --realise (right) print different output paths"
    );

    // Every output built on the way (what Arca holds besides the imported `.drv` closure;
    // imported sources are left out: a Nix export does not carry their content address)
    // must be registered by both with the same metadata.
    let sources: BTreeSet<String> =
        lines(&scratch.arca_ok(&[&["store", "query", "--requisites"][..], &drv_args].concat()))
            .into_iter()
            .collect();
    let paths: Vec<String> = arca_non_drv_paths(scratch)
        .into_iter()
        .filter(|p| !sources.contains(p))
        .collect();
    let path_args: Vec<&str> = paths.iter().map(String::as_str).collect();
    for output in &ours {
        assert!(paths.contains(output), "{output} is not registered in Arca");
    }
    let arca_info: BTreeMap<String, Value> = scratch
        .arca_path_info(&path_args)
        .into_iter()
        .map(|info| (info["path"].as_str().unwrap().to_owned(), comparable(info)))
        .collect();
    let nix_info: BTreeMap<String, Value> = scratch
        .nix_path_info(&path_args)
        .into_iter()
        .map(|info| (info["path"].as_str().unwrap().to_owned(), comparable(info)))
        .collect();
    let mut differences = Vec::new();
    for path in &paths {
        let (a, n) = (&arca_info[path], nix_info.get(path));
        if Some(a) != n {
            differences.push(format!("{path}:\n  arca: {a}\n  nix:  {n:?}"));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} paths differ between Arca and Nix:\n{}",
        differences.len(),
        paths.len(),
        differences.join("\n")
    );
    // Each built output's files, byte for byte (the NAR hash says so too; this names
    // the file when it does not).
    for output in &ours {
        let (a, n) = (scratch.arca_physical(output), scratch.nix_physical(output));
        if a.is_file() {
            assert_eq!(
                std::fs::read(&a).unwrap(),
                std::fs::read(&n).unwrap(),
                "{output} differs"
            );
        }
    }
    assert_arca_verify_clean(&scratch.arca_root(), "after building");
    ours
}

#[test]
fn chain_diamond_and_fan_out_build_as_in_nix() {
    if !tools_available("chain_diamond_and_fan_out_build_as_in_nix") {
        return;
    }
    let scratch = Scratch::new();
    let drvs = scratch.instantiate_for_both("graphs.nix", &[], &["chain5", "top", "fanout"]);
    let outputs = assert_builds_like_nix(&scratch, &drvs);
    assert_eq!(outputs.len(), 3);
    let built = arca_non_drv_paths(&scratch);
    // bb + 5 links + 4 diamond nodes + 20 leaves + the root.
    assert_eq!(
        built.len(),
        1 + 5 + 4 + 21,
        "every node was built: {built:?}"
    );

    // References through the graph, as scanned: each link copies the text of the one
    // below, so the top of the chain names all four links below; the diamond top refers
    // to both sides; the fan-out root to its 20 leaves.
    let info = scratch.arca_path_info(&outputs.iter().map(String::as_str).collect::<Vec<_>>());
    let references = |suffix: &str| -> usize {
        let entry = info
            .iter()
            .find(|i| i["path"].as_str().unwrap().ends_with(suffix))
            .unwrap();
        entry["references"].as_array().unwrap().len()
    };
    assert_eq!(
        (
            references("-chain-5"),
            references("-diamond-top"),
            references("-fanout-root")
        ),
        (4, 2, 20),
        "{info:?}"
    );
}

/// `arca build` prints what `nix-store --realise` prints, in the same order: per
/// target, in target order (Nix 2.8 sorts a derivation's outputs by path).
#[test]
fn output_paths_print_in_nix_realise_order() {
    if !tools_available("output_paths_print_in_nix_realise_order") {
        return;
    }
    let scratch = Scratch::new();
    let drvs = scratch.instantiate_for_both("graphs.nix", &[], &["selfref", "multi", "fodFlat"]);
    let drv_args: Vec<&str> = drvs.iter().map(String::as_str).collect();
    let ours = scratch.arca_build_ok(&drv_args);
    let theirs = scratch.nix_realise(&drv_args);
    assert_eq!(
        ours, theirs,
        "arca build (left) prints the output paths otherwise than nix-store --realise (right)"
    );
}

#[test]
fn multiple_outputs_and_self_references_build_as_in_nix() {
    if !tools_available("multiple_outputs_and_self_references_build_as_in_nix") {
        return;
    }
    let scratch = Scratch::new();
    let drvs = scratch.instantiate_for_both("graphs.nix", &[], &["multi", "selfref"]);
    let outputs = assert_builds_like_nix(&scratch, &drvs);
    let info = scratch.arca_path_info(&outputs.iter().map(String::as_str).collect::<Vec<_>>());
    let by_name: BTreeMap<&str, &Value> = info
        .iter()
        .map(|i| (i["path"].as_str().unwrap(), i))
        .collect();
    let dev = outputs.iter().find(|p| p.ends_with("-multi-dev")).unwrap();
    let out = outputs.iter().find(|p| p.ends_with("-multi")).unwrap();
    let selfref = outputs.iter().find(|p| p.ends_with("-self-ref")).unwrap();
    let refs = |path: &str| -> Vec<String> {
        by_name[path]["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        refs(dev).contains(out),
        "dev refers to out: {:?}",
        refs(dev)
    );
    assert!(refs(selfref).contains(selfref), "self-ref refers to itself");
    assert_eq!(
        by_name[dev.as_str()]["deriver"],
        by_name[out.as_str()]["deriver"]
    );
}

#[test]
fn fixed_outputs_flat_and_recursive_build_as_in_nix() {
    if !tools_available("fixed_outputs_flat_and_recursive_build_as_in_nix") {
        return;
    }
    let scratch = Scratch::new();
    let attrs = [
        "fodFlat",
        "fodFlatSha1",
        "fodRecursive",
        "fodRecursiveSha512",
        "fodUser",
    ];
    let drvs = scratch.instantiate_for_both("graphs.nix", &[], &attrs);
    let outputs = assert_builds_like_nix(&scratch, &drvs);
    let info = scratch.arca_path_info(&outputs.iter().map(String::as_str).collect::<Vec<_>>());
    let cas: BTreeSet<&str> = info.iter().filter_map(|i| i["ca"].as_str()).collect();
    assert_eq!(
        cas.len(),
        4,
        "each fixed output is registered with its content address: {info:?}"
    );
    assert!(
        cas.iter().any(|ca| ca.starts_with("fixed:r:sha512:")),
        "{cas:?}"
    );
    assert!(
        cas.iter().any(|ca| ca.starts_with("fixed:sha1:")),
        "{cas:?}"
    );
}

/// What a builder sees, dumped by a deterministic builder (`sandbox.nix`,
/// `environment`): Arca's dump must be byte-identical to Nix's, so the outputs have the
/// same NAR hash. The dump holds the sorted environment, the names in `/`, `/dev`,
/// `/tmp`, `/build`, `/nix/store` and `/etc`, `/etc/passwd`, `/etc/group`, `/etc/hosts`,
/// `id`, the host and domain names, the working directory, umask, `ulimit -a`, and the
/// ids, capability sets, no_new_privs and seccomp mode of `/proc/self/status`.
///
/// Known differences, deliberately left out of the dump (seen on Nix 2.8 here):
/// - owners and modes: Nix's `/` is 0750 nobody:nixbld, `/nix/store` 1775, its dirs are
///   owned by nobody (65534); Arca's are owned by the build user (1000:100), 0755, and
///   `/etc/passwd` is 0444 (Nix: 0644);
/// - `CapBnd`: Nix leaves the bounding set full, Arca empties it;
/// - `Seccomp_filters`: Nix installs 1 filter, Arca 2;
/// - sizes, link counts and times in `ls -l`, and the mount table (different sources).
#[test]
fn sandbox_environment_is_identical_to_nix() {
    if !tools_available("sandbox_environment_is_identical_to_nix") {
        return;
    }
    let scratch = Scratch::new();
    let drvs = scratch.instantiate_for_both("sandbox.nix", &[], &["environment"]);
    let ours = scratch.arca_build_ok(&[drvs[0].as_str()]);
    let theirs = scratch.nix_realise(&[drvs[0].as_str()]);
    assert_eq!(ours, theirs, "the same output path");
    let out = &ours[0];
    let arca_dump = std::fs::read_to_string(scratch.arca_physical(out)).unwrap();
    let nix_dump = std::fs::read_to_string(scratch.nix_physical(out)).unwrap();
    // The dump really ran to its end and shows Nix's sandbox user.
    for expected in [
        "uid=1000(nixbld) gid=100(nixbld)",
        "NIX_BUILD_TOP=/build",
        "== end",
    ] {
        assert!(nix_dump.contains(expected), "Nix's dump lacks {expected:?}");
    }
    assert!(
        arca_dump == nix_dump,
        "what a builder sees differs between Arca and Nix:\n{}",
        line_diff("arca", &arca_dump, "nix", &nix_dump)
    );
    let arca_info = comparable(scratch.arca_path_info(&[out]).remove(0));
    let nix_info = comparable(scratch.nix_path_info(&[out]).remove(0));
    assert_eq!(arca_info, nix_info, "path-info of the dump");
}

/// An IPv4 address of this host other than loopback (the source address of a route
/// out), if it has one.
fn host_ip() -> Option<String> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

/// A builder (`sandbox.nix`, `purity`) tries to read `/etc/shadow`, a host file, `/root`
/// and a store path that is valid but not an input; to connect to a listener of this
/// test on 127.0.0.1 and on the host's address, and to the internet; to write `/etc` and
/// an input. Everything must be denied (and controls allowed), the listener must see no
/// connection, and Arca's output must equal Nix's byte for byte.
#[test]
fn sandbox_denies_host_files_undeclared_paths_and_network_as_nix_does() {
    if !tools_available("sandbox_denies_host_files_undeclared_paths_and_network_as_nix_does") {
        return;
    }
    let scratch = Scratch::new();
    let host_file = scratch.path().join("host-secret");
    std::fs::write(&host_file, "host secret\n").unwrap();
    std::fs::set_permissions(
        &host_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let undeclared_dir = scratch.path().join("undeclared");
    std::fs::create_dir(&undeclared_dir).unwrap();
    std::fs::write(undeclared_dir.join("secret"), "undeclared secret\n").unwrap();

    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let ip = host_ip();
    if ip.is_none() {
        eprintln!("note: this host has no non-loopback IPv4 address; host-listener not tried");
    }
    // Control: the builder's very command does reach the listener from outside (it
    // returns once this side closes the connection).
    let control = Command::new(arca_tests::build::busybox())
        .args(["nc", "-w", "2", "127.0.0.1", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(listener.accept().expect("the control connection arrives"));
    let status = control.wait_with_output().unwrap().status;
    assert!(
        status.success(),
        "busybox nc reaches the listener from the host: {status}"
    );
    listener.set_nonblocking(true).unwrap();

    let args = [
        NixArg::Str("hostFile", host_file.to_str().unwrap().to_owned()),
        NixArg::Str("port", port.clone()),
        NixArg::Str("hostIp", ip.clone().unwrap_or_default()),
        NixArg::Expr("undeclaredDir", undeclared_dir.to_str().unwrap().to_owned()),
    ];
    let drvs = scratch.instantiate_for_both("sandbox.nix", &args, &["purity"]);
    // The undeclared path: valid in both stores (Nix added it while evaluating), at the
    // same path, but not an input of the derivation.
    let undeclared =
        lines(&scratch.arca_ok(&["store", "add-path", undeclared_dir.to_str().unwrap()])).remove(0);
    scratch.nix_store(&["--check-validity", &undeclared]);
    let drv_json = String::from_utf8(scratch.arca_ok(&["derivation", "show", &drvs[0]])).unwrap();
    assert!(
        drv_json.contains(&undeclared),
        "the builder names {undeclared}"
    );
    assert!(
        !scratch
            .nix_store(&["-qR", &drvs[0]])
            .windows(undeclared.len())
            .any(|w| w == undeclared.as_bytes()),
        "{undeclared} must not be an input"
    );

    let ours = scratch.arca_build_ok(&[drvs[0].as_str()]);
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("a builder under Arca reached the host listener: {other:?}"),
    }
    let theirs = scratch.nix_realise(&[drvs[0].as_str()]);
    assert_eq!(ours, theirs);
    let out = &ours[0];
    let arca_report = std::fs::read_to_string(scratch.arca_physical(out)).unwrap();
    let nix_report = std::fs::read_to_string(scratch.nix_physical(out)).unwrap();
    for check in [
        "control-read-input: ALLOWED",
        "control-read-etc: ALLOWED",
        "control-write-build: ALLOWED",
        "host-shadow: denied",
        "host-file: denied",
        "host-root: denied",
        "undeclared-file: denied",
        "undeclared-dir: denied",
        "loopback-listener: denied",
        "host-listener: denied",
        "internet: denied",
        "write-etc: denied",
        "write-input: denied",
        "nixbld:x:1000:100:Nix build user:/build:/noshell",
    ] {
        assert!(
            arca_report.lines().any(|l| l == check),
            "under Arca, expected {check:?} in:\n{arca_report}"
        );
    }
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if let Some(first) = host_passwd.lines().next() {
        if first != "root:x:0:0:Nix build user:/build:/noshell" {
            assert!(
                !arca_report.contains(first),
                "the host's /etc/passwd is visible"
            );
        }
    }
    assert!(
        arca_report == nix_report,
        "the purity report differs between Arca and Nix:\n{}",
        line_diff("arca", &arca_report, "nix", &nix_report)
    );
}

/// A fixed output with another hash than declared: the build fails with Nix's message
/// (naming the derivation and both hashes), the declared path stays invalid, and what was
/// built is registered under the path of the hash it has, as Nix 2.8 does (Nix's own
/// store gets the same path).
#[test]
fn fixed_output_with_wrong_hash_fails_and_registers_the_path_of_its_actual_hash() {
    if !tools_available(
        "fixed_output_with_wrong_hash_fails_and_registers_the_path_of_its_actual_hash",
    ) {
        return;
    }
    let scratch = Scratch::new();
    let drvs = scratch.instantiate_for_both("graphs.nix", &[], &["fodWrong"]);
    let out = scratch.arca_output(&drvs[0]);
    let stderr = scratch.arca_build_fails(&[drvs[0].as_str()]);
    let specified = Hash::digest(HashAlgo::Sha256, b"wrong").to_sri();
    let got = Hash::digest(HashAlgo::Sha256, b"hi");
    assert!(
        stderr.contains(&format!(
            "hash mismatch in fixed-output derivation '{}'",
            drvs[0]
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("specified: {specified}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("got:    {}", got.to_sri())),
        "{stderr}"
    );
    scratch.assert_nothing_left(&drvs[0], &out);
    assert!(staging_leftovers(&scratch.arca_root()).is_empty());
    // The path of the hash it has, as Nix computes it.
    let actual = String::from_utf8(scratch.nix_store(&[
        "--print-fixed-path",
        "sha256",
        &got.to_base16(),
        "fod-wrong",
    ]))
    .unwrap()
    .trim()
    .to_owned();
    assert!(
        scratch.arca_registered(&actual),
        "{actual} is not valid in Arca's store"
    );
    let info = &scratch.arca_path_info(&[&actual])[0];
    assert_eq!(
        info["ca"],
        format!("fixed:sha256:{}", got.to_base32()),
        "{info}"
    );
    assert_eq!(info["deriver"], drvs[0].as_str(), "{info}");
    assert_arca_verify_clean(&scratch.arca_root(), "after a hash mismatch");

    // Nix reports the same two hashes, and registers the same path.
    let nix = scratch.nix_store_output(&["--option", "sandbox", "true", "--realise", &drvs[0]]);
    assert!(!nix.status.success());
    let nix_stderr = String::from_utf8_lossy(&nix.stderr);
    let hash_lines = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("specified:") || l.starts_with("got:"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        hash_lines(&stderr),
        hash_lines(&nix_stderr),
        "Arca (left) and Nix (right) report different hashes; Nix said: {nix_stderr}"
    );
    scratch.nix_store(&["--check-validity", &actual]);
}

/// Two `arca build --max-jobs 2` processes started at once on overlapping graphs (the
/// fan-out; the fan-out and the chain) in one store: both succeed, and every builder ran
/// exactly once — each writes its output path into a FIFO bound into its sandbox, read
/// here — and its output is registered once; the store verifies clean.
#[test]
fn concurrent_builds_of_overlapping_graphs_build_each_derivation_once() {
    if !tools_available("concurrent_builds_of_overlapping_graphs_build_each_derivation_once") {
        return;
    }
    let scratch = Scratch::new();
    let drvs = scratch.instantiate_for_both(
        "graphs.nix",
        &[NixArg::Expr("trace", "true".into())],
        &["fanout", "chain5"],
    );
    let fifo = scratch.path().join("trace");
    let made = Command::new("mkfifo")
        .arg("-m")
        .arg("666")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    // Opened read-write, so that it never reports end of file and writers never block.
    let reader_end = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut traced = Vec::new();
        for line in BufReader::new(reader_end).lines() {
            let line = line.unwrap();
            if line == "END" {
                break;
            }
            traced.push(line);
        }
        traced
    });

    let sandbox_path = format!("/arca-trace={}", fifo.display());
    let spawn = |targets: &[&str]| {
        scratch
            .arca_cmd()
            .args(["build", "--max-jobs", "2", "--sandbox-path", &sandbox_path])
            .args(targets)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn(&[&drvs[0]]);
    let second = spawn(&[&drvs[0], &drvs[1]]);
    let (first, second) = (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .unwrap()
        .write_all(b"END\n")
        .unwrap();
    let traced = reader.join().unwrap();
    for (name, output) in [("first", &first), ("second", &second)] {
        assert!(
            output.status.success(),
            "the {name} arca build failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let fanout_out = scratch.arca_output(&drvs[0]);
    let chain_out = scratch.arca_output(&drvs[1]);
    assert_eq!(lines(&first.stdout), std::slice::from_ref(&fanout_out));
    assert_eq!(lines(&second.stdout), [fanout_out, chain_out]);

    let built = arca_non_drv_paths(&scratch);
    let expected: Vec<&String> = built.iter().filter(|p| !p.ends_with("-bb")).collect();
    assert_eq!(expected.len(), 21 + 5, "every node registered: {built:?}");
    let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
    for line in &traced {
        *runs.entry(line.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "builders ran more than once: {twice:?}");
    assert_eq!(
        runs.keys().copied().collect::<BTreeSet<_>>(),
        expected.iter().map(|p| p.as_str()).collect::<BTreeSet<_>>(),
        "each builder ran (trace: {traced:?})"
    );
    let started_by = |output: &std::process::Output| {
        lines(&output.stderr)
            .iter()
            .filter(|l| l.starts_with("building '"))
            .count()
    };
    eprintln!(
        "builds started: {} by the first process, {} by the second",
        started_by(&first),
        started_by(&second)
    );
    // What each process says it started: every derivation once in all.
    let mut started: Vec<String> = [&first.stderr, &second.stderr]
        .iter()
        .flat_map(|e| lines(e))
        .filter(|l| l.starts_with("building '"))
        .collect();
    started.sort();
    let count = started.len();
    started.dedup();
    assert_eq!(count, started.len(), "a derivation was started twice");
    assert_eq!(count, 26, "{started:?}");

    let db = arca_tests::store::registry_db(&scratch.arca_root());
    assert_eq!(
        arca_tests::store::sql(
            &db,
            "select count(*) - count(distinct path) from ValidPaths"
        ),
        ["0"]
    );
    assert!(staging_leftovers(&scratch.arca_root()).is_empty());
    assert_arca_verify_clean(&scratch.arca_root(), "after concurrent builds");
}

/// Structured attributes: `.attrs.json`, `.attrs.sh`, the environment (all but Nix 2.8's
/// host-path NIX_ATTRS_*_FILE values) and `outputChecks` as Nix gives them: the same
/// output, NAR hash and all.
#[test]
fn structured_attributes_build_as_in_nix() {
    if !tools_available("structured_attributes_build_as_in_nix") {
        return;
    }
    let scratch = Scratch::new();
    let drvs = scratch.instantiate_for_both("structured.nix", &[], &["structured"]);
    let outputs = assert_builds_like_nix(&scratch, &drvs);
    let out = &outputs[0];
    let attrs = std::fs::read_to_string(scratch.arca_physical(out).join(".attrs.json")).unwrap();
    assert!(attrs.contains(r#""outputs":{"out":""#), "{attrs}");
}

/// `outputChecks` of structured attributes are enforced, as Nix enforces them.
#[test]
fn structured_output_checks_refuse_what_nix_refuses() {
    if !tools_available("structured_output_checks_refuse_what_nix_refuses") {
        return;
    }
    let scratch = Scratch::new();
    let drvs = scratch.instantiate_for_both("structured.nix", &[], &["forbidden"]);
    let stderr = scratch.arca_build_fails(&[&drvs[0]]);
    assert!(
        stderr.contains("is not allowed to refer to the following paths"),
        "{stderr}"
    );
    let nix = scratch.nix_store_output(&["--option", "sandbox", "true", "--realise", &drvs[0]]);
    assert!(!nix.status.success(), "Nix refuses it too");
    assert!(
        String::from_utf8_lossy(&nix.stderr)
            .contains("is not allowed to refer to the following paths"),
        "{}",
        String::from_utf8_lossy(&nix.stderr)
    );
}

/// `passAsFile`: the variable becomes `.attr-<hash>` in the build directory, named by
/// `<name>Path`, exactly as under Nix (same output, NAR hash and all).
#[test]
fn pass_as_file_builds_as_in_nix() {
    if !tools_available("pass_as_file_builds_as_in_nix") {
        return;
    }
    let scratch = Scratch::new();
    let drvs = scratch.instantiate_for_both("structured.nix", &[], &["passAsFile"]);
    let outputs = assert_builds_like_nix(&scratch, &drvs);
    let big = std::fs::read_to_string(scratch.arca_physical(&outputs[0]).join("big")).unwrap();
    assert_eq!(big, "a value\nover two lines");
}
