//! [`NarEncoder`]: writes a NAR node by node, without a file system.
//!
//! The encoder checks the structure as it goes (one root node, entries in strictly
//! increasing byte order, valid names, exact content sizes), so that whatever it emits is
//! the canonical NAR of some tree, or it returns an error instead.

use std::io::{self, Read, Write};

use crate::format::{
    self, check_name, check_target, padding_len, show, InvalidNameReason, InvalidTargetReason,
};

/// Size of the encoder's output buffer. File contents are read straight into it, so it is
/// also the read size for large files: big enough that syscalls are a rounding error next
/// to copying the bytes, small enough to stay in L2 cache.
pub(crate) const BUFFER_SIZE: usize = 256 * 1024;

/// Errors from [`NarEncoder`].
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Writing the NAR to the output failed.
    #[error("could not write the NAR")]
    Write(#[source] io::Error),
    /// Reading the contents of a regular file from the caller's reader failed.
    #[error("could not read the contents of a regular file")]
    ReadContents(#[source] io::Error),
    /// The contents reader ended before the declared size.
    #[error("regular file contents ended after {actual} of {expected} declared bytes")]
    ContentsTooShort {
        /// The size passed to [`NarEncoder::regular`].
        expected: u64,
        /// The number of bytes the reader produced.
        actual: u64,
    },
    /// The contents reader had more bytes than the declared size.
    #[error("regular file contents are longer than the {expected} declared bytes")]
    ContentsTooLong {
        /// The size passed to [`NarEncoder::regular`].
        expected: u64,
    },
    /// An entry name that no NAR may contain.
    #[error("entry name '{}' {reason}", show(name))]
    InvalidName {
        /// The rejected name.
        name: Vec<u8>,
        /// What is wrong with it.
        reason: InvalidNameReason,
    },
    /// A symlink target that no NAR may contain.
    #[error("symlink target '{}' {reason}", show(target))]
    InvalidTarget {
        /// The rejected target.
        target: Vec<u8>,
        /// What is wrong with it.
        reason: InvalidTargetReason,
    },
    /// An entry name that does not sort after the previous entry of its directory.
    #[error(
        "entry '{}' comes after '{}' but sorts before it",
        show(name),
        show(previous)
    )]
    EntriesOutOfOrder {
        /// The previous entry of the directory.
        previous: Vec<u8>,
        /// The entry that was out of order.
        name: Vec<u8>,
    },
    /// An entry name that was already used in its directory.
    #[error("entry '{}' appears twice in one directory", show(name))]
    DuplicateEntry {
        /// The repeated name.
        name: Vec<u8>,
    },
    /// A method called in a state where it makes no sense, e.g. `entry` outside a directory.
    #[error("{call} called where {expected} was expected")]
    UnexpectedCall {
        /// The method that was called.
        call: &'static str,
        /// What the encoder expected instead.
        expected: &'static str,
    },
    /// An earlier error left the output incomplete; the encoder refuses further calls.
    #[error("the NAR encoder already failed, its output is incomplete")]
    Failed,
}

/// What the encoder expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A node: `regular`, `symlink` or `begin_directory`.
    Node,
    /// Inside a directory: `entry` or `end_directory`.
    Directory,
    /// The root node is complete: only `finish`.
    Done,
    /// An I/O or contents error left the output incomplete.
    Failed,
}

impl State {
    fn expected(self) -> &'static str {
        match self {
            State::Node => "a node (regular, symlink or begin_directory)",
            State::Directory => "entry or end_directory",
            State::Done => "finish",
            State::Failed => "nothing",
        }
    }
}

/// How [`NarEncoder::copy_contents`] makes sure the contents end at the declared size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentsEnd {
    /// Read until the reader says end of file.
    Probe,
    /// A read that returns fewer bytes than asked for is the end of the file.
    ShortReadIsEof,
}

/// An open directory: the name of its last entry, to enforce strictly increasing order.
#[derive(Debug, Default)]
struct OpenDirectory {
    previous: Option<Vec<u8>>,
}

