//! The wire primitives of Nix's daemon protocol: little-endian `u64`s, byte strings
//! (length, bytes, zero padding to a multiple of 8), lists of strings, and framed
//! streams (chunks with a length each, ended by an empty one).
//!
//! Reading is bounded: no length read from the wire decides an allocation before the
//! bytes have arrived (a string grows as its bytes come in, up to [`Limits`]), and
//! padding must be zero, so one value has one encoding.

use std::io::{self, Read, Write};

use thiserror::Error;

/// How much a peer may make the reader accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest byte string (store paths, options, log lines, small files).
    pub max_string: u64,
    /// Most elements in one list or set.
    pub max_list: u64,
    /// Longest frame of a framed stream (the stream itself is unbounded: it is copied,
    /// never held).
    pub max_frame: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // `AddTextToStore` carries whole `.drv` files and `builtins.toFile` texts.
            max_string: 64 << 20,
            max_list: 1 << 20,
            max_frame: 64 << 20,
        }
    }
}

/// A malformed or oversized value on the wire.
#[derive(Debug, Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{what} with {len} elements exceeds the limit of {max}")]
    TooMany {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{what}: non-zero padding")]
    BadPadding { what: &'static str },
    #[error("{what}: {value} is not a boolean")]
    BadBool { what: &'static str, value: u64 },
    #[error("{what} is not UTF-8")]
    NotUtf8 { what: &'static str },
}

impl WireError {
    /// Whether the peer simply went away (end of file where a value should start).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, WireError::Io(error) if matches!(
            error.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ))
    }
}

fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Reads wire values from `R`.
#[derive(Debug)]
pub struct WireReader<R> {
    inner: R,
    limits: Limits,
}

impl<R: Read> WireReader<R> {
    pub fn new(inner: R, limits: Limits) -> WireReader<R> {
        WireReader { inner, limits }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    pub fn read_u64(&mut self) -> Result<u64, WireError> {
        let mut bytes = [0u8; 8];
        self.inner.read_exact(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    pub fn read_bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.read_u64()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WireError::BadBool { what, value }),
        }
    }

    /// A byte string of at most `limits.max_string` bytes.
    pub fn read_bytes(&mut self, what: &'static str) -> Result<Vec<u8>, WireError> {
        let max = self.limits.max_string;
        self.read_bytes_limited(what, max)
    }

    /// A byte string of at most `max` bytes, grown as its bytes arrive.
    pub fn read_bytes_limited(
        &mut self,
        what: &'static str,
        max: u64,
    ) -> Result<Vec<u8>, WireError> {
        let len = self.read_u64()?;
        if len > max {
            return Err(WireError::TooLong { what, len, max });
        }
        let mut bytes = Vec::with_capacity(len.min(64 << 10) as usize);
        (&mut self.inner).take(len).read_to_end(&mut bytes)?;
        if (bytes.len() as u64) < len {
            return Err(WireError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        self.read_padding(what, len)?;
        Ok(bytes)
    }

    fn read_padding(&mut self, what: &'static str, len: u64) -> Result<(), WireError> {
        let mut pad = [0u8; 8];
        let pad = &mut pad[..padding(len)];
        self.inner.read_exact(pad)?;
        if pad.iter().any(|&b| b != 0) {
            return Err(WireError::BadPadding { what });
        }
        Ok(())
    }

    pub fn read_string(&mut self, what: &'static str) -> Result<String, WireError> {
        String::from_utf8(self.read_bytes(what)?).map_err(|_| WireError::NotUtf8 { what })
    }

    /// A list of strings (Nix's `Strings` and `StringSet`/`StorePathSet` alike).
    pub fn read_strings(&mut self, what: &'static str) -> Result<Vec<String>, WireError> {
        let len = self.read_u64()?;
        let max = self.limits.max_list;
        if len > max {
            return Err(WireError::TooMany { what, len, max });
        }
        let mut strings = Vec::with_capacity(len.min(1024) as usize);
        for _ in 0..len {
            strings.push(self.read_string(what)?);
        }
        Ok(strings)
    }

    /// The length of a list, checked against the limit.
    pub fn read_list_len(&mut self, what: &'static str) -> Result<u64, WireError> {
        let len = self.read_u64()?;
        let max = self.limits.max_list;
        if len > max {
            return Err(WireError::TooMany { what, len, max });
        }
        Ok(len)
    }
}

/// Writes wire values to `W` (buffer it: every value is a small write).
#[derive(Debug)]
pub struct WireWriter<W> {
    inner: W,
}

impl<W: Write> WireWriter<W> {
    pub fn new(inner: W) -> WireWriter<W> {
        WireWriter { inner }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }

    pub fn write_u64(&mut self, value: u64) -> io::Result<()> {
        self.inner.write_all(&value.to_le_bytes())
    }

    pub fn write_bool(&mut self, value: bool) -> io::Result<()> {
        self.write_u64(u64::from(value))
    }

    pub fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_u64(bytes.len() as u64)?;
        self.inner.write_all(bytes)?;
        self.inner
            .write_all(&[0u8; 8][..padding(bytes.len() as u64)])
    }

    pub fn write_str(&mut self, text: &str) -> io::Result<()> {
        self.write_bytes(text.as_bytes())
    }

    pub fn write_strings<S: AsRef<str>>(
        &mut self,
        strings: impl ExactSizeIterator<Item = S>,
    ) -> io::Result<()> {
        self.write_u64(strings.len() as u64)?;
        for string in strings {
            self.write_str(string.as_ref())?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a framed stream (`u64` length, that many bytes, repeated; a length of 0 ends
/// it) as a plain byte stream.
#[derive(Debug)]
pub struct FramedReader<'a, R> {
    inner: &'a mut R,
    max_frame: u64,
    left: u64,
    done: bool,
}

impl<'a, R: Read> FramedReader<'a, R> {
    pub fn new(inner: &'a mut R, max_frame: u64) -> FramedReader<'a, R> {
        FramedReader {
            inner,
            max_frame,
            left: 0,
            done: false,
        }
    }

    /// Reads what is left of the stream, up to its end frame.
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }
}

impl<R: Read> Read for FramedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.left == 0 {
            if self.done {
                return Ok(0);
            }
            let mut len = [0u8; 8];
            self.inner.read_exact(&mut len)?;
            let len = u64::from_le_bytes(len);
            if len == 0 {
                self.done = true;
                return Ok(0);
            }
            if len > self.max_frame {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "a frame of {len} bytes exceeds the limit of {}",
                        self.max_frame
                    ),
                ));
            }
            self.left = len;
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let read = self.inner.read(&mut buf[..want])?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= read as u64;
        Ok(read)
    }
}

