//! `arca-daemon-proto`: Nix's daemon worker protocol, so that real Nix clients (and
//! Arca's) can use a store owned by `arca daemon`.
//!
//! - [`wire`]: the primitives (`u64`s, padded byte strings, string lists, framed
//!   streams), decoded with [`wire::Limits`] so that no length from the wire sizes an
//!   allocation before its bytes arrive.
//! - [`protocol`]: magic numbers, versions (1.21, Nix 2.3, through 1.38, Nix 2.24 and
//!   later), log codes and operation numbers.
//! - [`serve`]: one connection, from the handshake to the client hanging up, over any
//!   [`StoreOps`] (`arca-store-core`'s one store interface: queries, adds, builds,
//!   roots, garbage collection); `arca-daemon`'s local store with builds is one.
//!   [`serve_socket`] does the same on a Unix socket with an idle timeout; [`refuse`]
//!   answers a client that may not be served with the reason. Each connection starts
//!   from the daemon's [`Settings`]; the client's `SetOptions` change its copy as far as
//!   its trust allows ([`apply_client_options`]).
//!
//! ```
//! use arca_daemon_proto::{protocol, serve, wire::Limits, Peer};
//! use arca_store_core::{Settings, StoreOps};
//!
//! # fn demo(store: &impl StoreOps) -> Result<(), Box<dyn std::error::Error>> {
//! // A client that says hello with protocol 1.34 and hangs up.
//! let mut hello = Vec::new();
//! for word in [protocol::WORKER_MAGIC_1, protocol::version(1, 34), 0, 0] {
//!     hello.extend_from_slice(&word.to_le_bytes());
//! }
//! let mut reply = Vec::new();
//! let settings = Settings::default();
//! serve(store, &hello[..], &mut reply, Peer { trusted: true }, Limits::default(), &settings)?;
//! assert_eq!(&reply[..8], &protocol::WORKER_MAGIC_2.to_le_bytes());
//! # Ok(())
//! # }
//! ```
//!
//! - [`serve_protocol`]: the other protocol Nix speaks over ssh, `nix-store --serve`'s
//!   (what `ssh://` stores and remote builders use), served by
//!   [`serve_protocol::serve_legacy`] over any [`StoreOps`].
//! - [`DaemonClient`]: the client side, itself a [`StoreOps`], so that every command
//!   written against the interface works through a daemon too.
//!
//! This crate links no SQLite, sandbox or builder: a client-only user (and the fuzz
//! crate) gets the wire format, the client and the server only.

mod client;
mod client_ops;
pub mod long_path;
pub mod protocol;
mod serve_client;
pub mod serve_protocol;
mod server;
pub mod ssh;
pub mod wire;

pub use arca_store_core::{BuildMode, Built, DerivedPath, Settings, StoreOpError, StoreOps};
pub use client::{ClientError, DaemonClient, DaemonLog};
pub use serve_client::{ServeClient, ServeClientError};
pub use server::{apply_client_options, refuse, serve, serve_socket, Peer, ServeError};
