//! `arca store …` against a daemon (`--store unix://SOCKET` or `--store daemon`): the
//! same commands, carried out by the daemon through `DaemonClient`.

use std::collections::BTreeSet;
use std::io::{self, BufWriter, Write};

use anyhow::{bail, Context};
use arca_daemon_proto::protocol::gc_action;
use arca_daemon_proto::wire::TeeBufRead;
use arca_daemon_proto::DaemonClient;
use arca_store_core::{dependency_order, Store, StorePath};

use crate::store_commands::{
    default_name, parse_path_arg, parse_paths, require_valid, QueryArgs, StoreCommand,
};

pub fn run(command: StoreCommand, client: &DaemonClient) -> anyhow::Result<()> {
    let store_dir = client.store_dir().clone();
    let mut out = BufWriter::new(io::stdout().lock());
    match command {
        StoreCommand::AddPath(args) => {
            for source in &args.paths {
                let name = default_name(source, &args.name)?;
                // The NAR is produced on one side of a pipe while the daemon takes it.
                let (mut reader, mut writer) = io::pipe()?;
                let source_path = source.clone();
                let dumper = std::thread::spawn(move || {
                    let result = arca_nar::dump_path(
                        &source_path,
                        &mut writer,
                        &arca_nar::DumpOptions::default(),
                    );
                    drop(writer);
                    result
                });
                let added = client.add_dump(
                    &name,
                    arca_store_core::AddressingMethod::NIX_STORE_ADD,
                    &BTreeSet::new(),
                    &mut reader,
                );
                drop(reader);
                let dumped = dumper
                    .join()
                    .map_err(|_| anyhow::anyhow!("the NAR writer panicked"))?;
                dumped.with_context(|| format!("cannot serialise '{}'", source.display()))?;
                writeln!(out, "{}", store_dir.display(&added?))?;
            }
        }
        StoreCommand::AddFile(args) => {
            let name = default_name(&args.file, &args.name)?;
            let mut file = std::fs::File::open(&args.file)
                .with_context(|| format!("cannot open '{}'", args.file.display()))?;
            let method = arca_store_core::AddressingMethod::Fixed(
                arca_store_core::ContentAddressMethod::Flat,
                args.algo,
            );
            let path = client.add_dump(&name, method, &BTreeSet::new(), &mut file)?;
            writeln!(out, "{}", store_dir.display(&path))?;
        }
        StoreCommand::Export(args) => {
            let paths = parse_paths(client, &args.paths)?;
            require_valid(client, &paths)?;
            export(client, &paths, &mut out)?;
        }
        StoreCommand::Import => {
            let mut input = io::BufReader::with_capacity(1 << 16, io::stdin().lock());
            for path in import(client, &mut input)? {
                writeln!(out, "{}", store_dir.display(&path))?;
            }
        }
        StoreCommand::Query(args) => query(client, &args, &mut out)?,
        StoreCommand::Verify(args) => {
            if !args.paths.is_empty() || args.json {
                bail!("through a daemon, verify checks the whole store and prints no report");
            }
            if client.verify_store(args.check_contents, args.repair)? {
                bail!("the daemon's store has problems");
            }
        }
        StoreCommand::Delete(args) => {
            if args.ignore_liveness {
                bail!("a daemon does not let clients ignore liveness");
            }
            let paths = parse_paths(client, &args.paths)?;
            let (deleted, freed) =
                client.collect_garbage(gc_action::DELETE_SPECIFIC, &paths, None)?;
            print_freed(&deleted, freed, &mut out)?;
        }
        StoreCommand::Gc(args) => {
            if args.action.print_roots {
                let mut roots = client.find_roots()?;
                roots.sort();
                for (link, path) in roots {
                    writeln!(out, "{link} -> {}", store_dir.display(&path))?;
                }
            } else {
                let action = if args.action.print_live {
                    gc_action::RETURN_LIVE
                } else if args.action.print_dead || args.action.dry_run {
                    gc_action::RETURN_DEAD
                } else {
                    gc_action::DELETE_DEAD
                };
                let (paths, freed) =
                    client.collect_garbage(action, &BTreeSet::new(), args.max_freed)?;
                if action == gc_action::DELETE_DEAD {
                    print_freed(&paths, freed, &mut out)?;
                } else {
                    for path in paths {
                        writeln!(out, "{path}")?;
                    }
                }
            }
        }
        StoreCommand::Optimise(_) => client.optimise()?,
        StoreCommand::AddRoot(args) => {
            let path = parse_path_arg(&store_dir, &args.path)?;
            require_valid(client, &BTreeSet::from([path.clone()]))?;
            // The link is ours to make; the daemon records it as an indirect root.
            client.add_temp_root(&path)?;
            let link = std::path::absolute(&args.link)?;
            if link.symlink_metadata().is_ok() {
                std::fs::remove_file(&link)
                    .with_context(|| format!("cannot replace '{}'", link.display()))?;
            }
            std::os::unix::fs::symlink(store_dir.display(&path), &link)
                .with_context(|| format!("cannot create '{}'", link.display()))?;
            client.add_indirect_root(&link)?;
            writeln!(out, "{}", link.display())?;
        }
    }
    out.flush()?;
    Ok(())
}

