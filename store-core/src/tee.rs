//! [`TeeBufRead`]: reading a stream while copying exactly what a parser consumed of it.

use std::io::{self, Read, Write};

/// A `BufRead` that copies every byte consumed from `inner` to `out`: exactly what a
/// parser reads, never more, so a connection it reads from stays in step. A failed write
/// to `out` is kept in `error` (and returned by the next `fill_buf`).
pub struct TeeBufRead<'a, R, W: ?Sized> {
    inner: &'a mut R,
    out: &'a mut W,
    /// The first write to `out` that failed.
    pub error: Option<io::Error>,
}

impl<'a, R: io::BufRead, W: Write + ?Sized> TeeBufRead<'a, R, W> {
    pub fn new(inner: &'a mut R, out: &'a mut W) -> TeeBufRead<'a, R, W> {
        TeeBufRead {
            inner,
            out,
            error: None,
        }
    }
}

impl<R: io::BufRead, W: Write + ?Sized> Read for TeeBufRead<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = io::BufRead::fill_buf(self)?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        io::BufRead::consume(self, n);
        Ok(n)
    }
}

impl<R: io::BufRead, W: Write + ?Sized> io::BufRead for TeeBufRead<'_, R, W> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        if let Ok(buffer) = self.inner.fill_buf() {
            let amount = amount.min(buffer.len());
            if let Err(error) = self.out.write_all(&buffer[..amount]) {
                self.error.get_or_insert(error);
            }
        }
        self.inner.consume(amount);
    }
}
