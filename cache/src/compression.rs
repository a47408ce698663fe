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
//! memory stays bounded whatever the NAR's size. zstd decompression contexts outlive
//! their streams (a few, and small ones only), so that a
//! substitution of many NARs does not allocate a window for each.

use std::io::{self, BufRead, Read, Write};
use std::sync::Mutex;

use zstd::zstd_safe::{self, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

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
        Compression::Zstd => Box::new(
            ZstdReader::new(input).map_err(|source| CompressionError::Io { method, source })?,
        ),
        Compression::None | Compression::Brotli => unreachable!("handled above"),
    })
}

/// Decompression contexts of finished zstd streams, kept for the next ones (at most
/// [`ZSTD_CONTEXTS_KEPT`], each of at most [`ZSTD_CONTEXT_KEPT_BYTES`]): a context
/// allocates its window (2 MiB for level 3, Nix's default, up to 8 MiB for higher
/// levels) when it first decodes, and a new context per NAR faulted those pages in anew
/// each time, a tenth of the CPU time of a substitution. A context that grew bigger (a
/// frame with a larger window, up to [`ZSTD_MAX_WINDOW_LOG`]) is freed, so what is kept
/// stays under 80 MiB.
static ZSTD_CONTEXTS: Mutex<Vec<DCtx<'static>>> = Mutex::new(Vec::new());
const ZSTD_CONTEXTS_KEPT: usize = 8;
const ZSTD_CONTEXT_KEPT_BYTES: usize = 10 << 20;

/// A zstd stream of one or more frames, decoded from `input` with a context from
/// [`ZSTD_CONTEXTS`] (given back when dropped). Input that ends inside a frame is an
/// `UnexpectedEof` error, not a short stream.
struct ZstdReader<R> {
    input: R,
    /// Taken back to [`ZSTD_CONTEXTS`] when dropped.
    context: Option<DCtx<'static>>,
    /// Whether a frame is started and not finished.
    in_frame: bool,
}

impl<R: BufRead> ZstdReader<R> {
    fn new(input: R) -> io::Result<ZstdReader<R>> {
        let kept = ZSTD_CONTEXTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let mut context = match kept {
            Some(context) => context,
            None => DCtx::try_create()
                .ok_or_else(|| io::Error::other("cannot allocate a zstd decompression context"))?,
        };
        context
            .set_parameter(DParameter::WindowLogMax(ZSTD_MAX_WINDOW_LOG))
            .map_err(zstd_error)?;
        Ok(ZstdReader {
            input,
            context: Some(context),
            in_frame: false,
        })
    }
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)))
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(context) = self.context.as_mut() else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let data = self.input.fill_buf()?;
            if data.is_empty() {
                if self.in_frame {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the zstd stream ends inside a frame",
                    ));
                }
                return Ok(0);
            }
            let mut input = InBuffer::around(data);
            let mut output = OutBuffer::around(buf);
            // 0 once a frame is decoded and all of it given out.
            let hint = context
                .decompress_stream(&mut output, &mut input)
                .map_err(zstd_error)?;
            let (consumed, produced) = (input.pos(), output.pos());
            self.input.consume(consumed);
            self.in_frame = hint != 0;
            if produced > 0 {
                return Ok(produced);
            }
            if consumed == 0 {
                return Err(io::Error::other("zstd: the decoder makes no progress"));
            }
        }
    }
}

impl<R> Drop for ZstdReader<R> {
    fn drop(&mut self) {
        let Some(mut context) = self.context.take() else {
            return;
        };
        if context.sizeof() > ZSTD_CONTEXT_KEPT_BYTES
            || context.reset(ResetDirective::SessionOnly).is_err()
        {
            return;
        }
        let mut kept = ZSTD_CONTEXTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if kept.len() < ZSTD_CONTEXTS_KEPT {
            kept.push(context);
        }
    }
}

