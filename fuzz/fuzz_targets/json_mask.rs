//! JSON response bodies masked as they stream: the same however they are cut, JSON stays JSON.
#![no_main]

use std::sync::{Arc, LazyLock};

use gatehouse_mask::Masker;

static MASKER: LazyLock<Option<Arc<Masker>>> = LazyLock::new(|| Masker::builtin().ok().map(Arc::new));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(masker) = MASKER.as_ref() {
        gatehouse_proto_http::fuzzing::json(data, masker);
    }
});
