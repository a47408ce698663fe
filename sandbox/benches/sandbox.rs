//! Start-up cost of a sandbox (issue #4): `/bin/true` (busybox) in a full sandbox with 50
//! read-only store-path binds, side by side with bubblewrap given the same layout, and a
//! plain `fork`+`exec` as the floor. Run with `bash bench/sandbox.sh` (as root; see
//! BENCHMARKS.md), or `cargo bench -p arca-sandbox --bench sandbox`.
//!
//! Every divan bench times a whole run: fork, namespaces, mounts, exec, exit, reap and
//! teardown, an upper bound on start-to-exec. With `ARCA_BENCH_FIRST_OUTPUT=N` the binary
//! then also runs N interleaved rounds of `busybox echo` in each of arca (with and without
//! a cgroup), bwrap and a plain process, and prints the median time from the start of the
//! run to the first output byte reaching the caller: start to exec, plus busybox's start
//! and one pipe write. Interleaved, a run never follows another of its kind at once, which
//! matters for the cgroup (moving a process into one waits for an RCU grace period unless
//! another move happened just before).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arca_sandbox::{run, CgroupMode, Mount, SandboxSpec};
use divan::Bencher;

const BUSYBOX: &str = "/usr/bin/busybox";
const BWRAP: &str = "/usr/bin/bwrap";
const STORE_PATHS: usize = 50;
const SAMPLES: u32 = 200;

fn main() {
    divan::main();
    if let Some(rounds) = std::env::var("ARCA_BENCH_FIRST_OUTPUT")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        first_output(rounds);
    }
    // Statics are never dropped: remove the fixture's temporary directory by hand.
    if let Some(fixture) = FIXTURE.get() {
        let _ = fs::remove_dir_all(fixture.dir.path());
    }
}

/// 50 directories shaped like store paths, each holding one small file, made once per run.
struct Fixture {
    dir: tempfile::TempDir,
    /// Host directory and name (`<hash>-pkg-N`) of each fake store path.
    paths: Vec<(PathBuf, String)>,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let paths = (0..STORE_PATHS)
            .map(|n| {
                let hash: String = (0..32)
                    .map(|_| {
                        // xorshift64: deterministic, distinct names.
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        NIX_BASE32[(state % 32) as usize] as char
                    })
                    .collect();
                let name = format!("{hash}-pkg-{n}");
                let path = store.join(&name);
                fs::create_dir_all(path.join("bin")).expect("mkdir");
                fs::write(path.join("bin/hello"), format!("package {n}\n")).expect("write");
                (path, name)
            })
            .collect();
        Fixture { dir, paths }
    })
}

/// The full sandbox of `argv` with busybox at `/bin/busybox`, a `/build` tmpfs as the
/// working directory and, when `binds`, the 50 store paths read-only under `/nix/store`
/// (the defaults add `/dev`, `/proc`, `/tmp`, `/etc` files, seccomp, a cgroup when
/// possible).
fn arca_spec(argv: &[&str], binds: bool) -> SandboxSpec {
    let mut spec = SandboxSpec::new("/bin/busybox", argv.iter().copied())
        .mount(Mount::bind_ro(BUSYBOX, "/bin/busybox"))
        .mount(Mount::Tmpfs {
            target: "/build".into(),
            mode: 0o755,
            size: None,
        })
        .cwd("/build");
    if binds {
        for (source, name) in &fixture().paths {
            spec = spec.mount(Mount::bind_ro(source, Path::new("/nix/store").join(name)));
        }
    }
    spec
}

/// bwrap with the same layout: every namespace, fresh `/dev`, `/proc`, `/tmp`, `/build`,
/// busybox and, when `binds`, the 50 store paths read-only; uid 1000 / gid 100 (as root
/// bwrap makes a user namespace for that), hostname localhost.
/// (bwrap 0.8 has no `--argv0`, so busybox gets its applet as `argv[1]`.)
fn bwrap_command(applet_args: &[&str], binds: bool) -> Command {
    let mut command = Command::new(BWRAP);
    command.args([
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--tmpfs",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/build",
        "--chdir",
        "/build",
        "--ro-bind",
        BUSYBOX,
        "/bin/busybox",
    ]);
    if binds {
        for (source, name) in &fixture().paths {
            command
                .arg("--ro-bind")
                .arg(source)
                .arg(Path::new("/nix/store").join(name));
        }
    }
    command.args([
        "--hostname",
        "localhost",
        "--uid",
        "1000",
        "--gid",
        "100",
        "--",
        "/bin/busybox",
    ]);
    command.args(applet_args).stdin(Stdio::null());
    command
}

fn have_bwrap() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        let present = Path::new(BWRAP).exists();
        if !present {
            eprintln!("{BWRAP} is missing: the bwrap benches are skipped");
        }
        present
    })
}

fn arca_true(bencher: Bencher, spec: SandboxSpec) {
    bencher.bench_local(|| {
        let report = run(&spec, &mut io::sink()).expect("run the sandbox");
        assert!(report.outcome.success(), "busybox true: {}", report.outcome);
    });
}