/// Writes a NAR to `W`, one node at a time.
///
/// Call [`regular`](Self::regular), [`symlink`](Self::symlink) or
/// [`begin_directory`](Self::begin_directory) once for the root; inside a directory call
/// [`entry`](Self::entry) followed by one node, for each entry in byte order of the names,
/// then [`end_directory`](Self::end_directory). Finally [`finish`](Self::finish) flushes and
/// returns the writer. The encoder buffers its output itself: `W` need not be buffered, and
/// large file contents go from the contents reader to `W` without an extra copy.
///
/// Dropping the encoder without calling `finish` loses buffered output.
///
/// ```
/// use arca_nar::NarEncoder;
///
/// let mut encoder = NarEncoder::new(Vec::new());
/// encoder.begin_directory()?;
/// encoder.entry(b"bin")?;
/// encoder.symlink(b"/usr/bin")?;
/// encoder.entry(b"hello.txt")?;
/// encoder.regular(false, 6, &mut &b"hello\n"[..])?;
/// encoder.end_directory()?;
/// let nar: Vec<u8> = encoder.finish()?;
/// assert_eq!(arca_nar::validate(&nar[..], &Default::default())?, nar.len() as u64);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a NAR is complete only after `finish`"]
#[derive(Debug)]
pub struct NarEncoder<W: Write> {
    out: W,
    /// Output not yet written to `out`: `buffered` bytes in use, grown on demand up to
    /// [`BUFFER_SIZE`] so that encoding a small NAR costs no large allocation.
    buffer: Vec<u8>,
    /// Bytes of `buffer` in use.
    buffered: usize,
    /// Bytes already handed to `out`.
    flushed: u64,
    state: State,
    directories: Vec<OpenDirectory>,
}

impl<W: Write> NarEncoder<W> {
    /// Starts a NAR written to `out` (nothing reaches `out` before the buffer fills or
    /// [`finish`](Self::finish) is called).
    pub fn new(out: W) -> Self {
        let mut encoder = NarEncoder {
            out,
            buffer: Vec::new(),
            buffered: 0,
            flushed: 0,
            state: State::Node,
            directories: Vec::new(),
        };
        encoder
            .put_string(format::MAGIC.as_bytes())
            .expect("the magic fits in the empty buffer, so nothing is written to `out` yet");
        encoder
    }

    /// Number of NAR bytes produced so far (written or buffered).
    pub fn position(&self) -> u64 {
        self.flushed + self.buffered as u64
    }

    /// Writes a regular file whose contents are exactly the `size` bytes that `contents`
    /// yields. It is an error if `contents` ends early or has more bytes than `size`; the
    /// encoder then fails, because part of the contents may already be written.
    pub fn regular(
        &mut self,
        executable: bool,
        size: u64,
        contents: &mut impl Read,
    ) -> Result<(), EncodeError> {
        self.regular_until(executable, size, contents, ContentsEnd::Probe)
    }

    /// [`regular`](Self::regular) for a file opened on a local file system, where a short
    /// read means the end of the file: this saves a `read` syscall per file, which matters
    /// for trees of many small files. On file systems where that does not hold (some FUSE
    /// ones), a file that grows while it is read may go unnoticed, which can happen on any
    /// file system a moment after the check anyway.
    pub(crate) fn regular_file(
        &mut self,
        executable: bool,
        size: u64,
        file: &mut std::fs::File,
    ) -> Result<(), EncodeError> {
        self.regular_until(executable, size, file, ContentsEnd::ShortReadIsEof)
    }

    fn regular_until(
        &mut self,
        executable: bool,
        size: u64,
        contents: &mut impl Read,
        end: ContentsEnd,
    ) -> Result<(), EncodeError> {
        self.expect_state(State::Node, "regular")?;
        self.fail_on_error(|encoder| {
            encoder.put_tokens(&[format::OPEN, format::TYPE, format::REGULAR])?;
            if executable {
                encoder.put_tokens(&[format::EXECUTABLE, ""])?;
            }
            encoder.put_tokens(&[format::CONTENTS])?;
            encoder.put(&size.to_le_bytes())?;
            encoder.copy_contents(size, contents, end)?;
            encoder.put(&[0; 8][..padding_len(size)])?;
            encoder.put_tokens(&[format::CLOSE])?;
            encoder.end_node()
        })
    }

    /// Writes a symlink pointing to `target` (not empty, no NUL byte).
    pub fn symlink(&mut self, target: &[u8]) -> Result<(), EncodeError> {
        self.expect_state(State::Node, "symlink")?;
        check_target(target).map_err(|reason| EncodeError::InvalidTarget {
            target: target.to_vec(),
            reason,
        })?;
        self.fail_on_error(|encoder| {
            encoder.put_tokens(&[format::OPEN, format::TYPE, format::SYMLINK, format::TARGET])?;
            encoder.put_string(target)?;
            encoder.put_tokens(&[format::CLOSE])?;
            encoder.end_node()
        })
    }

