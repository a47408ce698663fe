//! [`NarReader`]: a streaming, validating pull parser.
//!
//! The parser accepts exactly the canonical NARs that Nix writes, so that one tree has one
//! NAR and one hash. It never allocates by a length read from the input before checking it
//! against [`Limits`], and file contents are streamed, never held in memory.

use std::io::{self, BufRead, Read};

use crate::format::{
    self, check_name, check_target, padding_len, show, InvalidNameReason, InvalidTargetReason,
    MAX_TOKEN_LEN,
};

/// Bounds on what a NAR may contain, checked before anything is allocated for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest entry name, in bytes. The default, 1024, is above Linux's `NAME_MAX` (255)
    /// because NARs made on macOS may hold names of 255 UTF-16 units, up to 765 UTF-8 bytes.
    pub max_name_len: u64,
    /// Longest symlink target, in bytes. The default is Linux's `PATH_MAX`, 4096.
    pub max_target_len: u64,
    /// Deepest nesting of directories (the root directory is depth 1). Default 1024.
    pub max_depth: usize,
    /// Largest regular file, in bytes. Contents are streamed, so the default is no limit.
    pub max_file_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_name_len: 1024,
            max_target_len: 4096,
            max_depth: 1024,
            max_file_size: u64::MAX,
        }
    }
}

/// Errors from parsing a NAR. Every variant but `Failed` says at which byte of the NAR the
/// problem lies.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Reading the input failed.
    #[error("could not read the NAR at byte {offset}")]
    Io {
        /// Bytes successfully read before the failure.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The input ended in the middle of the NAR.
    #[error("unexpected end of the NAR at byte {offset}")]
    UnexpectedEof {
        /// Length of the truncated input.
        offset: u64,
    },
    /// The input does not start with the string `nix-archive-1`.
    #[error("not a NAR: it does not start with 'nix-archive-1'")]
    BadMagic,
    /// A token other than the one the format requires here.
    #[error("expected {expected} at byte {offset} of the NAR, found '{found}'")]
    UnexpectedToken {
        /// Where the token starts.
        offset: u64,
        /// The token or tokens allowed here.
        expected: &'static str,
        /// The token found, escaped for display.
        found: String,
    },
    /// A token longer than any token of the format.
    #[error("expected a token at byte {offset} of the NAR, found a string of {len} bytes")]
    TokenTooLong {
        /// Where the token starts.
        offset: u64,
        /// Its declared length.
        len: u64,
    },
    /// A padding byte that is not zero (the NAR would not be canonical).
    #[error("non-zero padding at byte {offset} of the NAR")]
    NonZeroPadding {
        /// Where the padding starts.
        offset: u64,
    },
    /// An entry whose name sorts before the previous entry of its directory.
    #[error(
        "entry '{}' at byte {offset} of the NAR sorts before the previous entry '{}'",
        show(name),
        show(previous)
    )]
    EntriesOutOfOrder {
        /// Where the name starts.
        offset: u64,
        /// The previous entry of the directory.
        previous: Vec<u8>,
        /// The entry out of order.
        name: Vec<u8>,
    },
    /// An entry whose name equals the previous entry of its directory.
    #[error("entry '{}' at byte {offset} of the NAR is a duplicate", show(name))]
    DuplicateEntry {
        /// Where the name starts.
        offset: u64,
        /// The repeated name.
        name: Vec<u8>,
    },
    /// An entry name that could escape its directory or that no file system can hold.
    #[error("entry name '{}' at byte {offset} of the NAR {reason}", show(name))]
    InvalidName {
        /// Where the name starts.
        offset: u64,
        /// The rejected name.
        name: Vec<u8>,
        /// What is wrong with it.
        reason: InvalidNameReason,
    },
    /// A symlink target that no file system can hold.
    #[error(
        "symlink target '{}' at byte {offset} of the NAR {reason}",
        show(target)
    )]
    InvalidTarget {
        /// Where the target starts.
        offset: u64,
        /// The rejected target.
        target: Vec<u8>,
        /// What is wrong with it.
        reason: InvalidTargetReason,
    },
    /// An entry name longer than [`Limits::max_name_len`].
    #[error(
        "entry name at byte {offset} of the NAR is {len} bytes long, over the limit of {limit}"
    )]
    NameTooLong {
        /// Where the name starts.
        offset: u64,
        /// Its declared length.
        len: u64,
        /// The limit in force.
        limit: u64,
    },
    /// A symlink target longer than [`Limits::max_target_len`].
    #[error(
        "symlink target at byte {offset} of the NAR is {len} bytes long, over the limit of {limit}"
    )]
    TargetTooLong {
        /// Where the target starts.
        offset: u64,
        /// Its declared length.
        len: u64,
        /// The limit in force.
        limit: u64,
    },
    /// Directories nested deeper than [`Limits::max_depth`].
    #[error("directory at byte {offset} of the NAR is nested deeper than the limit of {limit}")]
    TooDeep {
        /// Where the directory's node starts.
        offset: u64,
        /// The limit in force.
        limit: usize,
    },
    /// A regular file larger than [`Limits::max_file_size`].
    #[error(
        "regular file at byte {offset} of the NAR has {size} bytes, over the limit of {limit}"
    )]
    FileTooLarge {
        /// Where the size field starts.
        offset: u64,
        /// The declared size.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// Bytes after the end of the NAR.
    #[error("unexpected data after the end of the NAR at byte {offset}")]
    TrailingBytes {
        /// Length of the NAR, where the extra bytes start.
        offset: u64,
    },
    /// The reader was used again after it returned an error.
    #[error("the NAR reader already failed at an earlier error")]
    Failed,
}

