//! `arca cache serve` (a store as an HTTP binary cache) and `arca key` (signing keys, as
//! `nix key`).

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use arca_cache::serve::{CacheServer, ServeOptions};
use arca_cache::Compression;
use arca_store_core::{SecretKey, StoreOps};

use crate::store::OnStore;
use crate::GlobalArgs;

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Serve the store as an HTTP binary cache, as nix-serve does (Nix clients use it
    /// with `--option substituters http://ADDR`).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (HOST:PORT; port 0 picks a free port, printed on stderr).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5000")]
    listen: String,
    /// Sign every narinfo served with this secret key file.
    #[arg(long, value_name = "FILE")]
    sign_key: Option<PathBuf>,
    /// How NARs are sent: none, xz or zstd.
    #[arg(long, value_name = "METHOD", default_value = "none")]
    compression: String,
    /// The priority announced in nix-cache-info (lower is tried first).
    #[arg(long, value_name = "N", default_value_t = 30)]
    priority: u32,
    /// Connections served at once (more wait to be accepted).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,
}

pub fn run(command: CacheCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    match command {
        CacheCommand::Serve(args) => {
            let compression = Compression::from_name(&args.compression)
                .with_context(|| format!("unknown compression method '{}'", args.compression))?;
            let secret_key = match &args.sign_key {
                Some(path) => Some(arca_cache::cache::read_secret_key(path)?),
                None => None,
            };
            let options = ServeOptions {
                priority: args.priority,
                compression,
                secret_key,
                max_connections: args.max_connections,
            };
            crate::store::on_store(
                global,
                Serve {
                    listen: args.listen,
                    options,
                },
            )
        }
    }
}

struct Serve {
    listen: String,
    options: ServeOptions,
}

impl OnStore for Serve {
    type Output = ();

    fn run<S: StoreOps>(self, store: &S) -> anyhow::Result<()> {
        let server = CacheServer::bind(&self.listen, store, self.options)?;
        let addr = server.local_addr()?;
        eprintln!("serving the store on http://{addr}");
        let error = server.run();
        Err(error).context("the cache server stopped")
    }
}

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Print a new secret signing key (== `nix key generate-secret`).
    GenerateSecret {
        /// The key's name, conventionally the cache's host name and a number
        /// (`cache.example.org-1`).
        #[arg(long, value_name = "NAME")]
        key_name: String,
    },
    /// Read a secret key on stdin and print its public key (== `nix key
    /// convert-secret-to-public`).
    ConvertSecretToPublic,
}

pub fn key(command: KeyCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        KeyCommand::GenerateSecret { key_name } => {
            let mut seed = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut random| random.read_exact(&mut seed))
                .context("cannot read /dev/urandom")?;
            let key = SecretKey::from_seed(&key_name, &seed)
                .with_context(|| format!("bad key name '{key_name}'"))?;
            // Nix prints it without a newline.
            write!(out, "{}", key.to_file_text())?;
        }
        KeyCommand::ConvertSecretToPublic => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            if text.trim().is_empty() {
                bail!("no secret key on stdin");
            }
            let key = SecretKey::parse(text.trim()).context("the secret key on stdin")?;
            write!(out, "{}", key.public_key())?;
        }
    }
    out.flush()?;
    Ok(())
}