fn print_freed(paths: &[String], freed: u64, out: &mut impl Write) -> anyhow::Result<()> {
    let mut stderr = BufWriter::new(io::stderr().lock());
    for path in paths {
        writeln!(stderr, "deleting '{path}'")?;
    }
    stderr.flush()?;
    writeln!(
        out,
        "{} store paths deleted, {:.2} MiB freed",
        paths.len(),
        freed as f64 / (1024.0 * 1024.0)
    )?;
    Ok(())
}

/// Nix's export format, from what the daemon says about each path and its NAR.
fn export(
    client: &DaemonClient,
    paths: &BTreeSet<StorePath>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let store_dir = client.store_dir();
    let write_u64 = |out: &mut dyn Write, n: u64| out.write_all(&n.to_le_bytes());
    let write_string = |out: &mut dyn Write, text: &str| -> io::Result<()> {
        out.write_all(&(text.len() as u64).to_le_bytes())?;
        out.write_all(text.as_bytes())?;
        out.write_all(&[0u8; 8][..(8 - text.len() % 8) % 8])
    };
    for path in dependency_order(paths, |p| client.query_references(p))? {
        let info = client
            .query_path_info(&path)?
            .with_context(|| format!("path '{}' is not valid", store_dir.display(&path)))?;
        write_u64(out, 1)?;
        client.nar_from_path(&path, out)?;
        write_u64(out, 0x4558_494e)?; // "NIXE"
        write_string(out, &store_dir.display(&path))?;
        write_u64(out, info.references.len() as u64)?;
        for reference in &info.references {
            write_string(out, &store_dir.display(reference))?;
        }
        let deriver = info
            .deriver
            .map(|d| store_dir.display(&d))
            .unwrap_or_default();
        write_string(out, &deriver)?;
        write_u64(out, 0)?;
    }
    write_u64(out, 0)?;
    Ok(())
}

fn query(client: &DaemonClient, args: &QueryArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let store_dir = client.store_dir();
    let paths = parse_paths(client, &args.paths)?;
    require_valid(client, &paths)?;
    let flags = &args.flags;
    let print = |out: &mut dyn Write, set: &BTreeSet<StorePath>| -> anyhow::Result<()> {
        for path in dependency_order(set, |p| client.query_references(p))? {
            writeln!(out, "{}", store_dir.display(&path))?;
        }
        Ok(())
    };
    if crate::store_commands::print_store_independent_query(client, flags, &paths, out)? {
        return Ok(());
    }
    if flags.requisites {
        let graph = client.closure_graph(&paths, args.include_outputs)?;
        // Ordered from the graph at hand: no further round trips.
        let members: BTreeSet<StorePath> = graph.keys().cloned().collect();
        let order = dependency_order(&members, |p| {
            Ok::<_, anyhow::Error>(graph.get(p).cloned().unwrap_or_default())
        })?;
        for path in order {
            writeln!(out, "{}", store_dir.display(&path))?;
        }
    } else if flags.referrers_closure || flags.roots {
        let mut closure = BTreeSet::new();
        let mut pending: Vec<StorePath> = paths.iter().cloned().collect();
        while let Some(path) = pending.pop() {
            if closure.insert(path.clone()) {
                pending.extend(client.query_referrers(&path)?);
            }
        }
        if flags.roots {
            let mut roots = client.find_roots()?;
            roots.sort();
            for (link, path) in roots {
                if closure.contains(&path) {
                    writeln!(out, "{link} -> {}", store_dir.display(&path))?;
                }
            }
        } else {
            print(out, &closure)?;
        }
    }
    Ok(())
}

