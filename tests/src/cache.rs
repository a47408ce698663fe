//! Real servers for the binary cache tests, each on 127.0.0.1 and stopped when dropped:
//! a plain HTTP file server with uploads ([`HttpDirServer`], `tests/fixtures/
//! http_cache_server.py`), the S3-compatible object store `s3s-fs` ([`S3Server`],
//! installed by the test command), and `arca cache serve` ([`ArcaServe`]).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::ffi::OsStr;

use arca_cache::NarInfo;
use arca_store_core::StoreDir;

use crate::{arca_bin, fixture, nix, workspace_root};

/// The access key the S3 server is started with (and the tests sign with).
pub const S3_ACCESS_KEY: &str = "arca-test";
/// Its secret.
pub const S3_SECRET_KEY: &str = "arca-test-secret";

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status}) before listening on {port}");
        }
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A directory served over HTTP/1.1 (GET, HEAD, PUT).
pub struct HttpDirServer {
    child: Child,
    port: u16,
}

impl HttpDirServer {
    pub fn start(dir: &Path) -> HttpDirServer {
        HttpDirServer::start_with_log(dir, None)
    }

    /// With `log`, the server appends `METHOD PATH` to it for every request.
    pub fn start_with_log(dir: &Path, log: Option<&Path>) -> HttpDirServer {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new("python3")
            .arg(fixture("http_cache_server.py"))
            .arg(dir)
            .args(log)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        wait_for_port(port, "the HTTP file server", &mut child);
        HttpDirServer { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for HttpDirServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The `s3s-fs` binary: on `PATH` or in `~/.cargo/bin`.
pub fn s3s_fs() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin")));
    candidates
        .map(|dir| dir.join("s3s-fs"))
        .find(|file| file.is_file())
}

/// Whether the S3 server is installed; like [`crate::nix_available`], a loud skip
/// notice, and a panic when `ARCA_REQUIRE_S3=1` (CI).
pub fn s3_available(test: &str) -> bool {
    let found = s3s_fs().is_some();
    if !found {
        if std::env::var("ARCA_REQUIRE_S3").as_deref() == Ok("1") {
            panic!("{test}: the S3 server s3s-fs is required (ARCA_REQUIRE_S3=1) but missing");
        }
        eprintln!(
            "SKIPPED {test}: s3s-fs is not installed (cargo install s3s-fs --features binary)"
        );
    }
    found
}

/// `s3s-fs` serving the buckets in `root` (each a directory; objects are plain files
/// below it, so a test can plant or tamper with one directly).
pub struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    pub fn start(root: &Path) -> S3Server {
        std::fs::create_dir_all(root).unwrap();
        let port = free_port();
        let mut child = Command::new(s3s_fs().expect("s3s-fs is installed"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs runs");
        wait_for_port(port, "s3s-fs", &mut child);
        S3Server { child, port }
    }

    /// The `s3://` URL of `bucket` on this server (no other parameters).
    pub fn url(&self, bucket: &str) -> String {
        format!("s3://{bucket}?endpoint=127.0.0.1:{}&scheme=http", self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The environment `arca` needs to sign S3 requests for [`S3Server`].
pub fn s3_env(command: &mut Command) -> &mut Command {
    command
        .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
}

/// `arca cache serve` on the store at `root`, with `args` added.
pub struct ArcaServe {
    child: Child,
    port: u16,
}

impl ArcaServe {
    pub fn start(root: &Path, args: &[&str]) -> ArcaServe {
        let mut child = Command::new(arca_bin())
            .arg("--store")
            .arg(root)
            .args(["cache", "serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("arca runs");
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("arca cache serve said '{line}'"));
        wait_for_port(port, "arca cache serve", &mut child);
        ArcaServe { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ArcaServe {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A Nix store with a tree (content-addressed), a `.drv` and a chain of paths with
/// references (imported, so not content-addressed), copied into a signed `file://`
/// cache per compression; the cache directories by compression name, and the key pair.
pub fn nix_caches(dir: &Path) -> (BTreeMap<&'static str, std::path::PathBuf>, String, String) {
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
    for compression in ["none", "xz", "zstd"] {
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

pub fn narinfos(cache: &Path) -> Vec<(String, String)> {
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

/// The paths of a cache, by the `.narinfo` files in it.
pub fn cached_paths(cache: &Path) -> Vec<String> {
    let store_dir = StoreDir::default();
    narinfos(cache)
        .into_iter()
        .map(|(file, text)| {
            let info = NarInfo::parse(&store_dir, &text, &file).unwrap();
            store_dir.display(&info.info.path)
        })
        .collect()
}

/// Real Nix's `nix-store --verify --check-contents` on the store at `root` (logical
/// store dir `/nix/store`): panics (with Nix's stderr) unless it is clean.
pub fn nix_verify_contents(root: &Path) {
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

/// One cache on one backend: its URL (without parameters) and the directory its files
/// are in (a test may tamper with them there).
pub struct Backend {
    pub name: &'static str,
    pub url: String,
    pub dir: PathBuf,
    _http: Option<HttpDirServer>,
}

/// An empty cache on each backend, below `d`; the S3 server lives as long as the
/// returned guard.
pub fn backends(d: &Path, with_s3: bool) -> (Vec<Backend>, Option<S3Server>) {
    let file = d.join("file-cache");
    let http_dir = d.join("http-cache");
    let http = HttpDirServer::start(&http_dir);
    let mut backends = vec![
        Backend {
            name: "file",
            url: format!("file://{}", file.display()),
            dir: file,
            _http: None,
        },
        Backend {
            name: "http",
            url: http.url(),
            dir: http_dir,
            _http: Some(http),
        },
    ];
    let s3 = with_s3.then(|| {
        let root = d.join("s3-root");
        std::fs::create_dir_all(root.join("arca-cache")).unwrap();
        let server = S3Server::start(&root);
        backends.push(Backend {
            name: "s3",
            url: server.url("arca-cache"),
            dir: root.join("arca-cache"),
            _http: None,
        });
        server
    });
    (backends, s3)
}

/// `url` with `parameters` added (`&`-joined, after `?` or `&`).
pub fn with_parameters(url: &str, parameters: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{parameters}")
}

/// `arca --store ROOT ARGS...`, with the S3 test credentials in its environment.
pub fn arca(root: &Path, args: &[&str]) -> Output {
    s3_env(&mut Command::new(arca_bin()))
        .arg("--store")
        .arg(root)
        .args(args)
        .output()
        .expect("arca runs")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn arca_ok(root: &Path, args: &[&str]) -> String {
    let output = arca(root, args);
    assert!(
        output.status.success(),
        "arca {args:?}: {}",
        stderr(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A new key pair made by `arca key`: (secret key file, public key).
pub fn arca_keys(d: &Path, name: &str) -> (PathBuf, String) {
    let sk = d.join(format!("{name}.sk"));
    let secret = Command::new(arca_bin())
        .args(["key", "generate-secret", "--key-name", name])
        .output()
        .unwrap();
    assert!(secret.status.success());
    std::fs::write(&sk, &secret.stdout).unwrap();
    let mut convert = Command::new(arca_bin())
        .args(["key", "convert-secret-to-public"])
        .stdin(std::fs::File::open(&sk).unwrap())
        .output()
        .unwrap();
    assert!(convert.status.success(), "{}", stderr(&convert));
    let pk = String::from_utf8(std::mem::take(&mut convert.stdout)).unwrap();
    assert!(pk.starts_with(&format!("{name}:")), "{pk}");
    (sk, pk)
}

/// An Arca store with a chain of four input-addressed paths (imported, unsigned) and a
/// content-addressed tree; the paths, top of the chain first.
pub fn source_store(d: &Path) -> (PathBuf, Vec<String>) {
    let root = d.join("source");
    let export = Command::new("python3")
        .arg(workspace_root().join("bench/gen_export.py"))
        .arg("4")
        .output()
        .unwrap();
    assert!(export.status.success());
    let imported = crate::arca_ok_with_stdin(
        &[
            "--store".as_ref(),
            root.as_os_str(),
            "store".as_ref(),
            "import".as_ref(),
        ],
        &export.stdout,
    );
    let mut paths: Vec<String> = String::from_utf8(imported)
        .unwrap()
        .lines()
        .rev()
        .map(String::from)
        .collect();
    let tree = d.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/file"), "contents\n").unwrap();
    std::os::unix::fs::symlink("sub/file", tree.join("link")).unwrap();
    let added = arca_ok(&root, &["store", "add-path", tree.to_str().unwrap()]);
    paths.push(added.trim().to_owned());
    (root, paths)
}

/// Every `.narinfo` in `dir` has its NAR and the `.narinfo`s of its references there.
pub fn assert_complete(dir: &Path) {
    let store_dir = StoreDir::default();
    for (file, text) in narinfos(dir) {
        let narinfo = NarInfo::parse(&store_dir, &text, &file).unwrap();
        assert!(dir.join(&narinfo.url).is_file(), "{file}: no NAR");
        for reference in &narinfo.info.references {
            assert!(
                dir.join(NarInfo::file_name(reference)).is_file(),
                "{file}: reference {reference} missing"
            );
        }
    }
}
