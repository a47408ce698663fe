//! Helpers for the daemon tests (`tests/tests/daemon_interop.rs`): `arca daemon` and a
//! private real `nix-daemon`, each with its store root, socket and log in a directory of
//! its own, stopped when dropped; real Nix clients pointed at either, as root or as an
//! unprivileged user; and [`RawClient`], a minimal client of Nix's worker protocol for
//! the requests no Nix client sends (old versions, garbage, stress).

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::store::run;
use crate::{arca_bin, NIX_CONFIG};

/// Which program serves a [`Daemon`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonKind {
    /// `arca daemon`.
    Arca,
    /// Real Nix's `nix-daemon` on a chroot store.
    Nix,
}

/// A daemon running on `DIR/root` (the store is `DIR/root/nix/store`), listening on
/// `DIR/socket`, logging to `DIR/log`; killed when dropped.
pub struct Daemon {
    kind: DaemonKind,
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    /// Starts `arca --store DIR/root daemon --socket DIR/socket ARGS` (with `TMPDIR`
    /// `DIR/tmp`, where builds make their directories) and waits until it accepts
    /// connections.
    pub fn arca(dir: &Path, args: &[&str]) -> Daemon {
        fs::create_dir_all(dir.join("tmp")).unwrap();
        let mut command = Command::new(arca_bin());
        command
            .arg("--store")
            .arg(dir.join("root"))
            .arg("daemon")
            .arg("--socket")
            .arg(dir.join("socket"))
            .args(args)
            .env("TMPDIR", dir.join("tmp"));
        Daemon::start(DaemonKind::Arca, dir, command)
    }

    /// Starts `nix-daemon --store local?root=DIR/root` on `DIR/socket`
    /// (`NIX_DAEMON_SOCKET_PATH`), building in its sandbox, and waits until it accepts
    /// connections.
    pub fn nix(dir: &Path) -> Daemon {
        fs::create_dir_all(dir.join("root")).unwrap();
        let mut command = Command::new("nix-daemon");
        command
            .arg("--store")
            .arg(format!("local?root={}", dir.join("root").display()))
            .env("NIX_DAEMON_SOCKET_PATH", dir.join("socket"))
            .env("NIX_CONFIG", format!("{NIX_CONFIG}\nsandbox = true"));
        Daemon::start(DaemonKind::Nix, dir, command)
    }