/// One step of a NAR, as returned by [`NarReader::next`].
///
/// A directory is `Directory`, then for each entry `Entry` followed by the entry's node,
/// then `EndDirectory`. The root node comes first, without an `Entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A regular file. Its contents can be read with [`NarReader::contents`] before the
    /// next call to [`NarReader::next`], which skips whatever was not read.
    Regular {
        /// Whether the file is executable.
        executable: bool,
        /// Size of the contents in bytes.
        size: u64,
    },
    /// A symlink.
    Symlink {
        /// Where it points; not empty, no NUL byte.
        target: &'a [u8],
    },
    /// The start of a directory.
    Directory,
    /// An entry of the current directory; its node follows.
    Entry {
        /// Its name: valid, and greater than the previous entry's name.
        name: &'a [u8],
    },
    /// The end of the current directory.
    EndDirectory,
}

/// What the parser reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Magic,
    Node,
    /// Inside a regular file's contents, `remaining` of `size` bytes not yet read.
    Contents {
        size: u64,
        remaining: u64,
    },
    /// Inside a directory, before `entry` or `)`.
    Directory,
    Done,
    Failed,
}

/// A streaming NAR parser: call [`next`](Self::next) until it returns `Ok(None)`.
///
/// `R` is a [`BufRead`] because the format is many small strings: wrap a file or socket
/// in a [`std::io::BufReader`]. The parser reads nothing past the end of the NAR, so a NAR
/// embedded in a longer stream can be parsed and the stream used afterwards
/// ([`into_inner`](Self::into_inner)); [`finish`](Self::finish) instead requires the input
/// to end with the NAR.
///
/// ```
/// use arca_nar::{Event, Limits, NarEncoder, NarReader};
///
/// let mut encoder = NarEncoder::new(Vec::new());
/// encoder.regular(true, 3, &mut &b"#!\n"[..])?;
/// let nar = encoder.finish()?;
///
/// let mut reader = NarReader::new(&nar[..], Limits::default());
/// assert_eq!(reader.next()?, Some(Event::Regular { executable: true, size: 3 }));
/// let mut contents = Vec::new();
/// std::io::Read::read_to_end(&mut reader.contents(), &mut contents)?;
/// assert_eq!(contents, b"#!\n");
/// assert_eq!(reader.next()?, None);
/// assert_eq!(reader.finish()?, nar.len() as u64);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct NarReader<R> {
    inner: R,
    limits: Limits,
    offset: u64,
    state: State,
    /// The last entry name of each open directory, innermost last. Entries below
    /// `depth` are live; those above keep their allocations for reuse.
    names: Vec<Vec<u8>>,
    depth: usize,
    /// Scratch space for a name before it is checked against its predecessor.
    name: Vec<u8>,
    target: Vec<u8>,
}

impl<R: BufRead> NarReader<R> {
    /// A parser for the NAR that `inner` starts with.
    pub fn new(inner: R, limits: Limits) -> Self {
        NarReader {
            inner,
            limits,
            offset: 0,
            state: State::Magic,
            names: Vec::new(),
            depth: 0,
            name: Vec::new(),
            target: Vec::new(),
        }
    }

