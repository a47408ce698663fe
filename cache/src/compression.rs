//! Compressing and decompressing NARs as Nix 2.8 does (`compression.cc`).
//!
//! Reading: `none`, `xz`, `bzip2`, `zstd` and `gzip`. Nix decodes `xz` and `bzip2` with
//! their own libraries and hands every other method to libarchive, which sniffs the
//! format from the first bytes; so does [`decompress`] for those methods, recognising
//! zstd, gzip, xz and bzip2 by their magic numbers whatever the `.narinfo` says (Nix's
//! `zstd` caches are read even when their `Compression:` line lies the same way).
//! Brotli is refused by name.
//!
//! Writing: `none`, `xz` (Nix's default), `zstd`, `bzip2` and `gzip`, each a stream:
//! memory stays bounded whatever the NAR's size.

use std::io::{self, BufRead, Read, Write};

use crate::narinfo::Compression;

/// The largest window a zstd frame may ask for when decoding (2^27 = 128 MiB, zstd's
/// own default limit): a hostile frame cannot make the reader allocate more.
const ZSTD_MAX_WINDOW_LOG: u32 = 27;

/// The most memory an xz stream may make its decoder use (its header names a dictionary
/// size; `xz -9` needs 65 MiB). Nix sets no limit, so a hostile header could make it
/// allocate up to 4 GiB; past this limit the stream is an error instead. Only xz streams
/// are read (as Nix, `lzma_stream_decoder`), not legacy `.lzma` ones.
pub const XZ_MEMORY_LIMIT: u64 = 256 << 20;

/// Why a compressed stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    #[error("compression method '{0}' is not supported")]
    Unsupported(Compression),
    #[error("cannot start a {method} stream")]
    Io {
        method: Compression,
        #[source]
        source: io::Error,
    },
}

/// A stream of the bytes `input` decompresses to, as `method` says (see the module
/// docs for the sniffing Nix does). The errors of a corrupt or truncated stream come
/// from the reader, as `io::Error`s.
pub fn decompress<'a>(
    method: Compression,
    input: impl BufRead + Send + 'a,
) -> Result<Box<dyn Read + Send + 'a>, CompressionError> {
    let mut input = input;
    let method = match method {
        Compression::None => return Ok(Box::new(input)),
        Compression::Brotli => return Err(CompressionError::Unsupported(method)),
        Compression::Xz | Compression::Bzip2 => method,
        // libarchive's sniffing, for the methods Nix hands to it.
        Compression::Zstd | Compression::Gzip => {
            let head = input
                .fill_buf()
                .map_err(|source| CompressionError::Io { method, source })?;
            sniff(head).unwrap_or(method)
        }
    };
    Ok(match method {
        Compression::Xz => {
            let stream =
                xz2::stream::Stream::new_stream_decoder(XZ_MEMORY_LIMIT, xz2::stream::CONCATENATED)
                    .map_err(|error| CompressionError::Io {
                        method,
                        source: io::Error::other(error),
                    })?;
            Box::new(xz2::bufread::XzDecoder::new_stream(input, stream))
        }
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(input)),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|source| CompressionError::Io { method, source })?;
            decoder
                .window_log_max(ZSTD_MAX_WINDOW_LOG)
                .map_err(|source| CompressionError::Io { method, source })?;
            Box::new(decoder)
        }
        Compression::None | Compression::Brotli => unreachable!("handled above"),
    })
}

/// `reader`, read on a thread of its own, 256 KiB at a time, at most four chunks ahead:
/// decompressing a NAR then overlaps with the hashing and unpacking of what came before,
/// on another core, with memory still bounded. A read error is passed on, in its place.
pub fn read_ahead(reader: Box<dyn Read + Send>) -> impl Read + Send {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        let mut reader = reader;
        loop {
            let mut chunk = vec![0; 1 << 18];
            let read = loop {
                match reader.read(&mut chunk) {
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let last = !matches!(read, Ok(n) if n > 0);
            let sent = read.map(|n| {
                chunk.truncate(n);
                chunk
            });
            // The reader went away: stop.
            if sender.send(sent).is_err() || last {
                return;
            }
        }
    });
    ReadAhead {
        receiver,
        chunk: Vec::new(),
        offset: 0,
        done: false,
    }
}

struct ReadAhead {
    receiver: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    offset: usize,
    done: bool,
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.receiver.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.done = true,
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.offset = 0;
                }
                Ok(Err(error)) => {
                    self.done = true;
                    return Err(error);
                }
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other("the decompressing thread stopped"));
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.offset);
        buf[..n].copy_from_slice(&self.chunk[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

/// The compression `head` starts with, by magic number.
fn sniff(head: &[u8]) -> Option<Compression> {
    const MAGICS: [(&[u8], Compression); 4] = [
        (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
        (&[0x1f, 0x8b], Compression::Gzip),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], Compression::Xz),
        (b"BZh", Compression::Bzip2),
    ];
    MAGICS
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, method)| *method)
}

