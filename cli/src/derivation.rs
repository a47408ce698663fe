//! `arca derivation show`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use arca_store_core::derivation::{
    derivation_path, show_derivations_json, Derivation, DerivationJson,
};
use arca_store_core::{StoreDir, StoreOps, StorePath};
use clap::{Args, Subcommand};

use crate::store::OnStore;
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
        let drv = crate::store::on_store(global, ReadDerivation(&path))
            .with_context(|| format!("cannot read derivation '{text}'"))?;
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

/// Reads one derivation from the store.
struct ReadDerivation<'a>(&'a StorePath);

impl OnStore for ReadDerivation<'_> {
    type Output = Derivation;

    fn run<S: StoreOps>(self, store: &S) -> anyhow::Result<Derivation> {
        Ok(store.read_derivation(self.0)?)
    }
}

fn add(global: &GlobalArgs) -> anyhow::Result<()> {
    crate::store::on_store(global, AddDerivation)
}

/// `derivation add`: the JSON on stdin, its output paths computed, added to the store.
struct AddDerivation;

impl OnStore for AddDerivation {
    type Output = ();

    fn run<S: StoreOps>(self, store: &S) -> anyhow::Result<()> {
        add_to(store)
    }
}

fn add_to<S: StoreOps>(store: &S) -> anyhow::Result<()> {
    let store_dir = store.store_dir().clone();
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
    arca_store_core::derivation::ModuloHashCache::new()
        .compute_output_paths(&store_dir, &mut drv, |path| store.read_derivation(path))
        .with_context(|| format!("derivation '{}' is invalid", drv.name))?;
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
    let path = store.add_text(
        &format!("{}.drv", drv.name),
        drv.to_aterm(&store_dir).as_bytes(),
        &drv.drv_references(),
    )?;
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