/// Writes a byte stream as frames; [`FramedWriter::finish`] writes the end frame.
#[derive(Debug)]
pub struct FramedWriter<'a, W: Write> {
    inner: &'a mut W,
}

impl<'a, W: Write> FramedWriter<'a, W> {
    pub fn new(inner: &'a mut W) -> FramedWriter<'a, W> {
        FramedWriter { inner }
    }

    pub fn finish(self) -> io::Result<()> {
        self.inner.write_all(&0u64.to_le_bytes())
    }
}

impl<W: Write> Write for FramedWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.inner.write_all(&(buf.len() as u64).to_le_bytes())?;
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub use arca_store_core::tee::TeeBufRead;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn strings_round_trip(strings in proptest::collection::vec(".{0,40}", 0..8)) {
            let mut writer = WireWriter::new(Vec::new());
            writer.write_strings(strings.iter()).unwrap();
            let bytes = writer.into_inner();
            prop_assert_eq!(bytes.len() % 8, 0);
            let mut reader = WireReader::new(&bytes[..], Limits::default());
            prop_assert_eq!(reader.read_strings("list").unwrap(), strings);
            prop_assert!(reader.read_u64().is_err(), "nothing is left over");
        }

        #[test]
        fn framed_streams_round_trip(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..6)
        ) {
            let mut bytes = Vec::new();
            let mut framed = FramedWriter::new(&mut bytes);
            for chunk in &chunks {
                framed.write_all(chunk).unwrap();
            }
            framed.finish().unwrap();
            bytes.extend_from_slice(b"after");
            let mut input = &bytes[..];
            let mut back = Vec::new();
            FramedReader::new(&mut input, 1 << 20).read_to_end(&mut back).unwrap();
            prop_assert_eq!(back, chunks.concat());
            prop_assert_eq!(input, b"after");
        }
    }

    #[test]
    fn huge_lengths_are_refused_before_any_allocation() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"short");
        let mut reader = WireReader::new(&bytes[..], Limits::default());
        assert!(matches!(
            reader.read_bytes("path"),
            Err(WireError::TooLong { what: "path", .. })
        ));
        let mut reader = WireReader::new(&bytes[..], Limits::default());
        assert!(matches!(
            reader.read_strings("paths"),
            Err(WireError::TooMany { .. })
        ));
        // Within the limit but the bytes never come: an end of file, not a 4 GiB buffer.
        let mut bytes = (1u64 << 30).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"short");
        let limits = Limits {
            max_string: 1 << 31,
            ..Limits::default()
        };
        let mut reader = WireReader::new(&bytes[..], limits);
        assert!(reader.read_bytes("nar").unwrap_err().is_disconnect());
    }

    #[test]
    fn padding_must_be_zero() {
        let mut bytes = 3u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc\0\0\x01\0\0");
        let mut reader = WireReader::new(&bytes[..], Limits::default());
        assert!(matches!(
            reader.read_string("name"),
            Err(WireError::BadPadding { what: "name" })
        ));
    }
}
