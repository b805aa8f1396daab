#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wstream_fuzz::config(data));
