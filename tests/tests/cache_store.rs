//! A binary cache as a store (issue #16): `--store file://…`, `http://…` and `s3://…`
//! open a cache, and the store commands work on it as Nix's do on a `BinaryCacheStore`.
//! On every backend, each a real server on 127.0.0.1 (`file://`; an HTTP/1.1 file
//! server with uploads; the S3-compatible object store `s3s-fs`):
//!
//! - `store add-path` and `add-file` give the paths a local store gives, signed with the
//!   URL's `secret-key`; `path-info --json` shows what Nix's shows of a cache (checked
//!   against real Nix where it reads the backend);
//! - `store import` writes a closure with its references; a path whose references the
//!   cache lacks is refused and nothing of it is written;
//! - `derivation show` reads a `.drv` out of the cache (as Nix's `show-derivation`);
//! - `store export` from the cache imports into a local store whose verification is
//!   clean; `store sign` adds a signature; `store verify --check-contents --sigs-needed`
//!   passes, and finds a tampered NAR; what a cache cannot do is refused by name;
//! - real Nix substitutes what was added this way.

use std::path::Path;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use arca_tests::cache::{
    arca, arca_keys, arca_ok, backends, nix_verify_contents, s3_available, s3_env, source_store,
    stderr, with_parameters,
};
use arca_tests::{arca_bin, nix_available, nix_output};
use serde_json::Value;

