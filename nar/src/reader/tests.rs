//! Tests of the pull parser: one per malformed case, with its exact error.
use proptest::prelude::*;

use super::*;
use crate::test_support::{
    directory_nar, encode, events, string, strings, tree_events, tree_strategy, OwnedEvent,
};

/// The error for `nar` parsed to the end with `limits`.
fn error_with(nar: &[u8], limits: Limits) -> ReadError {
    events(nar, limits).expect_err("the NAR is malformed")
}

fn error(nar: &[u8]) -> ReadError {
    error_with(nar, Limits::default())
}

fn regular_nar(contents: &[u8]) -> Vec<u8> {
    let mut nar = strings(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
    nar.extend(string(contents));
    nar.extend(string(b")"));
    nar
}

fn symlink_nar(target: &[u8]) -> Vec<u8> {
    strings(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"symlink",
        b"target",
        target,
        b")",
    ])
}

#[test]
fn parses_nix_golden_tree() {
    let nar = include_bytes!("../../tests/fixtures/tree.nar");
    let parsed = events(nar, Limits::default()).expect("Nix's NAR parses");
    use OwnedEvent::*;
    let entry = |name: &str| Entry(name.as_bytes().to_vec());
    let regular = |executable, contents: &[u8]| Regular {
        executable,
        contents: contents.to_vec(),
    };
    let expected = vec![
        Directory,
        entry("B"),
        regular(false, b"12345678"),
        entry("a"),
        regular(true, b"hi\n"),
        entry("empty-dir"),
        Directory,
        EndDirectory,
        entry("l"),
        Symlink(b"a".to_vec()),
        entry("sub"),
        Directory,
        entry("abs"),
        Symlink(b"/nix/store/does-not-exist".to_vec()),
        entry("deeper"),
        Directory,
        entry("nothing"),
        regular(false, b""),
        EndDirectory,
        entry("e"),
        regular(false, b"x\n"),
        EndDirectory,
        EndDirectory,
    ];
    assert_eq!(parsed, expected);
}

#[test]
fn validates_every_golden_nar() {
    for nar in [
        &include_bytes!("../../tests/fixtures/empty.nar")[..],
        include_bytes!("../../tests/fixtures/hello.nar"),
        include_bytes!("../../tests/fixtures/symlink.nar"),
        include_bytes!("../../tests/fixtures/tree.nar"),
    ] {
        assert_eq!(
            crate::validate(nar, &Limits::default()).expect("valid"),
            nar.len() as u64
        );
    }
}

#[test]
fn rejects_bad_magic() {
    let mut nar = regular_nar(b"");
    nar[8..21].copy_from_slice(b"nix-archive-2");
    assert!(matches!(error(&nar), ReadError::BadMagic));
    assert!(matches!(
        error(b"\x1f\x8b\x08\0\0\0\0\0\0\0"),
        ReadError::BadMagic
    ));
}

#[test]
fn rejects_unexpected_token() {
    let nar = strings(&[b"nix-archive-1", b"(", b"typ"]);
    match error(&nar) {
        ReadError::UnexpectedToken {
            offset,
            expected,
            found,
        } => {
            assert_eq!((offset, expected, found.as_str()), (40, "'type'", "typ"));
        }
        other => panic!("wrong error {other:?}"),
    }
}

#[test]
fn rejects_unknown_node_type() {
    let nar = strings(&[b"nix-archive-1", b"(", b"type", b"fifo", b")"]);
    assert!(matches!(
        error(&nar),
        ReadError::UnexpectedToken { offset: 56, .. }
    ));
}

#[test]
fn rejects_regular_without_contents() {
    let nar = strings(&[b"nix-archive-1", b"(", b"type", b"regular", b")"]);
    assert!(matches!(
        error(&nar),
        ReadError::UnexpectedToken {
            expected: "'executable' or 'contents'",
            ..
        }
    ));
}

#[test]
fn rejects_executable_marker_with_a_value() {
    let nar = strings(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"regular",
        b"executable",
        b"1",
    ]);
    assert!(matches!(error(&nar), ReadError::UnexpectedToken { .. }));
}

#[test]
fn rejects_non_zero_padding() {
    let mut nar = regular_nar(b"a");
    // The magic (24 bytes), four 16-byte tokens and the size put the contents at 96.
    nar[97] = 1;
    assert!(matches!(
        error(&nar),
        ReadError::NonZeroPadding { offset: 97 }
    ));
}

