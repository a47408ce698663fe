//! Helpers for the garbage collector tests (`tests/tests/gc_interop.rs`): synthetic
//! stores of many small paths (an export archive both `arca store import` and
//! `nix-store --import` take), the entries of a store directory, and real Nix run on a
//! store root (`nix-store --store local?root=ROOT`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arca_nar::NarEncoder;
use arca_store_core::{Hash, HashAlgo, StoreDir};

use crate::store::run;
use crate::NIX_CONFIG;

/// The lines `nix-store --verify --check-contents` prints on a healthy store.
const NIX_VERIFY_PROGRESS: &[&str] = &[
    "reading the Nix store...",
    "checking path existence...",
    "checking link hashes...",
    "checking store hashes...",
];

/// One path of a synthetic store: a directory `name` holding one regular file `data`,
/// stored as `nix-store --add` would store it (a source path over its NAR hash and
/// references), so that with no references `nix-store --add` of the same directory on
/// disk gives the same store path.
#[derive(Debug, Clone)]
pub struct SyntheticPath {
    /// The directory's base name, and the store path's name.
    pub name: String,
    /// The contents of `data`: the path's index, then the full paths it refers to, one
    /// per line (so the references are real ones).
    pub data: Vec<u8>,
    /// The full store path (`/nix/store/…`).
    pub path: String,
    /// Indices of the paths it refers to (all earlier ones).
    pub references: Vec<usize>,
    nar: Vec<u8>,
}

impl SyntheticPath {
    /// Writes the source directory `dir/<name>/data`; returns `dir/<name>`.
    pub fn write_source(&self, dir: &Path) -> PathBuf {
        let source = dir.join(&self.name);
        fs::create_dir_all(&source).unwrap();
        fs::write(source.join("data"), &self.data).unwrap();
        source
    }

    /// The base name of the store path.
    pub fn base_name(&self) -> &str {
        self.path
            .strip_prefix("/nix/store/")
            .expect("synthetic paths live in /nix/store")
    }
}

/// `count` synthetic paths named `<prefix>-<i>`; path `i` refers to the paths
/// `references(i)`, which must all be below `i`.
pub fn synthetic_paths(
    prefix: &str,
    count: usize,
    references: impl Fn(usize) -> Vec<usize>,
) -> Vec<SyntheticPath> {
    let store_dir = StoreDir::new("/nix/store").unwrap();
    let mut paths: Vec<SyntheticPath> = Vec::with_capacity(count);
    for index in 0..count {
        let mut refs = references(index);
        refs.sort_unstable();
        refs.dedup();
        assert!(
            refs.iter().all(|&r| r < index),
            "path {index} may only refer to earlier paths: {refs:?}"
        );
        let mut data = format!("{prefix} {index}\n").into_bytes();
        let mut reference_set = BTreeSet::new();
        for &r in &refs {
            data.extend_from_slice(paths[r].path.as_bytes());
            data.push(b'\n');
            reference_set.insert(store_dir.parse_path(&paths[r].path).unwrap());
        }
        let mut encoder = NarEncoder::new(Vec::new());
        encoder.begin_directory().unwrap();
        encoder.entry(b"data").unwrap();
        encoder
            .regular(false, data.len() as u64, &mut &data[..])
            .unwrap();
        encoder.end_directory().unwrap();
        let nar = encoder.finish().unwrap();
        let name = format!("{prefix}-{index}");
        let nar_hash = Hash::digest(HashAlgo::Sha256, &nar);
        let path = store_dir
            .make_source_path(&name, &nar_hash, &reference_set, false)
            .unwrap();
        paths.push(SyntheticPath {
            name,
            data,
            path: store_dir.display(&path),
            references: refs,
            nar,
        });
    }
    paths
}

/// The paths in Nix's export format (`nix-store --export`), in order (references first,
/// as [`synthetic_paths`] makes them).
pub fn export_archive(paths: &[SyntheticPath]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
        out.resize(out.len() + (8 - bytes.len() % 8) % 8, 0);
    }
    let mut out = Vec::new();
    for path in paths {
        out.extend_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(&path.nar);
        out.extend_from_slice(&0x4558_494eu64.to_le_bytes());
        string(&mut out, path.path.as_bytes());
        out.extend_from_slice(&(path.references.len() as u64).to_le_bytes());
        let mut references: Vec<&str> = path
            .references
            .iter()
            .map(|&r| paths[r].path.as_str())
            .collect();
        references.sort_unstable();
        for reference in references {
            string(&mut out, reference.as_bytes());
        }
        string(&mut out, b""); // no deriver
        out.extend_from_slice(&0u64.to_le_bytes()); // no signature
    }
    out.extend_from_slice(&0u64.to_le_bytes());
    out
}

