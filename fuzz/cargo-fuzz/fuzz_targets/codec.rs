#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| midge_fuzz::codec::codec(data));