/// Reads a `.drv` through the daemon: its NAR is one regular file, the ATerm text.
pub fn read_derivation(
    client: &DaemonClient,
    path: &StorePath,
) -> anyhow::Result<arca_store_core::derivation::Derivation> {
    let store_dir = client.store_dir();
    let mut nar = Vec::new();
    client.nar_from_path(path, &mut nar)?;
    let mut reader = arca_nar::NarReader::new(&nar[..], arca_nar::Limits::default());
    let mut text = Vec::new();
    match reader.next()? {
        Some(arca_nar::Event::Regular { .. }) => {
            io::Read::read_to_end(&mut reader.contents(), &mut text)?;
        }
        _ => bail!("'{}' is not a derivation file", store_dir.display(path)),
    }
    arca_store_core::derivation::Derivation::parse_drv_file(store_dir, path, &text)
        .with_context(|| format!("cannot parse derivation '{}'", store_dir.display(path)))
}

/// Imports an export archive through the daemon: each NAR is spooled (its metadata
/// comes after it in the archive, the daemon needs it before), then sent with it.
fn import(client: &DaemonClient, input: &mut impl io::BufRead) -> anyhow::Result<Vec<StorePath>> {
    let store_dir = client.store_dir();
    let read_u64 = |input: &mut dyn io::Read| -> io::Result<u64> {
        let mut bytes = [0u8; 8];
        input.read_exact(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    };
    let read_string = |input: &mut dyn io::Read| -> anyhow::Result<String> {
        let len = read_u64(input)?;
        if len > 4096 {
            bail!("malformed export archive: a string of {len} bytes");
        }
        let mut bytes = vec![0u8; len as usize];
        input.read_exact(&mut bytes)?;
        let mut padding = [0u8; 8];
        input.read_exact(&mut padding[..(8 - bytes.len() % 8) % 8])?;
        String::from_utf8(bytes).context("malformed export archive: a string is not UTF-8")
    };
    let mut imported = Vec::new();
    loop {
        match read_u64(input)? {
            0 => return Ok(imported),
            1 => {}
            other => bail!("malformed export archive: marker {other}"),
        }
        // Spool the NAR, hashing it on the way.
        let mut spool = tempfile::tempfile()?;
        let mut hasher = arca_store_core::Hasher::new(arca_store_core::HashAlgo::Sha256);
        let size = {
            let mut out = SpoolAndHash {
                spool: &mut spool,
                hasher: &mut hasher,
            };
            let mut tee = TeeBufRead::new(&mut *input, &mut out);
            let size = arca_nar::NarReader::new(&mut tee, arca_nar::Limits::default())
                .read_to_end()
                .context("malformed NAR in the export archive")?;
            if let Some(error) = tee.error.take() {
                return Err(error).context("cannot spool a NAR of the export archive");
            }
            size
        };
        if read_u64(input)? != 0x4558_494e {
            bail!("malformed export archive: no NIXE marker after a NAR");
        }
        let path = store_dir.parse_path(&read_string(input)?)?;
        let mut references = BTreeSet::new();
        // A count past any real path's is a malformed archive, refused rather than cut
        // (which would read the rest of the archive out of step).
        let count = read_u64(input)?;
        if count > 1 << 20 {
            bail!(
                "malformed export archive: '{}' claims {count} references",
                store_dir.display(&path)
            );
        }
        for _ in 0..count {
            references.insert(store_dir.parse_path(&read_string(input)?)?);
        }
        let deriver = read_string(input)?;
        if read_u64(input)? != 0 {
            bail!("signed export archives are not supported");
        }
        let mut info = arca_store_core::PathInfo::new(path.clone(), hasher.finish(), size);
        info.references = references;
        info.deriver = if deriver.is_empty() {
            None
        } else {
            Some(store_dir.parse_path(&deriver)?)
        };
        if !client.is_valid_path(&path)? {
            io::Seek::rewind(&mut spool)?;
            client.add_nar(&info, &mut spool)?;
        }
        imported.push(path);
    }
}

/// Writes everything to a spool file and a hasher at once.
struct SpoolAndHash<'a> {
    spool: &'a mut std::fs::File,
    hasher: &'a mut arca_store_core::Hasher,
}

impl Write for SpoolAndHash<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.spool.write_all(buf)?;
        self.hasher.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.spool.flush()
    }
}
