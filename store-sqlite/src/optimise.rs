//! Store optimisation by hard links (placeholder, being written).

/// Options of an optimise run.
#[derive(Debug, Clone, Default)]
pub struct OptimiseOptions {}
/// What an optimise run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptimiseReport {}
/// How far an optimise run got.
#[derive(Debug, Clone, Copy)]
pub enum OptimiseProgress {}
/// What pruning `.links` removed.
#[derive(Debug, Clone, Default)]
pub struct LinksPruned {
    pub files: u64,
    pub bytes: u64,
}
impl crate::LocalStore {
    /// Placeholder until the optimiser lands.
    pub fn prune_links(&self) -> Result<LinksPruned, crate::StoreError> {
        Ok(LinksPruned { files: 0, bytes: 0 })
    }
}
