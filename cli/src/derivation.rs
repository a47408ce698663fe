//! `arca derivation show`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use arca_store_core::derivation::{derivation_path, show_derivations_json, Derivation};
use arca_store_core::{StoreDir, StorePath};
use clap::{Args, Subcommand};

use crate::GlobalArgs;

#[derive(Subcommand)]
pub enum DerivationCommand {
    /// Print derivations as JSON, in the shape of `nix show-derivation`.
    ///
    /// A DRV in the store dir (/nix/store/…) is read from the store given by --store;
    /// any other file is read as it is and keyed by the store path it would have.
    Show(ShowArgs),
}

#[derive(Args)]
pub struct ShowArgs {
    #[arg(required = true, value_name = "DRV")]
    derivations: Vec<PathBuf>,
}

pub fn run(command: DerivationCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    match command {
        DerivationCommand::Show(args) => show(&args, global),
    }
}

fn show(args: &ShowArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let store_dir = StoreDir::default();
    let mut derivations = Vec::new();
    for argument in &args.derivations {
        derivations.push(load(&store_dir, argument, global)?);
    }
    let json = show_derivations_json(&store_dir, derivations.iter().map(|(p, d)| (p, d)));
    print!("{json}");
    Ok(())
}

/// Reads and parses one derivation, returning it with its store path.
fn load(
    store_dir: &StoreDir,
    argument: &Path,
    global: &GlobalArgs,
) -> anyhow::Result<(StorePath, Derivation)> {
    let text = argument.to_string_lossy();
    if text.starts_with(&format!("{store_dir}/")) {
        let path = store_dir.parse_path(&text)?;
        let root = crate::store::local_root(global)?;
        let physical = root.join(text.trim_start_matches('/'));
        let bytes = std::fs::read(&physical).with_context(|| {
            format!(
                "cannot read derivation '{text}' from store '{}'",
                root.display()
            )
        })?;
        let drv = Derivation::parse_drv_file(store_dir, &path, &bytes)
            .with_context(|| format!("cannot parse derivation '{text}'"))?;
        return Ok((path, drv));
    }
    // A file outside the store: its name is `[<hash>-]<name>.drv`; its key is the path
    // it would have in the store, computed from its contents.
    let file_name = argument
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(stem) = file_name.strip_suffix(".drv") else {
        bail!("'{}' is not a .drv file", argument.display());
    };
    let name = match StorePath::from_base_name(&file_name) {
        Ok(_) => &stem[33..],
        Err(_) => stem,
    };
    let bytes = std::fs::read(argument)
        .with_context(|| format!("cannot read derivation '{}'", argument.display()))?;
    let drv = Derivation::parse(store_dir, name, &bytes)
        .with_context(|| format!("cannot parse derivation '{}'", argument.display()))?;
    let path = derivation_path(store_dir, &drv)?;
    Ok((path, drv))
}
