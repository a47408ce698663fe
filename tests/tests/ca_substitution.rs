//! Floating content-addressed outputs substituted through realisations (issue #16), from
//! a cache real Nix 2.8 wrote: Nix builds `b`, a `__contentAddressed` derivation whose
//! output names the output of `a`, another (each builder prints a random number, so that
//! a rebuild gives other paths), signing the realisations with its `secret-key-files`,
//! and `nix copy --to file://…` writes the outputs and `realisations/<id>.doi` (`b`'s
//! depends on `a`'s). Then `arca build` of `b`'s `.drv`, from that cache served over
//! HTTP (opened once per build: one `nix-cache-info` request):
//!
//! - with the key trusted, gets Nix's output path without building anything, and records
//!   both realisations (a later build without substituters builds nothing);
//! - with the key not trusted (`require-sigs`), ignores the realisation with a warning
//!   and builds (another path).
//!
//! And back: `arca copy --to file://…?secret-key=… DRV^out` pushes Arca's own build with
//! both realisations, signed by Arca's key; real Nix (`nix-store -r DRV`) and another
//! Arca store trusting only that key substitute it instead of building.

use std::path::Path;
use std::process::{Command, Output};

use arca_tests::build::{busybox, busybox_available};
use arca_tests::cache::HttpDirServer;
use arca_tests::{arca_bin, nix_available};
use serde_json::Value;

const NIX_CA: &str = "substituters =\nexperimental-features = nix-command ca-derivations";

fn nix_ok(args: &[&str]) -> Vec<u8> {
    let output = arca_tests::nix_output(
        Command::new(args[0])
            .args(&args[1..])
            .env("NIX_CONFIG", NIX_CA),
    );
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn arca_build(store: &Path, options: &[&str], drv: &str) -> Output {
    Command::new(arca_bin())
        .arg("--store")
        .arg(store)
        .args([
            "--option",
            "experimental-features",
            "nix-command ca-derivations",
        ])
        .args(options)
        .args(["build", drv])
        .output()
        .unwrap()
}

/// `arca build` succeeded, printed `path` and built nothing.
fn assert_built_nothing(output: &Output, path: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), path);
    assert!(!stderr.contains("building"), "{stderr}");
}

