//! Helpers for the tests of `arca build`: a scratch area per test with a static busybox
//! (the only tool builders get), an Arca root and a real-Nix chroot root side by side;
//! instantiating the `.nix` files of `tests/oracle/builds/` with Nix and copying the
//! `.drv` closures into Arca; adding derivations to Arca from JSON without Nix; and
//! checks for what a failed build must not leave behind.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Map, Value};

use crate::store::{lines, run, scratch_dir, sql, staging_leftovers};
use crate::{arca_bin, nix, workspace_root, NIX_CONFIG};

/// The static busybox builders run (`$ARCA_BUSYBOX` overrides).
pub fn busybox() -> PathBuf {
    std::env::var_os("ARCA_BUSYBOX")
        .map_or_else(|| PathBuf::from("/usr/bin/busybox"), PathBuf::from)
}

/// Whether the static busybox is there. When it is not, the calling test should return
/// early: this prints a loud notice, and panics instead when `ARCA_REQUIRE_NIX=1` (CI),
/// as [`crate::nix_available`] does.
pub fn busybox_available(test: &str) -> bool {
    let found = busybox().is_file();
    if !found {
        if std::env::var("ARCA_REQUIRE_NIX").as_deref() == Ok("1") {
            panic!(
                "{test}: a static busybox is required (ARCA_REQUIRE_NIX=1) but {} is missing",
                busybox().display()
            );
        }
        eprintln!(
            "SKIPPED {test}: no static busybox at {} (set ARCA_BUSYBOX); builds not checked",
            busybox().display()
        );
    }
    found
}

/// `tests/oracle/builds/<file>`.
pub fn nix_file(file: &str) -> PathBuf {
    workspace_root().join("tests/oracle/builds").join(file)
}

/// An argument for `nix-instantiate`: `--arg NAME EXPR` or `--argstr NAME STRING`.
pub enum NixArg<'a> {
    /// `--arg`: a Nix expression (a path, `true`, …).
    Expr(&'a str, String),
    /// `--argstr`: a string.
    Str(&'a str, String),
}

/// One test's scratch area (on tmpfs when there is one): `bb/busybox`, the Arca root
/// `arca/`, the Nix chroot root `nix/`, and `tmp/`, the `TMPDIR` of every `arca` run, so
/// build directories land there. Removed when dropped.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch::new()
    }
}

impl Scratch {
    /// A new scratch area with busybox copied in as `bb/busybox` (busybox picks its
    /// applet from argv\[0\], which a sandbox sets to the builder's base name).
    /// A scratch area with busybox in its Arca store (the scratch and the busybox store
    /// path), or `None`, said loudly, when there is no busybox for test `test`.
    pub fn with_busybox(test: &str) -> Option<(Scratch, String)> {
        if !busybox_available(test) {
            return None;
        }
        let scratch = Scratch::new();
        let bb = scratch.add_busybox_to_arca();
        Some((scratch, bb))
    }

