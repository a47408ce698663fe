//! Nix's case hack, for file systems that ignore case (macOS by default).
//!
//! Such a file system cannot hold both `Foo` and `foo` in one directory. When restoring
//! with the case hack, a name that collides case-insensitively with an earlier sibling is
//! stored as `foo~nix~case~hack~1` (then `~2`, ...); when dumping with it, everything from
//! the suffix on is stripped again, so the round trip gives back the original NAR. Off by
//! default, as in Nix on Linux.

use std::borrow::Cow;
use std::collections::hash_map::{Entry, HashMap};

/// The suffix Nix appends, followed by a counter.
pub const CASE_HACK_SUFFIX: &[u8] = b"~nix~case~hack~";

/// The name a dumped entry has in the NAR: `name` cut before the first case-hack suffix,
/// as Nix does.
pub(crate) fn strip(name: &[u8]) -> &[u8] {
    name.windows(CASE_HACK_SUFFIX.len())
        .position(|window| window == CASE_HACK_SUFFIX)
        .map_or(name, |position| &name[..position])
}

/// Gives the entries of one directory, in NAR order, the names they get on disk.
#[derive(Debug, Default)]
pub(crate) struct CaseHackNames {
    /// Lower-cased names seen so far, with how many later names collided with each.
    seen: HashMap<Vec<u8>, u64>,
}

impl CaseHackNames {
    /// The on-disk name for the next entry `name`: `name` itself unless an earlier
    /// sibling has the same name up to ASCII case (Nix compares with C `tolower`).
    pub(crate) fn disk_name<'a>(&mut self, name: &'a [u8]) -> Cow<'a, [u8]> {
        match self.seen.entry(name.to_ascii_lowercase()) {
            Entry::Vacant(vacant) => {
                vacant.insert(0);
                Cow::Borrowed(name)
            }
            Entry::Occupied(mut occupied) => {
                let count = occupied.get_mut();
                *count += 1;
                let mut disk_name = name.to_vec();
                disk_name.extend_from_slice(CASE_HACK_SUFFIX);
                disk_name.extend_from_slice(count.to_string().as_bytes());
                Cow::Owned(disk_name)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colliding_names_get_numbered_suffixes() {
        let mut names = CaseHackNames::default();
        let disk: Vec<Vec<u8>> = [&b"FOO"[..], b"Foo", b"bar", b"foo"]
            .iter()
            .map(|name| names.disk_name(name).into_owned())
            .collect();
        assert_eq!(
            disk,
            [
                &b"FOO"[..],
                b"Foo~nix~case~hack~1",
                b"bar",
                b"foo~nix~case~hack~2"
            ]
        );
    }

    #[test]
    fn strip_cuts_at_the_first_suffix() {
        assert_eq!(strip(b"foo~nix~case~hack~1"), b"foo");
        assert_eq!(strip(b"foo~nix~case~hack~1~nix~case~hack~2"), b"foo");
        assert_eq!(strip(b"foo~nix~case~hack"), b"foo~nix~case~hack");
        assert_eq!(strip(b"plain"), b"plain");
    }
}