    /// Opens a directory; its entries follow, then [`end_directory`](Self::end_directory).
    pub fn begin_directory(&mut self) -> Result<(), EncodeError> {
        self.expect_state(State::Node, "begin_directory")?;
        self.fail_on_error(|encoder| {
            encoder.put_tokens(&[format::OPEN, format::TYPE, format::DIRECTORY])?;
            encoder.directories.push(OpenDirectory::default());
            encoder.state = State::Directory;
            Ok(())
        })
    }

    /// Starts the entry `name` of the current directory; the next call writes its node.
    /// Names must be valid and strictly increasing in byte order within a directory.
    pub fn entry(&mut self, name: &[u8]) -> Result<(), EncodeError> {
        self.expect_state(State::Directory, "entry")?;
        check_name(name).map_err(|reason| EncodeError::InvalidName {
            name: name.to_vec(),
            reason,
        })?;
        let directory = self
            .directories
            .last_mut()
            .expect("the Directory state always has an open directory");
        match &mut directory.previous {
            Some(previous) if name == previous.as_slice() => {
                return Err(EncodeError::DuplicateEntry {
                    name: name.to_vec(),
                })
            }
            Some(previous) if name < previous.as_slice() => {
                return Err(EncodeError::EntriesOutOfOrder {
                    previous: previous.clone(),
                    name: name.to_vec(),
                })
            }
            // Reuse the allocation of the previous name: directories can be large.
            Some(previous) => {
                previous.clear();
                previous.extend_from_slice(name);
            }
            None => directory.previous = Some(name.to_vec()),
        }
        self.fail_on_error(|encoder| {
            encoder.put_tokens(&[format::ENTRY, format::OPEN, format::NAME])?;
            encoder.put_string(name)?;
            encoder.put_tokens(&[format::NODE])?;
            encoder.state = State::Node;
            Ok(())
        })
    }

    /// Closes the current directory.
    pub fn end_directory(&mut self) -> Result<(), EncodeError> {
        self.expect_state(State::Directory, "end_directory")?;
        self.directories.pop();
        self.fail_on_error(|encoder| {
            encoder.put_tokens(&[format::CLOSE])?;
            encoder.end_node()
        })
    }

    /// Flushes the NAR to the writer and returns it. Fails if the root node is incomplete.
    pub fn finish(mut self) -> Result<W, EncodeError> {
        self.expect_state(State::Done, "finish")?;
        self.flush_buffer()?;
        self.out.flush().map_err(EncodeError::Write)?;
        Ok(self.out)
    }

    fn expect_state(&self, expected: State, call: &'static str) -> Result<(), EncodeError> {
        match self.state {
            State::Failed => Err(EncodeError::Failed),
            state if state == expected => Ok(()),
            state => Err(EncodeError::UnexpectedCall {
                call,
                expected: state.expected(),
            }),
        }
    }

    /// Runs a step that writes output; if it fails, the output is now incomplete, so the
    /// encoder refuses to go on rather than let a caller finish a corrupt NAR.
    fn fail_on_error(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        let result = step(self);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// After a node: the root ends the NAR, any other node closes its entry.
    fn end_node(&mut self) -> Result<(), EncodeError> {
        if self.directories.is_empty() {
            self.state = State::Done;
        } else {
            self.put_tokens(&[format::CLOSE])?;
            self.state = State::Directory;
        }
        Ok(())
    }

    fn copy_contents(
        &mut self,
        size: u64,
        contents: &mut impl Read,
        end: ContentsEnd,
    ) -> Result<(), EncodeError> {
        let mut remaining = size;
        let mut seen_end = false;
        while remaining > 0 {
            if self.buffered == BUFFER_SIZE {
                self.flush_buffer()?;
            }
            let room = BUFFER_SIZE - self.buffered;
            // Ask for one byte more than declared when it fits, so that extra contents
            // show up in the same read.
            let want = match usize::try_from(remaining) {
                Ok(remaining) if remaining < room => remaining + 1,
                _ => room,
            };
            let chunk = self.room_for(want);
            let read = match contents.read(chunk) {
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(EncodeError::ReadContents(error)),
            };
            if read == 0 {
                return Err(EncodeError::ContentsTooShort {
                    expected: size,
                    actual: size - remaining,
                });
            }
            if read as u64 > remaining {
                return Err(EncodeError::ContentsTooLong { expected: size });
            }
            self.buffered += read;
            remaining -= read as u64;
            seen_end = remaining == 0 && read < want && end == ContentsEnd::ShortReadIsEof;
        }
        if seen_end {
            return Ok(());
        }
        // A reader with more bytes than declared means the caller's size is stale (a file
        // that grew while being archived): better an error than a silently cut file.
        let mut probe = [0; 1];
        loop {
            match contents.read(&mut probe) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(EncodeError::ContentsTooLong { expected: size }),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(EncodeError::ReadContents(error)),
            }
        }
    }