    pub fn new() -> Scratch {
        let dir = scratch_dir();
        fs::create_dir(dir.path().join("bb")).unwrap();
        fs::copy(busybox(), dir.path().join("bb/busybox")).expect("busybox can be copied");
        fs::create_dir(dir.path().join("tmp")).unwrap();
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The directory holding `busybox`, named `bb` (so its store path is `…-bb` in both
    /// stores).
    pub fn bb_dir(&self) -> PathBuf {
        self.path().join("bb")
    }

    /// The Arca root: the store is `ROOT/nix/store`.
    pub fn arca_root(&self) -> PathBuf {
        self.path().join("arca")
    }

    /// The physical location of a store path in the Arca root.
    pub fn arca_physical(&self, path: &str) -> PathBuf {
        self.arca_root().join(path.trim_start_matches('/'))
    }

    /// The physical location of a store path in the Nix root.
    pub fn nix_physical(&self, path: &str) -> PathBuf {
        self.nix_root().join(path.trim_start_matches('/'))
    }

    /// Where `arca` makes build directories (its `TMPDIR`).
    pub fn build_tmp(&self) -> PathBuf {
        self.path().join("tmp")
    }

    /// `arca --store ARCA_ROOT` with `TMPDIR` set to [`Scratch::build_tmp`].
    pub fn arca_cmd(&self) -> Command {
        let mut command = Command::new(arca_bin());
        command
            .env("TMPDIR", self.build_tmp())
            .arg("--store")
            .arg(self.arca_root());
        command
    }

    /// Runs `arca --store ARCA_ROOT ARGS` (whatever the exit status).
    pub fn arca(&self, args: &[&str]) -> Output {
        run(self.arca_cmd().args(args), b"")
    }

    /// Runs `arca --store ARCA_ROOT ARGS` with `stdin`; returns its stdout, panicking with
    /// its stderr when it fails.
    pub fn arca_ok_with(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        let output = run(self.arca_cmd().args(args), stdin);
        assert!(
            output.status.success(),
            "arca {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// [`Scratch::arca_ok_with`] with empty stdin.
    pub fn arca_ok(&self, args: &[&str]) -> Vec<u8> {
        self.arca_ok_with(args, b"")
    }

    /// `arca build ARGS`, which must succeed: the printed output paths.
    pub fn arca_build_ok(&self, args: &[&str]) -> Vec<String> {
        lines(&self.arca_ok(&[&["build"][..], args].concat()))
    }

    /// `arca build ARGS`, which must fail with exit status 1: its stderr.
    pub fn arca_build_fails(&self, args: &[&str]) -> String {
        let output = self.arca(&[&["build"][..], args].concat());
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(
            output.status.code(),
            Some(1),
            "arca build {args:?} should fail with status 1; stdout {}, stderr {stderr}",
            String::from_utf8_lossy(&output.stdout)
        );
        stderr
    }

    /// Whether the Arca registry holds `path` (asked of SQLite itself).
    pub fn arca_registered(&self, path: &str) -> bool {
        let db = crate::store::registry_db(&self.arca_root());
        let query = format!("select count(*) from ValidPaths where path = '{path}'");
        sql(&db, &query) == ["1"]
    }

    /// `arca path-info --json PATHS` as JSON objects.
    pub fn arca_path_info(&self, paths: &[&str]) -> Vec<Value> {
        let out = self.arca_ok(&[&["path-info", "--json"][..], paths].concat());
        serde_json::from_slice(&out).expect("arca path-info --json prints JSON")
    }

    /// Asserts that a failed build of `drv` with output `output` left nothing behind: the
    /// output is neither registered nor on disk (`arca path-info` fails on it), the
    /// staging directory and `TMPDIR` are empty (no build directory kept).
    pub fn assert_nothing_left(&self, drv: &str, output: &str) {
        assert!(
            !self.arca_registered(output),
            "the output {output} of the failed {drv} is registered"
        );
        assert!(
            !self.arca(&["path-info", output]).status.success(),
            "arca path-info {output} succeeds after {drv} failed"
        );
        assert!(
            fs::symlink_metadata(self.arca_physical(output)).is_err(),
            "the output {output} of the failed {drv} is on disk"
        );
        let left = staging_leftovers(&self.arca_root());
        assert!(
            left.is_empty(),
            "staging leftovers after {drv} failed: {left:?}"
        );
        let build_dirs: Vec<_> = fs::read_dir(self.build_tmp())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            build_dirs.is_empty(),
            "build directories left in {} after {drv} failed: {build_dirs:?}",
            self.build_tmp().display()
        );
    }

    // --- Arca without Nix -----------------------------------------------------------

    /// Adds `bb/` to the Arca store (`store add-path`): its store path.
    pub fn add_busybox_to_arca(&self) -> String {
        let printed = lines(&self.arca_ok(&["store", "add-path", self.bb_dir().to_str().unwrap()]));
        assert_eq!(printed.len(), 1, "one path for bb/: {printed:?}");
        printed[0].clone()
    }

    /// Adds with `arca derivation add` a derivation named `name` whose builder is
    /// `busybox sh -c SCRIPT` with `PATH` the busybox directory `bb` (a store path in
    /// the Arca store, see [`Scratch::add_busybox_to_arca`]), with the extra environment
    /// `env` and the `out` output of each of `input_drvs` as inputs. Returns its `.drv`
    /// path.
    pub fn add_derivation(
        &self,
        bb: &str,
        name: &str,
        script: &str,
        env: &[(&str, &str)],
        input_drvs: &[&str],
    ) -> String {
        let mut environment = Map::new();
        for (key, value) in [
            ("builder", format!("{bb}/busybox")),
            ("name", name.to_owned()),
            ("out", String::new()),
            ("system", "x86_64-linux".to_owned()),
            ("PATH", bb.to_owned()),
        ] {
            environment.insert(key.to_owned(), Value::String(value));
        }
        for (key, value) in env {
            environment.insert((*key).to_owned(), Value::String((*value).to_owned()));
        }
        let inputs: Map<String, Value> = input_drvs
            .iter()
            .map(|drv| ((*drv).to_owned(), json!(["out"])))
            .collect();
        let drv = json!({
            "name": name,
            "outputs": { "out": { "path": "" } },
            "inputSrcs": [bb],
            "inputDrvs": inputs,
            "system": "x86_64-linux",
            "builder": format!("{bb}/busybox"),
            "args": ["sh", "-c", script],
            "env": environment,
        });
        let printed =
            lines(&self.arca_ok_with(&["derivation", "add"], &serde_json::to_vec(&drv).unwrap()));
        assert_eq!(
            printed.len(),
            1,
            "derivation add prints one path: {printed:?}"
        );
        printed[0].clone()
    }

    /// The `out` output path of a derivation in the Arca store.
    pub fn arca_output(&self, drv: &str) -> String {
        let outputs = lines(&self.arca_ok(&["store", "query", "--outputs", drv]));
        assert_eq!(outputs.len(), 1, "{drv} has one output: {outputs:?}");
        outputs[0].clone()
    }

    // --- Real Nix ---------------------------------------------------------------------

    /// The Nix chroot root (logical store dir `/nix/store`).
    pub fn nix_root(&self) -> PathBuf {
        self.path().join("nix")
    }

    /// `local?root=NIX_ROOT`.
    pub fn nix_uri(&self) -> String {
        format!("local?root={}", self.nix_root().display())
    }

    /// `nix-store --store NIX_URI ARGS` (panics on failure): its stdout.
    pub fn nix_store(&self, args: &[&str]) -> Vec<u8> {
        let uri = self.nix_uri();
        let mut all: Vec<&OsStr> = vec!["--store".as_ref(), uri.as_ref()];
        all.extend(args.iter().map(OsStr::new));
        nix("nix-store", &all, None)
    }

    /// `nix-store --store NIX_URI ARGS` whatever the exit status.
    pub fn nix_store_output(&self, args: &[&str]) -> Output {
        Command::new("nix-store")
            .env("NIX_CONFIG", NIX_CONFIG)
            .arg("--store")
            .arg(self.nix_uri())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nix-store can be spawned")
    }

    /// `nix-instantiate` of `tests/oracle/builds/FILE` into the Nix root, with `bb` set to
    /// the busybox directory and `args`, for the attributes `attrs`: their `.drv` paths.
    pub fn instantiate(&self, file: &str, args: &[NixArg<'_>], attrs: &[&str]) -> Vec<String> {
        let uri = self.nix_uri();
        let path = nix_file(file);
        let bb = self.bb_dir();
        let mut all: Vec<&OsStr> = vec![
            "--store".as_ref(),
            uri.as_ref(),
            path.as_os_str(),
            "--arg".as_ref(),
            "bb".as_ref(),
            bb.as_os_str(),
        ];
        for arg in args {
            match arg {
                NixArg::Expr(name, value) => {
                    all.extend(["--arg".as_ref(), OsStr::new(*name), value.as_ref()])
                }
                NixArg::Str(name, value) => {
                    all.extend(["--argstr".as_ref(), OsStr::new(*name), value.as_ref()])
                }
            }
        }
        for attr in attrs {
            all.extend(["-A".as_ref(), OsStr::new(*attr)]);
        }
        let out = nix("nix-instantiate", &all, None);
        let drvs: Vec<String> = lines(&out)
            .iter()
            .map(|line| line.split('!').next().unwrap().to_owned())
            .collect();
        assert_eq!(drvs.len(), attrs.len(), "one .drv per attribute: {drvs:?}");
        drvs
    }

    /// Copies the closures of `drvs` from the Nix root into the Arca root
    /// (`nix-store --export | arca store import`).
    pub fn copy_to_arca(&self, drvs: &[String]) {
        let closure = lines(
            &self.nix_store(
                &[
                    &["-qR"][..],
                    &drvs.iter().map(String::as_str).collect::<Vec<_>>(),
                ]
                .concat(),
            ),
        );
        let export = self.nix_store(
            &[
                &["--export"][..],
                &closure.iter().map(String::as_str).collect::<Vec<_>>(),
            ]
            .concat(),
        );
        let imported = lines(&self.arca_ok_with(&["store", "import"], &export));
        assert_eq!(
            imported.len(),
            closure.len(),
            "arca imports the whole closure"
        );
    }

    /// `nix-instantiate` then [`Scratch::copy_to_arca`].
    pub fn instantiate_for_both(
        &self,
        file: &str,
        args: &[NixArg<'_>],
        attrs: &[&str],
    ) -> Vec<String> {
        let drvs = self.instantiate(file, args, attrs);
        self.copy_to_arca(&drvs);
        drvs
    }

    /// `nix-store --realise --option sandbox true DRVS` in the Nix root: the output
    /// paths it prints.
    pub fn nix_realise(&self, drvs: &[&str]) -> Vec<String> {
        lines(&self.nix_store(&[&["--option", "sandbox", "true", "--realise"][..], drvs].concat()))
    }

    /// `nix path-info --json PATHS` in the Nix root as JSON objects.
    pub fn nix_path_info(&self, paths: &[&str]) -> Vec<Value> {
        let uri = self.nix_uri();
        let mut args: Vec<&OsStr> = vec![
            "path-info".as_ref(),
            "--store".as_ref(),
            uri.as_ref(),
            "--json".as_ref(),
        ];
        args.extend(paths.iter().map(OsStr::new));
        serde_json::from_slice(&nix("nix", &args, None)).expect("nix path-info prints JSON")
    }
}

/// The processes whose command line holds `args` in a row (e.g. `["sleep", "4001"]`):
/// `pid: cmdline` of each.
pub fn processes_with_args(args: &[&str]) -> Vec<String> {
    let needle: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .windows(needle.len())
            .any(|w| w == needle.as_slice())
        {
            found.push(format!(
                "{}: {}",
                name.to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

/// Asserts that no process runs `sleep MARKER` (a builder's process outlived the build).
pub fn assert_no_process(marker: &str, context: &str) {
    let left = processes_with_args(&["sleep", marker]);
    assert!(
        left.is_empty(),
        "{context}: builder processes are still running after arca returned: {left:?}"
    );
}

/// A line-by-line comparison of two texts for failure messages: the lines only in one.
pub fn line_diff(left_name: &str, left: &str, right_name: &str, right: &str) -> String {
    let left_lines: Vec<&str> = left.lines().collect();
    let right_lines: Vec<&str> = right.lines().collect();
    let mut text = String::new();
    for (index, line) in left_lines.iter().enumerate() {
        if right_lines.get(index) != Some(line) {
            text.push_str(&format!(
                "line {}:\n  {left_name}: {line:?}\n  {right_name}: {:?}\n",
                index + 1,
                right_lines.get(index).copied().unwrap_or("<none>")
            ));
        }
    }
    for (index, line) in right_lines.iter().enumerate().skip(left_lines.len()) {
        text.push_str(&format!(
            "line {}:\n  {left_name}: <none>\n  {right_name}: {line:?}\n",
            index + 1
        ));
    }
    text
}
