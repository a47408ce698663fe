//! Binary cache formats beside real Nix 2.8 (issue #16): the `.narinfo` files and the
//! `nix-cache-info` that `nix copy --to file://…?secret-key=…` writes are parsed by
//! `arca-cache` and printed back byte for byte; a `.narinfo` made by Arca from the
//! path's metadata and signed with the same key is the file Nix wrote; signatures verify
//! against Nix's public key and fail against another key or after tampering.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;

use arca_cache::{CacheInfo, Compression, NarInfo, NarInfoError, SignatureCheck};
use arca_store_core::{PublicKey, SecretKey, StoreDir};
use arca_tests::{nix, nix_available, workspace_root};

/// A Nix store with a tree (content-addressed), a `.drv` and a chain of paths with
/// references (imported, so not content-addressed), copied into a signed `file://`
/// cache per compression; the cache directories by compression name, and the key pair.
fn nix_caches(dir: &Path) -> (BTreeMap<&'static str, std::path::PathBuf>, String, String) {
    let root = dir.join("root");
    let store = format!("local?root={}", root.display());
    let s = |text: &str| text.to_owned();
    nix(
        "nix-store",
        &[
            "--generate-binary-cache-key".as_ref(),
            "test-1".as_ref(),
            dir.join("sk").as_os_str(),
            dir.join("pk").as_os_str(),
        ],
        None,
    );
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/file"), "contents\n").unwrap();
    std::os::unix::fs::symlink("sub/file", tree.join("link")).unwrap();
    let mut paths = Vec::new();
    let added = nix(
        "nix-store",
        &[
            "--store".as_ref(),
            store.as_ref(),
            "--add".as_ref(),
            tree.as_os_str(),
        ],
        None,
    );
    paths.push(s(String::from_utf8(added).unwrap().trim()));
    let drv_file = dir.join("d.nix");
    std::fs::write(
        &drv_file,
        "derivation { name = \"d\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo > $out\" ]; }",
    )
    .unwrap();
    let drv = nix(
        "nix-instantiate",
        &["--store".as_ref(), store.as_ref(), drv_file.as_os_str()],
        None,
    );
    paths.push(s(String::from_utf8(drv).unwrap().trim()));
    let export = std::process::Command::new("python3")
        .arg(workspace_root().join("bench/gen_export.py"))
        .arg("4")
        .output()
        .unwrap();
    assert!(export.status.success());
    let imported = nix(
        "nix-store",
        &["--store".as_ref(), store.as_ref(), "--import".as_ref()],
        Some(&export.stdout),
    );
    paths.extend(
        String::from_utf8(imported)
            .unwrap()
            .lines()
            .map(String::from),
    );

    let mut caches = BTreeMap::new();
    for compression in ["none", "xz"] {
        let cache = dir.join(format!("cache-{compression}"));
        let to = format!(
            "file://{}?secret-key={}&compression={compression}",
            cache.display(),
            dir.join("sk").display()
        );
        // The .drv itself (`--derivation`: not its outputs), then the other paths.
        let (drvs, others): (Vec<&String>, Vec<&String>) =
            paths.iter().partition(|p| p.ends_with(".drv"));
        for (flag, group) in [(Some("--derivation"), drvs), (None, others)] {
            let mut args: Vec<&OsStr> = vec![
                "--extra-experimental-features".as_ref(),
                "nix-command".as_ref(),
                "copy".as_ref(),
                "--store".as_ref(),
                store.as_ref(),
                "--to".as_ref(),
                to.as_ref(),
            ];
            args.extend(flag.map(OsStr::new));
            args.extend(group.into_iter().map(OsStr::new));
            nix("nix", &args, None);
        }
        caches.insert(compression, cache);
    }
    let sk = std::fs::read_to_string(dir.join("sk")).unwrap();
    let pk = std::fs::read_to_string(dir.join("pk")).unwrap();
    (caches, sk, pk)
}

