//! `BuildDerivation`, what a remote builder receives: the derivation itself (not its
//! `.drv` path in the store), built in the sandbox, refused to untrusted clients.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Read};
use std::os::unix::net::UnixStream;

use arca_daemon_proto::wire::{Limits, WireReader, WireWriter};
use arca_daemon_proto::{protocol, serve, Peer};
use arca_store_core::derivation::{Derivation, DerivationOutput, OutputName};
use arca_store_core::Store;
use arca_store_sqlite::LocalStore;

const BUSYBOX: &str = "/bin/busybox";

/// A build result as protocol 1.37 carries it (the parts the tests look at).
#[derive(Debug)]
struct Reply {
    status: u64,
    message: String,
    start: u64,
    stop: u64,
    cpu_user: Option<u64>,
    cpu_system: Option<u64>,
    /// What the daemon streamed while it built: `start TYPE TEXT`, `line TEXT`, `stop`.
    progress: Vec<String>,
}

/// Sends one `BuildDerivation` for `drv` (named by `drv_path`) at protocol 1.37 and
/// returns the build result, or the daemon's error.
fn build_derivation(
    root: &std::path::Path,
    drv_path: &str,
    drv: &Derivation,
    trusted: bool,
) -> Result<Reply, String> {
    let (client, server_end) = UnixStream::pair().unwrap();
    let server_root = root.to_owned();
    let server = std::thread::spawn(move || {
        let store = LocalStore::open(&server_root).unwrap();
        let output = server_end.try_clone().unwrap();
        serve(
            &arca_daemon::LocalBackend::new(&store),
            &server_end,
            output,
            Peer { trusted },
            Limits::default(),
            &Default::default(),
        )
    });
    let mut to = WireWriter::new(client.try_clone().unwrap());
    let mut from = WireReader::new(BufReader::new(client), Limits::default());
    to.write_u64(protocol::WORKER_MAGIC_1).unwrap();
    from.read_u64().unwrap();
    from.read_u64().unwrap();
    to.write_u64(protocol::version(1, 37)).unwrap();
    to.write_u64(0).unwrap();
    to.write_u64(0).unwrap();
    from.read_string("version").unwrap();
    from.read_u64().unwrap(); // trusted (1.35 and later)
    assert_eq!(from.read_u64().unwrap(), protocol::stderr::LAST);

    to.write_u64(protocol::Op::BuildDerivation as u64).unwrap();
    to.write_str(drv_path).unwrap();
    to.write_u64(drv.outputs.len() as u64).unwrap();
    for (name, output) in &drv.outputs {
        to.write_str(name.as_str()).unwrap();
        to.write_str(&format!("/nix/store/{}", output.path().unwrap().as_str()))
            .unwrap();
        to.write_str("").unwrap();
        to.write_str("").unwrap();
    }
    let sources: Vec<String> = drv
        .input_srcs
        .iter()
        .map(|p| format!("/nix/store/{}", p.as_str()))
        .collect();
    to.write_strings(sources.iter()).unwrap();
    to.write_str(&drv.system).unwrap();
    to.write_str(&drv.builder).unwrap();
    to.write_strings(drv.args.iter()).unwrap();
    to.write_u64(drv.env.len() as u64).unwrap();
    for (key, value) in &drv.env {
        to.write_str(key).unwrap();
        to.write_str(value).unwrap();
    }
    to.write_u64(protocol::build_mode::NORMAL).unwrap();
    let mut progress = Vec::new();
    let reply = loop {
        match from.read_u64().unwrap() {
            protocol::stderr::LAST => {
                let status = from.read_u64().unwrap();
                let message = from.read_string("message").unwrap();
                from.read_u64().unwrap(); // times built
                from.read_u64().unwrap(); // non-deterministic
                let start = from.read_u64().unwrap();
                let stop = from.read_u64().unwrap();
                let mut optional = || match from.read_u64().unwrap() {
                    0 => None,
                    1 => Some(from.read_u64().unwrap()),
                    tag => panic!("optional tag {tag}"),
                };
                let (cpu_user, cpu_system) = (optional(), optional());
                assert_eq!(from.read_u64().unwrap(), 0, "no realisations");
                break Ok(Reply {
                    status,
                    message,
                    start,
                    stop,
                    cpu_user,
                    cpu_system,
                    progress,
                });
            }
            protocol::stderr::ERROR => {
                from.read_string("type").unwrap();
                from.read_u64().unwrap();
                from.read_string("name").unwrap();
                let message = from.read_string("message").unwrap();
                from.read_u64().unwrap();
                from.read_u64().unwrap();
                break Err(message);
            }
            protocol::stderr::NEXT => {
                from.read_string("log").unwrap();
            }
            protocol::stderr::START_ACTIVITY => {
                from.read_u64().unwrap(); // id
                from.read_u64().unwrap(); // level
                let kind = from.read_u64().unwrap();
                let text = from.read_string("text").unwrap();
                read_fields(&mut from);
                from.read_u64().unwrap(); // parent
                progress.push(format!("start {kind} {text}"));
            }
            protocol::stderr::RESULT => {
                from.read_u64().unwrap(); // id
                assert_eq!(from.read_u64().unwrap(), 101, "resBuildLogLine");
                let fields = read_fields(&mut from);
                progress.push(format!("line {}", fields.join(" ")));
            }
            protocol::stderr::STOP_ACTIVITY => {
                from.read_u64().unwrap();
                progress.push("stop".into());
            }
            other => panic!("unexpected message {other:#x}"),
        }
    };
    to.get_mut().shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    from.get_mut().read_to_end(&mut rest).unwrap();
    server.join().unwrap().unwrap();
    reply
}

