//! A WebSocket client frame: decoded, or answered with a JSON error frame.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzz::ws_frame(data));