    fn start(kind: DaemonKind, dir: &Path, mut command: Command) -> Daemon {
        fs::create_dir_all(dir).unwrap();
        let log = fs::File::create(dir.join("log")).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("the {kind:?} daemon cannot be spawned: {error}"));
        let mut daemon = Daemon {
            kind,
            child,
            dir: dir.to_owned(),
        };
        daemon.wait_until_listening();
        daemon
    }

    /// Waits until a handshake succeeds. A bare connect is not enough: `nix-daemon` on a
    /// new store creates its database on the first connection, and a second connection
    /// racing it fails ("SQLite database … is busy") and is reset.
    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let served = RawClient::connect(&self.socket())
                .and_then(|mut client| client.handshake(version(1, 34)));
            if served.is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the {:?} daemon exited ({status}) before listening: {}",
                    self.kind,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the {:?} daemon does not listen on {} after 30 s: {}",
                self.kind,
                self.socket().display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kind(&self) -> DaemonKind {
        self.kind
    }

    /// The process id of the daemon.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The store root: the store is `ROOT/nix/store`.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The physical location of a store path (`/nix/store/…`).
    pub fn physical(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("socket")
    }

    /// The store URI a Nix 2.8 client uses: `unix://SOCKET?root=ROOT`. The root matters:
    /// a `unix://` store is a local file system store on the client's side too, which
    /// reads files (`--export`, `nix store ls`) from where it thinks the store is.
    pub fn uri(&self) -> String {
        format!(
            "unix://{}?root={}",
            self.socket().display(),
            self.root().display()
        )
    }

    /// What the daemon wrote to its stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// A new raw protocol connection (no handshake yet).
    pub fn connect(&self) -> RawClient {
        RawClient::connect(&self.socket())
            .unwrap_or_else(|error| panic!("cannot connect to the {:?} daemon: {error}", self.kind))
    }

    /// `nix-store --store URI`, as `user` when given, ready for more arguments.
    pub fn nix_store_command(&self, user: Option<&Unprivileged>) -> Command {
        let mut command = client_command("nix-store", user);
        command.arg("--store").arg(self.uri());
        command
    }

    /// Runs `nix-store --store URI ARGS` with `stdin`, whatever the exit status.
    pub fn nix_store(&self, args: &[&str], stdin: &[u8]) -> Output {
        run(self.nix_store_command(None).args(args), stdin)
    }

    /// Runs `nix-store --store URI ARGS` with `stdin`, which must succeed: its stdout.
    pub fn nix_store_ok(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        let output = self.nix_store(args, stdin);
        self.expect_success("nix-store", args, output)
    }

    /// Runs `nix --store URI ARGS` (the new command line), which must succeed: its stdout.
    pub fn nix_ok(&self, args: &[&str]) -> Vec<u8> {
        let mut command = client_command("nix", None);
        command.arg("--store").arg(self.uri()).args(args);
        let output = run(&mut command, b"");
        self.expect_success("nix", args, output)
    }

    fn expect_success(&self, program: &str, args: &[&str], output: Output) -> Vec<u8> {
        assert!(
            output.status.success(),
            "{program} {args:?} against the {:?} daemon failed ({}): {}\ndaemon log: {}",
            self.kind,
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        output.stdout
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A user to run Nix clients as (through `setpriv`, so the tests must run as root), with
/// a home directory of their own.
pub struct Unprivileged {
    pub user: String,
    pub group: String,
    pub home: PathBuf,
}

impl Unprivileged {
    /// `nobody` with their primary group (`nogroup` on Debian), with `home` (created,
    /// owned by them) as `HOME`.
    pub fn nobody(home: &Path) -> Unprivileged {
        fs::create_dir_all(home).unwrap();
        let group = Command::new("id")
            .args(["-gn", "nobody"])
            .output()
            .expect("id can be spawned");
        assert!(group.status.success(), "there is no user nobody");
        let user = Unprivileged {
            user: "nobody".into(),
            group: String::from_utf8(group.stdout).unwrap().trim().to_owned(),
            home: home.to_owned(),
        };
        user.give(home);
        user
    }

    /// Makes `path` and everything below it theirs (`chown -R`).
    pub fn give(&self, path: &Path) {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.user, self.group))
            .arg(path)
            .status()
            .expect("chown can be spawned");
        assert!(status.success(), "chown -R {} failed", path.display());
    }
}

/// Whether this process runs as root (`/proc/self` belongs to the effective user).
pub fn running_as_root() -> bool {
    std::os::unix::fs::MetadataExt::uid(&fs::metadata("/proc/self").unwrap()) == 0
}

/// Makes `dir` and its ancestors up to `/` searchable by everyone (a temporary
/// directory is 0700), so that another user reaches a socket or file inside.
pub fn open_up_to_root(dir: &Path) {
    for ancestor in dir.ancestors() {
        let Ok(metadata) = fs::metadata(ancestor) else {
            continue;
        };
        let mode = metadata.permissions().mode();
        if mode & 0o005 != 0o005 {
            fs::set_permissions(ancestor, fs::Permissions::from_mode(mode | 0o055)).unwrap();
        }
    }
}

/// A real Nix client `program` with the tests' `NIX_CONFIG`, run as `user` (with
/// `setpriv`) when given.
pub fn client_command(program: &str, user: Option<&Unprivileged>) -> Command {
    match user {
        None => {
            let mut command = Command::new(program);
            command.env("NIX_CONFIG", NIX_CONFIG);
            command
        }
        Some(user) => {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={}", user.user))
                .arg(format!("--regid={}", user.group))
                .arg("--clear-groups")
                .arg("--")
                .arg(program)
                .env("NIX_CONFIG", NIX_CONFIG)
                .env("HOME", &user.home)
                .env_remove("XDG_CACHE_HOME");
            command
        }
    }
}

/// `args` as `&OsStr`s.
pub fn os_args<'a>(args: &[&'a str]) -> Vec<&'a OsStr> {
    args.iter().map(|arg| OsStr::new(*arg)).collect()
}

// --- The worker protocol, from the client's side ---------------------------------------

/// The client's first word.
pub const WORKER_MAGIC_1: u64 = 0x6e69_7863;
/// The server's first word.
pub const WORKER_MAGIC_2: u64 = 0x6478_696f;