/// A writer that compresses what it is given into `output`, as `method` says; call
/// [`Compressor::finish`] to end the stream and get `output` back.
pub struct Compressor<W: Write> {
    inner: Inner<W>,
}

enum Inner<W: Write> {
    None(W),
    Xz(xz2::write::XzEncoder<W>),
    Bzip2(bzip2::write::BzEncoder<W>),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    /// Starts a `method` stream into `output`, at the levels Nix uses by default
    /// (xz 6, zstd 3, bzip2 9, gzip 6).
    pub fn new(method: Compression, output: W) -> Result<Compressor<W>, CompressionError> {
        let inner = match method {
            Compression::None => Inner::None(output),
            Compression::Xz => Inner::Xz(xz2::write::XzEncoder::new(output, 6)),
            Compression::Bzip2 => Inner::Bzip2(bzip2::write::BzEncoder::new(
                output,
                bzip2::Compression::best(),
            )),
            Compression::Gzip => Inner::Gzip(flate2::write::GzEncoder::new(
                output,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Inner::Zstd(
                zstd::stream::write::Encoder::new(output, 3)
                    .map_err(|source| CompressionError::Io { method, source })?,
            ),
            Compression::Brotli => return Err(CompressionError::Unsupported(method)),
        };
        Ok(Compressor { inner })
    }

    /// Ends the stream (writing its trailer) and returns the output.
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            Inner::None(output) => Ok(output),
            Inner::Xz(encoder) => encoder.finish(),
            Inner::Bzip2(encoder) => encoder.finish(),
            Inner::Gzip(encoder) => encoder.finish(),
            Inner::Zstd(encoder) => encoder.finish(),
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match &mut self.inner {
            Inner::None(output) => output,
            Inner::Xz(encoder) => encoder,
            Inner::Bzip2(encoder) => encoder,
            Inner::Gzip(encoder) => encoder,
            Inner::Zstd(encoder) => encoder,
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.writer().write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WRITABLE: [Compression; 5] = [
        Compression::None,
        Compression::Xz,
        Compression::Bzip2,
        Compression::Gzip,
        Compression::Zstd,
    ];

    fn compress(method: Compression, bytes: &[u8]) -> Vec<u8> {
        let mut compressor = Compressor::new(method, Vec::new()).unwrap();
        compressor.write_all(bytes).unwrap();
        compressor.finish().unwrap()
    }

    fn read_all(method: Compression, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decompress(method, bytes)
            .map_err(io::Error::other)?
            .read_to_end(&mut out)?;
        Ok(out)
    }

    proptest! {
        #[test]
        fn every_method_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            for method in WRITABLE {
                let compressed = compress(method, &bytes);
                prop_assert_eq!(read_all(method, &compressed).unwrap(), bytes.clone());
            }
        }
    }

    #[test]
    fn methods_libarchive_reads_are_sniffed() {
        let zstd = compress(Compression::Zstd, b"hello");
        let xz = compress(Compression::Xz, b"hello");
        assert_eq!(read_all(Compression::Gzip, &zstd).unwrap(), b"hello");
        assert_eq!(read_all(Compression::Zstd, &xz).unwrap(), b"hello");
        // xz and bzip2 are decoded by name, as Nix does: a lie there is an error.
        assert!(read_all(Compression::Xz, &zstd).is_err());
    }

    #[test]
    fn truncated_streams_are_errors_not_short_reads() {
        for method in &WRITABLE[1..] {
            let compressed = compress(*method, &[7u8; 100_000]);
            let cut = &compressed[..compressed.len() - 4];
            assert!(read_all(*method, cut).is_err(), "{method}");
        }
    }

    #[test]
    fn reading_ahead_gives_the_same_bytes_and_errors() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let compressed = compress(Compression::Zstd, &bytes);
        let decoder = decompress(Compression::Zstd, io::Cursor::new(compressed.clone())).unwrap();
        let mut out = Vec::new();
        read_ahead(decoder).read_to_end(&mut out).unwrap();
        assert_eq!(out, bytes);
        let cut = compressed[..compressed.len() / 2].to_vec();
        let decoder = decompress(Compression::Zstd, io::Cursor::new(cut)).unwrap();
        assert!(read_ahead(decoder).read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn legacy_lzma_with_a_4_gib_dictionary_is_refused_not_allocated() {
        // Found by the `decompress` fuzz target: liblzma's auto decoder (what
        // `XzDecoder::new_multi_decoder` uses) took this legacy `.lzma` header, whose
        // dictionary is 4 GiB, and allocated it. Nix reads xz streams only, and so do we.
        let header = [
            0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        let error = read_all(Compression::Xz, &header).unwrap_err();
        assert!(
            error.to_string().contains("format not recognized"),
            "{error}"
        );
    }

    #[test]
    fn brotli_is_refused_by_name() {
        assert!(matches!(
            decompress(Compression::Brotli, &b""[..]),
            Err(CompressionError::Unsupported(Compression::Brotli))
        ));
    }
}
