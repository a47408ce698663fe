#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| arca_fuzz::daemon::fuzz_serve_replies(data));
