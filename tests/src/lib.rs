//! Shared helpers for Arca's integration tests: locating the `arca` binary and real Nix,
//! reading the golden fixtures ([`golden`]), running `arca` on a store root and reading
//! its registry ([`store`]), running `arca daemon` and real Nix on a store at `/nix/store`
//! in a private mount namespace ([`lab`]), and generating random trees from a seed. The
//! tests themselves are in `tests/tests/`.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod build;
pub mod cache;
pub mod daemon;
pub mod gc;
pub mod golden;
pub mod lab;
pub mod ssh;
pub mod store;

/// The `NIX_CONFIG` the tests run real Nix with: substituters off (there is no network)
/// and the `nix` command enabled.
pub const NIX_CONFIG: &str = "substituters =\nexperimental-features = nix-command";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root")
        .to_path_buf()
}

/// `tests/fixtures/<relative>`.
pub fn fixture(relative: &str) -> PathBuf {
    workspace_root().join("tests/fixtures").join(relative)
}

/// The `arca` binary under test: `$ARCA_BIN`, else the one `cargo test` built next to
/// this test binary (`target/<profile>/arca`).
pub fn arca_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ARCA_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    // target/<profile>/deps/<test binary> -> target/<profile>/arca
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let candidate = profile_dir.join("arca");
    assert!(
        candidate.exists(),
        "arca binary not found at {}: run `cargo build -p arca` or set ARCA_BIN",
        candidate.display()
    );
    candidate
}