fn narinfos(cache: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn nix_s_narinfos_parse_print_back_and_verify() {
    if !nix_available("nix_s_narinfos_parse_print_back_and_verify") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (caches, sk, pk) = nix_caches(dir.path());
    let store_dir = StoreDir::default();
    let trusted = [PublicKey::parse(pk.trim()).unwrap()];
    nix(
        "nix-store",
        &[
            "--generate-binary-cache-key".as_ref(),
            "other-1".as_ref(),
            dir.path().join("other-sk").as_os_str(),
            dir.path().join("other-pk").as_os_str(),
        ],
        None,
    );
    let other_pk = std::fs::read_to_string(dir.path().join("other-pk")).unwrap();
    let untrusted = [PublicKey::parse(other_pk.trim()).unwrap()];
    let secret = SecretKey::parse(sk.trim()).unwrap();
    let mut signed_only = 0;
    for (compression, cache) in &caches {
        let info = std::fs::read_to_string(cache.join("nix-cache-info")).unwrap();
        let parsed = CacheInfo::parse(&info, "/nix/store", "file://cache").unwrap();
        assert_eq!(parsed.to_string(), info, "nix-cache-info prints back");
        let files = narinfos(cache);
        assert_eq!(files.len(), 6, "{compression}: one per path");
        for (file, text) in files {
            let narinfo = NarInfo::parse(&store_dir, &text, &file).unwrap();
            assert_eq!(narinfo.to_text(&store_dir), text, "{file} prints back");
            assert_eq!(narinfo.compression.name(), *compression);
            assert!(narinfo
                .url
                .ends_with(&format!(".nar{}", narinfo.compression.extension())));
            assert!(file.ends_with(&NarInfo::file_name(&narinfo.info.path)));
            assert_eq!(
                narinfo.check_signatures(&store_dir, &trusted),
                SignatureCheck::Trusted(vec!["test-1".into()]),
                "{file}"
            );
            // The same narinfo made from the metadata and signed by Arca: Nix's file.
            let mut ours = NarInfo::new(
                {
                    let mut info = narinfo.info.clone();
                    info.signatures.clear();
                    info.sign(&store_dir, &secret);
                    info
                },
                narinfo.url.clone(),
                narinfo.compression,
            );
            ours.file_hash = narinfo.file_hash.clone();
            ours.file_size = narinfo.file_size;
            assert_eq!(ours.to_text(&store_dir), text, "{file}: signed by Arca");
            // Another key: only a correct content address makes up for it.
            match narinfo.check_signatures(&store_dir, &untrusted) {
                SignatureCheck::ContentAddressed => assert!(narinfo.info.ca.is_some()),
                SignatureCheck::Untrusted { signed_by } => {
                    assert_eq!(signed_by, ["test-1"]);
                    signed_only += 1;
                    // Tampering breaks the signature: no trusted key vouches any more.
                    let nar_hash = format!(
                        "{}:{}",
                        narinfo.info.nar_hash.algo(),
                        narinfo.info.nar_hash.to_base32()
                    );
                    let forged_hash = format!("sha256:{}", "0".repeat(52));
                    for tampered in [
                        text.replacen("NarSize: ", "NarSize: 1", 1),
                        text.replacen(
                            &format!("NarHash: {nar_hash}"),
                            &format!("NarHash: {forged_hash}"),
                            1,
                        ),
                    ] {
                        assert_ne!(tampered, text);
                        let tampered = NarInfo::parse(&store_dir, &tampered, &file).unwrap();
                        assert!(matches!(
                            tampered.check_signatures(&store_dir, &trusted),
                            SignatureCheck::Untrusted { .. }
                        ));
                    }
                }
                other => panic!("{file}: {other:?}"),
            }
        }
    }
    assert_eq!(
        signed_only, 8,
        "the four imported paths in both caches need a signature"
    );
}

#[test]
fn malformed_narinfos_are_refused_naming_the_file() {
    let store_dir = StoreDir::default();
    let good = "StorePath: /nix/store/ri6dmcs1lb5n6vgg1fb93lvscxq6jly3-src\n\
                URL: nar/19w0faprn432gw32zzlxhgy62azxf7sfz1gh1j4azr8pp6rcwm2w.nar\n\
                Compression: none\n\
                NarHash: sha256:19w0faprn432gw32zzlxhgy62azxf7sfz1gh1j4azr8pp6rcwm2w\n\
                NarSize: 480\n\
                References: \n";
    let parsed = NarInfo::parse(&store_dir, good, "good").unwrap();
    assert_eq!(parsed.compression, Compression::None);
    // No Compression line: bzip2, as Nix.
    let bzip2 = good.replace("Compression: none\n", "");
    assert_eq!(
        NarInfo::parse(&store_dir, &bzip2, "f").unwrap().compression,
        Compression::Bzip2
    );
    for (case, text) in [
        (
            "no StorePath",
            good.replace(
                "StorePath: /nix/store/ri6dmcs1lb5n6vgg1fb93lvscxq6jly3-src\n",
                "",
            ),
        ),
        (
            "no URL",
            good.replace(
                "URL: nar/19w0faprn432gw32zzlxhgy62azxf7sfz1gh1j4azr8pp6rcwm2w.nar\n",
                "",
            ),
        ),
        (
            "no NarHash",
            good.replace(
                "NarHash: sha256:19w0faprn432gw32zzlxhgy62azxf7sfz1gh1j4azr8pp6rcwm2w\n",
                "",
            ),
        ),
        ("NarSize 0", good.replace("NarSize: 480", "NarSize: 0")),
        (
            "NarSize not a number",
            good.replace("NarSize: 480", "NarSize: many"),
        ),
        ("bad hash", good.replace("sha256:19w0", "sha256:XXXX")),
        (
            "bad reference",
            good.replace("References: ", "References: not-a-path"),
        ),
        ("no newline at the end", good.trim_end().to_owned()),
        ("a line without colon", format!("{good}garbage\n")),
        ("a bad signature", format!("{good}Sig: test-1:AAAA\n")),
        ("two References", format!("{good}References: \n")),
    ] {
        let error = NarInfo::parse(&store_dir, &text, "https://cache/x.narinfo").unwrap_err();
        assert!(
            matches!(&error, NarInfoError::Corrupt { whence, .. } if whence == "https://cache/x.narinfo"),
            "{case}: {error}"
        );
    }
    let other = good.replace("/nix/store/", "/gnu/store/");
    assert!(matches!(
        NarInfo::parse(&store_dir, &other, "f"),
        Err(NarInfoError::OtherStoreDir { .. })
    ));
    let unknown = good.replace("Compression: none", "Compression: lzma9");
    assert_eq!(
        NarInfo::parse(&store_dir, &unknown, "f")
            .unwrap_err()
            .to_string(),
        "NAR info file 'f' has unknown compression method 'lzma9'"
    );
    let huge = format!("{good}{}", "X: y\n".repeat(arca_cache::MAX_NARINFO / 5 + 1));
    assert!(NarInfo::parse(&store_dir, &huge, "f").is_err());
}

/// Real Nix substitutes from a `file://` cache that `arca copy --to` wrote (signed with a
/// key Nix trusts, NARs uncompressed): the closure becomes valid in Nix's store with the
/// same hashes, and `nix-store --verify --check-contents` is clean. With another key
/// trusted, Nix refuses the paths that need a signature.
#[test]
fn nix_substitutes_from_a_cache_arca_wrote() {
    if !nix_available("nix_substitutes_from_a_cache_arca_wrote") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["test-2", "other-2"] {
        nix(
            "nix-store",
            &[
                "--generate-binary-cache-key".as_ref(),
                name.as_ref(),
                d.join(format!("{name}.sk")).as_os_str(),
                d.join(format!("{name}.pk")).as_os_str(),
            ],
            None,
        );
    }
    let arca_store = d.join("arca");
    let export = std::process::Command::new("python3")
        .arg(workspace_root().join("bench/gen_export.py"))
        .arg("4")
        .output()
        .unwrap();
    let imported = arca_tests::arca_ok_with_stdin(
        &[
            "--store".as_ref(),
            arca_store.as_os_str(),
            "store".as_ref(),
            "import".as_ref(),
        ],
        &export.stdout,
    );
    let top = String::from_utf8(imported)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let tree = d.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/file"), "contents\n").unwrap();
    let added = arca_tests::arca_ok(&[
        "--store".as_ref(),
        arca_store.as_os_str(),
        "store".as_ref(),
        "add-path".as_ref(),
        tree.as_os_str(),
    ]);
    let tree_path = String::from_utf8(added).unwrap().trim().to_owned();
    let cache = d.join("cache");
    let to = format!(
        "file://{}?secret-key={}&compression=none",
        cache.display(),
        d.join("test-2.sk").display()
    );
    let copy = |paths: &[&str]| {
        let mut args: Vec<&OsStr> = vec![
            "--store".as_ref(),
            arca_store.as_os_str(),
            "copy".as_ref(),
            "--to".as_ref(),
            to.as_ref(),
        ];
        args.extend(paths.iter().map(OsStr::new));
        arca_tests::arca(&args)
    };
    let first = copy(&[&top, &tree_path]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("copied 5 paths"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let again = copy(&[&top]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("copied 0 paths"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(narinfos(&cache).len(), 5);
    assert!(
        !std::fs::read_dir(&cache).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".tmp")),
        "no temporary file is left"
    );

    let substitute = |root: &Path, key: &str| {
        let store = format!("local?root={}", root.display());
        let substituters = format!("file://{}", cache.display());
        let trusted = std::fs::read_to_string(d.join(format!("{key}.pk"))).unwrap();
        std::process::Command::new("nix-store")
            .args(["--store", &store, "-r", &top, &tree_path])
            .args(["--option", "substituters", &substituters])
            .args(["--option", "trusted-public-keys", trusted.trim()])
            .env("NIX_CONFIG", "experimental-features = nix-command")
            .output()
            .unwrap()
    };
    let nix_root = d.join("nix");
    let output = substitute(&nix_root, "test-2");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let store = format!("local?root={}", nix_root.display());
    // Exits 1 (and `nix` panics) on any problem.
    nix(
        "nix-store",
        &[
            "--store".as_ref(),
            store.as_ref(),
            "--verify".as_ref(),
            "--check-contents".as_ref(),
        ],
        None,
    );
    for path in [&top, &tree_path] {
        let theirs = nix(
            "nix-store",
            &[
                "--store".as_ref(),
                store.as_ref(),
                "-q".as_ref(),
                "--hash".as_ref(),
                path.as_ref(),
            ],
            None,
        );
        let ours = arca_tests::arca_ok(&[
            "--store".as_ref(),
            arca_store.as_os_str(),
            "path-info".as_ref(),
            "--json".as_ref(),
            path.as_ref(),
        ]);
        let ours: serde_json::Value = serde_json::from_slice(&ours).unwrap();
        let theirs = String::from_utf8(theirs).unwrap();
        let sri = ours[0]["narHash"].as_str().unwrap();
        let theirs_hash = arca_store_core::Hash::parse(theirs.trim(), None).unwrap();
        assert_eq!(theirs_hash.to_sri(), sri, "{path}");
    }

    // Trusting another key: the imported paths (not content-addressed) are refused.
    let refused = substitute(&d.join("nix-other"), "other-2");
    assert!(
        !refused.status.success(),
        "substituted without a trusted signature"
    );
}

/// The paths of a cache, by the `.narinfo` files in it.
fn cached_paths(cache: &Path) -> Vec<String> {
    let store_dir = StoreDir::default();
    narinfos(cache)
        .into_iter()
        .map(|(file, text)| {
            let info = NarInfo::parse(&store_dir, &text, &file).unwrap();
            store_dir.display(&info.info.path)
        })
        .collect()
}

/// `arca copy --from` into a fresh store at `root`, trusting `pk`; the output.
fn arca_pull(root: &Path, cache: &Path, pk: &str, paths: &[String]) -> std::process::Output {
    let from = format!("file://{}", cache.display());
    let mut args: Vec<&OsStr> = vec![
        "--store".as_ref(),
        root.as_os_str(),
        "--option".as_ref(),
        "trusted-public-keys".as_ref(),
        pk.as_ref(),
        "copy".as_ref(),
        "--from".as_ref(),
        from.as_ref(),
    ];
    args.extend(paths.iter().map(OsStr::new));
    arca_tests::arca(&args)
}

/// Whether `path` is valid in the Arca store at `root`.
fn arca_has(root: &Path, path: &str) -> bool {
    arca_tests::arca(&[
        "--store".as_ref(),
        root.as_os_str(),
        "path-info".as_ref(),
        path.as_ref(),
    ])
    .status
    .success()
}

/// Arca substitutes from caches real Nix wrote (`nix copy --to file://…?secret-key=…`,
/// NARs uncompressed and xz), Nix's key trusted: the closure becomes valid, `arca store
/// verify --check-contents` and Nix's own `nix-store --verify --check-contents` on the
/// Arca store are clean. Attacks leave nothing registered and say what was wrong: an
/// untrusted signer, a tampered NAR, a NAR gone, a truncated xz stream, a NAR URL out of
/// the cache, a `.narinfo` of another store dir.
#[test]
fn arca_substitutes_from_caches_nix_wrote_and_refuses_attacks() {
    if !nix_available("arca_substitutes_from_caches_nix_wrote_and_refuses_attacks") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (caches, _sk, pk) = nix_caches(dir.path());
    let pk = pk.trim().to_owned();
    for (compression, cache) in &caches {
        let paths = cached_paths(cache);
        let root = dir.path().join(format!("arca-{compression}"));
        let output = arca_pull(&root, cache, &pk, &paths);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for path in &paths {
            assert!(arca_has(&root, path), "{compression}: {path}");
        }
        let verify = arca_tests::arca(&[
            "--store".as_ref(),
            root.as_os_str(),
            "store".as_ref(),
            "verify".as_ref(),
            "--check-contents".as_ref(),
        ]);
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );
        let store = format!("local?root={}", root.display());
        nix(
            "nix-store",
            &[
                "--store".as_ref(),
                store.as_ref(),
                "--verify".as_ref(),
                "--check-contents".as_ref(),
            ],
            None,
        );
    }

    // The attacks, each on a copy of the uncompressed cache, into a fresh store.
    let clean = &caches["none"];
    let paths = cached_paths(clean);
    let store_dir = StoreDir::default();
    let imported: Vec<&String> = paths.iter().filter(|p| p.contains("-bench-")).collect();
    let victim = imported[0].clone();
    let victim_path = store_dir.parse_path(&victim).unwrap();
    let narinfo_file = |cache: &Path| cache.join(NarInfo::file_name(&victim_path));
    let nar_file = |cache: &Path| {
        let text = std::fs::read_to_string(narinfo_file(cache)).unwrap();
        cache.join(NarInfo::parse(&store_dir, &text, "x").unwrap().url)
    };
    let copy_of = |name: &str| {
        let copy = dir.path().join(format!("attack-{name}"));
        let status = std::process::Command::new("cp")
            .args(["-a", clean.to_str().unwrap(), copy.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        copy
    };
    let other_pk = {
        nix(
            "nix-store",
            &[
                "--generate-binary-cache-key".as_ref(),
                "other-1".as_ref(),
                dir.path().join("o.sk").as_os_str(),
                dir.path().join("o.pk").as_os_str(),
            ],
            None,
        );
        std::fs::read_to_string(dir.path().join("o.pk"))
            .unwrap()
            .trim()
            .to_owned()
    };
    let attacks: Vec<(&str, std::path::PathBuf, String, &str)> = vec![
        (
            "untrusted",
            clean.clone(),
            other_pk.clone(),
            "signed by [test-1], trusted are [other-1]",
        ),
        (
            "tampered NAR",
            {
                let copy = copy_of("nar");
                let nar = nar_file(&copy);
                let mut bytes = std::fs::read(&nar).unwrap();
                let at = bytes.len() - 20;
                bytes[at] ^= 1;
                std::fs::write(&nar, bytes).unwrap();
                copy
            },
            pk.clone(),
            "hash",
        ),
        (
            "NAR gone",
            {
                let copy = copy_of("gone");
                std::fs::remove_file(nar_file(&copy)).unwrap();
                copy
            },
            pk.clone(),
            "cannot read",
        ),
        (
            "NAR URL outside the cache",
            {
                let copy = copy_of("url");
                let file = narinfo_file(&copy);
                let text = std::fs::read_to_string(&file).unwrap();
                let url = text
                    .lines()
                    .find(|l| l.starts_with("URL: "))
                    .unwrap()
                    .to_owned();
                std::fs::write(&file, text.replace(&url, "URL: ../../../etc/passwd")).unwrap();
                copy
            },
            pk.clone(),
            "outside the cache",
        ),
    ];
    for (case, cache, key, says) in attacks {
        let root = dir
            .path()
            .join(format!("attacked-{}", case.replace(' ', "-")));
        let output = arca_pull(&root, &cache, &key, std::slice::from_ref(&victim));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{case}: accepted");
        assert!(stderr.contains(says), "{case}: {stderr}");
        assert!(!arca_has(&root, &victim), "{case}: registered");
        let physical = root.join(victim.trim_start_matches('/'));
        assert!(
            physical.symlink_metadata().is_err(),
            "{case}: left in the store"
        );
    }

    // A truncated xz stream.
    let xz = copy_of("xz-source");
    std::fs::remove_dir_all(&xz).unwrap();
    let status = std::process::Command::new("cp")
        .args(["-a", caches["xz"].to_str().unwrap(), xz.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let nar = nar_file(&xz);
    let bytes = std::fs::read(&nar).unwrap();
    std::fs::write(&nar, &bytes[..bytes.len() / 2]).unwrap();
    let root = dir.path().join("attacked-xz");
    let output = arca_pull(&root, &xz, &pk, std::slice::from_ref(&victim));
    assert!(!output.status.success(), "truncated xz accepted");
    assert!(!arca_has(&root, &victim));

    // A cache of another store dir.
    let other = dir.path().join("other-store-dir");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("nix-cache-info"), "StoreDir: /gnu/store\n").unwrap();
    let output = arca_pull(
        &dir.path().join("attacked-dir"),
        &other,
        &pk,
        std::slice::from_ref(&victim),
    );
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("is for Nix stores with prefix '/gnu/store'"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
