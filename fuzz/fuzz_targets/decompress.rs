#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| arca_fuzz::narinfo::fuzz_decompress(data));
