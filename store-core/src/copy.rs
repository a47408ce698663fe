//! Copying closures from one store to another (`nix copy` between stores, the inputs
//! and outputs of remote builds): whatever the two back ends, over [`StoreOps`].
//!
//! The closure is asked of the source in one request where it can answer one
//! ([`StoreOps::closure_graph`]), the destination is asked once which of it it has
//! ([`StoreOps::query_valid_paths`]; with [`CopyOptions::substitute`] it first fetches
//! what it can from its own substituters, [`StoreOps::substitute_paths`]), and the rest goes over references first, each NAR
//! streamed from the source into the destination through a pipe (never held whole in
//! memory), with its metadata: deriver, references, signatures, content address.

use std::collections::BTreeSet;
use std::io::BufReader;

use crate::ops::{StoreOpError, StoreOps};
use crate::path_info::PathInfo;
use crate::store::dependency_order;
use crate::StorePath;

/// Which copied paths the destination takes on the sender's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust<'k> {
    /// Every path (`--no-check-sigs`; the inputs and outputs of builds a machine made).
    All,
    /// Paths signed by one of these keys; the destination decides on the rest (a local
    /// store takes a correct content address).
    SignedBy(&'k [crate::PublicKey]),
}

/// How to copy.
#[derive(Debug, Clone, Copy)]
pub struct CopyOptions<'k> {
    /// What the destination takes on the sender's word.
    pub trust: Trust<'k>,
    /// Let the destination substitute what it lacks first, from its own substituters
    /// (Nix's `builders-use-substitutes`); the rest is sent.
    pub substitute: bool,
}

impl<'k> CopyOptions<'k> {
    /// Copy with `trust`, substituting nothing.
    pub fn new(trust: Trust<'k>) -> CopyOptions<'k> {
        CopyOptions {
            trust,
            substitute: false,
        }
    }
}

/// Copies the closures of `paths` from `from` to `to`: the paths copied, references
/// first. `on_copy` hears each path just before it is sent.
pub fn copy_closure<F: StoreOps, T: StoreOps>(
    from: &F,
    to: &T,
    paths: &BTreeSet<StorePath>,
    options: CopyOptions<'_>,
    on_copy: &mut dyn FnMut(&StorePath),
) -> Result<Vec<StorePath>, StoreOpError> {
    let trust = options.trust;
    let graph = from.closure_graph(paths, false)?;
    for path in paths {
        if !graph.contains_key(path) {
            return Err(StoreOpError::new(format!(
                "path '{}' is not valid",
                from.store_dir().display(path)
            )));
        }
    }
    let closure: BTreeSet<StorePath> = graph.keys().cloned().collect();
    if options.substitute {
        to.substitute_paths(&closure)?;
    }
    let present = to.query_valid_paths(&closure)?;
    let missing: BTreeSet<StorePath> = closure.difference(&present).cloned().collect();
    let order = dependency_order(&missing, |path| {
        Ok::<_, StoreOpError>(graph.get(path).cloned().unwrap_or_default())
    })?;
    for path in &order {
        let info = from
            .query_path_info(path)
            .map_err(StoreOpError::from_error)?
            .ok_or_else(|| {
                StoreOpError::new(format!(
                    "path '{}' is no longer valid",
                    from.store_dir().display(path)
                ))
            })?;
        on_copy(path);
        copy_one(from, to, &info, trust)?;
    }
    Ok(order)
}

/// Streams one path's NAR from `from` into `to`.
fn copy_one<F: StoreOps, T: StoreOps>(
    from: &F,
    to: &T,
    info: &PathInfo,
    trust: Trust<'_>,
) -> Result<(), StoreOpError> {
    let trusted = match trust {
        Trust::All => true,
        Trust::SignedBy(keys) => !info.trusted_signers(from.store_dir(), keys).is_empty(),
    };
    let (reader, writer) = std::io::pipe().map_err(StoreOpError::from_error)?;
    std::thread::scope(|scope| {
        let sender = scope.spawn(move || {
            // Dropping the writer when done (or failed) ends the reader's stream.
            let mut pipe = Pipe {
                writer,
                closed: false,
            };
            let sent = from
                .nar_from_path(&info.path, &mut pipe)
                .map_err(StoreOpError::from_error);
            (sent, pipe.closed)
        });
        let added = to.add_nar_checked(info, &mut BufReader::new(reader), trusted);
        // The reader is gone: a sender still writing fails and returns.
        let (sent, closed) = sender
            .join()
            .unwrap_or_else(|_| (Err(StoreOpError::new("the NAR sender panicked")), false));
        match (sent, added) {
            // The receiver stopped first (it refused the path): its reason counts.
            (_, Err(refused)) if closed => Err(refused),
            // The sender failed first: the receiver saw only a short stream.
            (Err(failed), _) => Err(failed),
            (Ok(()), added) => added,
        }
    })
}

/// The sending end of the pipe, noting whether the receiver closed it.
struct Pipe {
    writer: std::io::PipeWriter,
    closed: bool,
}

impl std::io::Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.writer.write(buf);
        if matches!(&written, Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe) {
            self.closed = true;
        }
        written
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}
