//! Helpers for the tests of the local store (`arca --store ROOT …`): running `arca` on a
//! physical root, reading its SQLite registry and checking it for leftovers.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{arca_bin, fixture};

/// The diamond fixture's derivations, inputs first (`tests/fixtures/drvs/<base>.json`).
pub const DIAMOND: &[&str] = &[
    "/nix/store/clrspwp4prknbnvjpg5g0pr45fz837r0-diamond-base.drv",
    "/nix/store/jva2yzzjbhxg6fxraj95m2yd5fmls2h4-diamond-left.drv",
    "/nix/store/599w7b698zhnc0nyr4mivxjcjfbriq75-diamond-right.drv",
    "/nix/store/vavpr4y1argqqs3ypp9fgzgjb48cvisw-diamond-top.drv",
];

/// A scratch directory on tmpfs (`/dev/shm`) when there is one, else in the default
/// temporary directory: for tests about processes, where the disk's speed is beside the
/// point.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

/// `arca --store ROOT`, ready for more arguments.
pub fn arca_cmd(root: &Path) -> Command {
    let mut command = Command::new(arca_bin());
    command.arg("--store").arg(root);
    command
}

/// Runs `command` with `stdin` fed from a thread (the command may fill its stdout pipe
/// before reading, or stop reading at an error: EPIPE is ignored) and collects its output.
pub fn run(command: &mut Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command can be spawned");
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let output = child.wait_with_output().expect("the command runs");
    feeder.join().unwrap();
    output
}

/// The stdout of a successful `arca --store ROOT ARGS`; panics with its stderr otherwise.
fn expect_success(root: &Path, args: &[&str], output: Output) -> Vec<u8> {
    assert!(
        output.status.success(),
        "arca --store {} {args:?} failed: {}",
        root.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Runs `arca --store ROOT ARGS` with `stdin`; returns its stdout, panicking when it fails.
pub fn arca_ok(root: &Path, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    expect_success(root, args, run(arca_cmd(root).args(args), stdin))
}

/// Like [`arca_ok`], with standard input read from `stdin` (e.g. a file).
pub fn arca_ok_from(root: &Path, args: &[&str], stdin: impl Into<Stdio>) -> Vec<u8> {
    let output = arca_cmd(root)
        .args(args)
        .stdin(stdin)
        .output()
        .expect("arca can be spawned");
    expect_success(root, args, output)
}

/// The lines of a command's output, which must be UTF-8.
pub fn lines(bytes: &[u8]) -> Vec<String> {
    std::str::from_utf8(bytes)
        .expect("the output is UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The registry (SQLite database) of the store at `root`.
pub fn registry_db(root: &Path) -> PathBuf {
    root.join("nix/var/nix/db/db.sqlite")
}

/// Runs an SQL query, read-only, on a registry (with `sqlite3`, else python3's sqlite3
/// module): one row per line, columns separated by `|`.
pub fn sql(db: &Path, query: &str) -> Vec<String> {
    let output = match Command::new("sqlite3")
        .arg("-readonly")
        .arg(db)
        .arg(query)
        .output()
    {
        Ok(output) => output,
        Err(_) => Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys\n\
                 db = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n\
                 for row in db.execute(sys.argv[2]):\n    print('|'.join(str(c) for c in row))",
            )
            .arg(db)
            .arg(query)
            .output()
            .expect("sqlite3 or python3 is installed"),
    };
    assert!(
        output.status.success(),
        "query {query:?} on {} failed: {}",
        db.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    lines(&output.stdout)
}

/// The entries left in the staging directory (`nix/store/.arca-staging`) of the store at
/// `root`; none when it does not exist.
pub fn staging_leftovers(root: &Path) -> Vec<String> {
    fs::read_dir(root.join("nix/store/.arca-staging"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `arca --store ROOT store verify --check-contents` must succeed and print nothing;
/// `context` starts the failure message.
pub fn assert_arca_verify_clean(root: &Path, context: &str) {
    let output = run(
        arca_cmd(root).args(["store", "verify", "--check-contents"]),
        b"",
    );
    assert!(
        output.status.success() && output.stdout.is_empty(),
        "{context}: verify --check-contents on {}: status {}, stdout {}, stderr {}",
        root.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The fixture JSON of a derivation of the fixtures (`tests/fixtures/drvs/<base>.json`).
pub fn derivation_json(drv: &str) -> Vec<u8> {
    let base = drv
        .strip_prefix("/nix/store/")
        .expect("a path in /nix/store");
    fs::read(fixture(&format!("drvs/{base}.json"))).unwrap()
}

/// Adds the fixture derivation `drv` to the store at `root` with `arca derivation add`,
/// which must print `drv`.
pub fn add_derivation(root: &Path, drv: &str) {
    let printed = arca_ok(root, &["derivation", "add"], &derivation_json(drv));
    assert_eq!(String::from_utf8_lossy(&printed).trim(), drv);
}

/// A physical store root (`<tempdir>/root`, not created until `arca` opens it), removed
/// when dropped.
pub struct Root {
    _dir: tempfile::TempDir,
    /// The root directory: the store is `PATH/nix/store`.
    pub path: PathBuf,
}

impl Root {
    /// A new root, not created yet.
    pub fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root");
        Root { _dir: dir, path }
    }

    /// A new root, created and opened once (so that it has an empty registry).
    pub fn empty() -> Root {
        let root = Root::new();
        root.arca_ok(&["store", "verify"], b"");
        root
    }

    /// The store directory, `ROOT/nix/store`.
    pub fn store(&self) -> PathBuf {
        self.path.join("nix/store")
    }

    /// The registry, see [`registry_db`].
    pub fn db(&self) -> PathBuf {
        registry_db(&self.path)
    }

    /// Runs `arca --store ROOT ARGS` with `stdin` (whatever the exit status).
    pub fn arca(&self, args: &[&str], stdin: &[u8]) -> Output {
        run(arca_cmd(&self.path).args(args), stdin)
    }

    /// [`arca_ok`] on this root.
    pub fn arca_ok(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        arca_ok(&self.path, args, stdin)
    }

    /// Every valid path, sorted, from the registry itself.
    pub fn valid_paths(&self) -> Vec<String> {
        sql(&self.db(), "select path from ValidPaths order by path")
    }
}

impl Default for Root {
    fn default() -> Root {
        Root::new()
    }
}