/// Runs `arca` with `args`, returning its output (whatever the exit status).
pub fn arca(args: &[&OsStr]) -> Output {
    Command::new(arca_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("arca can be spawned")
}

/// Runs `arca` with `args` (see [`arca`]) and returns its stdout, panicking with its
/// stderr when it fails.
pub fn arca_ok(args: &[&OsStr]) -> Vec<u8> {
    let output = arca(args);
    assert!(
        output.status.success(),
        "arca {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Runs `arca` with `args` and `stdin`, returning its stdout, panicking with its stderr
/// when it fails.
pub fn arca_ok_with_stdin(args: &[&OsStr], stdin: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(arca_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("arca can be spawned");
    let mut pipe = child.stdin.take().expect("stdin was piped");
    pipe.write_all(stdin).expect("arca reads its stdin");
    drop(pipe);
    let output = child.wait_with_output().expect("arca runs to completion");
    assert!(
        output.status.success(),
        "arca {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Whether `program --version` runs and succeeds (the program is installed).
pub fn program_runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether real Nix is installed. When it is not, the calling test should return early:
/// this prints a loud notice, and panics instead when `ARCA_REQUIRE_NIX=1` (CI), so a
/// skipped interop test can never pass unnoticed there.
pub fn nix_available(test: &str) -> bool {
    let found = program_runs("nix-store");
    if !found {
        if std::env::var("ARCA_REQUIRE_NIX").as_deref() == Ok("1") {
            panic!("{test}: real Nix is required (ARCA_REQUIRE_NIX=1) but nix-store is missing");
        }
        eprintln!("SKIPPED {test}: real Nix (nix-store) is not installed; interop not checked");
    }
    found
}

/// Runs real Nix's `command` with a disk cache of its own, deleted after: Nix remembers
/// the `.narinfo`s of a binary cache under `$XDG_CACHE_HOME/nix` by URL, for days, and a
/// test server listening on a port an earlier one used (another test's, another run's)
/// would otherwise be answered from what the earlier one served.
pub fn nix_output(command: &mut Command) -> Output {
    let cache_home = tempfile::tempdir().expect("a temporary directory");
    command
        .env("XDG_CACHE_HOME", cache_home.path())
        .output()
        .expect("nix runs")
}

/// Runs a real Nix command with substituters off (there is no network) and returns its
/// stdout, panicking with its stderr when it fails.
pub fn nix(program: &str, args: &[&OsStr], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let cache_home = tempfile::tempdir().expect("a temporary directory");
    let mut command = Command::new(program);
    command
        .env("XDG_CACHE_HOME", cache_home.path())
        .args(args)
        .env("NIX_CONFIG", NIX_CONFIG)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("nix can be spawned");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input).expect("nix reads its stdin");
    }
    let output = child.wait_with_output().expect("nix runs to completion");
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A small deterministic generator (xorshift64*), so that failures reproduce from the
/// seed printed by the test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Name fragments chosen to stress byte-order sorting, escaping and encodings: case,
/// punctuation, digits, spaces, multi-byte UTF-8 and bytes that are not UTF-8 at all.
const NAME_PIECES: &[&[u8]] = &[
    b"a",
    b"B",
    b"b",
    b"Z",
    b"_",
    b"-",
    b".",
    b"10",
    b"9",
    b" ",
    b"x y",
    b"\xc3\xa9",
    b"e",
    b"E",
    b"\xe6\x97\xa5",
    b"\xf0\x9f\x98\x80",
    b"\xff",
    b"\x80a",
    b"~",
    b"+",
    b"=",
    b"file",
    b"dir",
    b".hidden",
    b"\t",
    b"\n",
];

fn random_name(rng: &mut Rng) -> Vec<u8> {
    loop {
        let mut name = Vec::new();
        for _ in 0..=rng.below(3) {
            name.extend_from_slice(NAME_PIECES[rng.below(NAME_PIECES.len() as u64) as usize]);
        }
        if name != b"." && name != b".." {
            return name;
        }
    }
}

fn random_contents(rng: &mut Rng) -> Vec<u8> {
    let size = match rng.below(10) {
        0 => 0,
        1 => 8 * rng.below(4),
        2..=6 => rng.below(200),
        7 | 8 => rng.below(5000),
        _ => rng.below(70_000),
    } as usize;
    let mut contents = Vec::with_capacity(size);
    while contents.len() < size {
        contents.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    contents.truncate(size);
    contents
}

/// Writes the random trees of `seeds` (see [`random_tree`]) as `dir/tree-<seed>`;
/// returns their paths.
pub fn make_trees(dir: &Path, seeds: std::ops::Range<u64>) -> Vec<PathBuf> {
    seeds
        .map(|seed| {
            let path = dir.join(format!("tree-{seed}"));
            random_tree(seed, &path).expect("random tree is written");
            path
        })
        .collect()
}

/// Writes a random tree (a regular file, a symlink or a directory of nested entries) at
/// `path`, which must not exist. The same seed always gives the same tree.
pub fn random_tree(seed: u64, path: &Path) -> io::Result<()> {
    let mut rng = Rng::new(seed);
    match rng.below(10) {
        0 => random_file(&mut rng, path),
        1 => symlink(OsStr::from_bytes(&random_name(&mut rng)), path),
        _ => random_directory(&mut rng, path, 0),
    }
}

fn random_file(rng: &mut Rng, path: &Path) -> io::Result<()> {
    fs::write(path, random_contents(rng))?;
    let mode = if rng.chance(30) { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn random_directory(rng: &mut Rng, path: &Path, depth: u32) -> io::Result<()> {
    fs::create_dir(path)?;
    let entries = if depth >= 4 { 0 } else { rng.below(8) };
    for _ in 0..entries {
        let child = path.join(OsStr::from_bytes(&random_name(rng)));
        if child.symlink_metadata().is_ok() {
            continue; // the name was drawn twice
        }
        match rng.below(10) {
            0..=4 => random_file(rng, &child)?,
            5 | 6 => {
                let target: Vec<u8> = match rng.below(3) {
                    0 => b"/etc/passwd".to_vec(),
                    1 => b"../dangling".to_vec(),
                    _ => random_name(rng),
                };
                symlink(OsStr::from_bytes(&target), &child)?
            }
            _ => random_directory(rng, &child, depth + 1)?,
        }
    }
    Ok(())
}
