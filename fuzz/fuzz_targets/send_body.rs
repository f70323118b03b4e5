//! A send body, through the extractor and the whole server: accepted or a 4xx JSON error.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzz::send_body(data));
