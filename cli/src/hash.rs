//! `arca hash path|file|convert`.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use anyhow::Context;
use arca_store_core::{Encoding, Hash, HashAlgo, Hasher};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum HashCommand {
    /// Print the hash of the NAR serialisation of a path (== `nix hash path`, `nix-hash`).
    Path(HashArgs),
    /// Print the hash of a regular file's contents (== `nix hash file`).
    File(HashArgs),
    /// Convert hashes between encodings.
    Convert(ConvertArgs),
}

#[derive(Args)]
pub struct HashArgs {
    /// Hash algorithm.
    #[arg(long = "type", value_name = "ALGO", default_value = "sha256", value_parser = parse_algo)]
    algo: HashAlgo,
    #[command(flatten)]
    encoding: EncodingFlags,
    /// Paths to hash; one line of output per path.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

#[derive(Args)]
#[group(multiple = false)]
struct EncodingFlags {
    /// Print in base16 (hexadecimal).
    #[arg(long)]
    base16: bool,
    /// Print in nix-base32.
    #[arg(long)]
    base32: bool,
    /// Print in base64.
    #[arg(long)]
    base64: bool,
    /// Print in SRI form `algo-base64` (the default).
    #[arg(long)]
    sri: bool,
}

impl EncodingFlags {
    fn encoding(&self) -> Encoding {
        if self.base16 {
            Encoding::Base16
        } else if self.base32 {
            Encoding::Base32
        } else if self.base64 {
            Encoding::Base64
        } else {
            Encoding::Sri
        }
    }
}

#[derive(Args)]
pub struct ConvertArgs {
    /// Target encoding.
    #[arg(long, value_name = "ENCODING", value_parser = parse_encoding)]
    to: Encoding,
    /// Algorithm of hashes that do not name it themselves.
    #[arg(long = "type", value_name = "ALGO", value_parser = parse_algo)]
    algo: Option<HashAlgo>,
    /// Hashes in any encoding (base16, nix-base32, base64, SRI, `algo:` prefixed).
    #[arg(required = true)]
    hashes: Vec<String>,
}

fn parse_algo(text: &str) -> Result<HashAlgo, String> {
    HashAlgo::from_name(text).map_err(|error| error.to_string())
}

fn parse_encoding(text: &str) -> Result<Encoding, String> {
    match text {
        "base16" => Ok(Encoding::Base16),
        "base32" | "nix32" => Ok(Encoding::Base32),
        "base64" => Ok(Encoding::Base64),
        "sri" => Ok(Encoding::Sri),
        other => Err(format!(
            "unknown encoding '{other}' (expected base16, base32, base64 or sri)"
        )),
    }
}

pub fn run(command: HashCommand) -> anyhow::Result<()> {
    match command {
        HashCommand::Path(args) => {
            for path in &args.paths {
                // The NAR encoder buffers its output; the hasher takes it directly. Errors
                // name the file at fault, so no context is added.
                let mut hasher = Hasher::new(args.algo);
                arca_nar::dump_path(path, &mut hasher, &arca_nar::DumpOptions::default())?;
                println!(
                    "{}",
                    hasher.finish().encode(args.encoding.encoding(), false)
                );
            }
        }
        HashCommand::File(args) => {
            for path in &args.paths {
                let hash = hash_file(path, args.algo)
                    .with_context(|| format!("cannot hash file '{}'", path.display()))?;
                println!("{}", hash.encode(args.encoding.encoding(), false));
            }
        }
        HashCommand::Convert(args) => {
            for text in &args.hashes {
                let hash = Hash::parse(text, args.algo)?;
                println!("{}", hash.encode(args.to, false));
            }
        }
    }
    Ok(())
}

fn hash_file(path: &PathBuf, algo: HashAlgo) -> io::Result<Hash> {
    let mut file = File::open(path)?;
    let mut hasher = Hasher::new(algo);
    // A large buffer: `io::copy`'s 8 KiB costs a syscall per 8 KiB on multi-GiB files.
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => hasher.update(&buffer[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}
