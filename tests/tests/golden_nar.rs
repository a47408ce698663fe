//! Golden NARs from real Nix 2.8 (`tests/fixtures/trees/*.nar`, `trees.json`): Arca
//! accepts, lists and restores each of them, dumps the restored tree back to the exact
//! bytes Nix wrote, hashes it to Nix's `nar_hash` in every algorithm and encoding (through
//! the library and through `arca`), regenerates the 2 MiB `big-file` by its documented
//! rule, and rejects mutated copies with the specific error. Needs no Nix.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use arca_nar::{
    cat, dump_path, list, restore, validate, DumpOptions, Limits, Listing, ReadError, RestoreError,
    RestoreOptions,
};
use arca_store_core::{Hash, HashAlgo, Hasher};
use arca_tests::golden::{fixture_trees, text};
use arca_tests::{arca_ok, fixture};
use serde_json::{json, Value};

/// The trees with a committed NAR, with its bytes.
fn committed() -> Vec<(String, Value, Vec<u8>)> {
    let all: Vec<(String, Value, Vec<u8>)> = fixture_trees()
        .into_iter()
        .filter_map(|(key, tree)| {
            let nar = std::fs::read(fixture(tree["nar"].as_str()?)).unwrap();
            Some((key, tree, nar))
        })
        .collect();
    assert!(all.len() >= 29, "committed NARs are missing");
    all
}

/// Feeds every algorithm at once.
struct AllHashers(Vec<Hasher>);

impl AllHashers {
    fn new() -> AllHashers {
        AllHashers(HashAlgo::ALL.into_iter().map(Hasher::new).collect())
    }

    fn finish(self) -> Vec<Hash> {
        self.0.into_iter().map(Hasher::finish).collect()
    }
}

