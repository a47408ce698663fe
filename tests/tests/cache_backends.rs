//! The binary cache push/pull suite on every backend (issue #16), each a real server on
//! 127.0.0.1: `file://`, `http://` (a plain HTTP/1.1 file server with uploads) and
//! `s3://` (the S3-compatible object store `s3s-fs`), beside real Nix 2.8:
//!
//! - `arca copy --to` pushes a signed closure (xz, zstd or uncompressed; an S3 NAR
//!   larger than a part goes up in parts) and `arca copy --from` pulls it back into a
//!   fresh store, whose `arca store verify --check-contents --sigs-needed 1` and Nix's own
//!   `nix-store --verify --check-contents` are clean; real Nix substitutes from what Arca
//!   pushed (file and HTTP: Debian's Nix has no S3 support) and `nix store verify
//!   --sigs-needed 1` accepts Arca's signatures.
//! - Caches real Nix wrote (xz, zstd and uncompressed) are pulled from on every backend.
//! - Attacks on a Nix-written cache, on every backend, are refused and leave nothing in
//!   the store, each with an error naming what was wrong.
//! - `arca cache serve`: real Nix and Arca substitute from it (uncompressed, xz, zstd).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arca_cache::NarInfo;
use arca_store_core::StoreDir;
use arca_tests::cache::{
    arca, arca_keys, arca_ok, assert_complete, backends, cached_paths, nix_caches,
    nix_verify_contents, s3_available, source_store, stderr, with_parameters, ArcaServe,
};
use arca_tests::nix_available;

/// Pulls `paths` from `url` into the Arca store at `root`, trusting `pk`.
fn pull(root: &Path, url: &str, pk: &str, extra: &[&str], paths: &[String]) -> Output {
    let mut args = vec!["--option", "trusted-public-keys", pk];
    args.extend(extra);
    args.extend(["copy", "--from", url]);
    args.extend(paths.iter().map(String::as_str));
    arca(root, &args)
}

fn arca_has(root: &Path, path: &str) -> bool {
    arca(root, &["path-info", path]).status.success()
}

/// Arca's and Nix's full verification of the Arca store at `root`, each must be clean;
/// Arca's also checks every path carries a signature by `pk` (or is content-addressed).
fn verify_clean(root: &Path, pk: &str) {
    arca_ok(
        root,
        &[
            "--option",
            "trusted-public-keys",
            pk,
            "store",
            "verify",
            "--check-contents",
            "--sigs-needed",
            "1",
        ],
    );
    nix_verify_contents(root);
}

/// Real Nix substitutes `paths` from `url` into a fresh store below `d`, trusting `pk`,
/// and checks the paths' signatures with `nix store verify --sigs-needed 1`.
///
/// Nix remembers narinfos per cache URL in `~/.cache/nix` for days; an `http://` cache
/// on a port an earlier server of another test had would be answered from that memory,
/// so each run gets a cache directory of its own.
fn nix_substitutes(d: &Path, name: &str, url: &str, pk: &str, paths: &[String]) {
    let root = d.join(format!("nix-{name}"));
    let store = format!("local?root={}", root.display());
    let cache_home = d.join(format!("nix-{name}-cache-home"));
    let output = Command::new("nix-store")
        .args(["--store", &store, "-r"])
        .args(paths)
        .args(["--option", "substituters", url])
        .args(["--option", "trusted-public-keys", pk])
        .env("NIX_CONFIG", "experimental-features = nix-command")
        .env("XDG_CACHE_HOME", &cache_home)
        .output()
        .unwrap();
    assert!(output.status.success(), "{name}: {}", stderr(&output));
    let verify = Command::new("nix")
        .args(["store", "verify", "--store", &store, "--sigs-needed", "1"])
        .args(["--option", "trusted-public-keys", pk])
        .args(paths)
        .env("NIX_CONFIG", "experimental-features = nix-command")
        .env("XDG_CACHE_HOME", &cache_home)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{name}: {}", stderr(&verify));
    nix_verify_contents(&root);
}

