//! Binary cache formats beside real Nix 2.8 (issue #16): the `.narinfo` files and the
//! `nix-cache-info` that `nix copy --to file://…?secret-key=…` writes are parsed by
//! `arca-cache` and printed back byte for byte; a `.narinfo` made by Arca from the
//! path's metadata and signed with the same key is the file Nix wrote; signatures verify
//! against Nix's public key and fail against another key or after tampering.

use std::ffi::OsStr;
use std::path::Path;

use arca_cache::{CacheInfo, Compression, NarInfo, NarInfoError, SignatureCheck};
use arca_store_core::{PublicKey, SecretKey, StoreDir};
use arca_tests::cache::{narinfos, nix_caches, nix_verify_contents};
use arca_tests::{nix, nix_available, workspace_root};

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
                SignatureCheck::Untrusted { signed_by, .. } => {
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
        signed_only,
        4 * caches.len(),
        "the four imported paths in every cache need a signature"
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
    nix_verify_contents(&nix_root);
    let store = format!("local?root={}", nix_root.display());
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

/// `write-nar-listing=true`: the `<hash part>.ls` Arca writes is byte for byte the one
/// `nix copy` writes for the same path (a tree with a directory, an executable, an empty
/// file and a symlink), and `arca cache serve` serves it; without the parameter none is
/// written.
#[test]
fn nar_listings_are_the_files_nix_writes() {
    if !nix_available("nar_listings_are_the_files_nix_writes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tree = d.join("src/tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::write(tree.join("sub/file"), "contents\n").unwrap();
    std::fs::write(tree.join("sub/deeper/empty"), "").unwrap();
    std::fs::write(tree.join("run"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        tree.join("run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/file", tree.join("link")).unwrap();

    let nix_root = d.join("nix");
    let nix_store = format!("local?root={}", nix_root.display());
    let added = nix(
        "nix-store",
        &[
            "--store".as_ref(),
            nix_store.as_ref(),
            "--add".as_ref(),
            tree.as_os_str(),
        ],
        None,
    );
    let path = String::from_utf8(added).unwrap().trim().to_owned();
    let nix_cache = d.join("nix-cache");
    let to = format!(
        "file://{}?write-nar-listing=true&compression=none",
        nix_cache.display()
    );
    nix(
        "nix",
        &[
            "--extra-experimental-features".as_ref(),
            "nix-command".as_ref(),
            "copy".as_ref(),
            "--from".as_ref(),
            nix_store.as_ref(),
            "--to".as_ref(),
            to.as_ref(),
            path.as_ref(),
        ],
        None,
    );

    let arca_store = d.join("arca");
    let arca_path = String::from_utf8(arca_tests::arca_ok(&[
        "--store".as_ref(),
        arca_store.as_os_str(),
        "store".as_ref(),
        "add-path".as_ref(),
        tree.as_os_str(),
    ]))
    .unwrap()
    .trim()
    .to_owned();
    assert_eq!(arca_path, path, "the same tree, the same path");
    let push = |cache: &Path, listing: bool| {
        let url = format!(
            "file://{}?compression=none{}",
            cache.display(),
            if listing {
                "&write-nar-listing=true"
            } else {
                ""
            }
        );
        arca_tests::arca_ok(&[
            "--store".as_ref(),
            arca_store.as_os_str(),
            "copy".as_ref(),
            "--to".as_ref(),
            url.as_ref(),
            path.as_ref(),
        ]);
    };
    let arca_cache = d.join("arca-cache");
    push(&arca_cache, true);
    let hash_part = path
        .strip_prefix("/nix/store/")
        .unwrap()
        .split('-')
        .next()
        .unwrap();
    let listing = format!("{hash_part}.ls");
    let theirs = std::fs::read(nix_cache.join(&listing)).unwrap();
    let ours = std::fs::read(arca_cache.join(&listing)).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&theirs),
        "the .ls Nix wrote"
    );
    assert!(String::from_utf8_lossy(&ours).contains("\"narOffset\""));

    let plain = d.join("plain-cache");
    push(&plain, false);
    assert!(!plain.join(&listing).exists(), "no listing unless asked");

    // `arca cache serve` serves the same listing, and a 404 for a path it lacks.
    let server = arca_tests::cache::ArcaServe::start(&arca_store, &[]);
    let get = |name: &str| {
        std::process::Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                &format!("{}/{name}", server.url()),
            ])
            .output()
            .unwrap()
            .stdout
    };
    let served = String::from_utf8(get(&listing)).unwrap();
    assert_eq!(served, format!("{}\n200", String::from_utf8_lossy(&theirs)));
    let missing = String::from_utf8(get(&format!("{}.ls", "0".repeat(32)))).unwrap();
    assert!(missing.ends_with("404"), "{missing}");
}
