//! `arca nar dump-path|restore|ls|cat`.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::Context;
use arca_nar::{DumpOptions, Limits, Listing, RestoreOptions};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum NarCommand {
    /// Write the NAR serialisation of PATH to stdout (== `nix-store --dump`).
    DumpPath(DumpArgs),
    /// Unpack a NAR from stdin into DIR, which must not exist (== `nix-store --restore`).
    Restore(RestoreArgs),
    /// List the contents of a NAR file (== `nix nar ls`).
    Ls(LsArgs),
    /// Print the contents of a regular file inside a NAR (== `nix nar cat`).
    Cat(CatArgs),
}

#[derive(Args)]
pub struct DumpArgs {
    path: PathBuf,
}

#[derive(Args)]
pub struct RestoreArgs {
    dir: PathBuf,
}

#[derive(Args)]
pub struct LsArgs {
    /// List directories recursively.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Long listing: type and permissions, size, symlink targets.
    #[arg(short, long)]
    long: bool,
    /// Print JSON, as `nix nar ls --json`.
    #[arg(long)]
    json: bool,
    /// The NAR file.
    nar: PathBuf,
    /// Path inside the NAR ('/' is its root).
    #[arg(default_value = "/")]
    path: String,
}

#[derive(Args)]
pub struct CatArgs {
    /// The NAR file.
    nar: PathBuf,
    /// Path of a regular file inside the NAR.
    path: String,
}

pub fn run(command: NarCommand) -> anyhow::Result<()> {
    match command {
        NarCommand::DumpPath(args) => {
            // Errors name the file at fault; no context needed.
            arca_nar::dump_path(&args.path, &mut raw_stdout()?, &DumpOptions::default())?;
        }
        NarCommand::Restore(args) => {
            let stdin = io::stdin().lock();
            arca_nar::restore(stdin, &args.dir, &RestoreOptions::default()).with_context(|| {
                format!(
                    "cannot restore the NAR on stdin into '{}'",
                    args.dir.display()
                )
            })?;
        }
        NarCommand::Ls(args) => ls(&args)?,
        NarCommand::Cat(args) => {
            let nar = open(&args.nar)?;
            let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
            arca_nar::cat(nar, Path::new(&args.path), &mut out, &Limits::default())
                .with_context(|| format!("cannot read '{}'", args.nar.display()))?;
            out.flush().context("cannot write to stdout")?;
        }
    }
    Ok(())
}

/// Standard output as a plain file. `io::stdout()` is line-buffered and scans every
/// chunk for newlines, which costs a third of the throughput on a multi-GiB NAR; the NAR
/// encoder buffers its own output, so a raw descriptor is what it wants.
fn raw_stdout() -> anyhow::Result<File> {
    let fd = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot use standard output")?;
    Ok(File::from(fd))
}

fn open(path: &Path) -> anyhow::Result<BufReader<File>> {
    let file = File::open(path).with_context(|| format!("cannot open '{}'", path.display()))?;
    Ok(BufReader::with_capacity(1 << 16, file))
}

fn ls(args: &LsArgs) -> anyhow::Result<()> {
    let listing = arca_nar::list(open(&args.nar)?, &Limits::default())
        .with_context(|| format!("cannot read '{}'", args.nar.display()))?;
    let node = listing
        .get(Path::new(&args.path))
        .with_context(|| format!("path '{}' does not exist", args.path))?;
    let mut out = BufWriter::new(io::stdout().lock());
    if args.json {
        let json = to_json(node, args.recursive);
        writeln!(out, "{json}")?;
    } else {
        match node {
            Listing::Directory { entries } => {
                for (name, child) in entries {
                    let relative = format!("./{}", String::from_utf8_lossy(name));
                    print_tree(&mut out, child, &relative, args)?;
                }
            }
            _ => {
                // Nix prints the base name of the path asked for, which is empty for '/'.
                let base = args.path.rsplit('/').find(|c| !c.is_empty()).unwrap_or("");
                print_entry(&mut out, node, base, args.long)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn print_tree(
    out: &mut impl Write,
    node: &Listing,
    relative: &str,
    args: &LsArgs,
) -> io::Result<()> {
    print_entry(out, node, relative, args.long)?;
    if let (true, Listing::Directory { entries }) = (args.recursive, node) {
        for (name, child) in entries {
            let child_path = format!("{relative}/{}", String::from_utf8_lossy(name));
            print_tree(out, child, &child_path, args)?;
        }
    }
    Ok(())
}

/// One line as `nix nar ls` prints it; with `long`, `-r-xr-xr-x <size:20> name -> target`.
fn print_entry(out: &mut impl Write, node: &Listing, name: &str, long: bool) -> io::Result<()> {
    if !long {
        return writeln!(out, "{name}");
    }
    match node {
        Listing::Regular {
            executable, size, ..
        } => {
            let mode = if *executable {
                "-r-xr-xr-x"
            } else {
                "-r--r--r--"
            };
            writeln!(out, "{mode} {size:>20} {name}")
        }
        Listing::Directory { .. } => writeln!(out, "dr-xr-xr-x {:>20} {name}", 0),
        Listing::Symlink { target } => writeln!(
            out,
            "lrwxrwxrwx {:>20} {name} -> {}",
            0,
            String::from_utf8_lossy(target)
        ),
    }
}

/// The JSON of `nix nar ls --json`: directories list their entries, as empty objects
/// unless recursive.
fn to_json(node: &Listing, recursive: bool) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    match node {
        Listing::Regular {
            executable,
            size,
            nar_offset,
        } => {
            let mut object = Map::new();
            object.insert("type".into(), json!("regular"));
            object.insert("size".into(), json!(size));
            if *executable {
                object.insert("executable".into(), json!(true));
            }
            object.insert("narOffset".into(), json!(nar_offset));
            Value::Object(object)
        }
        Listing::Symlink { target } => {
            json!({"type": "symlink", "target": String::from_utf8_lossy(target)})
        }
        Listing::Directory { entries } => {
            let mut children = Map::new();
            for (name, child) in entries {
                let value = if recursive {
                    to_json(child, recursive)
                } else {
                    json!({})
                };
                children.insert(String::from_utf8_lossy(name).into_owned(), value);
            }
            json!({"type": "directory", "entries": children})
        }
    }
}
