//! Serving a store as an HTTP binary cache (`arca cache serve`), as nix-serve and
//! harmonia do, for Nix and Arca clients alike:
//!
//! - `GET /nix-cache-info`: the store dir, `WantMassQuery: 1`, the priority.
//! - `GET /HASH.narinfo`: the path with that hash part, its `.narinfo` made on the fly
//!   (signed with the server's key when it has one, beside the signatures the store
//!   has), its NAR at `nar/HASH-NARHASH.nar[.xz|.zst]`.
//! - `GET /nar/HASH-NARHASH.nar[.ext]`: the NAR, streamed straight from the store
//!   (compressed on the fly when the server was asked to); a NAR hash that is no longer
//!   the path's is a 404, so a client never gets a NAR its `.narinfo` does not describe.
//!   A NAR that fails midway is cut short, never completed with wrong bytes.
//! - `GET /HASH.ls`: the path's NAR listing, as `write-nar-listing` writes it.
//! - `GET /log/DRV`: the build log of `DRV`.
//!
//! `HEAD` is answered as `GET`, without the body; other methods get a 405, other URLs
//! a 404. HTTP/1.1 with keep-alive (hyper): each connection is served by a thread of
//! its own, and each NAR produced by one more thread writing into a bounded channel,
//! so memory is bounded by the buffers (64 KiB chunks, [`CHANNEL_CHUNKS`] per NAR), not
//! by the NARs' sizes, and a slow client slows only itself.

use std::convert::Infallible;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::task::{Context, Poll};

use arca_store_core::{SecretKey, StoreDir, StoreOps, StorePath};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Method, Request, Response, StatusCode};

use crate::compression::Compressor;
use crate::narinfo::{Compression, NarInfo};

/// How many 64 KiB chunks of a NAR may wait between its producer and the connection.
pub const CHANNEL_CHUNKS: usize = 8;
const CHUNK: usize = 1 << 16;

/// How the server answers.
#[derive(Debug)]
pub struct ServeOptions {
    /// The `Priority` of its `nix-cache-info` (lower is tried first; nix-serve says 30).
    pub priority: u32,
    /// How NARs are sent: `none`, `xz` or `zstd`.
    pub compression: Compression,
    /// Signs every `.narinfo` served.
    pub secret_key: Option<SecretKey>,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            priority: 30,
            compression: Compression::None,
            secret_key: None,
            max_connections: 1024,
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on '{addr}'")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("the server cannot send {0}-compressed NARs (use none, xz or zstd)")]
    Compression(Compression),
    #[error("cannot accept connections")]
    Accept(#[source] io::Error),
}

/// A binary cache server on a store, listening.
pub struct CacheServer<'a, S: StoreOps + ?Sized> {
    listener: TcpListener,
    store: &'a S,
    options: ServeOptions,
}

type ResponseBody = BoxBody<Bytes, io::Error>;