#[test]
fn arca_pushes_and_pulls_on_every_backend_and_nix_substitutes_what_it_pushed() {
    if !nix_available("arca_pushes_and_pulls_on_every_backend") {
        return;
    }
    let with_s3 = s3_available("arca_pushes_and_pulls_on_every_backend");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (source, paths) = source_store(d);
    let (sk, pk) = arca_keys(d, "arca-test-1");
    let (backends, _s3) = backends(d, with_s3);
    // More than one S3 part, uncompressed: a multipart upload.
    let big = d.join("big");
    let mut bytes = vec![0u8; (arca_cache::s3::PART_SIZE + (3 << 20)) as usize];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = (i.wrapping_mul(2654435761) >> 13) as u8;
    }
    std::fs::write(&big, &bytes).unwrap();
    drop(bytes);
    let big_path = arca_ok(&source, &["store", "add-path", big.to_str().unwrap()])
        .trim()
        .to_owned();

    for (backend, compression) in backends.iter().zip(["xz", "zstd", "none"]) {
        let name = backend.name;
        let to = with_parameters(
            &backend.url,
            &format!("secret-key={}&compression={compression}", sk.display()),
        );
        let mut pushed = paths.clone();
        if name == "s3" {
            pushed.push(big_path.clone());
        }
        let mut args = vec!["copy", "--to", to.as_str()];
        args.extend(pushed.iter().map(String::as_str));
        let first = arca(&source, &args);
        assert!(first.status.success(), "{name}: {}", stderr(&first));
        let expected = format!("copied {} paths", pushed.len());
        assert!(
            stderr(&first).contains(&expected),
            "{name}: {}",
            stderr(&first)
        );
        let again = arca(&source, &args);
        assert!(
            stderr(&again).contains("copied 0 paths"),
            "{name}: {}",
            stderr(&again)
        );
        assert_complete(&backend.dir);
        let extension = match compression {
            "xz" => ".nar.xz",
            "zstd" => ".nar.zst",
            _ => ".nar",
        };
        for entry in std::fs::read_dir(backend.dir.join("nar")).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            assert!(file.ends_with(extension), "{name}: {file}");
        }

        let root = d.join(format!("pulled-{name}"));
        let output = pull(&root, &backend.url, &pk, &[], &pushed);
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        for path in &pushed {
            assert!(arca_has(&root, path), "{name}: {path}");
        }
        verify_clean(&root, &pk);
        if name != "s3" {
            nix_substitutes(d, name, &backend.url, &pk, &paths);
        }
    }
    let pulled_big = d.join("pulled-s3").join(big_path.trim_start_matches('/'));
    if with_s3 {
        assert_eq!(
            std::fs::read(pulled_big).unwrap(),
            std::fs::read(&big).unwrap()
        );
    }
}

/// For test `test`, when real Nix is here: a scratch directory with the caches Nix
/// wrote in it ([`nix_caches`]), by compression, Nix's public key, and whether the S3
/// server is installed.
fn nix_made_caches(
    test: &str,
) -> Option<(
    tempfile::TempDir,
    BTreeMap<&'static str, PathBuf>,
    String,
    bool,
)> {
    if !nix_available(test) {
        return None;
    }
    let with_s3 = s3_available(test);
    let dir = tempfile::tempdir().unwrap();
    let (nix_made, _sk, pk) = nix_caches(dir.path());
    Some((dir, nix_made, pk.trim().to_owned(), with_s3))
}

