//! The SQL classifier (PostgreSQL's own parser underneath) and the COPY reader, on any text.
#![no_main]

use std::sync::LazyLock;

static RULES: LazyLock<gatehouse_sql::Rules> = LazyLock::new(gatehouse_sql::Rules::default);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gatehouse_proto_postgres::fuzzing::sql(data, &RULES);
});
