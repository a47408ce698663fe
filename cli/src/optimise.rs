//! Placeholder until the optimiser lands.
use arca_store_sqlite::LocalStore;

#[derive(clap::Args)]
pub struct OptimiseArgs {}

pub fn optimise(_args: &OptimiseArgs, _store: &LocalStore) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