/// Log channel codes.
pub const STDERR_WRITE: u64 = 0x6461_7416;
pub const STDERR_READ: u64 = 0x6461_7461;
pub const STDERR_ERROR: u64 = 0x6378_7470;
pub const STDERR_NEXT: u64 = 0x6f6c_6d67;
pub const STDERR_START_ACTIVITY: u64 = 0x5354_5254;
pub const STDERR_STOP_ACTIVITY: u64 = 0x5354_4f50;
pub const STDERR_RESULT: u64 = 0x5253_4c54;
pub const STDERR_LAST: u64 = 0x616c_7473;

/// Operation numbers used by the tests.
pub mod op {
    pub const IS_VALID_PATH: u64 = 1;
    pub const ADD_TO_STORE: u64 = 7;
    pub const ADD_TEXT_TO_STORE: u64 = 8;
    pub const QUERY_DERIVER: u64 = 18;
    pub const QUERY_ALL_VALID_PATHS: u64 = 23;
    pub const QUERY_PATH_INFO: u64 = 26;
    pub const QUERY_VALID_PATHS: u64 = 31;
    pub const ADD_SIGNATURES: u64 = 37;
    pub const ADD_TO_STORE_NAR: u64 = 39;
}

/// A protocol version: major in the high byte, minor in the low one.
pub const fn version(major: u64, minor: u64) -> u64 {
    (major << 8) | minor
}

/// What the server says in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The server's protocol version.
    pub server_version: u64,
    /// The daemon's name and version (protocol 1.33 and later).
    pub daemon_version: Option<String>,
    /// The trusted flag, 1 trusted, 2 not (protocol 1.35 and later).
    pub trusted: Option<u64>,
}

/// A `ValidPathInfo` as `QueryPathInfo` sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPathInfo {
    pub deriver: String,
    /// Base16 sha256.
    pub nar_hash: String,
    pub references: Vec<String>,
    pub registration_time: u64,
    pub nar_size: u64,
    pub ultimate: bool,
    pub signatures: Vec<String>,
    pub ca: String,
}

/// The longest string [`RawClient`] accepts from a server (a sanity bound, so that a
/// confused server cannot make the test allocate without bound).
const MAX_REPLY_STRING: u64 = 64 << 20;

/// A minimal client of Nix's worker protocol over a Unix socket (or any pair of
/// streams, e.g. `arca daemon --stdio`). Requests are buffered until a reply is read.
pub struct RawClient {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: BufWriter<Box<dyn Write + Send>>,
    stream: Option<UnixStream>,
    /// The protocol version agreed in the handshake (the client's until then).
    pub version: u64,
}

