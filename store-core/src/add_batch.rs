//! Adding many paths from their NARs at once (substitution, copies of closures):
//! [`AddBatch`], which every [`Store`] hands out with [`Store::add_batch`].
//!
//! A store that adds each path by itself ([`OneByOne`], what remote stores do) must be
//! given a path's references before the path. A store that can check and unpack a NAR
//! before the paths it refers to are valid (the local store) says so with
//! [`AddBatch::ahead_of_references`]: its caller may then add a chain of paths all at
//! once, each on a thread of its own, and the store makes them valid as their references
//! become valid, in batches. Either way, a path becomes valid only with its whole
//! closure, and a path whose reference never comes is dropped, leaving nothing behind.

use std::io::{BufRead, Read};
use std::sync::Mutex;

use crate::path_info::PathInfo;
use crate::store::Store;
use crate::store_path::StorePath;

/// Many paths being added to a store from their NARs, from any number of threads.
pub trait AddBatch: Sync {
    /// The store's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Whether a path may be added before the paths it refers to are valid. When
    /// `false`, [`AddBatch::add_nar`] needs every reference valid (added before, and
    /// returned from).
    fn ahead_of_references(&self) -> bool;

    /// Adds `info.path` from the NAR `nar` is positioned at, checked against `info`
    /// (hash, size, content address): when this returns, exactly the NAR has been read
    /// (so `nar` may be a stream of several, such as a daemon connection), also when the
    /// path was valid already, and the path is valid or will be once its references
    /// are. An error leaves nothing of the path behind (and `nar` anywhere in the NAR).
    fn add_nar(&self, info: &PathInfo, nar: &mut dyn BufRead) -> Result<(), Self::Error>;

    /// Says that `path` will not be added (it could not be fetched): the paths added
    /// ahead of it that need it are dropped.
    fn abandon(&self, path: &StorePath);

    /// Makes valid every path added whose closure is complete, and drops the others.
    fn finish(self) -> Result<Finished, Self::Error>;
}

/// What a batch did.
#[derive(Debug, Default)]
pub struct Finished {
    /// The paths it made valid, in the order they became valid (references first).
    pub valid: Vec<StorePath>,
    /// Paths added whose closure never became complete (a reference abandoned or never
    /// added): nothing of them is in the store.
    pub dropped: Vec<StorePath>,
    /// Paths that were complete but could not be made valid, and why (a `.drv` whose
    /// outputs are not the ones it gives, a registry error): nothing of them is in the
    /// store.
    pub failed: Vec<(StorePath, Box<dyn std::error::Error + Send + Sync>)>,
}

/// The batch of a store that adds each path by itself ([`Store::add_nar`]): the
/// references of a path must be added first.
pub struct OneByOne<'a, S: ?Sized> {
    store: &'a S,
    valid: Mutex<Vec<StorePath>>,
}

impl<'a, S: Store + Sync + ?Sized> OneByOne<'a, S> {
    /// A batch adding to `store`.
    pub fn new(store: &'a S) -> OneByOne<'a, S> {
        OneByOne {
            store,
            valid: Mutex::new(Vec::new()),
        }
    }
}

impl<S: Store + Sync + ?Sized> AddBatch for OneByOne<'_, S> {
    type Error = S::Error;

    fn ahead_of_references(&self) -> bool {
        false
    }

    fn add_nar(&self, info: &PathInfo, nar: &mut dyn BufRead) -> Result<(), S::Error> {
        // The store may read ahead: no further than the NAR's size.
        self.store.add_nar(info, &mut nar.take(info.nar_size))?;
        self.valid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(info.path.clone());
        Ok(())
    }

    fn abandon(&self, _path: &StorePath) {}

    fn finish(self) -> Result<Finished, S::Error> {
        Ok(Finished {
            valid: self.valid.into_inner().unwrap_or_else(|e| e.into_inner()),
            ..Finished::default()
        })
    }
}