/// Caches real Nix wrote (uncompressed, xz and zstd), put on every backend.
#[test]
fn arca_substitutes_from_caches_nix_wrote_on_every_backend() {
    let Some((dir, nix_made, pk, with_s3)) =
        nix_made_caches("arca_substitutes_from_caches_nix_wrote_on_every_backend")
    else {
        return;
    };
    let d = dir.path();
    for (compression, cache) in &nix_made {
        let (backends, _s3) = backends(&d.join(format!("backends-{compression}")), with_s3);
        let paths = cached_paths(cache);
        for backend in &backends {
            copy_dir(cache, &backend.dir);
            let root = d.join(format!("arca-{compression}-{}", backend.name));
            let output = pull(&root, &backend.url, &pk, &[], &paths);
            assert!(
                output.status.success(),
                "{compression} on {}: {}",
                backend.name,
                stderr(&output)
            );
            for path in &paths {
                assert!(arca_has(&root, path), "{compression}: {path}");
            }
            verify_clean(&root, &pk);
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Replaces the line starting with `field: ` in `file`.
fn set_field(file: &Path, field: &str, value: Option<&str>) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| !line.starts_with(&format!("{field}: ")))
        .map(String::from)
        .collect();
    if let Some(value) = value {
        lines.push(format!("{field}: {value}"));
    }
    std::fs::write(file, lines.join("\n") + "\n").unwrap();
}

/// Attacks on a cache real Nix wrote, on every backend: each refused with an error
/// saying what was wrong, the path left unregistered and absent from the store.
#[test]
fn attacks_are_refused_on_every_backend_and_leave_nothing() {
    let Some((dir, nix_made, pk, with_s3)) =
        nix_made_caches("attacks_are_refused_on_every_backend_and_leave_nothing")
    else {
        return;
    };
    let d = dir.path();
    let store_dir = StoreDir::default();
    let paths = cached_paths(&nix_made["none"]);
    // The top of the imported chain: it has references, and no content address.
    let chain: Vec<&String> = paths.iter().filter(|p| p.contains("-bench-")).collect();
    let victim = chain
        .iter()
        .find(|p| {
            let path = store_dir.parse_path(p).unwrap();
            let text =
                std::fs::read_to_string(nix_made["none"].join(NarInfo::file_name(&path))).unwrap();
            text.lines()
                .any(|l| l.starts_with("References: ") && l.len() > "References: ".len())
        })
        .map(|p| (*p).clone())
        .expect("a chain path with references");
    let victim_path = store_dir.parse_path(&victim).unwrap();
    let other = chain.iter().find(|p| ***p != victim).unwrap();
    let other_path = &store_dir.parse_path(other).unwrap();
    let (_, other_pk) = arca_keys(d, "other-1");

    type Tamper<'a> = Box<dyn Fn(&Path) + 'a>;
    /// (case, which Nix cache, tampering, trusted key, extra options, what the error says)
    type Attack<'a> = (
        &'a str,
        &'a str,
        Tamper<'a>,
        &'a str,
        &'a [&'a str],
        &'a str,
    );
    let narinfo = |cache: &Path| cache.join(NarInfo::file_name(&victim_path));
    let nar = |cache: &Path| {
        let text = std::fs::read_to_string(narinfo(cache)).unwrap();
        cache.join(
            NarInfo::parse(&StoreDir::default(), &text, "x")
                .unwrap()
                .url,
        )
    };
    let no_change: Tamper = Box::new(|_| {});
    let attacks: Vec<Attack> = vec![
        (
            "untrusted key",
            "none",
            no_change,
            other_pk.trim(),
            &[],
            "signatures by [test-1], and the trusted keys are [other-1]",
        ),
        (
            "missing signature",
            "none",
            Box::new(move |c| set_field(&narinfo(c), "Sig", None)),
            &pk,
            &[],
            "it carries signatures by []",
        ),
        (
            "tampered NAR",
            "none",
            Box::new(move |c| {
                let file = nar(c);
                let mut bytes = std::fs::read(&file).unwrap();
                let at = bytes.len() - 20;
                bytes[at] ^= 1;
                std::fs::write(&file, bytes).unwrap();
            }),
            &pk,
            &[],
            "cannot add",
        ),
        (
            "tampered narinfo hash",
            "none",
            Box::new(move |c| {
                set_field(
                    &narinfo(c),
                    "NarHash",
                    Some("sha256:0000000000000000000000000000000000000000000000000000"),
                )
            }),
            &pk,
            &[],
            "do not verify: forged or tampered",
        ),
        (
            "tampered narinfo hash, signatures not required",
            "none",
            Box::new(move |c| {
                set_field(
                    &narinfo(c),
                    "NarHash",
                    Some("sha256:0000000000000000000000000000000000000000000000000000"),
                )
            }),
            &pk,
            &["--option", "require-sigs", "false"],
            "has hash sha256:",
        ),
        (
            "tampered narinfo size",
            "none",
            Box::new(move |c| set_field(&narinfo(c), "NarSize", Some("1"))),
            &pk,
            &[],
            "do not verify: forged or tampered",
        ),
        (
            "tampered narinfo references",
            "none",
            Box::new(move |c| set_field(&narinfo(c), "References", Some(""))),
            &pk,
            &[],
            "do not verify: forged or tampered",
        ),
        (
            "truncated xz",
            "xz",
            Box::new(move |c| {
                let file = nar(c);
                let bytes = std::fs::read(&file).unwrap();
                std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
            }),
            &pk,
            &[],
            "cannot add",
        ),
        (
            "NAR gone (404)",
            "none",
            Box::new(move |c| std::fs::remove_file(nar(c)).unwrap()),
            &pk,
            &[],
            "but not its NAR",
        ),
        (
            "NAR URL outside the cache",
            "none",
            Box::new(move |c| set_field(&narinfo(c), "URL", Some("../../../etc/passwd"))),
            &pk,
            &["--option", "require-sigs", "false"],
            "is outside the cache",
        ),
        (
            "narinfo of another store dir",
            "none",
            Box::new(move |c| {
                let text = std::fs::read_to_string(narinfo(c)).unwrap();
                std::fs::write(narinfo(c), text.replace("/nix/store/", "/gnu/store/")).unwrap();
            }),
            &pk,
            &[],
            "not in '/nix/store'",
        ),
        (
            "path name not the narinfo's",
            "none",
            Box::new(move |c| {
                std::fs::copy(c.join(NarInfo::file_name(other_path)), narinfo(c)).unwrap();
            }),
            &pk,
            &[],
            "describes",
        ),
    ];
    let (backends, _s3) = backends(&d.join("backends"), with_s3);
    for (case, source, tamper, key, extra, says) in &attacks {
        for backend in &backends {
            let _ = std::fs::remove_dir_all(&backend.dir);
            copy_dir(&nix_made[*source], &backend.dir);
            tamper(&backend.dir);
            let root = d.join(format!(
                "attacked-{}-{}",
                backend.name,
                case.replace([' ', ',', '(', ')'], "-")
            ));
            let output = pull(
                &root,
                &backend.url,
                key,
                extra,
                std::slice::from_ref(&victim),
            );
            let said = stderr(&output);
            let context = format!("{case} on {}", backend.name);
            assert!(!output.status.success(), "{context}: accepted");
            assert!(said.contains(says), "{context}: {said}");
            assert!(!arca_has(&root, &victim), "{context}: registered");
            assert!(
                root.join(victim.trim_start_matches('/'))
                    .symlink_metadata()
                    .is_err(),
                "{context}: left in the store"
            );
        }
    }
}