#[test]
fn rejects_non_zero_padding_in_a_token() {
    let mut nar = regular_nar(b"");
    nar[22] = b'x'; // padding of "nix-archive-1", bytes 21..24
    assert!(matches!(
        error(&nar),
        ReadError::NonZeroPadding { offset: 21 }
    ));
}

#[test]
fn rejects_entries_out_of_order() {
    match error(&directory_nar(&[b"b", b"a"])) {
        ReadError::EntriesOutOfOrder { previous, name, .. } => {
            assert_eq!(
                (previous.as_slice(), name.as_slice()),
                (&b"b"[..], &b"a"[..])
            );
        }
        other => panic!("wrong error {other:?}"),
    }
}

#[test]
fn rejects_entries_in_case_insensitive_order() {
    // Byte order puts every upper-case letter first.
    let nar = directory_nar(&[b"a", b"B"]);
    assert!(matches!(error(&nar), ReadError::EntriesOutOfOrder { .. }));
}

#[test]
fn rejects_duplicate_entries() {
    let nar = directory_nar(&[b"a", b"a"]);
    assert!(matches!(error(&nar), ReadError::DuplicateEntry { .. }));
}

fn invalid_name_reason(name: &[u8]) -> InvalidNameReason {
    match error(&directory_nar(&[name])) {
        ReadError::InvalidName { reason, .. } => reason,
        other => panic!("wrong error {other:?}"),
    }
}

#[test]
fn rejects_empty_name() {
    assert_eq!(invalid_name_reason(b""), InvalidNameReason::Empty);
}

#[test]
fn rejects_dot_name() {
    assert_eq!(invalid_name_reason(b"."), InvalidNameReason::Dot);
}

#[test]
fn rejects_dot_dot_name() {
    assert_eq!(invalid_name_reason(b".."), InvalidNameReason::DotDot);
}

#[test]
fn rejects_name_with_slash() {
    assert_eq!(invalid_name_reason(b"../etc"), InvalidNameReason::Slash);
}

#[test]
fn rejects_name_with_nul() {
    assert_eq!(invalid_name_reason(b"a\0b"), InvalidNameReason::Nul);
}

#[test]
fn rejects_empty_symlink_target() {
    assert!(matches!(
        error(&symlink_nar(b"")),
        ReadError::InvalidTarget {
            reason: InvalidTargetReason::Empty,
            ..
        }
    ));
}

#[test]
fn rejects_symlink_target_with_nul() {
    assert!(matches!(
        error(&symlink_nar(b"a\0")),
        ReadError::InvalidTarget {
            reason: InvalidTargetReason::Nul,
            ..
        }
    ));
}

#[test]
fn rejects_truncated_input_at_every_byte() {
    let nar = include_bytes!("../../tests/fixtures/tree.nar");
    for len in 0..nar.len() {
        match error(&nar[..len]) {
            ReadError::UnexpectedEof { offset } => assert_eq!(offset, len as u64),
            // Cut inside the magic's length: it is not a NAR at all.
            ReadError::BadMagic if len < 8 => {}
            other => panic!("prefix of {len} bytes: wrong error {other:?}"),
        }
    }
}

#[test]
fn rejects_trailing_bytes() {
    let mut nar = regular_nar(b"x");
    let len = nar.len() as u64;
    nar.push(0);
    assert!(matches!(
        error(&nar),
        ReadError::TrailingBytes { offset } if offset == len
    ));
}

#[test]
fn rejects_token_too_long() {
    let mut nar = strings(&[b"nix-archive-1"]);
    nar.extend(u64::MAX.to_le_bytes());
    assert!(matches!(
        error(&nar),
        ReadError::TokenTooLong {
            offset: 24,
            len: u64::MAX
        }
    ));
}

#[test]
fn rejects_name_over_limit() {
    let limits = Limits {
        max_name_len: 3,
        ..Limits::default()
    };
    assert!(events(&directory_nar(&[b"abc"]), limits.clone()).is_ok());
    assert!(matches!(
        error_with(&directory_nar(&[b"abcd"]), limits),
        ReadError::NameTooLong {
            len: 4,
            limit: 3,
            ..
        }
    ));
}

