#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| arca_fuzz::drv::fuzz_drv_parse(data));