    /// Number of bytes of the NAR consumed so far. Right after an [`Event::Regular`] this
    /// is the offset of the file's contents (Nix's `narOffset`).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next event, or `None` after the root node ended. Skips the unread contents of
    /// the previous regular file. After an error, every call returns [`ReadError::Failed`].
    #[allow(clippy::should_implement_trait)] // events borrow the reader, Iterator can't
    pub fn next(&mut self) -> Result<Option<Event<'_>>, ReadError> {
        match self.advance() {
            Ok(Step::Regular { executable, size }) => Ok(Some(Event::Regular { executable, size })),
            Ok(Step::Symlink) => Ok(Some(Event::Symlink {
                target: &self.target,
            })),
            Ok(Step::Directory) => Ok(Some(Event::Directory)),
            Ok(Step::Entry) => Ok(Some(Event::Entry {
                name: &self.names[self.depth - 1],
            })),
            Ok(Step::EndDirectory) => Ok(Some(Event::EndDirectory)),
            Ok(Step::Done) => Ok(None),
            Err(error) => {
                self.state = State::Failed;
                Err(error)
            }
        }
    }

    /// A reader for the contents of the regular file of the last event (empty if the last
    /// event was not [`Event::Regular`]). A truncated NAR makes it fail with an
    /// [`io::Error`] of kind `UnexpectedEof` wrapping a [`ReadError`].
    pub fn contents(&mut self) -> Contents<'_, R> {
        Contents { reader: self }
    }

    /// Parses the rest of the NAR without looking at it, and returns its size. Reads
    /// nothing past its end.
    pub fn read_to_end(&mut self) -> Result<u64, ReadError> {
        while self.next()?.is_some() {}
        Ok(self.offset)
    }

    /// Parses the rest of the NAR and checks that the input ends with it. Returns the
    /// size of the NAR.
    pub fn finish(mut self) -> Result<u64, ReadError> {
        let size = self.read_to_end()?;
        let at_eof = self
            .inner
            .fill_buf()
            .map_err(|source| ReadError::Io {
                offset: size,
                source,
            })?
            .is_empty();
        if at_eof {
            Ok(size)
        } else {
            Err(ReadError::TrailingBytes { offset: size })
        }
    }

    /// The input, positioned right after the last byte parsed.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Parses up to and including the next event. Returns what to report, leaving the
    /// event's data (name, target) in `self`.
    fn advance(&mut self) -> Result<Step, ReadError> {
        loop {
            match self.state {
                State::Magic => {
                    self.read_magic()?;
                    self.state = State::Node;
                }
                State::Node => return self.read_node(),
                State::Contents { size, remaining } => {
                    self.skip_contents(remaining)?;
                    self.read_padding(size)?;
                    self.expect(format::CLOSE, "')'")?;
                    self.end_node()?;
                }
                State::Directory => return self.read_entry_or_end(),
                State::Done => return Ok(Step::Done),
                State::Failed => return Err(ReadError::Failed),
            }
        }
    }

    fn read_magic(&mut self) -> Result<(), ReadError> {
        // Anything wrong with the first string means "not a NAR" (say, a compressed one),
        // which is a more useful message than a complaint about token lengths.
        let len = self.read_u64()?;
        if len != format::MAGIC.len() as u64 {
            return Err(ReadError::BadMagic);
        }
        let mut magic = [0; format::MAGIC.len()];
        self.read_bytes(&mut magic)?;
        if magic != format::MAGIC.as_bytes() {
            return Err(ReadError::BadMagic);
        }
        self.read_padding(len)
    }

    fn read_node(&mut self) -> Result<Step, ReadError> {
        let start = self.offset;
        self.expect(format::OPEN, "'('")?;
        self.expect(format::TYPE, "'type'")?;
        let token_start = self.offset;
        let token = self.read_token()?;
        match token.as_str() {
            format::REGULAR => self.read_regular_header(),
            format::SYMLINK => self.read_symlink(),
            format::DIRECTORY => {
                if self.depth >= self.limits.max_depth {
                    return Err(ReadError::TooDeep {
                        offset: start,
                        limit: self.limits.max_depth,
                    });
                }
                self.open_directory();
                self.state = State::Directory;
                Ok(Step::Directory)
            }
            _ => Err(token.unexpected(token_start, "'regular', 'symlink' or 'directory'")),
        }
    }

    fn read_regular_header(&mut self) -> Result<Step, ReadError> {
        let token_start = self.offset;
        let token = self.read_token()?;
        let executable = match token.as_str() {
            format::EXECUTABLE => {
                self.expect("", "'' (the executable marker's empty value)")?;
                self.expect(format::CONTENTS, "'contents'")?;
                true
            }
            format::CONTENTS => false,
            _ => return Err(token.unexpected(token_start, "'executable' or 'contents'")),
        };
        let size_start = self.offset;
        let size = self.read_u64()?;
        if size > self.limits.max_file_size {
            return Err(ReadError::FileTooLarge {
                offset: size_start,
                size,
                limit: self.limits.max_file_size,
            });
        }
        self.state = State::Contents {
            size,
            remaining: size,
        };
        Ok(Step::Regular { executable, size })
    }

    fn read_symlink(&mut self) -> Result<Step, ReadError> {
        self.expect(format::TARGET, "'target'")?;
        let start = self.offset;
        let limit = self.limits.max_target_len;
        let mut target = std::mem::take(&mut self.target);
        let result = self.read_bounded(&mut target, limit, |len| ReadError::TargetTooLong {
            offset: start,
            len,
            limit,
        });
        self.target = target;
        result?;
        check_target(&self.target).map_err(|reason| ReadError::InvalidTarget {
            offset: start,
            target: self.target.clone(),
            reason,
        })?;
        self.expect(format::CLOSE, "')'")?;
        self.end_node()?;
        Ok(Step::Symlink)
    }

    fn read_entry_or_end(&mut self) -> Result<Step, ReadError> {
        let token_start = self.offset;
        let token = self.read_token()?;
        match token.as_str() {
            format::ENTRY => {
                self.expect(format::OPEN, "'('")?;
                self.expect(format::NAME, "'name'")?;
                self.read_entry_name()?;
                self.expect(format::NODE, "'node'")?;
                self.state = State::Node;
                Ok(Step::Entry)
            }
            format::CLOSE => {
                self.depth -= 1;
                self.end_node()?;
                Ok(Step::EndDirectory)
            }
            _ => Err(token.unexpected(token_start, "'entry' or ')'")),
        }
    }

    /// Reads a name into `self.name`, checks it, then swaps it into the directory's slot
    /// so that both buffers keep their allocations.
    fn read_entry_name(&mut self) -> Result<(), ReadError> {
        let start = self.offset;
        let limit = self.limits.max_name_len;
        let mut name = std::mem::take(&mut self.name);
        let result = self.read_bounded(&mut name, limit, |len| ReadError::NameTooLong {
            offset: start,
            len,
            limit,
        });
        self.name = name;
        result?;
        check_name(&self.name).map_err(|reason| ReadError::InvalidName {
            offset: start,
            name: self.name.clone(),
            reason,
        })?;
        let previous = &mut self.names[self.depth - 1];
        // An empty slot means "no entry yet": no valid name is empty.
        if !previous.is_empty() {
            match self.name.as_slice().cmp(previous.as_slice()) {
                std::cmp::Ordering::Greater => {}
                std::cmp::Ordering::Equal => {
                    return Err(ReadError::DuplicateEntry {
                        offset: start,
                        name: self.name.clone(),
                    })
                }
                std::cmp::Ordering::Less => {
                    return Err(ReadError::EntriesOutOfOrder {
                        offset: start,
                        previous: previous.clone(),
                        name: self.name.clone(),
                    })
                }
            }
        }
        std::mem::swap(previous, &mut self.name);
        Ok(())
    }

    fn open_directory(&mut self) {
        if self.depth == self.names.len() {
            self.names.push(Vec::new());
        } else {
            self.names[self.depth].clear();
        }
        self.depth += 1;
    }

    /// After a node: the root ends the NAR, any other node closes its entry.
    fn end_node(&mut self) -> Result<(), ReadError> {
        if self.depth == 0 {
            self.state = State::Done;
        } else {
            self.expect(format::CLOSE, "')'")?;
            self.state = State::Directory;
        }
        Ok(())
    }

    fn expect(&mut self, expected: &str, description: &'static str) -> Result<(), ReadError> {
        let start = self.offset;
        let token = self.read_token()?;
        if token.as_bytes() == expected.as_bytes() {
            Ok(())
        } else {
            Err(token.unexpected(start, description))
        }
    }

    fn read_token(&mut self) -> Result<Token, ReadError> {
        let start = self.offset;
        let len = self.read_u64()?;
        if len > MAX_TOKEN_LEN {
            return Err(ReadError::TokenTooLong { offset: start, len });
        }
        let mut token = Token {
            bytes: [0; MAX_TOKEN_LEN as usize],
            len: len as usize,
        };
        self.read_bytes(&mut token.bytes[..token.len])?;
        self.read_padding(len)?;
        Ok(token)
    }

    /// Reads a string of at most `limit` bytes into `buffer`. The length is checked before
    /// anything is allocated, so a hostile length costs nothing.
    fn read_bounded(
        &mut self,
        buffer: &mut Vec<u8>,
        limit: u64,
        too_long: impl FnOnce(u64) -> ReadError,
    ) -> Result<(), ReadError> {
        let len = self.read_u64()?;
        if len > limit {
            return Err(too_long(len));
        }
        buffer.clear();
        buffer.resize(
            usize::try_from(len).expect("a length within the limit fits in memory"),
            0,
        );
        self.read_bytes(buffer)?;
        self.read_padding(len)
    }

    fn read_padding(&mut self, len: u64) -> Result<(), ReadError> {
        let start = self.offset;
        let mut padding = [0; 8];
        let padding = &mut padding[..padding_len(len)];
        self.read_bytes(padding)?;
        if padding.iter().all(|&byte| byte == 0) {
            Ok(())
        } else {
            Err(ReadError::NonZeroPadding { offset: start })
        }
    }

    fn read_u64(&mut self) -> Result<u64, ReadError> {
        let mut bytes = [0; 8];
        self.read_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn read_bytes(&mut self, mut buffer: &mut [u8]) -> Result<(), ReadError> {
        while !buffer.is_empty() {
            let available = self.fill()?;
            let take = available.len().min(buffer.len());
            buffer[..take].copy_from_slice(&available[..take]);
            self.consume(take);
            buffer = &mut buffer[take..];
        }
        Ok(())
    }

    fn skip_contents(&mut self, mut remaining: u64) -> Result<(), ReadError> {
        while remaining > 0 {
            let available = self.fill()?.len() as u64;
            let take = available.min(remaining);
            // `take` is at most `available`, a usize.
            self.consume(take as usize);
            remaining -= take;
        }
        Ok(())
    }

    /// The next buffered bytes of input; never empty.
    fn fill(&mut self) -> Result<&[u8], ReadError> {
        let offset = self.offset;
        loop {
            match self.inner.fill_buf() {
                Ok([]) => return Err(ReadError::UnexpectedEof { offset }),
                // Re-borrow: returning `bytes` directly upsets the borrow checker in a loop.
                Ok(_) => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(ReadError::Io { offset, source }),
            }
        }
        self.inner
            .fill_buf()
            .map_err(|source| ReadError::Io { offset, source })
    }

    fn consume(&mut self, len: usize) {
        self.inner.consume(len);
        self.offset += len as u64;
    }

    /// The next buffered bytes of the current file's contents; empty at their end.
    pub(crate) fn fill_contents(&mut self) -> Result<&[u8], ReadError> {
        let remaining = match self.state {
            State::Contents { remaining, .. } if remaining > 0 => remaining,
            _ => return Ok(&[]),
        };
        // A truncated file poisons the reader: its next event would be garbage.
        if let Err(error) = self.fill() {
            self.state = State::Failed;
            return Err(error);
        }
        let available = self.fill()?;
        let len = usize::try_from(remaining).map_or(available.len(), |r| r.min(available.len()));
        Ok(&available[..len])
    }

    /// Marks `len` bytes returned by [`fill_contents`](Self::fill_contents) as read.
    pub(crate) fn consume_contents(&mut self, len: usize) {
        if let State::Contents { size, remaining } = self.state {
            let len = (len as u64).min(remaining);
            self.state = State::Contents {
                size,
                remaining: remaining - len,
            };
            // `len` was clamped to at most the caller's usize.
            self.consume(len as usize);
        }
    }
}

