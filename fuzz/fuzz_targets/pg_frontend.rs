//! What a PostgreSQL caller sends: startup packet and messages, decoded as the relay does.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gatehouse_proto_postgres::fuzzing::frontend(data);
});
