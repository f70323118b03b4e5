//! A query string, through `Params` and every route that reads one: never a 5xx.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(query) = std::str::from_utf8(data) {
        herald::fuzz::query(query);
    }
});