impl<'a, S: StoreOps + ?Sized> CacheServer<'a, S> {
    /// Listens on `addr` (`HOST:PORT`; port 0 picks a free one).
    pub fn bind(addr: &str, store: &'a S, options: ServeOptions) -> Result<Self, ServeError> {
        if !matches!(
            options.compression,
            Compression::None | Compression::Xz | Compression::Zstd
        ) {
            return Err(ServeError::Compression(options.compression));
        }
        let listener = TcpListener::bind(addr).map_err(|source| ServeError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
        Ok(CacheServer {
            listener,
            store,
            options,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers requests until accepting a connection fails.
    pub fn run(&self) -> ServeError {
        let open = std::sync::Mutex::new(0usize);
        let closed = std::sync::Condvar::new();
        std::thread::scope(|scope| loop {
            {
                let mut count = open.lock().unwrap_or_else(|e| e.into_inner());
                while *count >= self.options.max_connections.max(1) {
                    count = closed.wait(count).unwrap_or_else(|e| e.into_inner());
                }
                *count += 1;
            }
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(error) => return ServeError::Accept(error),
            };
            let (open, closed) = (&open, &closed);
            scope.spawn(move || {
                let _ = stream.set_nodelay(true);
                self.serve_connection(scope, stream);
                *open.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                closed.notify_one();
            });
        })
    }

    /// Serves one connection's requests, one after the other, on this thread.
    fn serve_connection<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        stream: std::net::TcpStream,
    ) {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            if stream.set_nonblocking(true).is_err() {
                return;
            }
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                return;
            };
            let service = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| {
                let response = self.answer(scope, request.method(), request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            // A client that goes away mid-answer is its own business.
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }

    fn answer<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        method: &Method,
        path: &str,
    ) -> Response<ResponseBody> {
        if method != Method::GET && method != Method::HEAD {
            return status(StatusCode::METHOD_NOT_ALLOWED);
        }
        let head = method == Method::HEAD;
        let store_dir = self.store.store_dir();
        if path == "/nix-cache-info" {
            let text = cache_info_text(store_dir, self.options.priority);
            return text_response(text, "text/x-nix-cache-info");
        }
        if let Some(hash) = path
            .strip_prefix('/')
            .and_then(|p| p.strip_suffix(".narinfo"))
        {
            return match self.narinfo(hash) {
                Some(narinfo) => text_response(narinfo.to_text(store_dir), "text/x-nix-narinfo"),
                None => status(StatusCode::NOT_FOUND),
            };
        }
        if let Some(hash) = path.strip_prefix('/').and_then(|p| p.strip_suffix(".ls")) {
            let Some(narinfo) = self.narinfo(hash) else {
                return status(StatusCode::NOT_FOUND);
            };
            return match crate::cache::listing_json(self.store, &narinfo.info.path) {
                Ok(listing) => text_response(listing, "application/json"),
                Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
            };
        }
        if let Some(name) = path.strip_prefix("/nar/") {
            let Some((path, size)) = self.nar_path(name) else {
                return status(StatusCode::NOT_FOUND);
            };
            let length = (self.options.compression == Compression::None).then_some(size);
            if head {
                return streamed(ChannelBody::empty(length), "application/x-nix-nar");
            }
            let (body, writer) = ChannelBody::new(length);
            let compression = self.options.compression;
            let store = self.store;
            scope.spawn(move || {
                let produced = Compressor::new(compression, writer)
                    .map_err(io::Error::other)
                    .and_then(|mut compressor| {
                        store
                            .nar_from_path(&path, &mut compressor)
                            .map_err(io::Error::other)?;
                        compressor.finish()?.finish()
                    });
                if let Err(error) = produced {
                    // The sender is gone with the writer: the client sees a cut body.
                    drop(error);
                }
            });
            return streamed(body, "application/x-nix-nar");
        }
        if let Some(drv) = path.strip_prefix("/log/") {
            let Ok(drv) = StorePath::from_base_name(drv) else {
                return status(StatusCode::NOT_FOUND);
            };
            if !matches!(self.store.read_build_log(&drv), Ok(Some(_))) {
                return status(StatusCode::NOT_FOUND);
            }
            if head {
                return streamed(ChannelBody::empty(None), "text/plain; charset=utf-8");
            }
            let (body, mut writer) = ChannelBody::new(None);
            let store = self.store;
            scope.spawn(move || {
                let copied = match store.read_build_log(&drv) {
                    Ok(Some(mut log)) => {
                        io::copy(&mut log, &mut writer).and_then(|_| writer.finish())
                    }
                    _ => Err(io::Error::other("the log went away")),
                };
                drop(copied);
            });
            return streamed(body, "text/plain; charset=utf-8");
        }
        status(StatusCode::NOT_FOUND)
    }

    /// The `.narinfo` of the path with hash part `hash`, if the store has it.
    fn narinfo(&self, hash: &str) -> Option<NarInfo> {
        if hash.len() != 32 || !hash.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let path = self.store.query_path_from_hash_part(hash).ok()??;
        let mut info = self.store.query_path_info(&path).ok()??;
        let compression = self.options.compression;
        let url = format!(
            "nar/{hash}-{}.nar{}",
            info.nar_hash.to_base32(),
            compression.extension()
        );
        if let Some(key) = &self.options.secret_key {
            info.sign(self.store.store_dir(), key);
        }
        info.registration_time = 0;
        info.ultimate = false;
        let mut narinfo = NarInfo::new(info, url, compression);
        if compression == Compression::None {
            narinfo.file_hash = Some(narinfo.info.nar_hash.clone());
            narinfo.file_size = Some(narinfo.info.nar_size);
        }
        Some(narinfo)
    }

    /// The path and NAR size a `nar/` URL names, if it is still the store's.
    fn nar_path(&self, name: &str) -> Option<(StorePath, u64)> {
        let name = name.strip_suffix(self.options.compression.extension())?;
        let (hash, nar_hash) = name.strip_suffix(".nar")?.split_once('-')?;
        let narinfo = self.narinfo(hash)?;
        (narinfo.info.nar_hash.to_base32() == nar_hash)
            .then_some((narinfo.info.path, narinfo.info.nar_size))
    }
}

/// The `nix-cache-info` a server of `store_dir` with `priority` answers.
pub fn cache_info_text(store_dir: &StoreDir, priority: u32) -> String {
    format!("StoreDir: {store_dir}\nWantMassQuery: 1\nPriority: {priority}\n")
}

fn status(code: StatusCode) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from(format!("{code}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response
}

fn text_response(text: String, content_type: &'static str) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed();
    with_type(Response::new(body), content_type)
}

fn streamed(body: ChannelBody, content_type: &'static str) -> Response<ResponseBody> {
    with_type(Response::new(body.boxed()), content_type)
}

fn with_type(
    mut response: Response<ResponseBody>,
    content_type: &'static str,
) -> Response<ResponseBody> {
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// A response body fed through a bounded channel by a [`ChannelWriter`] on another
/// thread; with a known length, hyper sends it as `Content-Length` (and a producer that
/// stops short makes hyper cut the connection).
struct ChannelBody {
    chunks: Option<tokio::sync::mpsc::Receiver<io::Result<Bytes>>>,
    length: Option<u64>,
}

impl ChannelBody {
    fn new(length: Option<u64>) -> (ChannelBody, ChannelWriter) {
        let (sender, receiver) = tokio::sync::mpsc::channel(CHANNEL_CHUNKS);
        let body = ChannelBody {
            chunks: Some(receiver),
            length,
        };
        let writer = ChannelWriter {
            sender,
            buffer: Vec::with_capacity(CHUNK),
            finished: false,
        };
        (body, writer)
    }

    /// No body, announcing `length` (a `HEAD` answer).
    fn empty(length: Option<u64>) -> ChannelBody {
        ChannelBody {
            chunks: None,
            length,
        }
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let Some(chunks) = self.chunks.as_mut() else {
            return Poll::Ready(None);
        };
        chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}

/// The producing end of a [`ChannelBody`]: buffers 64 KiB chunks and blocks while the
/// channel is full. Dropping it without [`ChannelWriter::finish`] ends the body early
/// with an error, so the client sees a cut transfer, never a short one taken as whole.
struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
    finished: bool,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    /// Sends what is buffered and ends the body.
    fn finish(mut self) -> io::Result<()> {
        self.send()?;
        self.finished = true;
        Ok(())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let taken = room.min(bytes.len());
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == CHUNK {
            self.send()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        // Not finished: the producer failed. Tell the connection, so the body is cut
        // rather than ended as if complete.
        if !self.finished {
            let _ = self
                .sender
                .blocking_send(Err(io::Error::other("the NAR could not be produced")));
        }
    }
}
