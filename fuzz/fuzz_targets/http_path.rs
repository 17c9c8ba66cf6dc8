//! HTTP request paths: routing and normalisation never panic, and what they produce is normal.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gatehouse_proto_http::fuzzing::path(data);
});