/// Which event [`NarReader::advance`] parsed; the borrowed data stays in the reader.
enum Step {
    Regular { executable: bool, size: u64 },
    Symlink,
    Directory,
    Entry,
    EndDirectory,
    Done,
}

/// A token read from the NAR, at most [`MAX_TOKEN_LEN`] bytes, kept on the stack.
struct Token {
    bytes: [u8; MAX_TOKEN_LEN as usize],
    len: usize,
}

impl Token {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The token as text for matching; a token that is not UTF-8 matches nothing.
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("\u{fffd}")
    }

    fn unexpected(&self, offset: u64, expected: &'static str) -> ReadError {
        ReadError::UnexpectedToken {
            offset,
            expected,
            found: show(self.as_bytes()),
        }
    }
}

/// The contents of the current regular file, from [`NarReader::contents`].
#[derive(Debug)]
pub struct Contents<'a, R> {
    reader: &'a mut NarReader<R>,
}

impl<R: BufRead> Read for Contents<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let len = available.len().min(buffer.len());
        buffer[..len].copy_from_slice(&available[..len]);
        self.consume(len);
        Ok(len)
    }
}

impl<R: BufRead> BufRead for Contents<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.reader.fill_contents().map_err(|error| match error {
            ReadError::UnexpectedEof { .. } => io::Error::new(io::ErrorKind::UnexpectedEof, error),
            ReadError::Io { source, .. } => source,
            error => io::Error::other(error),
        })
    }

    fn consume(&mut self, len: usize) {
        self.reader.consume_contents(len);
    }
}

#[cfg(test)]
mod tests;