#[divan::bench(sample_count = SAMPLES, sample_size = 1)]
fn arca_run_true_50_binds(bencher: Bencher) {
    arca_true(bencher, arca_spec(&["true"], true));
}

/// The same without a cgroup, to show what creating and removing one costs.
#[divan::bench(sample_count = SAMPLES, sample_size = 1)]
fn arca_run_true_50_binds_no_cgroup(bencher: Bencher) {
    let mut spec = arca_spec(&["true"], true);
    spec.cgroup = CgroupMode::Off;
    arca_true(bencher, spec);
}

#[divan::bench(sample_count = SAMPLES, sample_size = 1)]
fn arca_run_true_no_binds(bencher: Bencher) {
    arca_true(bencher, arca_spec(&["true"], false));
}

fn bwrap_true(bencher: Bencher, binds: bool) {
    if !have_bwrap() {
        return;
    }
    let mut command = bwrap_command(&["true"], binds);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    bencher.bench_local(|| {
        let status = command.status().expect("run bwrap");
        assert!(status.success(), "bwrap: {status}");
    });
}

#[divan::bench(sample_count = SAMPLES, sample_size = 1)]
fn bwrap_true_50_binds(bencher: Bencher) {
    bwrap_true(bencher, true);
}

#[divan::bench(sample_count = SAMPLES, sample_size = 1)]
fn bwrap_true_no_binds(bencher: Bencher) {
    bwrap_true(bencher, false);
}

/// The floor: fork and exec of busybox true, no sandbox.
#[divan::bench(sample_count = SAMPLES, sample_size = 1)]
fn spawn_true_unsandboxed(bencher: Bencher) {
    let mut command = Command::new(BUSYBOX);
    command
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    bencher.bench_local(|| {
        let status = command.status().expect("run busybox");
        assert!(status.success(), "busybox true: {status}");
    });
}

/// A writer that notes when the first byte arrives.
struct FirstByte {
    start: Instant,
    first: Option<Duration>,
}

impl Write for FirstByte {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.first.is_none() && !bytes.is_empty() {
            self.first = Some(self.start.elapsed());
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Time from spawning `command` to its first output byte, and to its exit.
fn command_first_output(command: &mut Command) -> (Duration, Duration) {
    let start = Instant::now();
    let mut child = command.stdout(Stdio::piped()).spawn().expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut byte = [0u8; 1];
    assert_eq!(
        stdout.read(&mut byte).expect("read the first byte"),
        1,
        "no output"
    );
    let first = start.elapsed();
    io::copy(&mut stdout, &mut io::sink()).expect("read the rest");
    assert!(child.wait().expect("wait").success());
    (first, start.elapsed())
}

/// The same for a sandbox run.
fn arca_first_output(spec: &SandboxSpec) -> (Duration, Duration) {
    let mut writer = FirstByte {
        start: Instant::now(),
        first: None,
    };
    let report = run(spec, &mut writer).expect("run the sandbox");
    assert!(report.outcome.success(), "busybox echo: {}", report.outcome);
    (writer.first.expect("no output"), writer.start.elapsed())
}

/// Interleaved rounds of `busybox echo x` (arca, arca without a cgroup, bwrap, a plain
/// process, arca, …), 50 binds; prints the medians.
fn first_output(rounds: usize) {
    let spec = arca_spec(&["echo", "x"], true);
    let no_cgroup = SandboxSpec {
        cgroup: CgroupMode::Off,
        ..spec.clone()
    };
    let mut bwrap = have_bwrap().then(|| bwrap_command(&["echo", "x"], true));
    if let Some(command) = &mut bwrap {
        command.stderr(Stdio::null());
    }
    let mut plain = Command::new(BUSYBOX);
    plain
        .args(["echo", "x"])
        .stdin(Stdio::null())
        .stderr(Stdio::null());

    let names = [
        "arca run()",
        "arca run(), no cgroup",
        "bwrap",
        "unsandboxed spawn",
    ];
    let mut samples: [Vec<(Duration, Duration)>; 4] = Default::default();
    for _ in 0..rounds {
        samples[0].push(arca_first_output(&spec));
        samples[1].push(arca_first_output(&no_cgroup));
        if let Some(command) = &mut bwrap {
            samples[2].push(command_first_output(command));
        }
        samples[3].push(command_first_output(&mut plain));
    }
    println!(
        "\nfirst output byte of `busybox echo x`, 50 binds, {rounds} interleaved rounds (medians):"
    );
    let mut first = [None; 4];
    for (i, runs) in samples
        .iter()
        .enumerate()
        .filter(|(_, runs)| !runs.is_empty())
    {
        let to_first = median(runs.iter().map(|r| r.0).collect());
        let whole = median(runs.iter().map(|r| r.1).collect());
        first[i] = Some(to_first);
        println!(
            "first-output  {:<22} to first byte {:>7.3} ms   whole run {:>7.3} ms",
            names[i],
            ms(to_first),
            ms(whole)
        );
    }
    if let (Some(arca), Some(bwrap)) = (first[0], first[2]) {
        println!(
            "first-output  ratio bwrap/arca (to first byte): {:.2}",
            ms(bwrap) / ms(arca)
        );
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
