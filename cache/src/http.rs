//! `http://` and `https://` caches, as Nix's `HttpBinaryCacheStore`: `GET` a file, `HEAD`
//! to test one, `PUT` to write one; 404 and 410 mean "no such file". One agent per
//! cache keeps connections open between requests (HTTP/1.1 keep-alive), so the many
//! small narinfo requests of a closure reuse a few connections.

use std::io::Read;
use std::time::Duration;

use crate::backend::{open_spooled, Backend, BackendError, Body, Download};

/// How many idle connections an agent keeps per host (at least the lookup concurrency,
/// so that concurrent lookups do not open a connection each time).
pub(crate) const IDLE_CONNECTIONS: usize = 64;

/// A cache served over HTTP(S).
#[derive(Debug, Clone)]
pub struct HttpBackend {
    base: String,
    agent: ureq::Agent,
}

/// A new agent with the timeouts Nix uses (`connect-timeout` unset: the system's;
/// Arca gives up on a connection after 30 s, and on a silent transfer after 300 s, as
/// Nix's `stalled-download-timeout`).
pub(crate) fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(300))
        .timeout_write(Duration::from_secs(300))
        .max_idle_connections(IDLE_CONNECTIONS)
        .max_idle_connections_per_host(IDLE_CONNECTIONS)
        .user_agent(concat!("arca/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl HttpBackend {
    /// The cache at `base` (`http://HOST[:PORT][/PATH]`, no trailing slash needed).
    pub fn new(base: &str) -> HttpBackend {
        HttpBackend {
            base: base.trim_end_matches('/').to_owned(),
            agent: agent(),
        }
    }
}

/// Whether an HTTP status means "no such file" (Nix: 404 and 410; S3 adds 403).
pub(crate) fn not_found(status: u16, forbidden_too: bool) -> bool {
    status == 404 || status == 410 || (forbidden_too && status == 403)
}

/// The error of a failed request, with the server's status and the start of its body.
pub(crate) fn request_error(action: &'static str, url: &str, error: ureq::Error) -> BackendError {
    match error {
        ureq::Error::Status(status, response) => {
            let mut body = String::new();
            let _ = response.into_reader().take(512).read_to_string(&mut body);
            BackendError::new(
                action,
                url,
                format!("HTTP error {status}: {}", body.trim()).trim_end_matches(": "),
            )
        }
        ureq::Error::Transport(transport) => BackendError::new(action, url, transport),
    }
}

impl Backend for HttpBackend {
    fn url_of(&self, key: &str) -> String {
        format!("{}/{key}", self.base)
    }

    fn get(&self, key: &str) -> Result<Option<Download>, BackendError> {
        let url = self.url_of(key);
        match self.agent.get(&url).call() {
            Ok(response) => Ok(Some(response.into_reader())),
            Err(ureq::Error::Status(status, _)) if not_found(status, false) => Ok(None),
            Err(error) => Err(request_error("download", &url, error)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool, BackendError> {
        let url = self.url_of(key);
        match self.agent.head(&url).call() {
            Ok(_) => Ok(true),
            Err(ureq::Error::Status(status, _)) if not_found(status, false) => Ok(false),
            Err(error) => Err(request_error("query", &url, error)),
        }
    }

    fn put(&self, key: &str, body: Body<'_>, content_type: &str) -> Result<(), BackendError> {
        let url = self.url_of(key);
        let request = self.agent.put(&url).set("Content-Type", content_type);
        let sent = match body {
            Body::Bytes(bytes) => request.send_bytes(bytes),
            Body::File(file) => {
                let (reader, len) = open_spooled(&file, &url)?;
                request
                    .set("Content-Length", &len.to_string())
                    .send(std::io::BufReader::with_capacity(1 << 16, reader))
            }
        };
        sent.map(drop)
            .map_err(|error| request_error("upload", &url, error))
    }
}
