#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| midge_fuzz::broker::broker(data));