    fn put_tokens(&mut self, tokens: &[&str]) -> Result<(), EncodeError> {
        tokens
            .iter()
            .try_for_each(|token| self.put_string(token.as_bytes()))
    }

    /// Appends one NAR string: length, bytes, zero padding.
    fn put_string(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let len = bytes.len() as u64;
        self.put(&len.to_le_bytes())?;
        self.put(bytes)?;
        self.put(&[0; 8][..padding_len(len)])
    }

    fn put(&mut self, mut bytes: &[u8]) -> Result<(), EncodeError> {
        while !bytes.is_empty() {
            if self.buffered == BUFFER_SIZE {
                self.flush_buffer()?;
            }
            let take = bytes.len().min(BUFFER_SIZE - self.buffered);
            self.room_for(take).copy_from_slice(&bytes[..take]);
            self.buffered += take;
            bytes = &bytes[take..];
        }
        Ok(())
    }

    /// The `len` bytes of the buffer after those in use; `len` fits below [`BUFFER_SIZE`].
    fn room_for(&mut self, len: usize) -> &mut [u8] {
        let end = self.buffered + len;
        if self.buffer.len() < end {
            self.buffer.resize(end, 0);
        }
        &mut self.buffer[self.buffered..end]
    }

    fn flush_buffer(&mut self) -> Result<(), EncodeError> {
        self.out
            .write_all(&self.buffer[..self.buffered])
            .map_err(EncodeError::Write)?;
        self.flushed += self.buffered as u64;
        self.buffered = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::test_support::{events, OwnedEvent};
    use crate::Limits;

    /// Re-encodes parsed events, the way the fuzz target checks canonical round trips.
    fn reencode(events: &[OwnedEvent]) -> Vec<u8> {
        let mut encoder = NarEncoder::new(Vec::new());
        for event in events {
            match event {
                OwnedEvent::Regular {
                    executable,
                    contents,
                } => encoder.regular(*executable, contents.len() as u64, &mut &contents[..]),
                OwnedEvent::Symlink(target) => encoder.symlink(target),
                OwnedEvent::Directory => encoder.begin_directory(),
                OwnedEvent::Entry(name) => encoder.entry(name),
                OwnedEvent::EndDirectory => encoder.end_directory(),
            }
            .expect("events of a valid NAR encode");
        }
        encoder.finish().expect("complete")
    }

    fn empty_regular() -> Vec<u8> {
        let mut encoder = NarEncoder::new(Vec::new());
        encoder.regular(false, 0, &mut &[][..]).expect("empty");
        encoder.finish().expect("complete")
    }

    #[test]
    fn empty_regular_file_bytes_are_exact() {
        let mut expected = Vec::new();
        for token in ["nix-archive-1", "(", "type", "regular", "contents"] {
            expected.extend((token.len() as u64).to_le_bytes());
            expected.extend(token.as_bytes());
            expected.resize(expected.len().next_multiple_of(8), 0);
        }
        expected.extend(0u64.to_le_bytes()); // the contents: a string of length 0
        expected.extend(1u64.to_le_bytes());
        expected.extend(b")\0\0\0\0\0\0\0");
        let nar = empty_regular();
        assert_eq!(nar, expected);
        assert_eq!(nar, include_bytes!("../tests/fixtures/empty.nar"));
    }

    #[test]
    fn empty_regular_file_hash_matches_nix_hash() {
        // `nix-hash --type sha256` of an empty file.
        let expected = "77ac62e2629d8e45f624589c0c8bf99e24b3a722349bf1e79bc186008534e246";
        let hash: String = Sha256::digest(empty_regular())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(hash, expected);
    }

    #[test]
    fn reencodes_nix_golden_nars_byte_for_byte() {
        for nar in [
            &include_bytes!("../tests/fixtures/empty.nar")[..],
            include_bytes!("../tests/fixtures/hello.nar"),
            include_bytes!("../tests/fixtures/symlink.nar"),
            include_bytes!("../tests/fixtures/tree.nar"),
        ] {
            let parsed = events(nar, Limits::default()).expect("Nix's NAR parses");
            assert_eq!(reencode(&parsed), nar);
        }
    }

    #[test]
    fn position_counts_flushed_and_buffered_bytes() {
        let mut encoder = NarEncoder::new(Vec::new());
        let big = vec![7; BUFFER_SIZE * 2 + 3];
        encoder
            .regular(false, big.len() as u64, &mut &big[..])
            .expect("exact size");
        let position = encoder.position();
        let nar = encoder.finish().expect("complete");
        assert_eq!(position, nar.len() as u64);
    }

    #[test]
    fn rejects_entry_outside_a_directory() {
        let mut encoder = NarEncoder::new(Vec::new());
        assert!(matches!(
            encoder.entry(b"a"),
            Err(EncodeError::UnexpectedCall { call: "entry", .. })
        ));
    }

    #[test]
    fn rejects_a_second_root() {
        let mut encoder = NarEncoder::new(Vec::new());
        encoder.symlink(b"x").expect("root");
        assert!(matches!(
            encoder.symlink(b"y"),
            Err(EncodeError::UnexpectedCall {
                call: "symlink",
                ..
            })
        ));
    }

    #[test]
    fn rejects_finish_before_the_root_is_complete() {
        let mut encoder = NarEncoder::new(Vec::new());
        encoder.begin_directory().expect("root");
        assert!(matches!(
            encoder.finish(),
            Err(EncodeError::UnexpectedCall { call: "finish", .. })
        ));
    }

    #[test]
    fn rejects_unsorted_and_duplicate_entries() {
        let mut encoder = NarEncoder::new(Vec::new());
        encoder.begin_directory().expect("root");
        encoder.entry(b"b").expect("first");
        encoder.symlink(b"t").expect("node");
        assert!(matches!(
            encoder.entry(b"a"),
            Err(EncodeError::EntriesOutOfOrder { .. })
        ));
        assert!(matches!(
            encoder.entry(b"b"),
            Err(EncodeError::DuplicateEntry { .. })
        ));
        // A rejected name writes nothing: the directory can go on.
        encoder.entry(b"c").expect("in order");
        encoder.symlink(b"t").expect("node");
        encoder.end_directory().expect("end");
        let nar = encoder.finish().expect("complete");
        crate::validate(&nar[..], &Limits::default()).expect("valid");
    }

    #[test]
    fn rejects_invalid_names_and_targets() {
        let mut encoder = NarEncoder::new(Vec::new());
        encoder.begin_directory().expect("root");
        for (name, reason) in [
            (&b""[..], InvalidNameReason::Empty),
            (b"..", InvalidNameReason::DotDot),
            (b"a/b", InvalidNameReason::Slash),
        ] {
            assert!(matches!(
                encoder.entry(name),
                Err(EncodeError::InvalidName { reason: r, .. }) if r == reason
            ));
        }
        encoder.entry(b"l").expect("valid");
        assert!(matches!(
            encoder.symlink(b""),
            Err(EncodeError::InvalidTarget { .. })
        ));
    }

    #[test]
    fn rejects_contents_shorter_than_declared_and_then_fails() {
        let mut encoder = NarEncoder::new(Vec::new());
        assert!(matches!(
            encoder.regular(false, 5, &mut &b"abc"[..]),
            Err(EncodeError::ContentsTooShort {
                expected: 5,
                actual: 3
            })
        ));
        assert!(matches!(encoder.symlink(b"x"), Err(EncodeError::Failed)));
        assert!(matches!(encoder.finish(), Err(EncodeError::Failed)));
    }

    #[test]
    fn rejects_contents_longer_than_declared() {
        for extra in [1, BUFFER_SIZE + 10] {
            let contents = vec![1; 10 + extra];
            let mut encoder = NarEncoder::new(Vec::new());
            assert!(matches!(
                encoder.regular(false, 10, &mut &contents[..]),
                Err(EncodeError::ContentsTooLong { expected: 10 })
            ));
        }
    }

    #[test]
    fn reports_write_errors() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut encoder = NarEncoder::new(Broken);
        encoder.symlink(b"x").expect("buffered");
        assert!(matches!(encoder.finish(), Err(EncodeError::Write(_))));
    }
}
