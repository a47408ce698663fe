//! Hashing a NAR while it is unpacked.

use std::io::{self, BufRead, Read};

use arca_store_core::{Hash, HashAlgo, Hasher};

/// Wraps a `BufRead`, hashing (sha256) and counting exactly the bytes its user consumes,
/// whether through `read` or through `fill_buf`/`consume`: so the NAR parser reading a
/// NAR embedded in a longer stream hashes the NAR and nothing after it.
pub struct HashingReader<'a, R> {
    inner: &'a mut R,
    hasher: Hasher,
    count: u64,
}

impl<'a, R: BufRead> HashingReader<'a, R> {
    pub fn new(inner: &'a mut R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(HashAlgo::Sha256),
            count: 0,
        }
    }

    /// The sha256 and the number of bytes consumed so far.
    pub fn result(&self) -> (Hash, u64) {
        (self.hasher.clone().finish(), self.count)
    }
}

impl<R: BufRead> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for HashingReader<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        // `fill_buf` returns the same buffer again without reading, so these are exactly
        // the bytes being consumed.
        if let Ok(buffer) = self.inner.fill_buf() {
            let taken = amount.min(buffer.len());
            self.hasher.update(&buffer[..taken]);
            self.count += taken as u64;
        }
        self.inner.consume(amount);
    }
}
