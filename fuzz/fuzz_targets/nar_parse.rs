#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| arca_fuzz::nar::fuzz_nar_parse(data));