/// The closure of the paths at `starts` (indices) in a synthetic store.
pub fn synthetic_closure(paths: &[SyntheticPath], starts: &[usize]) -> BTreeSet<usize> {
    let mut closure = BTreeSet::new();
    let mut stack = starts.to_vec();
    while let Some(index) = stack.pop() {
        if closure.insert(index) {
            stack.extend_from_slice(&paths[index].references);
        }
    }
    closure
}

/// The names in `ROOT/nix/store`, except `.links` and Arca's own directories
/// (`.arca-staging`, `.arca-trash`, `.arca-links`).
pub fn store_entries(root: &Path) -> BTreeSet<String> {
    fs::read_dir(root.join("nix/store"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".links" && !name.starts_with(".arca-"))
        .collect()
}

/// The entries of Arca's trash directory (`nix/store/.arca-trash`); none when it does
/// not exist.
pub fn trash_entries(root: &Path) -> Vec<String> {
    fs::read_dir(root.join("nix/store/.arca-trash"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `nix-store --store local?root=ROOT ARGS`, whatever the exit status.
pub fn nix_store_output(root: &Path, args: &[&str], stdin: &[u8]) -> Output {
    run(
        Command::new("nix-store")
            .env("NIX_CONFIG", NIX_CONFIG)
            .arg("--store")
            .arg(format!("local?root={}", root.display()))
            .args(args),
        stdin,
    )
}

/// `nix-store --store local?root=ROOT ARGS`, which must succeed: its stdout.
pub fn nix_store_ok(root: &Path, args: &[&str], stdin: &[u8]) -> String {
    let output = nix_store_output(root, args, stdin);
    assert!(
        output.status.success(),
        "nix-store --store local?root={} {args:?} failed: {}",
        root.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("nix-store prints UTF-8")
}

/// `nix-store --verify --check-contents` on ROOT must succeed and report nothing;
/// `context` starts the failure message.
pub fn assert_nix_verify_clean(root: &Path, context: &str) {
    let output = nix_store_output(root, &["--verify", "--check-contents"], b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let unexpected: Vec<&str> = stderr
        .lines()
        .filter(|line| !NIX_VERIFY_PROGRESS.contains(line))
        .collect();
    assert!(
        output.status.success() && output.stdout.is_empty() && unexpected.is_empty(),
        "{context}: nix-store --verify --check-contents on {}: status {}, stdout {}, \
         stderr:\n{}",
        root.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        unexpected.join("\n")
    );
}

/// Copies the tree at `from` to `to` (which must not exist) with `cp -a`, keeping
/// permissions, times and hard links: a fresh copy of a prepared store.
pub fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp can be spawned");
    assert!(
        status.success(),
        "cp -a {} {} failed",
        from.display(),
        to.display()
    );
}

/// Writes `bytes` to a new file `path` (for archives fed to a command's stdin).
pub fn write_file(path: &Path, bytes: &[u8]) {
    fs::File::create(path)
        .and_then(|mut file| file.write_all(bytes))
        .unwrap();
}

/// The `LINK -> PATH` lines of a `--print-roots` or `-q --roots` output as a sorted
/// list (duplicates kept), without runtime roots (`/proc/…`) and temporary roots
/// (`{temp:…}`), which depend on the processes running at that moment.
pub fn persistent_root_lines(output: &str) -> Vec<String> {
    let mut lines: Vec<String> = output
        .lines()
        .filter(|line| !line.starts_with("/proc/") && !line.starts_with("{temp:"))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// The lines of two sorted lists that differ, counting repeats (a line printed twice by
/// one side and once by the other shows), for failure messages.
pub fn list_difference(
    left_name: &str,
    left: &[String],
    right_name: &str,
    right: &[String],
) -> String {
    let count = |lines: &[String]| {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for line in lines {
            *counts.entry(line.clone()).or_default() += 1;
        }
        counts
    };
    let (left_counts, right_counts) = (count(left), count(right));
    let mut text = String::new();
    let all: BTreeSet<&String> = left_counts.keys().chain(right_counts.keys()).collect();
    for line in all {
        let (l, r) = (
            left_counts.get(line).copied().unwrap_or(0),
            right_counts.get(line).copied().unwrap_or(0),
        );
        if l != r {
            text.push_str(&format!("  {left_name} {l}x, {right_name} {r}x: {line}\n"));
        }
    }
    text
}
