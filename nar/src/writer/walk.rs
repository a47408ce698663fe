//! The walker: lists a directory tree in NAR order and cuts it into batches for the
//! read-ahead threads.
//!
//! Only the walker lists directories, so it sees the tree exactly as a sequential dump
//! would, in the same order. It decides nothing from file contents: regular files and
//! symlinks become items that a reader thread fills in later (see `read_ahead.rs`).
//! What a sequential dump would fail on while listing (a directory that cannot be read,
//! a socket, a case-hack collision) becomes a [`Item::Failed`] at the very place the
//! sequential dump would report it, and the walk stops there.

use std::path::{Path, PathBuf};
use std::vec;

use super::read_ahead::{Batch, Config, Fetched, Item};
use super::{read_directory, DirectoryEntry, DumpError, DumpOptions};

/// Walks the directory `root` and hands its items to `dispatch` in batches, in NAR order.
/// Stops after the first error (as an item) or once `dispatch` returns `false`, which
/// means that nobody is waiting for more batches.
pub(super) fn walk(
    root: &Path,
    options: &DumpOptions,
    config: &Config,
    dispatch: impl FnMut(Batch) -> bool,
) {
    let mut walker = Walker {
        options,
        config,
        path: root.to_owned(),
        batch: Batch::default(),
        work: 0,
        dispatch,
    };
    // A failed `dispatch` and an error both end the walk; either way the last batch
    // has been handed over (or refused).
    let _ = walker.walk();
}

/// Why the walk stopped early.
struct Stop;

struct Walker<'a, F> {
    options: &'a DumpOptions,
    config: &'a Config,
    /// The path of the directory being listed, or of the entry being added.
    path: PathBuf,
    /// The batch being filled.
    batch: Batch,
    /// How many items of `batch` a reader thread has to fill in.
    work: usize,
    dispatch: F,
}

impl<F: FnMut(Batch) -> bool> Walker<'_, F> {
    /// Depth-first, with an explicit stack of the directories being listed (their
    /// remaining entries), so that depth costs heap, not stack.
    fn walk(&mut self) -> Result<(), Stop> {
        let mut open: Vec<vec::IntoIter<DirectoryEntry>> = Vec::new();
        self.enter_directory(&mut open)?;
        while let Some(entries) = open.last_mut() {
            match entries.next() {
                Some(entry) => self.add_entry(entry, &mut open)?,
                None => {
                    open.pop();
                    self.push(Item::EndDirectory)?;
                    self.path.pop();
                }
            }
        }
        self.seal()
    }

    /// Adds `entry` of the directory at `self.path` and, if it is a directory, opens it.
    fn add_entry(
        &mut self,
        entry: DirectoryEntry,
        open: &mut Vec<vec::IntoIter<DirectoryEntry>>,
    ) -> Result<(), Stop> {
        self.path.push(&entry.disk_name);
        let file_type = entry.file_type;
        self.push(Item::Entry(entry))?;
        if file_type.is_dir() {
            // `self.path` stays on the directory until its `EndDirectory`.
            return self.enter_directory(open);
        }
        let path = self.path.clone();
        self.path.pop();
        if file_type.is_file() {
            self.push_work(Item::Regular {
                path,
                fetched: Fetched::Pending,
            })
        } else if file_type.is_symlink() {
            self.push_work(Item::Symlink { path, target: None })
        } else {
            self.fail(DumpError::UnsupportedFileType { path })
        }
    }

    /// Lists the directory at `self.path` and pushes it on `open`.
    fn enter_directory(
        &mut self,
        open: &mut Vec<vec::IntoIter<DirectoryEntry>>,
    ) -> Result<(), Stop> {
        match read_directory(&self.path, self.options) {
            Ok(entries) => {
                open.push(entries.into_iter());
                self.push(Item::BeginDirectory)
            }
            Err(error) => self.fail(error),
        }
    }

    /// Ends the walk with `error`, which the encoder reports once it gets there.
    fn fail(&mut self, error: DumpError) -> Result<(), Stop> {
        self.batch.items.push(Item::Failed(error));
        self.seal()?;
        Err(Stop)
    }

    fn push(&mut self, item: Item) -> Result<(), Stop> {
        self.batch.items.push(item);
        // Directories alone make no work, but the encoder should not wait for a whole
        // tree of empty directories either.
        if self.batch.items.len() >= self.config.batch_items {
            self.seal()?;
        }
        Ok(())
    }

    fn push_work(&mut self, item: Item) -> Result<(), Stop> {
        self.work += 1;
        if self.work >= self.config.batch_work {
            self.batch.items.push(item);
            return self.seal();
        }
        self.push(item)
    }

    /// Hands the current batch over, if it holds anything.
    fn seal(&mut self) -> Result<(), Stop> {
        self.work = 0;
        if self.batch.items.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        if (self.dispatch)(batch) {
            Ok(())
        } else {
            Err(Stop)
        }
    }
}