impl Write for AllHashers {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for hasher in &mut self.0 {
            hasher.update(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn assert_hashes_match(context: &str, hashes: &[Hash], nar_hash: &Value) {
    for hash in hashes {
        let forms = &nar_hash[hash.algo().name()];
        let algo = hash.algo();
        assert_eq!(
            hash.to_base16(),
            text(forms, "base16"),
            "{context}: {algo} base16"
        );
        assert_eq!(
            hash.to_base32(),
            text(forms, "base32"),
            "{context}: {algo} base32"
        );
        assert_eq!(
            hash.to_base64(),
            text(forms, "base64"),
            "{context}: {algo} base64"
        );
        assert_eq!(hash.to_sri(), text(forms, "sri"), "{context}: {algo} sri");
    }
}

/// Python's `bytes.decode(errors="backslashreplace")`, as the manifest spells names.
fn backslash_replace(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// The listing in the manifest's shape: one object per node, in NAR order.
fn flatten(node: &Listing, path: &[u8], out: &mut Vec<Value>) {
    let shown = backslash_replace(path);
    match node {
        Listing::Regular {
            executable, size, ..
        } => out.push(
            json!({"path": shown, "type": "regular", "executable": executable, "size": size}),
        ),
        Listing::Symlink { target } => {
            out.push(json!({"path": shown, "type": "symlink", "target": backslash_replace(target)}))
        }
        Listing::Directory { entries } => {
            out.push(json!({"path": shown, "type": "directory"}));
            for (name, child) in entries {
                let mut child_path = path.to_vec();
                if !child_path.is_empty() {
                    child_path.push(b'/');
                }
                child_path.extend_from_slice(name);
                flatten(child, &child_path, out);
            }
        }
    }
}

/// Regular files in a listing as (path bytes, size).
fn regular_files(node: &Listing, path: &[u8], out: &mut Vec<(Vec<u8>, u64)>) {
    match node {
        Listing::Regular { size, .. } => out.push((path.to_vec(), *size)),
        Listing::Symlink { .. } => {}
        Listing::Directory { entries } => {
            for (name, child) in entries {
                let mut child_path = path.to_vec();
                if !child_path.is_empty() {
                    child_path.push(b'/');
                }
                child_path.extend_from_slice(name);
                regular_files(child, &child_path, out);
            }
        }
    }
}

fn restore_all(dir: &Path) -> Vec<(String, Value, Vec<u8>, PathBuf)> {
    committed()
        .into_iter()
        .map(|(key, tree, nar)| {
            let target = dir.join(&key);
            restore(&nar[..], &target, &RestoreOptions::default())
                .unwrap_or_else(|e| panic!("tree {key}: restore failed: {e}"));
            (key, tree, nar, target)
        })
        .collect()
}

#[test]
fn every_fixture_nar_validates_and_lists_as_the_manifest_says() {
    for (key, tree, nar) in committed() {
        assert_eq!(
            nar.len() as u64,
            tree["nar_size"].as_u64().unwrap(),
            "{key}"
        );
        let size = validate(&nar[..], &Limits::default())
            .unwrap_or_else(|e| panic!("tree {key}: Nix's NAR rejected: {e}"));
        assert_eq!(size, nar.len() as u64, "tree {key}: validated size");
        let listing = list(&nar[..], &Limits::default())
            .unwrap_or_else(|e| panic!("tree {key}: list failed: {e}"));
        let mut ours = Vec::new();
        flatten(&listing, b"", &mut ours);
        assert_eq!(
            Value::Array(ours),
            tree["listing"],
            "tree {key}: listing differs from the manifest"
        );
        let root_type = match listing {
            Listing::Regular { .. } => "regular",
            Listing::Symlink { .. } => "symlink",
            Listing::Directory { .. } => "directory",
        };
        assert_eq!(root_type, text(&tree, "type"), "tree {key}: root type");
    }
}

#[test]
fn every_fixture_nar_hashes_to_the_manifest_nar_hash() {
    for (key, tree, nar) in committed() {
        let mut hashers = AllHashers::new();
        hashers.write_all(&nar).unwrap();
        assert_hashes_match(&format!("tree {key}"), &hashers.finish(), &tree["nar_hash"]);
    }
}

#[test]
fn restore_then_dump_path_gives_back_nix_bytes_and_hashes() {
    let dir = tempfile::tempdir().unwrap();
    for (key, tree, nar, target) in restore_all(dir.path()) {
        let mut again = Vec::new();
        let size = dump_path(&target, &mut again, &DumpOptions::default())
            .unwrap_or_else(|e| panic!("tree {key}: dump failed: {e}"));
        assert_eq!(size, again.len() as u64, "tree {key}: returned size");
        assert!(
            again == nar,
            "tree {key}: dump of the restored tree differs from Nix's NAR"
        );
        let mut hashers = AllHashers::new();
        dump_path(&target, &mut hashers, &DumpOptions::default()).unwrap();
        assert_hashes_match(&format!("tree {key}"), &hashers.finish(), &tree["nar_hash"]);
    }
}

/// Every regular file of every fixture NAR as (tree key, NAR, path inside, size,
/// executable, restored file on disk).
type RegularFile = (String, Vec<u8>, Vec<u8>, u64, bool, PathBuf);

fn restored_regular_files(dir: &Path) -> Vec<RegularFile> {
    use std::os::unix::ffi::OsStrExt;
    let mut all = Vec::new();
    for (key, _tree, nar, target) in restore_all(dir) {
        let listing = list(&nar[..], &Limits::default()).unwrap();
        let mut files = Vec::new();
        regular_files(&listing, b"", &mut files);
        for (path, size) in files {
            let inside = Path::new(OsStr::from_bytes(&path));
            let executable = matches!(
                listing.get(inside),
                Some(Listing::Regular {
                    executable: true,
                    ..
                })
            );
            let on_disk = if path.is_empty() {
                target.clone()
            } else {
                target.join(inside)
            };
            all.push((key.clone(), nar.clone(), path, size, executable, on_disk));
        }
    }
    assert!(all.len() > 200, "only {} regular files", all.len());
    all
}

#[test]
fn restored_files_have_the_listed_sizes_and_executable_bits() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (key, _nar, _path, size, executable, on_disk) in restored_regular_files(dir.path()) {
        let metadata = std::fs::symlink_metadata(&on_disk).unwrap();
        assert!(
            metadata.is_file(),
            "tree {key}: {on_disk:?} is a regular file"
        );
        assert_eq!(metadata.len(), size, "tree {key}: {on_disk:?} size");
        let mode = metadata.permissions().mode();
        assert_eq!(
            mode & 0o100 != 0,
            executable,
            "tree {key}: {on_disk:?} mode {mode:o}"
        );
    }
}

#[test]
fn cat_of_every_regular_file_in_every_fixture_nar_gives_its_contents() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let files = restored_regular_files(dir.path());
    for (key, nar, path, size, _executable, on_disk) in &files {
        let contents = std::fs::read(on_disk).unwrap();
        let inside = Path::new(OsStr::from_bytes(path));
        let mut out = Vec::new();
        match cat(&nar[..], inside, &mut out, &Limits::default()) {
            Ok(catted) if catted == *size && out == contents => {}
            Ok(catted) => failures.push(format!(
                "tree {key}: cat {inside:?} gave {catted} bytes {:?}, expected {size} bytes {:?}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&contents)
            )),
            Err(error) => failures.push(format!("tree {key}: cat {inside:?}: {error}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} `cat` calls failed:\n{}",
        failures.len(),
        files.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn cat_refuses_directories_symlinks_and_missing_paths() {
    let nar = std::fs::read(fixture("trees/mixed.nar")).unwrap();
    // "lib/a": a directory whose last name is also a file at the root.
    let not_regular = [
        "",
        "/",
        "bin",
        "lib/a",
        "lib/a/b",
        "abs-link",
        "bin/link-to-tool",
    ];
    for path in not_regular {
        let mut out = Vec::new();
        match cat(&nar[..], Path::new(path), &mut out, &Limits::default()) {
            Err(arca_nar::CatError::NotRegular { .. }) => {}
            other => panic!(
                "cat {path:?} (not a regular file): expected NotRegular, got {other:?} with output {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    for path in ["nope", "bin/nope", "bin/tool/below", "lib/a/b/c/d", "../a"] {
        let mut out = Vec::new();
        match cat(&nar[..], Path::new(path), &mut out, &Limits::default()) {
            Err(arca_nar::CatError::NotFound { .. }) => {}
            other => panic!(
                "cat {path:?} (missing): expected NotFound, got {other:?} with output {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

fn big_file_contents() -> Vec<u8> {
    (0..2_097_155u64)
        .map(|i| ((i * 7 + i / 4096) % 251) as u8)
        .collect::<Vec<u8>>()
}

fn big_file_tree() -> Value {
    let (_, tree) = fixture_trees()
        .into_iter()
        .find(|(key, _)| key == "big-file")
        .expect("trees.json has big-file");
    assert!(tree["nar"].is_null(), "big-file's NAR is not committed");
    tree
}

#[test]
fn big_file_regenerated_by_its_rule_dumps_to_the_manifest_nar_hash_and_size() {
    let tree = big_file_tree();
    let contents = big_file_contents();
    assert_eq!(
        contents.len() as u64,
        tree["generator"]["size"].as_u64().unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big-file");
    std::fs::write(&path, &contents).unwrap();
    let mut hashers = AllHashers::new();
    let size = dump_path(&path, &mut hashers, &DumpOptions::default()).unwrap();
    assert_eq!(
        size,
        tree["nar_size"].as_u64().unwrap(),
        "big-file NAR size"
    );
    assert_hashes_match("big-file", &hashers.finish(), &tree["nar_hash"]);
    // Its flat hash is that of the bytes.
    for algo in HashAlgo::ALL {
        let hash = Hash::digest(algo, &contents);
        let forms = &tree["flat_hash"][algo.name()];
        assert_eq!(
            hash.to_base16(),
            text(forms, "base16"),
            "big-file flat {algo}"
        );
        assert_eq!(
            hash.to_base32(),
            text(forms, "base32"),
            "big-file flat {algo}"
        );
    }
    // And the NAR round-trips through restore.
    let mut nar = Vec::new();
    dump_path(&path, &mut nar, &DumpOptions::default()).unwrap();
    let listing = list(&nar[..], &Limits::default()).unwrap();
    let mut flat = Vec::new();
    flatten(&listing, b"", &mut flat);
    assert_eq!(Value::Array(flat), tree["listing"], "big-file listing");
    let copy = dir.path().join("copy");
    restore(&nar[..], &copy, &RestoreOptions::default()).unwrap();
    assert!(
        std::fs::read(&copy).unwrap() == contents,
        "big-file restored"
    );
}

// ---- Mutated NARs -------------------------------------------------------------------

/// What a mutated NAR must fail with.
#[derive(Debug, Clone, Copy)]
enum Want {
    BadMagic,
    NonZeroPadding(u64),
    UnexpectedToken(u64),
    UnexpectedEof(u64),
    TrailingBytes(u64),
}

fn matches_want(error: &ReadError, want: Want) -> bool {
    match (error, want) {
        (ReadError::BadMagic, Want::BadMagic) => true,
        (ReadError::NonZeroPadding { offset }, Want::NonZeroPadding(at)) => *offset == at,
        (ReadError::UnexpectedToken { offset, .. }, Want::UnexpectedToken(at)) => *offset == at,
        (ReadError::UnexpectedEof { offset }, Want::UnexpectedEof(at)) => *offset == at,
        (ReadError::TrailingBytes { offset }, Want::TrailingBytes(at)) => *offset == at,
        _ => false,
    }
}

/// The mutations of one NAR, each with the error it must give.
fn mutations(nar: &[u8]) -> Vec<(String, Vec<u8>, Want)> {
    let len = nar.len();
    let flip = |at: usize| {
        let mut copy = nar.to_vec();
        copy[at] ^= 0x20;
        copy
    };
    let mut all = vec![
        // The magic string's length field.
        (
            "flip byte 0 (magic length)".to_owned(),
            flip(0),
            Want::BadMagic,
        ),
        // 'n' of "nix-archive-1".
        (
            "flip byte 8 (magic text)".to_owned(),
            flip(8),
            Want::BadMagic,
        ),
        (
            "flip byte 20 (magic '1')".to_owned(),
            flip(20),
            Want::BadMagic,
        ),
        // The 3 padding bytes after the 13-byte magic.
        (
            "flip byte 21 (magic padding)".to_owned(),
            flip(21),
            Want::NonZeroPadding(21),
        ),
        // The '(' token of the root node, whose string starts at 24.
        (
            "flip byte 32 (root '(')".to_owned(),
            flip(32),
            Want::UnexpectedToken(24),
        ),
        // The last byte is padding of the final ')' token (at len - 16).
        (
            "flip the last byte (padding of ')')".to_owned(),
            flip(len - 1),
            Want::NonZeroPadding(len as u64 - 7),
        ),
    ];
    for cut in [0, 4, 8, 24, len / 2, len - 8, len - 1] {
        all.push((
            format!("truncate to {cut} bytes"),
            nar[..cut].to_vec(),
            Want::UnexpectedEof(cut as u64),
        ));
    }
    for (what, garbage) in [
        ("one zero byte", vec![0u8]),
        ("eight zero bytes", vec![0u8; 8]),
        ("text", b"garbage".to_vec()),
        ("a second copy of the NAR", nar.to_vec()),
    ] {
        let mut copy = nar.to_vec();
        copy.extend_from_slice(&garbage);
        all.push((
            format!("append {what}"),
            copy,
            Want::TrailingBytes(len as u64),
        ));
    }
    all
}

#[test]
fn mutated_fixture_nars_fail_with_the_specific_error_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    for (key, _tree, nar) in committed() {
        for (what, bad, want) in mutations(&nar) {
            let context = format!("tree {key}, {what}: expected {want:?}");
            match validate(&bad[..], &Limits::default()) {
                Err(error) => assert!(
                    matches_want(&error, want),
                    "{context}: validate gave {error:?}"
                ),
                Ok(size) => panic!("{context}: validate accepted it ({size} bytes)"),
            }
            match list(&bad[..], &Limits::default()) {
                Err(error) => assert!(matches_want(&error, want), "{context}: list gave {error:?}"),
                Ok(_) => panic!("{context}: list accepted it"),
            }
            let target = dir.path().join(format!("{key}-bad"));
            match restore(&bad[..], &target, &RestoreOptions::default()) {
                Err(RestoreError::Read(error)) => {
                    assert!(
                        matches_want(&error, want),
                        "{context}: restore gave {error:?}"
                    )
                }
                Err(other) => panic!("{context}: restore gave {other:?}"),
                Ok(()) => panic!("{context}: restore accepted it"),
            }
            assert!(
                target.symlink_metadata().is_err(),
                "{context}: a failed restore left {target:?} behind"
            );
        }
    }
}

// ---- Through the `arca` command ---------------------------------------------------------

#[test]
fn arca_dump_path_and_hash_path_of_restored_trees_equal_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let mut restored = restore_all(dir.path());
    // The big file too (no NAR committed: compare hashes only).
    let big = dir.path().join("big-file");
    std::fs::write(&big, big_file_contents()).unwrap();
    for (key, _tree, nar, target) in &restored {
        let ours = arca_ok(&["nar".as_ref(), "dump-path".as_ref(), target.as_os_str()]);
        assert!(
            &ours == nar,
            "tree {key}: `arca nar dump-path` differs from Nix's NAR"
        );
    }
    restored.push(("big-file".to_owned(), big_file_tree(), Vec::new(), big));
    let paths: Vec<&OsStr> = restored.iter().map(|(.., path)| path.as_os_str()).collect();
    let mut runs = vec![(None, None, "sri")]; // the default: SRI sha256
    for algo in HashAlgo::ALL {
        for (flag, form) in [
            ("--base16", "base16"),
            ("--base32", "base32"),
            ("--base64", "base64"),
            ("--sri", "sri"),
        ] {
            runs.push((Some(algo), Some(flag), form));
        }
    }
    for (algo, flag, form) in runs {
        let mut args: Vec<&OsStr> = vec!["hash".as_ref(), "path".as_ref()];
        if let Some(algo) = algo {
            args.extend(["--type".as_ref(), OsStr::new(algo.name())]);
        }
        if let Some(flag) = flag {
            args.push(flag.as_ref());
        }
        args.extend(&paths);
        let stdout = String::from_utf8(arca_ok(&args)).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            restored.len(),
            "arca hash path {algo:?} {flag:?}"
        );
        let algo = algo.unwrap_or(HashAlgo::Sha256);
        for ((key, tree, ..), line) in restored.iter().zip(lines) {
            assert_eq!(
                line,
                text(&tree["nar_hash"][algo.name()], form),
                "tree {key}: arca hash path --type {algo} {flag:?}"
            );
        }
    }
}
