//! Nix's base-32 encoding ("nix-base32").
//!
//! Not RFC 4648: the alphabet omits `e`, `o`, `u` and `t` (to avoid accidental words), and
//! the digits are emitted from the *last* 5-bit group to the first, reading the bytes as
//! one little-endian number. Store path hash parts and `sha256:…` hashes in `.narinfo`
//! files use it.

use thiserror::Error;

/// The 32 characters of nix-base32, in digit order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Maps a byte to its digit value, or 0xff when it is not in [`ALPHABET`].
const DECODE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut digit = 0;
    while digit < 32 {
        table[ALPHABET[digit] as usize] = digit as u8;
        digit += 1;
    }
    table
};

/// Why a string is not valid nix-base32 for the expected length.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Base32Error {
    #[error("invalid nix-base32 character {character:?} at position {position}")]
    InvalidCharacter { character: char, position: usize },
    #[error("nix-base32 string has {actual} characters, expected {expected}")]
    WrongLength { expected: usize, actual: usize },
    #[error("nix-base32 string encodes bits beyond the end of a {bytes}-byte value")]
    NonZeroPadding { bytes: usize },
}

/// The number of characters that encode `bytes` bytes: `ceil(8 * bytes / 5)`.
pub const fn encoded_len(bytes: usize) -> usize {
    (bytes * 8).div_ceil(5)
}

/// Returns true when `byte` is one of the 32 nix-base32 characters.
pub fn is_base32_char(byte: u8) -> bool {
    DECODE[byte as usize] != 0xff
}

/// Encodes `bytes` as nix-base32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for k in (0..len).rev() {
        let bit = k * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = u16::from(bytes[i]) >> j;
        let high = bytes.get(i + 1).map_or(0, |&b| u16::from(b) << (8 - j));
        out.push(char::from(ALPHABET[usize::from((low | high) & 31)]));
    }
    out
}

/// Decodes a nix-base32 string into exactly `bytes` bytes.
pub fn decode(text: &str, bytes: usize) -> Result<Vec<u8>, Base32Error> {
    let input = text.as_bytes();
    let expected = encoded_len(bytes);
    if input.len() != expected {
        return Err(Base32Error::WrongLength {
            expected,
            actual: input.len(),
        });
    }
    let mut out = vec![0u8; bytes];
    // The first character is the most significant digit (k = len-1).
    for (position, &character) in input.iter().enumerate() {
        let digit = DECODE[usize::from(character)];
        if digit == 0xff {
            return Err(Base32Error::InvalidCharacter {
                character: char::from(character),
                position,
            });
        }
        let bit = (expected - 1 - position) * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= digit << j;
        let carry = u16::from(digit) >> (8 - j);
        if carry != 0 {
            match out.get_mut(i + 1) {
                Some(next) => *next |= carry as u8,
                // Nix rejects a digit whose high bits would fall off the end.
                None => return Err(Base32Error::NonZeroPadding { bytes }),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_known_sha256_of_empty_string() {
        // `nix-hash --type sha256 --to-base32` of sha256("")
        let digest = [
            0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f,
            0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b,
            0x78, 0x52, 0xb8, 0x55,
        ];
        assert_eq!(
            encode(&digest),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
    }

    #[test]
    fn encoded_length_matches_nix() {
        assert_eq!(encoded_len(16), 26);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
    }

    #[test]
    fn rejects_letters_outside_the_alphabet() {
        let text = "e".repeat(32);
        assert_eq!(
            decode(&text, 20),
            Err(Base32Error::InvalidCharacter {
                character: 'e',
                position: 0
            })
        );
    }

    #[test]
    fn rejects_bits_beyond_the_value() {
        // 52 digits carry 260 bits for a 256-bit value: the first digit may only be 0..=15.
        let text = format!("z{}", "0".repeat(51));
        assert_eq!(
            decode(&text, 32),
            Err(Base32Error::NonZeroPadding { bytes: 32 })
        );
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let text = encode(&bytes);
            prop_assert_eq!(text.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&text, bytes.len()).unwrap(), bytes);
        }
    }
}