/// `arca --store STORE ARGS...` reading `stdin`, with the S3 test credentials.
fn arca_stdin(store: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = s3_env(&mut Command::new(arca_bin()))
        .arg("--store")
        .arg(store)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("arca runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn arca_stdin_ok(store: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let output = arca_stdin(store, args, stdin);
    assert!(
        output.status.success(),
        "arca {args:?}: {}",
        stderr(&output)
    );
    output.stdout
}

fn path_info(store: &str, paths: &[&str]) -> Vec<Value> {
    let mut args = vec!["path-info", "--json"];
    args.extend(paths);
    serde_json::from_str(&arca_ok(Path::new(store), &args)).unwrap()
}

#[test]
fn store_commands_work_on_a_cache_on_every_backend() {
    if !s3_available("store_commands_work_on_a_cache_on_every_backend") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (local, paths) = source_store(d.path());
    let (chain, tree) = (&paths[..4], &paths[4]);
    let (sk, pk) = arca_keys(d.path(), "cache-store-1");
    let (other_sk, _) = arca_keys(d.path(), "cache-store-2");
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("dir/a"), "a\n").unwrap();
    std::fs::write(d.path().join("file"), "flat\n").unwrap();
    let local_src = arca_ok(&local, &["store", "add-path", src.to_str().unwrap()]);
    let local_file = arca_ok(
        &local,
        &["store", "add-file", d.path().join("file").to_str().unwrap()],
    );
    let (backends, _s3) = backends(d.path(), true);
    for backend in &backends {
        let name = backend.name;
        let signed = with_parameters(&backend.url, &format!("secret-key={}", sk.display()));
        let cache = Path::new(&signed);

        // Adds give the local store's paths, signed.
        let added = arca_ok(cache, &["store", "add-path", src.to_str().unwrap()]);
        assert_eq!(added, local_src, "{name}");
        let file = arca_ok(
            cache,
            &["store", "add-file", d.path().join("file").to_str().unwrap()],
        );
        assert_eq!(file, local_file, "{name}");
        let added = added.trim();
        let info = &path_info(&backend.url, &[added])[0];
        let local_info = &path_info(local.to_str().unwrap(), &[added])[0];
        for key in ["narHash", "narSize", "references", "ca"] {
            assert_eq!(info[key], local_info[key], "{name}: {key}");
        }
        assert!(
            info["url"].as_str().unwrap().starts_with("nar/"),
            "{name}: {info}"
        );
        let signatures = info["signatures"].as_array().unwrap();
        assert!(
            signatures.len() == 1
                && signatures[0]
                    .as_str()
                    .unwrap()
                    .starts_with("cache-store-1:"),
            "{name}: {info}"
        );

        // A path whose references the cache lacks is refused, and nothing is written.
        let local_store = local.to_str().unwrap();
        let top_only = arca_stdin_ok(local_store, &["store", "export", &chain[0]], b"");
        let refused = arca_stdin(&backend.url, &["store", "import"], &top_only);
        assert!(!refused.status.success(), "{name}");
        assert!(
            stderr(&refused).contains("it refers to paths the cache lacks")
                && stderr(&refused).contains(&chain[1]),
            "{name}: {}",
            stderr(&refused)
        );
        assert!(!arca(Path::new(&backend.url), &["path-info", &chain[0]])
            .status
            .success());
        let nars_before = count_nars(&backend.dir);

        // The whole closure goes in, references first, with its references recorded.
        let mut export_args = vec!["store", "export"];
        export_args.extend(chain.iter().map(String::as_str));
        export_args.push(tree);
        let export = arca_stdin_ok(local_store, &export_args, b"");
        let imported = arca_stdin(&signed, &["store", "import"], &export);
        assert!(imported.status.success(), "{name}: {}", stderr(&imported));
        assert!(count_nars(&backend.dir) > nars_before, "{name}");
        let in_cache = path_info(
            &backend.url,
            &chain.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let in_local = path_info(
            local_store,
            &chain.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        for (cached, local) in in_cache.iter().zip(&in_local) {
            assert_eq!(cached["references"], local["references"], "{name}");
            assert_eq!(cached["narHash"], local["narHash"], "{name}");
        }

        // Exported from the cache into a fresh store: whole and clean.
        let mut args = vec!["store", "export"];
        args.extend(chain.iter().map(String::as_str));
        args.push(added);
        let from_cache = arca_stdin_ok(&backend.url, &args, b"");
        let fresh = d.path().join(format!("fresh-{name}"));
        arca_stdin_ok(fresh.to_str().unwrap(), &["store", "import"], &from_cache);
        arca_ok(&fresh, &["store", "verify", "--check-contents"]);
        nix_verify_contents(&fresh);

        // A derivation read out of the cache is the one the local store has.
        let drv_json = format!(
            r#"{{"name":"x","outputs":{{"out":{{"path":""}}}},"inputSrcs":["{added}"],"inputDrvs":{{}},"system":"x86_64-linux","builder":"/bin/sh","args":["-c","echo > $out"],"env":{{"builder":"/bin/sh","name":"x","out":"","system":"x86_64-linux"}}}}"#
        );
        let drv = String::from_utf8(arca_stdin_ok(
            local_store,
            &["derivation", "add"],
            drv_json.as_bytes(),
        ))
        .unwrap();
        let drv = drv.trim();
        let drv_export = arca_stdin_ok(local_store, &["store", "export", drv], b"");
        arca_stdin_ok(&signed, &["store", "import"], &drv_export);
        let shown: Value = serde_json::from_slice(&arca_stdin_ok(
            &backend.url,
            &["derivation", "show", drv],
            b"",
        ))
        .unwrap();
        let local_shown: Value = serde_json::from_slice(&arca_stdin_ok(
            local_store,
            &["derivation", "show", drv],
            b"",
        ))
        .unwrap();
        assert_eq!(shown, local_shown, "{name}");

        // Signatures added in place; what a cache cannot do is refused by name.
        arca_ok(
            Path::new(&backend.url),
            &[
                "store",
                "sign",
                "--key-file",
                other_sk.to_str().unwrap(),
                added,
            ],
        );
        let info = &path_info(&backend.url, &[added])[0];
        assert_eq!(
            info["signatures"].as_array().unwrap().len(),
            2,
            "{name}: {info}"
        );
        let referrers = arca(
            Path::new(&backend.url),
            &["store", "query", "--referrers", added],
        );
        assert!(!referrers.status.success());
        assert!(
            stderr(&referrers).contains("does not support querying referrers"),
            "{name}: {}",
            stderr(&referrers)
        );

        // Verification: clean, with the signatures trusted; then a NAR is tampered with.
        let mut verify = vec![
            "--option",
            "trusted-public-keys",
            pk.trim(),
            "store",
            "verify",
        ];
        verify.extend(["--check-contents", "--sigs-needed", "1", added]);
        arca_ok(Path::new(&backend.url), &verify);
        if name != "http" {
            // Every path, where the backend can list them (a directory, an S3 bucket).
            arca_ok(
                Path::new(&backend.url),
                &["store", "verify", "--check-contents"],
            );
            // Listed: with no key trusted, each input-addressed path is untrusted.
            let all = arca(
                Path::new(&backend.url),
                &["store", "verify", "--sigs-needed", "1"],
            );
            assert!(!all.status.success(), "{name}");
            for path in chain {
                assert!(
                    stderr(&all).contains(&format!("path '{path}' is untrusted")),
                    "{name}: {}",
                    stderr(&all)
                );
            }
        }
        let narinfo = arca_cache::NarInfo::parse(
            &arca_store_core::StoreDir::default(),
            &std::fs::read_to_string(backend.dir.join(format!("{}.narinfo", &added[11..43])))
                .unwrap(),
            "test",
        )
        .unwrap();
        let nar_file = backend.dir.join(&narinfo.url);
        let pristine = std::fs::read(&nar_file).unwrap();
        let mut tampered = pristine.clone();
        let at = tampered.len() / 2;
        tampered[at] ^= 0x20;
        std::fs::write(&nar_file, &tampered).unwrap();
        let found = arca(
            Path::new(&backend.url),
            &["store", "verify", "--check-contents", added],
        );
        assert!(!found.status.success(), "{name}");
        assert!(
            String::from_utf8_lossy(&found.stdout)
                .contains(&format!("path '{added}' was modified!")),
            "{name}: {}{}",
            String::from_utf8_lossy(&found.stdout),
            stderr(&found)
        );
        std::fs::write(&nar_file, &pristine).unwrap();

        if name == "s3" || !nix_available("store_commands_work_on_a_cache_on_every_backend") {
            continue;
        }
        // Real Nix (which reads file:// and http://) sees the same path infos, and
        // substitutes the closure, trusting the key.
        let mut nix_args = vec!["path-info", "--json", "--store", backend.url.as_str()];
        nix_args.extend(chain.iter().map(String::as_str));
        nix_args.push(added);
        let nix_info = nix_output(
            Command::new("nix")
                .args(&nix_args)
                .env("NIX_CONFIG", "experimental-features = nix-command"),
        );
        assert!(
            nix_info.status.success(),
            "{}",
            String::from_utf8_lossy(&nix_info.stderr)
        );
        let mut arca_args = vec!["path-info", "--json"];
        arca_args.extend(chain.iter().map(String::as_str));
        arca_args.push(added);
        let ours: Value =
            serde_json::from_str(&arca_ok(Path::new(&backend.url), &arca_args)).unwrap();
        let theirs: Value = serde_json::from_slice(&nix_info.stdout).unwrap();
        assert_eq!(ours, theirs, "{name}");
        let nix_shown = nix_output(
            Command::new("nix")
                .args(["show-derivation", "--store", backend.url.as_str(), drv])
                .env("NIX_CONFIG", "experimental-features = nix-command"),
        );
        assert!(
            nix_shown.status.success(),
            "{}",
            String::from_utf8_lossy(&nix_shown.stderr)
        );
        let nix_shown: Value = serde_json::from_slice(&nix_shown.stdout).unwrap();
        assert_eq!(shown, nix_shown, "{name}");
        let nix_root = d.path().join(format!("nix-{name}"));
        let realised = nix_output(
            Command::new("nix-store")
                .arg("--store")
                .arg(format!("local?root={}", nix_root.display()))
                .args(["-r", &chain[0], added])
                .args(["--option", "substituters", &backend.url])
                .args(["--option", "trusted-public-keys", pk.trim()]),
        );
        assert!(
            realised.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&realised.stderr)
        );
        nix_verify_contents(&nix_root);
    }
}

fn count_nars(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("nar")).map_or(0, |entries| entries.count())
}
