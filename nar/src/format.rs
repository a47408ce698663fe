//! The NAR wire format shared by the encoder and the parser: tokens, padding and the rules
//! for entry names and symlink targets.
//!
//! Every token is a "string": a u64 little-endian length, the bytes, then zero bytes up to
//! a multiple of 8.

/// First token of every NAR.
pub(crate) const MAGIC: &str = "nix-archive-1";
pub(crate) const OPEN: &str = "(";
pub(crate) const CLOSE: &str = ")";
pub(crate) const TYPE: &str = "type";
pub(crate) const REGULAR: &str = "regular";
pub(crate) const SYMLINK: &str = "symlink";
pub(crate) const DIRECTORY: &str = "directory";
pub(crate) const EXECUTABLE: &str = "executable";
pub(crate) const CONTENTS: &str = "contents";
pub(crate) const TARGET: &str = "target";
pub(crate) const ENTRY: &str = "entry";
pub(crate) const NAME: &str = "name";
pub(crate) const NODE: &str = "node";

/// Length of the longest fixed token (`nix-archive-1`). A token whose declared length is
/// larger cannot be valid, so the parser rejects it without reading its bytes.
pub(crate) const MAX_TOKEN_LEN: u64 = 16;

/// Number of zero bytes that follow a string of `len` bytes.
pub(crate) fn padding_len(len: u64) -> usize {
    // The result is in 0..8, so the cast cannot truncate.
    ((8 - len % 8) % 8) as usize
}

/// Why a directory entry name is not allowed in a NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidNameReason {
    /// The name is the empty string.
    Empty,
    /// The name is `.`.
    Dot,
    /// The name is `..`.
    DotDot,
    /// The name contains `/`.
    Slash,
    /// The name contains a NUL byte.
    Nul,
}

impl std::fmt::Display for InvalidNameReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Empty => "is empty",
            Self::Dot => "is '.'",
            Self::DotDot => "is '..'",
            Self::Slash => "contains '/'",
            Self::Nul => "contains a NUL byte",
        })
    }
}

/// Checks the rules that keep a restored NAR inside its target directory: a name is one
/// path component that neither stays in nor leaves its directory.
pub(crate) fn check_name(name: &[u8]) -> Result<(), InvalidNameReason> {
    match name {
        b"" => Err(InvalidNameReason::Empty),
        b"." => Err(InvalidNameReason::Dot),
        b".." => Err(InvalidNameReason::DotDot),
        _ if name.contains(&b'/') => Err(InvalidNameReason::Slash),
        _ if name.contains(&0) => Err(InvalidNameReason::Nul),
        _ => Ok(()),
    }
}

/// Why a symlink target is not allowed in a NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidTargetReason {
    /// The target is the empty string, which no Unix file system can store.
    Empty,
    /// The target contains a NUL byte, which cannot be passed to `symlink(2)`.
    Nul,
}

impl std::fmt::Display for InvalidTargetReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Empty => "is empty",
            Self::Nul => "contains a NUL byte",
        })
    }
}

/// Checks that a symlink target could have come from (and can go back to) a file system.
pub(crate) fn check_target(target: &[u8]) -> Result<(), InvalidTargetReason> {
    if target.is_empty() {
        Err(InvalidTargetReason::Empty)
    } else if target.contains(&0) {
        Err(InvalidTargetReason::Nul)
    } else {
        Ok(())
    }
}

/// Renders bytes from a NAR for an error message, escaping what is not printable UTF-8.
pub(crate) fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_rounds_up_to_eight() {
        let pads: Vec<usize> = (0..=9).map(padding_len).collect();
        assert_eq!(pads, [0, 7, 6, 5, 4, 3, 2, 1, 0, 7]);
    }

    #[test]
    fn name_rules_match_nix() {
        assert_eq!(check_name(b""), Err(InvalidNameReason::Empty));
        assert_eq!(check_name(b"."), Err(InvalidNameReason::Dot));
        assert_eq!(check_name(b".."), Err(InvalidNameReason::DotDot));
        assert_eq!(check_name(b"a/b"), Err(InvalidNameReason::Slash));
        assert_eq!(check_name(b"a\0b"), Err(InvalidNameReason::Nul));
        assert_eq!(check_name(b"..."), Ok(()));
        assert_eq!(check_name(b".hidden"), Ok(()));
    }

    #[test]
    fn longest_token_fits_the_token_limit() {
        let tokens = [
            MAGIC, OPEN, CLOSE, TYPE, REGULAR, SYMLINK, DIRECTORY, EXECUTABLE, CONTENTS, TARGET,
            ENTRY, NAME, NODE,
        ];
        assert!(tokens.iter().all(|t| t.len() as u64 <= MAX_TOKEN_LEN));
        assert_eq!(MAGIC.len(), 13);
    }
}
