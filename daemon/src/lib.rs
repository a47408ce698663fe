//! `arca-daemon`: the local store with builds as a [`arca_store_core::StoreOps`]
//! ([`LocalBackend`]), and `arca daemon`, which serves it over Nix's worker protocol
//! (`arca-daemon-proto`'s server) on a Unix socket or stdin/stdout.
//!
//! - [`local`]: [`LocalBackend`], a `LocalStore` plus builds through `arca-build`.
//! - [`daemon`]: the process: the socket (or systemd's), who may connect and who is
//!   trusted, a thread and a store handle per connection, limits.
//! - [`recursive`]: recursive Nix, a restricted daemon per build that asks for it.
//!
//! ```
//! use arca_daemon::LocalBackend;
//! use arca_daemon_proto::{protocol, serve, wire::Limits, Peer};
//! use arca_store_core::Settings;
//!
//! let root = tempfile::tempdir()?;
//! let store = arca_store_sqlite::LocalStore::open(root.path())?;
//! // A client that says hello with protocol 1.34 and hangs up.
//! let mut hello = Vec::new();
//! for word in [protocol::WORKER_MAGIC_1, protocol::version(1, 34), 0, 0] {
//!     hello.extend_from_slice(&word.to_le_bytes());
//! }
//! let mut reply = Vec::new();
//! let (peer, settings) = (Peer { trusted: true }, Settings::default());
//! serve(&LocalBackend::new(&store), &hello[..], &mut reply, peer, Limits::default(), &settings)?;
//! assert_eq!(&reply[..8], &protocol::WORKER_MAGIC_2.to_le_bytes());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod activation;
pub mod daemon;
pub mod local;
pub mod recursive;

pub use local::LocalBackend;