/// `reader`, read on a thread of its own, 256 KiB at a time, at most four chunks ahead:
/// decompressing a NAR then overlaps with the hashing and unpacking of what came before,
/// on another core, with memory still bounded (the chunks read go back to the thread to
/// be filled again: about six in all). A read error is passed on, in its place.
pub fn read_ahead(reader: Box<dyn Read + Send>) -> impl Read + Send {
    const CHUNK: usize = 1 << 18;
    let (sender, receiver) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    // Chunks read go back to the thread, to be filled again: no allocating and zeroing
    // 256 KiB for every chunk.
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut reader = reader;
        loop {
            let mut chunk = recycled.try_recv().unwrap_or_default();
            chunk.resize(CHUNK, 0);
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
        recycle,
        chunk: Vec::new(),
        offset: 0,
        done: false,
    }
}

struct ReadAhead {
    receiver: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
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
                    let used = std::mem::replace(&mut self.chunk, chunk);
                    // The thread may have ended: the chunk is then dropped.
                    let _ = self.recycle.send(used);
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

    type TestResult = Result<(), Box<dyn std::error::Error>>;

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
    fn zstd_frames_follow_one_another() -> TestResult {
        let mut both = compress(Compression::Zstd, b"hello, ");
        both.extend(compress(Compression::Zstd, b"world"));
        assert_eq!(read_all(Compression::Zstd, &both)?, b"hello, world");
        // Bytes after a frame that are not one are an error, not ignored.
        let mut trailing = compress(Compression::Zstd, b"hello");
        trailing.extend_from_slice(b"junk");
        assert!(read_all(Compression::Zstd, &trailing).is_err());
        Ok(())
    }

    #[test]
    fn zstd_frames_asking_for_a_window_over_the_limit_are_refused() -> TestResult {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3)?;
        encoder.set_parameter(zstd::stream::raw::CParameter::WindowLog(
            ZSTD_MAX_WINDOW_LOG + 1,
        ))?;
        encoder.write_all(b"a window of 256 MiB")?;
        let error = read_all(Compression::Zstd, &encoder.finish()?).unwrap_err();
        assert!(error.to_string().contains("memory"), "{error}");
        Ok(())
    }

    #[test]
    fn zstd_contexts_grown_past_the_limit_are_not_kept() -> TestResult {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3)?;
        encoder.set_parameter(zstd::stream::raw::CParameter::WindowLog(26))?;
        let bytes: Vec<u8> = (0..(20u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        encoder.write_all(&bytes)?;
        let compressed = encoder.finish()?;
        assert_eq!(read_all(Compression::Zstd, &compressed)?, bytes);
        let kept = ZSTD_CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            kept.iter()
                .all(|context| context.sizeof() <= ZSTD_CONTEXT_KEPT_BYTES),
            "{:?}",
            kept.iter().map(DCtx::sizeof).collect::<Vec<_>>()
        );
        Ok(())
    }

    #[test]
    fn zstd_contexts_kept_after_errors_decode_the_next_streams_right() -> TestResult {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let good = compress(Compression::Zstd, &bytes);
        let mut corrupt = good.clone();
        let middle = corrupt.len() / 2;
        corrupt[middle] ^= 0xff;
        for _ in 0..2 * ZSTD_CONTEXTS_KEPT {
            assert!(read_all(Compression::Zstd, &good[..middle]).is_err());
            // zstd frames carry no checksum here: a flipped byte may decode to other
            // bytes (the NAR's hash catches it) or be an error; either way the context
            // is reused.
            assert_ne!(
                read_all(Compression::Zstd, &corrupt).ok(),
                Some(bytes.clone())
            );
            // Dropped half read: the context goes back in mid-frame.
            let mut half = decompress(Compression::Zstd, &good[..])?;
            half.read_exact(&mut [0; 1000])?;
            drop(half);
            assert_eq!(read_all(Compression::Zstd, &good)?, bytes);
        }
        Ok(())
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