#[test]
fn floating_ca_outputs_are_substituted_through_signed_realisations() {
    let test = "floating_ca_outputs_are_substituted_through_signed_realisations";
    if !nix_available(test) || !busybox_available(test) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::create_dir(dir.join("bb")).unwrap();
    std::fs::copy(busybox(), dir.join("bb/busybox")).unwrap();
    std::fs::write(
        dir.join("ca.nix"),
        r#"{ salt }:
let
  bb = builtins.path { path = ./bb; name = "bb"; };
  mk = name: script: derivation {
    inherit name salt;
    system = "x86_64-linux";
    builder = "${bb}/busybox";
    args = [ "sh" "-c" script ];
    __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256";
  };
  a = mk "ca-a" "echo $RANDOM$RANDOM$RANDOM > $out";
in mk "ca-b" "echo ${a} $RANDOM$RANDOM$RANDOM > $out"
"#,
    )
    .unwrap();
    let sk = dir.join("sk");
    std::fs::write(
        &sk,
        nix_ok(&["nix", "key", "generate-secret", "--key-name", "ca-subst-1"]),
    )
    .unwrap();
    let pk = String::from_utf8(
        Command::new("nix")
            .args(["key", "convert-secret-to-public"])
            .env("NIX_CONFIG", NIX_CA)
            .stdin(std::fs::File::open(&sk).unwrap())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let nix_store = format!("local?root={}", dir.join("nix").display());
    let salt = format!("{}", std::process::id());
    let expr = dir.join("ca.nix");
    let expr = expr.to_str().unwrap();
    let built: Value = serde_json::from_slice(&nix_ok(&[
        "nix",
        "build",
        "--store",
        &nix_store,
        "-f",
        expr,
        "--argstr",
        "salt",
        &salt,
        "--no-link",
        "--json",
        "--option",
        "secret-key-files",
        sk.to_str().unwrap(),
    ]))
    .unwrap();
    let drv = built[0]["drvPath"].as_str().unwrap().to_owned();
    let nix_out = built[0]["outputs"]["out"].as_str().unwrap().to_owned();
    let cache = format!("file://{}", dir.join("cache").display());
    nix_ok(&[
        "nix",
        "copy",
        "--store",
        &nix_store,
        "--to",
        &format!("{cache}?secret-key={}", sk.display()),
        "-f",
        expr,
        "--argstr",
        "salt",
        &salt,
    ]);
    assert!(
        std::fs::read_dir(dir.join("cache/realisations"))
            .unwrap()
            .count()
            == 2,
        "the premise: Nix wrote the realisations"
    );
    // The derivation's closure (busybox, the .drv), as an Arca store gets it.
    let closure =
        String::from_utf8(nix_ok(&["nix-store", "--store", &nix_store, "-qR", &drv])).unwrap();
    let mut export_args = vec!["nix-store", "--store", &nix_store, "--export"];
    export_args.extend(closure.lines());
    let export = nix_ok(&export_args);
    let import = |store: &Path| {
        arca_tests::arca_ok_with_stdin(
            &[
                "--store".as_ref(),
                store.as_os_str(),
                "store".as_ref(),
                "import".as_ref(),
            ],
            &export,
        );
    };

    // Both builds read Nix's cache over HTTP, the server logging each request: the
    // build opens its substituter once (one `nix-cache-info`), however many derivations
    // it looks up.
    let served = |name: &str| {
        let log = dir.join(format!("{name}.log"));
        let server = HttpDirServer::start_with_log(&dir.join("cache"), Some(&log));
        (server, log)
    };
    let cache_infos = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .filter(|line| *line == "GET /nix-cache-info")
            .count()
    };

    // Not trusted: ignored, with a warning, and built.
    let untrusted = dir.join("untrusted");
    import(&untrusted);
    let (server, log) = served("untrusted");
    let output = arca_build(
        &untrusted,
        &["--option", "substituters", &server.url()],
        &drv,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("it is not signed by a trusted key"),
        "{stderr}"
    );
    assert!(stderr.contains("building '"), "{stderr}");
    let rebuilt = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert_ne!(rebuilt, nix_out, "a rebuild prints another number");
    // Both `b` and `a` were looked up.
    let requests = std::fs::read_to_string(&log).unwrap();
    assert_eq!(requests.matches(".doi").count(), 2, "{requests}");
    assert_eq!(cache_infos(&log), 1, "{requests}");

    // Trusted: Nix's path, substituted, nothing built.
    let trusted = dir.join("trusted");
    import(&trusted);
    let (server, log) = served("trusted");
    let output = arca_build(
        &trusted,
        &[
            "--option",
            "substituters",
            &server.url(),
            "--option",
            "trusted-public-keys",
            pk.trim(),
        ],
        &drv,
    );
    assert_built_nothing(&output, &nix_out);
    assert_eq!(
        cache_infos(&log),
        1,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    arca_tests::arca_ok_with_stdin(
        &[
            "--store".as_ref(),
            trusted.as_os_str(),
            "store".as_ref(),
            "verify".as_ref(),
            "--check-contents".as_ref(),
        ],
        b"",
    );
    // The realisation is recorded: without substituters, nothing is built either.
    let output = arca_build(&trusted, &[], &drv);
    assert_built_nothing(&output, &nix_out);

    // Back: Arca's own build of `b` (in `untrusted`), pushed with its realisations.
    let (arca_sk, arca_pk) = arca_tests::cache::arca_keys(dir, "arca-ca-1");
    let arca_cache = format!("file://{}", dir.join("arca-cache").display());
    let pushed = arca_tests::cache::arca(
        &untrusted,
        &[
            "copy",
            "--to",
            &format!("{arca_cache}?secret-key={}", arca_sk.display()),
            &format!("{drv}^out"),
        ],
    );
    let stderr = arca_tests::cache::stderr(&pushed);
    assert!(pushed.status.success(), "{stderr}");
    assert!(stderr.contains(", 2 realisations"), "{stderr}");
    let mut realisations: Vec<Value> = std::fs::read_dir(dir.join("arca-cache/realisations"))
        .unwrap()
        .map(|entry| {
            serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap()
        })
        .collect();
    realisations.sort_by_key(|r| r["outPath"].as_str().unwrap().to_owned());
    assert_eq!(realisations.len(), 2, "{realisations:?}");
    let key_name = format!("{}:", arca_pk.trim().split(':').next().unwrap());
    for realisation in &realisations {
        let signatures = realisation["signatures"].as_array().unwrap();
        assert!(
            signatures
                .iter()
                .any(|s| s.as_str().unwrap().starts_with(&key_name)),
            "signed by the cache's key: {realisation}"
        );
    }
    assert!(
        realisations.iter().any(|r| r["outPath"].as_str().unwrap()
            == rebuilt.rsplit('/').next().unwrap()
            && r["dependentRealisations"].as_object().unwrap().len() == 1),
        "b's realisation names a's: {realisations:?}"
    );

    // Between stores too: the realisations go with the outputs, so the other store
    // (which has the derivations) knows `b` is built.
    let copied = dir.join("copied");
    import(&copied);
    arca_tests::cache::arca_ok(
        &untrusted,
        &[
            "copy",
            "--to",
            &format!("local?root={}", copied.display()),
            &format!("{drv}^out"),
        ],
    );
    let output = arca_build(&copied, &[], &drv);
    assert_built_nothing(&output, &rebuilt);

    // Real Nix substitutes Arca's `b` (and `a`) instead of building them.
    let nix_again = format!("local?root={}", dir.join("nix-again").display());
    let mut command = Command::new("nix-store");
    command
        .args(["--store", &nix_again, "--import"])
        .env("NIX_CONFIG", NIX_CA)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = command.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &export).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let substituted = String::from_utf8(nix_ok(&[
        "nix-store",
        "--store",
        &nix_again,
        "-r",
        &drv,
        "--option",
        "substituters",
        &arca_cache,
        "--option",
        "trusted-public-keys",
        arca_pk.trim(),
    ]))
    .unwrap();
    assert_eq!(substituted.trim(), rebuilt);

    // And an Arca store that trusts only Arca's key, which checks the realisations'
    // signatures.
    let again = dir.join("again");
    import(&again);
    let output = arca_build(
        &again,
        &[
            "--option",
            "substituters",
            &arca_cache,
            "--option",
            "trusted-public-keys",
            arca_pk.trim(),
        ],
        &drv,
    );
    assert_built_nothing(&output, &rebuilt);
}