#[test]
fn rejects_hostile_name_length_without_allocating() {
    let mut nar = strings(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"name",
    ]);
    nar.extend(u64::MAX.to_le_bytes());
    assert!(matches!(error(&nar), ReadError::NameTooLong { .. }));
}

#[test]
fn rejects_target_over_limit() {
    let limits = Limits {
        max_target_len: 2,
        ..Limits::default()
    };
    assert!(matches!(
        error_with(&symlink_nar(b"abc"), limits),
        ReadError::TargetTooLong {
            offset: 88,
            len: 3,
            limit: 2
        }
    ));
}

#[test]
fn rejects_nesting_over_limit() {
    let mut nested = strings(&[b"nix-archive-1"]);
    for _ in 0..3 {
        nested.extend(strings(&[
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"d",
            b"node",
        ]));
    }
    nested.extend(strings(&[b"(", b"type", b"directory", b")"]));
    for _ in 0..3 {
        nested.extend(strings(&[b")", b")"]));
    }
    let limits = |max_depth| Limits {
        max_depth,
        ..Limits::default()
    };
    assert!(events(&nested, limits(4)).is_ok());
    assert!(matches!(
        error_with(&nested, limits(3)),
        ReadError::TooDeep { limit: 3, .. }
    ));
}

#[test]
fn rejects_file_over_limit() {
    let limits = Limits {
        max_file_size: 4,
        ..Limits::default()
    };
    assert!(events(&regular_nar(b"1234"), limits.clone()).is_ok());
    assert!(matches!(
        error_with(&regular_nar(b"12345"), limits),
        ReadError::FileTooLarge {
            offset: 88,
            size: 5,
            limit: 4
        }
    ));
}

#[test]
fn huge_declared_file_is_streamed_not_allocated() {
    let mut nar = strings(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
    nar.extend((1u64 << 60).to_le_bytes());
    nar.extend(b"only a few bytes");
    assert!(matches!(
        error(&nar),
        ReadError::UnexpectedEof { offset } if offset == nar.len() as u64
    ));
}

#[test]
fn every_call_after_an_error_fails() {
    let nar = directory_nar(&[b"b", b"a"]);
    let mut reader = NarReader::new(&nar[..], Limits::default());
    while reader.next().is_ok() {}
    assert!(matches!(reader.next(), Err(ReadError::Failed)));
}

#[test]
fn stops_at_the_end_of_an_embedded_nar() {
    let mut stream = regular_nar(b"data");
    let nar_len = stream.len() as u64;
    stream.extend(b"rest of the stream");
    let mut reader = NarReader::new(&stream[..], Limits::default());
    assert_eq!(reader.read_to_end().expect("valid"), nar_len);
    assert_eq!(reader.into_inner(), b"rest of the stream");
}

#[test]
fn unread_contents_are_skipped() {
    let nar = include_bytes!("../../tests/fixtures/tree.nar");
    let mut reader = NarReader::new(&nar[..], Limits::default());
    let mut count = 0;
    while reader.next().expect("valid").is_some() {
        count += 1;
    }
    assert_eq!(count, 23);
    assert_eq!(reader.finish().expect("at end"), nar.len() as u64);
}

#[test]
fn offset_after_regular_is_nix_nar_offset() {
    // `nix nar ls --json -R tree.nar /` reports these narOffsets.
    let nar = include_bytes!("../../tests/fixtures/tree.nar");
    let mut reader = NarReader::new(&nar[..], Limits::default());
    let mut offsets = Vec::new();
    while let Some(event) = reader.next().expect("valid") {
        if let Event::Regular { .. } = event {
            offsets.push(reader.offset());
        }
    }
    assert_eq!(offsets, [232, 456, 1504, 1720]);
}

proptest! {
    #[test]
    fn parse_of_encoded_tree_gives_its_events(tree in tree_strategy()) {
        let nar = encode(&tree);
        prop_assert_eq!(events(&nar, Limits::default()).expect("valid"), tree_events(&tree));
    }

    #[test]
    fn parser_never_panics_on_mutated_nars(
        tree in tree_strategy(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut nar = encode(&tree);
        for (index, byte) in flips {
            let at = index.index(nar.len());
            nar[at] = byte;
        }
        let _ = events(&nar, Limits::default());
    }
}
