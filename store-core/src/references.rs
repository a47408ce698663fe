//! Finding which store paths a file (or NAR) refers to.
//!
//! A store path is referred to when its 32-character hash part occurs anywhere in the
//! bytes. Like Nix, the scanner looks at every 32-byte window that consists only of
//! nix-base32 characters and looks it up among the candidates, in one pass whatever their
//! number. Windows are checked from their last byte backwards, so a byte outside the
//! alphabet lets the scan jump past it at once; bytes already known to be in the alphabet
//! are not looked at again. Input arrives in chunks of any size ([`ReferenceScanner`] is an
//! [`io::Write`] sink); the last 31 bytes are kept so that hashes split across chunks are
//! found.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{self, Read, Write};

use crate::base32::ALPHABET;
use crate::store_path::{StorePath, HASH_PART_LEN};

/// `IS_BASE32[b]` says whether byte `b` is a nix-base32 character; a table so that the
/// hot loop is one load per byte.
const IS_BASE32: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = true;
        i += 1;
    }
    table
};

/// A candidate that is not a 32-character nix-base32 hash part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a store path hash part (32 nix-base32 characters)")]
pub struct InvalidHashPart(pub String);

type HashPart = [u8; HASH_PART_LEN];

/// Bits in the prefilter: a window's first 8 bytes pick one; only windows whose bit is set
/// are looked up in the hash set, which keeps long runs of base32 text cheap.
const PREFILTER_BITS: usize = 1 << 16;

/// Streaming search for store path hash parts in a byte stream.
///
/// ```
/// use arca_store_core::references::ReferenceScanner;
/// use std::io::Write;
///
/// let hash = "7vbhapryivmmm40ll919flaxy8ab49ir";
/// let mut scanner = ReferenceScanner::new([hash]).unwrap();
/// scanner.write_all(b"#!/nix/store/7vbhapryivmm").unwrap();
/// scanner.write_all(b"m40ll919flaxy8ab49ir-dep/bin/sh\n").unwrap();
/// assert!(scanner.found().contains(hash));
/// ```
#[derive(Debug, Clone)]
pub struct ReferenceScanner {
    candidates: HashSet<HashPart>,
    prefilter: Vec<u64>,
    found: BTreeSet<String>,
    /// The last (up to) 31 bytes seen, for windows that span two chunks.
    tail: Vec<u8>,
}

