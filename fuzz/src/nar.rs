//! Fuzz body for the NAR parser.

use std::io::Read;

use arca_nar::{Event, Limits, NarEncoder, NarReader};

/// Small limits, so that the fuzzer reaches them with short inputs.
fn limits() -> Limits {
    Limits {
        max_name_len: 64,
        max_target_len: 128,
        max_depth: 16,
        max_file_size: 1 << 20,
    }
}

/// Never panics; a NAR the parser accepts is canonical, so re-encoding its events gives
/// back exactly the input.
pub fn fuzz_nar_parse(data: &[u8]) {
    let Some(reencoded) = reencode(data) else {
        return;
    };
    assert_eq!(reencoded, data, "an accepted NAR re-encodes differently");
    // The other entry points agree with the pull parser.
    assert_eq!(
        arca_nar::validate(data, &limits()).ok(),
        Some(data.len() as u64)
    );
    assert!(arca_nar::list(data, &limits()).is_ok());
}

/// Parses `data` with [`NarReader`] and feeds every event to a [`NarEncoder`]; `None` if
/// the parser rejects the input.
fn reencode(data: &[u8]) -> Option<Vec<u8>> {
    let mut reader = NarReader::new(data, limits());
    let mut encoder = NarEncoder::new(Vec::new());
    let mut contents = Vec::new();
    while let Some(event) = reader.next().ok()? {
        let encoded = match event {
            Event::Regular { executable, size } => {
                contents.clear();
                reader.contents().read_to_end(&mut contents).ok()?;
                assert_eq!(contents.len() as u64, size, "contents of the declared size");
                encoder.regular(executable, size, &mut &contents[..])
            }
            Event::Symlink { target } => encoder.symlink(target),
            Event::Directory => encoder.begin_directory(),
            Event::Entry { name } => encoder.entry(name),
            Event::EndDirectory => encoder.end_directory(),
        };
        // The parser only yields what the encoder accepts: names, order and targets are
        // checked by both.
        encoded.unwrap_or_else(|error| panic!("the encoder rejects a parsed event: {error}"));
    }
    reader.finish().ok()?;
    Some(
        encoder
            .finish()
            .expect("a NAR parsed to its end is complete"),
    )
}
