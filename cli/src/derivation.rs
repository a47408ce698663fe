//! `arca derivation show`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use arca_store_core::derivation::{
    derivation_path, show_derivations_json, Derivation, DerivationJson,
};
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
    /// Add a derivation given as JSON on stdin (the shape `nix show-derivation` prints,
    /// for one derivation, keyed by its path or bare) to the store; prints its path.
    ///
    /// Output paths and the env entries named after outputs may be empty: they are then
    /// computed by hashDerivationModulo from the input derivations in the store.
    Add,
}

#[derive(Args)]
pub struct ShowArgs {
    #[arg(required = true, value_name = "DRV")]
    derivations: Vec<PathBuf>,
}

pub fn run(command: DerivationCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    match command {
        DerivationCommand::Show(args) => show(&args, global),
        DerivationCommand::Add => add(global),
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
        if let Some(client) = crate::store::daemon_client(global)? {
            let drv = crate::remote::read_derivation(&client, &path)?;
            return Ok((path, drv));
        }
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

fn add(global: &GlobalArgs) -> anyhow::Result<()> {
    let client = crate::store::daemon_client(global)?;
    let store = match client {
        Some(_) => None,
        None => Some(crate::store_commands::open_store(global)?),
    };
    let store_dir = StoreDir::default();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
        .context("cannot read the derivation JSON from stdin")?;
    let value: serde_json::Value =
        serde_json::from_str(&text).context("the derivation JSON on stdin is malformed")?;
    // Either `{ "<drv path>": {…} }` as `nix show-derivation` prints it, or the bare object.
    let (given_path, object) = match value.as_object() {
        Some(map) if map.len() == 1 && !map.contains_key("outputs") => {
            let (key, inner) = map.iter().next().expect("a map of length one has an entry");
            (Some(store_dir.parse_path(key)?), inner.clone())
        }
        _ => (None, value),
    };
    let name = given_path.as_ref().and_then(Derivation::name_from_drv_path);
    let json: DerivationJson =
        serde_json::from_value(object).context("the derivation JSON on stdin is invalid")?;
    let mut drv = json.into_derivation(&store_dir, name)?;
    let given = drv.clone();
    match (&store, &client) {
        (Some(store), _) => store.compute_output_paths(&mut drv)?,
        (None, Some(client)) => {
            arca_store_core::derivation::ModuloHashCache::new()
                .compute_output_paths(&store_dir, &mut drv, |path| {
                    crate::remote::read_derivation(client, path)
                })
                .map_err(|error| anyhow::anyhow!("{error}"))?;
        }
        (None, None) => unreachable!("one of the two stores is open"),
    }
    for (output, computed) in &drv.outputs {
        if let Some(given_path) = given.outputs.get(output).and_then(|o| o.path()) {
            if Some(given_path) != computed.path() {
                bail!(
                    "output '{output}' has path '{}', but its inputs give '{}'",
                    store_dir.display(given_path),
                    computed
                        .path()
                        .map(|p| store_dir.display(p))
                        .unwrap_or_default()
                );
            }
        }
    }
    let path = match (&store, &client) {
        (Some(store), _) => store.add_derivation(&drv)?,
        (None, Some(client)) => {
            use arca_store_core::Store;
            client.add_text(
                &format!("{}.drv", drv.name),
                drv.to_aterm(&store_dir).as_bytes(),
                &drv.drv_references(),
            )?
        }
        (None, None) => unreachable!("one of the two stores is open"),
    };
    if let Some(given_path) = given_path {
        if given_path != path {
            bail!(
                "derivation is keyed by '{}' but its contents give '{}'",
                store_dir.display(&given_path),
                store_dir.display(&path)
            );
        }
    }
    println!("{}", store_dir.display(&path));
    Ok(())
}
