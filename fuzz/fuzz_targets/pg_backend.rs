//! What a PostgreSQL server sends: frames, accessors, and the masking of values in them.
#![no_main]

use std::sync::LazyLock;

use gatehouse_mask::Masker;

static MASKER: LazyLock<Option<Masker>> = LazyLock::new(|| Masker::builtin().ok());

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(masker) = MASKER.as_ref() {
        gatehouse_proto_postgres::fuzzing::backend(data, masker);
    }
});