/// `arca cache serve`: Nix substitutes from it, signatures and all, and so does Arca,
/// with every compression it serves; stale and unknown URLs are 404s.
#[test]
fn nix_and_arca_substitute_from_arca_cache_serve() {
    if !nix_available("nix_and_arca_substitute_from_arca_cache_serve") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (source, paths) = source_store(d);
    let (sk, pk) = arca_keys(d, "serve-1");
    for compression in ["none", "xz", "zstd"] {
        let server = ArcaServe::start(
            &source,
            &[
                "--sign-key",
                sk.to_str().unwrap(),
                "--compression",
                compression,
            ],
        );
        let info = http_get(&format!("{}/nix-cache-info", server.url()));
        assert_eq!(
            info,
            Some("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n".into())
        );
        nix_substitutes(
            d,
            &format!("serve-{compression}"),
            &server.url(),
            &pk,
            &paths,
        );
        let root = d.join(format!("arca-from-serve-{compression}"));
        let output = pull(&root, &server.url(), &pk, &[], &paths);
        assert!(
            output.status.success(),
            "{compression}: {}",
            stderr(&output)
        );
        verify_clean(&root, &pk);
        // A path the store lacks, and a NAR URL whose hash is not the path's.
        let missing = format!("{}/{}.narinfo", server.url(), "0".repeat(32));
        assert_eq!(http_get(&missing), None);
        let hash = &paths[0]["/nix/store/".len().."/nix/store/".len() + 32];
        let stale = format!("{}/nar/{hash}-{}.nar", server.url(), "1".repeat(52));
        assert_eq!(http_get(&stale), None);
    }
}

/// The body of a GET, or `None` on a 404.
fn http_get(url: &str) -> Option<String> {
    let output = Command::new("curl")
        .args(["-s", "-f", url])
        .output()
        .expect("curl runs");
    output
        .status
        .success()
        .then(|| String::from_utf8(output.stdout).unwrap())
}