impl RawClient {
    /// Connects to `socket`; every read times out after 60 s (a test that waits on a
    /// reply fails rather than hangs).
    pub fn connect(socket: &Path) -> io::Result<RawClient> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let reader: Box<dyn Read + Send> = Box::new(stream.try_clone()?);
        let writer: Box<dyn Write + Send> = Box::new(stream.try_clone()?);
        Ok(RawClient {
            reader: BufReader::new(reader),
            writer: BufWriter::new(writer),
            stream: Some(stream),
            version: 0,
        })
    }

    /// A client over any pair of streams (reads block for as long as `reader` does).
    pub fn over(reader: Box<dyn Read + Send>, writer: Box<dyn Write + Send>) -> RawClient {
        RawClient {
            reader: BufReader::new(reader),
            writer: BufWriter::new(writer),
            stream: None,
            version: 0,
        }
    }

    fn minor(&self) -> u64 {
        self.version & 0xff
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    pub fn send_u64(&mut self, value: u64) -> io::Result<()> {
        self.writer.write_all(&value.to_le_bytes())
    }

    /// A byte string: length, bytes, zero padding to a multiple of 8.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.send_u64(bytes.len() as u64)?;
        self.writer.write_all(bytes)?;
        self.writer
            .write_all(&[0u8; 8][..(8 - bytes.len() % 8) % 8])
    }

    pub fn send_strings(&mut self, strings: &[&str]) -> io::Result<()> {
        self.send_u64(strings.len() as u64)?;
        for string in strings {
            self.send_bytes(string.as_bytes())?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// Flushes, then closes the sending half (the server sees the end of its input).
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.flush()?;
        if let Some(stream) = &self.stream {
            stream.shutdown(std::net::Shutdown::Write)?;
        }
        Ok(())
    }

    pub fn recv_u64(&mut self) -> io::Result<u64> {
        self.flush()?;
        let mut bytes = [0u8; 8];
        self.reader.read_exact(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    pub fn recv_bytes(&mut self) -> io::Result<Vec<u8>> {
        let len = self.recv_u64()?;
        if len > MAX_REPLY_STRING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the server sent a string of {len} bytes"),
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        self.reader.read_exact(&mut bytes)?;
        let mut padding = [0u8; 8];
        self.reader
            .read_exact(&mut padding[..(8 - len as usize % 8) % 8])?;
        if padding.iter().any(|&b| b != 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server sent non-zero padding",
            ));
        }
        Ok(bytes)
    }

    pub fn recv_string(&mut self) -> io::Result<String> {
        String::from_utf8(self.recv_bytes()?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a string is not UTF-8"))
    }

    pub fn recv_strings(&mut self) -> io::Result<Vec<String>> {
        let len = self.recv_u64()?;
        if len > MAX_REPLY_STRING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the server sent a list of {len} strings"),
            ));
        }
        (0..len).map(|_| self.recv_string()).collect()
    }

    /// Whatever the server sends until it closes the connection. Fails when it has not
    /// closed it within the read timeout. A reset counts as closed: a server that hangs
    /// up with bytes of ours unread resets the connection.
    pub fn recv_until_closed(&mut self) -> io::Result<Vec<u8>> {
        let _ = self.flush();
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match self.reader.read(&mut buffer) {
                Ok(0) => return Ok(received),
                Ok(n) => received.extend_from_slice(&buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(received)
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// The client's side of the handshake at `client_version`, all sent at once (magic,
    /// version, no CPU affinity, no reserved space), then the server's side.
    pub fn handshake(&mut self, client_version: u64) -> io::Result<Handshake> {
        self.send_u64(WORKER_MAGIC_1)?;
        self.send_u64(client_version)?;
        let magic = self.recv_u64()?;
        if magic != WORKER_MAGIC_2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the server's magic is {magic:#x}"),
            ));
        }
        let server_version = self.recv_u64()?;
        self.version = client_version.min(server_version);
        if self.minor() >= 38 {
            self.send_u64(0)?; // protocol features: none
        }
        self.send_u64(0)?; // CPU affinity: none
        self.send_u64(0)?; // reserve space: no
        if self.minor() >= 38 {
            let features = self.recv_u64()?;
            for _ in 0..features {
                self.recv_string()?;
            }
        }
        let daemon_version = if self.minor() >= 33 {
            Some(self.recv_string()?)
        } else {
            None
        };
        let trusted = if self.minor() >= 35 {
            Some(self.recv_u64()?)
        } else {
            None
        };
        if let Err(message) = self.recv_result()? {
            return Err(io::Error::other(format!(
                "the handshake ended in an error: {message}"
            )));
        }
        Ok(Handshake {
            server_version,
            daemon_version,
            trusted,
        })
    }

    /// Reads log messages up to the end of an operation's preamble: `Ok` at
    /// `STDERR_LAST`, `Err(message)` at `STDERR_ERROR` (in the form of the agreed
    /// version).
    pub fn recv_result(&mut self) -> io::Result<Result<(), String>> {
        loop {
            match self.recv_u64()? {
                STDERR_LAST => return Ok(Ok(())),
                STDERR_ERROR => return self.recv_error().map(Err),
                STDERR_NEXT | STDERR_WRITE => {
                    self.recv_bytes()?;
                }
                STDERR_START_ACTIVITY => {
                    self.recv_u64()?; // id
                    self.recv_u64()?; // level
                    self.recv_u64()?; // type
                    self.recv_bytes()?; // text
                    self.recv_fields()?;
                    self.recv_u64()?; // parent
                }
                STDERR_STOP_ACTIVITY => {
                    self.recv_u64()?;
                }
                STDERR_RESULT => {
                    self.recv_u64()?; // id
                    self.recv_u64()?; // type
                    self.recv_fields()?;
                }
                STDERR_READ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the server asked for data (STDERR_READ)",
                    ))
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unknown log message {other:#x}"),
                    ))
                }
            }
        }
    }

    fn recv_fields(&mut self) -> io::Result<()> {
        let count = self.recv_u64()?;
        for _ in 0..count {
            match self.recv_u64()? {
                0 => {
                    self.recv_u64()?;
                }
                1 => {
                    self.recv_bytes()?;
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unknown field type {other}"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The body of `STDERR_ERROR`: from 1.26 a structured error (type, level, name,
    /// message, position, traces), before it a message and an exit status.
    fn recv_error(&mut self) -> io::Result<String> {
        if self.minor() >= 26 {
            let kind = self.recv_string()?;
            if kind != "Error" {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("an error of type {kind:?}"),
                ));
            }
            self.recv_u64()?; // level
            self.recv_string()?; // name
            let message = self.recv_string()?;
            self.recv_u64()?; // position: none
            let traces = self.recv_u64()?;
            for _ in 0..traces {
                self.recv_u64()?;
                self.recv_string()?;
            }
            Ok(message)
        } else {
            let message = self.recv_string()?;
            let status = self.recv_u64()?;
            if status == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "an error with exit status 0",
                ));
            }
            Ok(message)
        }
    }

    /// `IsValidPath`.
    pub fn is_valid_path(&mut self, path: &str) -> io::Result<Result<bool, String>> {
        self.send_u64(op::IS_VALID_PATH)?;
        self.send_bytes(path.as_bytes())?;
        if let Err(message) = self.recv_result()? {
            return Ok(Err(message));
        }
        match self.recv_u64()? {
            0 => Ok(Ok(false)),
            1 => Ok(Ok(true)),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("IsValidPath answered {other}"),
            )),
        }
    }

    /// `QueryPathInfo`: `None` for a path that is not valid (1.17 and later; before, the
    /// server answers with an error).
    pub fn query_path_info(
        &mut self,
        path: &str,
    ) -> io::Result<Result<Option<RawPathInfo>, String>> {
        self.send_u64(op::QUERY_PATH_INFO)?;
        self.send_bytes(path.as_bytes())?;
        if let Err(message) = self.recv_result()? {
            return Ok(Err(message));
        }
        if self.minor() >= 17 && self.recv_u64()? == 0 {
            return Ok(Ok(None));
        }
        self.recv_path_info().map(|info| Ok(Some(info)))
    }

    /// An `UnkeyedValidPathInfo` in the form of the agreed version.
    pub fn recv_path_info(&mut self) -> io::Result<RawPathInfo> {
        let deriver = self.recv_string()?;
        let nar_hash = self.recv_string()?;
        let references = self.recv_strings()?;
        let registration_time = self.recv_u64()?;
        let nar_size = self.recv_u64()?;
        let (ultimate, signatures, ca) = if self.minor() >= 16 {
            (
                self.recv_u64()? != 0,
                self.recv_strings()?,
                self.recv_string()?,
            )
        } else {
            (false, Vec::new(), String::new())
        };
        Ok(RawPathInfo {
            deriver,
            nar_hash,
            references,
            registration_time,
            nar_size,
            ultimate,
            signatures,
            ca,
        })
    }

    /// `QueryAllValidPaths`.
    pub fn query_all_valid_paths(&mut self) -> io::Result<Result<Vec<String>, String>> {
        self.send_u64(op::QUERY_ALL_VALID_PATHS)?;
        if let Err(message) = self.recv_result()? {
            return Ok(Err(message));
        }
        self.recv_strings().map(Ok)
    }

    /// `AddTextToStore`: the path of the text `name` with `text` and `references`.
    pub fn add_text_to_store(
        &mut self,
        name: &str,
        text: &[u8],
        references: &[&str],
    ) -> io::Result<Result<String, String>> {
        self.send_u64(op::ADD_TEXT_TO_STORE)?;
        self.send_bytes(name.as_bytes())?;
        self.send_bytes(text)?;
        self.send_strings(references)?;
        if let Err(message) = self.recv_result()? {
            return Ok(Err(message));
        }
        self.recv_string().map(Ok)
    }
}

/// The NAR of a single regular file with `contents` (executable when `executable`).
pub fn file_nar(contents: &[u8], executable: bool) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
        out.resize(out.len() + (8 - bytes.len() % 8) % 8, 0);
    }
    let mut nar = Vec::new();
    for token in [&b"nix-archive-1"[..], b"(", b"type", b"regular"] {
        string(&mut nar, token);
    }
    if executable {
        string(&mut nar, b"executable");
        string(&mut nar, b"");
    }
    string(&mut nar, b"contents");
    string(&mut nar, contents);
    string(&mut nar, b")");
    nar
}
