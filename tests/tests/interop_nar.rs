//! Interop with real Nix on random trees: `arca` and Nix 2.8 must produce the same NAR
//! bytes, restore each other's NARs to the same trees, and print the same hashes in every
//! encoding. Needs `nix-store`/`nix-hash`; skipped loudly without them (an error in CI).

use std::ffi::{OsStr, OsString};
use std::fs;

use arca_tests::{arca_ok, make_trees, nix, nix_available};

const TREES: u64 = 200;

#[test]
fn dump_path_is_byte_identical_to_nix_store_dump() {
    if !nix_available("dump_path_is_byte_identical_to_nix_store_dump") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (seed, tree) in make_trees(dir.path(), 0..TREES).iter().enumerate() {
        let ours = arca_ok(&["nar".as_ref(), "dump-path".as_ref(), tree.as_os_str()]);
        let theirs = nix("nix-store", &["--dump".as_ref(), tree.as_os_str()], None);
        assert!(
            ours == theirs,
            "NAR of random tree seed {seed} differs from Nix's"
        );
    }
}

#[test]
fn restore_of_nix_nar_dumps_back_to_the_same_bytes() {
    if !nix_available("restore_of_nix_nar_dumps_back_to_the_same_bytes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trees = make_trees(dir.path(), 1000..1000 + TREES);
    for (index, tree) in trees.iter().enumerate() {
        let nar = nix("nix-store", &["--dump".as_ref(), tree.as_os_str()], None);
        let nar_file = dir.path().join(format!("nar-{index}"));
        fs::write(&nar_file, &nar).unwrap();
        let restored = dir.path().join(format!("restored-{index}"));
        let output = std::process::Command::new(arca_tests::arca_bin())
            .args(["nar".as_ref(), "restore".as_ref(), restored.as_os_str()])
            .stdin(fs::File::open(&nar_file).unwrap())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "arca nar restore failed on seed {}: {}",
            1000 + index,
            String::from_utf8_lossy(&output.stderr)
        );
        let again = nix(
            "nix-store",
            &["--dump".as_ref(), restored.as_os_str()],
            None,
        );
        assert!(
            again == nar,
            "restore of seed {} lost information",
            1000 + index
        );
        // And Nix restores what arca wrote to the same tree.
        let nix_restored = dir.path().join(format!("nix-restored-{index}"));
        nix(
            "nix-store",
            &["--restore".as_ref(), nix_restored.as_os_str()],
            Some(&nar),
        );
        let ours = arca_ok(&[
            "nar".as_ref(),
            "dump-path".as_ref(),
            nix_restored.as_os_str(),
        ]);
        assert!(
            ours == nar,
            "dump of Nix-restored seed {} differs",
            1000 + index
        );
    }
}

#[test]
fn hash_path_matches_nix_in_every_algorithm_and_encoding() {
    if !nix_available("hash_path_matches_nix_in_every_algorithm_and_encoding") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trees = make_trees(dir.path(), 2000..2000 + TREES);
    let paths: Vec<&OsStr> = trees.iter().map(|p| p.as_os_str()).collect();
    for algo in ["md5", "sha1", "sha256", "sha512"] {
        for (nix_flags, arca_flag) in [
            (&["nix-hash", "--type", algo][..], "--base16"),
            (&["nix-hash", "--type", algo, "--base32"][..], "--base32"),
            (
                &["nix", "hash", "path", "--type", algo, "--base64"][..],
                "--base64",
            ),
            (
                &["nix", "hash", "path", "--type", algo, "--sri"][..],
                "--sri",
            ),
        ] {
            let mut nix_args: Vec<OsString> = nix_flags[1..].iter().map(OsString::from).collect();
            nix_args.extend(paths.iter().map(|p| p.to_os_string()));
            let nix_args: Vec<&OsStr> = nix_args.iter().map(OsString::as_os_str).collect();
            let theirs = nix(nix_flags[0], &nix_args, None);
            let mut arca_args: Vec<&OsStr> = vec![
                "hash".as_ref(),
                "path".as_ref(),
                "--type".as_ref(),
                algo.as_ref(),
            ];
            arca_args.push(arca_flag.as_ref());
            arca_args.extend(paths.iter().copied());
            let ours = arca_ok(&arca_args);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs),
                "hash path --type {algo} {arca_flag} differs from `{}`",
                nix_flags.join(" ")
            );
        }
    }
}