impl ReferenceScanner {
    /// A scanner looking for these hash parts.
    pub fn new<I, S>(hash_parts: I) -> Result<ReferenceScanner, InvalidHashPart>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut candidates = HashSet::new();
        let mut prefilter = vec![0u64; PREFILTER_BITS / 64];
        for part in hash_parts {
            let part = part.as_ref();
            let bytes: HashPart = part
                .as_bytes()
                .try_into()
                .ok()
                .filter(|bytes: &HashPart| bytes.iter().all(|&b| IS_BASE32[usize::from(b)]))
                .ok_or_else(|| InvalidHashPart(part.to_owned()))?;
            let bit = prefilter_bit(&bytes);
            prefilter[bit / 64] |= 1 << (bit % 64);
            candidates.insert(bytes);
        }
        Ok(ReferenceScanner {
            candidates,
            prefilter,
            found: BTreeSet::new(),
            tail: Vec::with_capacity(2 * HASH_PART_LEN),
        })
    }

    /// Feeds the next chunk of the stream.
    pub fn update(&mut self, data: &[u8]) {
        if self.candidates.is_empty() {
            return;
        }
        if !self.tail.is_empty() {
            // Windows that start in the previous data and end in this chunk.
            let old_len = self.tail.len();
            let head = &data[..data.len().min(HASH_PART_LEN - 1)];
            self.tail.extend_from_slice(head);
            let joined = std::mem::take(&mut self.tail);
            self.scan_block(&joined);
            self.tail = joined;
            self.tail.truncate(old_len);
        }
        self.scan_block(data);
        // Keep the last 31 bytes of everything seen so far.
        if data.len() >= HASH_PART_LEN - 1 {
            self.tail.clear();
            self.tail
                .extend_from_slice(&data[data.len() - (HASH_PART_LEN - 1)..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(HASH_PART_LEN - 1);
            self.tail.drain(..excess);
        }
    }

    /// The hash parts found so far.
    pub fn found(&self) -> &BTreeSet<String> {
        &self.found
    }

    /// Ends the scan, returning the hash parts found.
    pub fn finish(self) -> BTreeSet<String> {
        self.found
    }

    /// Scans `reader` to its end.
    pub fn scan(&mut self, reader: &mut impl Read) -> io::Result<()> {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(n) => self.update(&buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    fn scan_block(&mut self, block: &[u8]) {
        let mut i = 0;
        // Bytes in block[i..good_until] are known to be nix-base32.
        let mut good_until = 0;
        while i + HASH_PART_LEN <= block.len() {
            let end = i + HASH_PART_LEN;
            let checked_from = good_until.max(i);
            if let Some(bad) = block[checked_from..end]
                .iter()
                .rposition(|&b| !IS_BASE32[usize::from(b)])
            {
                // No window containing the bad byte can match: jump past it. What lies
                // between it and `end` was checked and is base32.
                let bad = checked_from + bad;
                i = bad + 1;
                good_until = end;
                continue;
            }
            good_until = end;
            let window: &HashPart = match block[i..end].try_into() {
                Ok(window) => window,
                Err(_) => unreachable!("the window is exactly HASH_PART_LEN bytes"),
            };
            let bit = prefilter_bit(window);
            if self.prefilter[bit / 64] & (1 << (bit % 64)) != 0 && self.candidates.remove(window) {
                // Found hashes are taken out of the candidates, as Nix does, so that a
                // file full of one reference costs no more lookups than one without.
                self.found
                    .insert(String::from_utf8_lossy(window).into_owned());
                if self.candidates.is_empty() {
                    return;
                }
            }
            i += 1;
        }
    }
}

fn prefilter_bit(window: &HashPart) -> usize {
    let mut first = [0u8; 8];
    first.copy_from_slice(&window[..8]);
    let mixed = u64::from_le_bytes(first).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> (64 - 16)) as usize
}

impl Write for ReferenceScanner {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Which of `candidates` the bytes from `reader` refer to (by their hash parts).
pub fn scan_for_references<'a>(
    reader: &mut impl Read,
    candidates: impl IntoIterator<Item = &'a StorePath>,
) -> io::Result<BTreeSet<StorePath>> {
    let mut by_hash: HashMap<&str, Vec<&StorePath>> = HashMap::new();
    for path in candidates {
        by_hash.entry(path.hash_part()).or_default().push(path);
    }
    let mut scanner = match ReferenceScanner::new(by_hash.keys()) {
        Ok(scanner) => scanner,
        Err(InvalidHashPart(part)) => {
            unreachable!("a StorePath's hash part '{part}' is valid nix-base32")
        }
    };
    scanner.scan(reader)?;
    Ok(scanner
        .finish()
        .iter()
        .flat_map(|hash| by_hash.get(hash.as_str()).into_iter().flatten())
        .map(|path| (*path).clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: &str = "7vbhapryivmmm40ll919flaxy8ab49ir";
    const B: &str = "c07nbxrvclvj73ffp56ch6qnjpp7g1qs";

    fn scan_chunks(candidates: &[&str], chunks: &[&[u8]]) -> BTreeSet<String> {
        let mut scanner = ReferenceScanner::new(candidates).unwrap();
        for chunk in chunks {
            scanner.write_all(chunk).unwrap();
        }
        scanner.finish()
    }

    /// The obvious search: every candidate, every offset.
    fn naive(candidates: &[String], data: &[u8]) -> BTreeSet<String> {
        candidates
            .iter()
            .filter(|c| data.windows(HASH_PART_LEN).any(|w| w == c.as_bytes()))
            .cloned()
            .collect()
    }

    #[test]
    fn finds_hashes_inside_store_paths_and_text() {
        let data = format!("#!/nix/store/{A}-bash/bin/sh\nexec {B}");
        let found = scan_chunks(&[A, B], &[data.as_bytes()]);
        assert_eq!(found, BTreeSet::from([A.to_owned(), B.to_owned()]));
    }

    #[test]
    fn finds_a_hash_split_byte_by_byte() {
        let data = format!("xx{A}yy");
        let chunks: Vec<&[u8]> = data.as_bytes().chunks(1).collect();
        assert_eq!(scan_chunks(&[A], &chunks), BTreeSet::from([A.to_owned()]));
    }

    #[test]
    fn finds_a_hash_inside_a_longer_base32_run() {
        let data = format!("0000{A}1111");
        assert_eq!(
            scan_chunks(&[A], &[data.as_bytes()]),
            BTreeSet::from([A.to_owned()])
        );
    }

    #[test]
    fn ignores_partial_and_absent_hashes() {
        let data = format!("{} {}", &A[..31], &B[1..]);
        assert!(scan_chunks(&[A, B], &[data.as_bytes()]).is_empty());
    }

    #[test]
    fn rejects_candidates_that_are_not_hash_parts() {
        assert_eq!(
            ReferenceScanner::new(["e".repeat(32)]).unwrap_err(),
            InvalidHashPart("e".repeat(32))
        );
        assert!(ReferenceScanner::new([&A[1..]]).is_err());
    }

    #[test]
    fn maps_found_hashes_back_to_store_paths() {
        let a = StorePath::from_base_name(&format!("{A}-a")).unwrap();
        let b = StorePath::from_base_name(&format!("{B}-b")).unwrap();
        let data = format!("/nix/store/{A}-renamed");
        let found = scan_for_references(&mut data.as_bytes(), [&a, &b]).unwrap();
        assert_eq!(found, BTreeSet::from([a]));
    }

    fn arb_hash_part() -> impl Strategy<Value = String> {
        "[0-9a-df-np-sv-z]{32}"
    }

    /// Data made of candidate hashes, pieces of them, base32 noise and other bytes.
    fn arb_data(candidates: Vec<String>) -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            prop::sample::select(candidates.clone()).prop_map(String::into_bytes),
            (prop::sample::select(candidates), 1..32usize)
                .prop_map(|(c, n)| c.as_bytes()[..n].to_vec()),
            "[0-9a-z]{0,40}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..40),
        ];
        prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
    }

    fn arb_case() -> impl Strategy<Value = (Vec<String>, Vec<u8>, Vec<usize>)> {
        prop::collection::vec(arb_hash_part(), 1..5).prop_flat_map(|candidates| {
            (
                Just(candidates.clone()),
                arb_data(candidates),
                prop::collection::vec(0..80usize, 0..20),
            )
        })
    }

    proptest! {
        #[test]
        fn any_chunking_finds_what_a_naive_search_finds(
            (candidates, data, cuts) in arb_case()
        ) {
            let expected = naive(&candidates, &data);
            let refs: Vec<&str> = candidates.iter().map(String::as_str).collect();
            prop_assert_eq!(&scan_chunks(&refs, &[&data]), &expected);
            let mut chunks = Vec::new();
            let mut rest = &data[..];
            for cut in cuts {
                let (chunk, tail) = rest.split_at(cut.min(rest.len()));
                chunks.push(chunk);
                rest = tail;
            }
            chunks.push(rest);
            prop_assert_eq!(&scan_chunks(&refs, &chunks), &expected);
        }
    }
}

/// Hashes a stream modulo one store path hash part (Nix's `HashModuloSink`): every
/// occurrence of `modulus` is hashed as 32 zero bytes, and after the stream, for each
/// occurrence in order, `|<offset>` is hashed. This is how a floating content-addressed
/// output that refers to itself gets a hash that does not depend on the temporary path
/// it was built at.
pub struct HashModuloWriter {
    hasher: crate::hash::Hasher,
    modulus: [u8; 32],
    /// The last bytes seen that could start an occurrence cut by the chunk boundary.
    carry: Vec<u8>,
    /// Bytes handed to the hasher so far.
    offset: u64,
    matches: Vec<u64>,
}

impl HashModuloWriter {
    /// `modulus` is a store path's hash part (32 characters).
    pub fn new(algo: crate::hash::HashAlgo, modulus: &str) -> Option<HashModuloWriter> {
        let modulus: [u8; 32] = modulus.as_bytes().try_into().ok()?;
        Some(HashModuloWriter {
            hasher: crate::hash::Hasher::new(algo),
            modulus,
            carry: Vec::with_capacity(64),
            offset: 0,
            matches: Vec::new(),
        })
    }

    fn push(&mut self, data: &[u8]) {
        let mut buffer = std::mem::take(&mut self.carry);
        buffer.extend_from_slice(data);
        let mut start = 0;
        while let Some(found) = buffer[start..]
            .windows(32)
            .position(|window| window == self.modulus)
        {
            let at = start + found;
            self.matches.push(self.offset + at as u64);
            buffer[at..at + 32].fill(0);
            start = at + 32;
        }
        let keep = buffer.len().min(31);
        let done = buffer.len() - keep;
        self.hasher.update(&buffer[..done]);
        self.offset += done as u64;
        self.carry = buffer.split_off(done);
    }

    /// The hash, and the offsets at which `modulus` occurred.
    pub fn finish(mut self) -> (crate::hash::Hash, Vec<u64>) {
        let carry = std::mem::take(&mut self.carry);
        self.hasher.update(&carry);
        for offset in &self.matches {
            self.hasher.update(format!("|{offset}").as_bytes());
        }
        (self.hasher.finish(), self.matches)
    }
}

impl std::io::Write for HashModuloWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.push(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod hash_modulo_tests {
    use super::HashModuloWriter;
    use crate::hash::{Hash, HashAlgo};
    use std::io::Write;

    const MODULUS: &str = "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q";

    fn modulo(chunks: &[&[u8]]) -> (Hash, Vec<u64>) {
        let mut writer = HashModuloWriter::new(HashAlgo::Sha256, MODULUS).unwrap();
        for chunk in chunks {
            writer.write_all(chunk).unwrap();
        }
        writer.finish()
    }

    #[test]
    fn occurrences_hash_as_zeros_plus_their_offsets_whatever_the_chunking() {
        let text = format!("ab{MODULUS}cd{MODULUS}");
        let mut expected = b"ab".to_vec();
        expected.extend([0u8; 32]);
        expected.extend(b"cd");
        expected.extend([0u8; 32]);
        expected.extend(b"|2|36");
        let want = Hash::digest(HashAlgo::Sha256, &expected);
        assert_eq!(modulo(&[text.as_bytes()]), (want.clone(), vec![2, 36]));
        for cut in 0..text.len() {
            let (a, b) = text.as_bytes().split_at(cut);
            assert_eq!(modulo(&[a, b]).0, want, "cut at {cut}");
        }
        let plain = Hash::digest(HashAlgo::Sha256, b"no occurrence");
        assert_eq!(modulo(&[b"no occ", b"urrence"]), (plain, vec![]));
    }
}