/// Log message fields: integers and strings, as text.
fn read_fields<R: std::io::BufRead>(from: &mut WireReader<R>) -> Vec<String> {
    let count = from.read_u64().unwrap();
    (0..count)
        .map(|_| match from.read_u64().unwrap() {
            0 => from.read_u64().unwrap().to_string(),
            1 => from.read_string("field").unwrap(),
            tag => panic!("field type {tag}"),
        })
        .collect()
}

#[test]
fn a_trusted_client_gets_a_sent_derivation_built() {
    if !std::path::Path::new(BUSYBOX).is_file() {
        eprintln!("SKIPPED a_trusted_client_gets_a_sent_derivation_built: no {BUSYBOX}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let bb_dir = tempfile::tempdir().unwrap();
    std::fs::copy(BUSYBOX, bb_dir.path().join("busybox")).unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    let bb = store.add_path(bb_dir.path(), "bb").unwrap();
    let bb_full = store.store_dir().display(&bb);
    // A derivation as a client's store has it: output paths computed there.
    let mut drv = Derivation {
        name: "sent".into(),
        outputs: BTreeMap::from([(OutputName::out(), DerivationOutput::Deferred)]),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::from([bb.clone()]),
        system: "x86_64-linux".into(),
        builder: format!("{bb_full}/busybox"),
        args: vec![
            "sh".into(),
            "-c".into(),
            // Some CPU work, for the reported CPU time.
            "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; echo building; echo built remotely > $out".into(),
        ],
        env: BTreeMap::from([
            ("builder".into(), format!("{bb_full}/busybox")),
            ("name".into(), "sent".into()),
            ("out".into(), String::new()),
            ("system".into(), "x86_64-linux".into()),
            ("PATH".into(), bb_full.clone()),
        ]),
    };
    store.compute_output_paths(&mut drv).unwrap();
    let out = drv.outputs[&OutputName::out()].path().unwrap().clone();
    drop(store);
    // The client's .drv path: never added to this store.
    let drv_path = format!("/nix/store/{}-sent.drv", "a".repeat(32));

    let refused = build_derivation(root.path(), &drv_path, &drv, false).unwrap_err();
    assert!(refused.contains("not privileged"), "{refused}");

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let reply = build_derivation(root.path(), &drv_path, &drv, true).unwrap();
    assert_eq!(
        (reply.status, reply.message.as_str()),
        (protocol::build_status::BUILT, "")
    );
    // When the builder ran and what it cost, as Nix reports them.
    assert!(
        before <= reply.start && reply.start <= reply.stop,
        "{reply:?}"
    );
    assert!(reply.cpu_user.is_some_and(|us| us > 0), "{reply:?}");
    // The build's progress streamed as Nix's daemon streams it: a build activity
    // (`actBuild`, 105) naming the derivation, the builder's output, the end.
    assert_eq!(
        reply.progress,
        [
            format!("start 105 building '{drv_path}'"),
            "line building".to_string(),
            "stop".to_string()
        ],
        "{reply:?}"
    );
    assert!(reply.cpu_system.is_some(), "{reply:?}");
    let store = LocalStore::open(root.path()).unwrap();
    assert!(store.is_valid_path(&out).unwrap());
    assert_eq!(
        std::fs::read_to_string(store.physical_path(&out)).unwrap(),
        "built remotely\n"
    );
}
