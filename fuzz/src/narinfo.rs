//! Fuzz body for the binary cache formats: `.narinfo` and `nix-cache-info`.

use arca_cache::{CacheInfo, NarInfo};
use arca_store_core::StoreDir;

/// Never panics; a `.narinfo` that parses prints to a text that parses to the same value
/// and prints identically again, and its signatures can be checked.
pub fn fuzz_narinfo_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let store_dir = StoreDir::default();
    let _ = CacheInfo::parse(text, "/nix/store", "fuzz");
    let Ok(narinfo) = NarInfo::parse(&store_dir, text, "fuzz") else {
        return;
    };
    let printed = narinfo.to_text(&store_dir);
    let reparsed = NarInfo::parse(&store_dir, &printed, "printed")
        .unwrap_or_else(|e| panic!("printed narinfo does not parse: {e}\n{printed}"));
    assert_eq!(reparsed, narinfo, "printed narinfo parses differently");
    assert_eq!(
        reparsed.to_text(&store_dir),
        printed,
        "printing is not stable"
    );
    let _ = narinfo.check_signatures(&store_dir, &[]);
}

/// The decompressor front end: the first byte picks the method a `.narinfo` claims, the
/// rest is the stream. Never panics and never reads without bound: output is capped and a
/// bad stream is an error.
pub fn fuzz_decompress(data: &[u8]) {
    use arca_cache::Compression;
    use std::io::Read;
    let Some((&method, stream)) = data.split_first() else {
        return;
    };
    let methods = Compression::ALL;
    let method = methods[usize::from(method) % methods.len()];
    let Ok(reader) = arca_cache::decompress(method, stream) else {
        return;
    };
    let mut sink = Vec::new();
    let _ = reader.take(16 << 20).read_to_end(&mut sink);
}
