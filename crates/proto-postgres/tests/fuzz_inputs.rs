//! Every fuzz seed (captured client traffic) and every input a fuzz run ever crashed on
//! (`fuzz/regressions/TARGET/`) replayed through the fuzz targets' entry points, in the normal
//! test suite: a fixed crash stays fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_mask::Masker;
use gatehouse_proto_postgres::fuzzing;

#[test]
fn every_seed_and_regression_input_passes_every_target() {
    let masker = Masker::builtin().unwrap();
    let rules = gatehouse_sql::Rules::default();
    let mut n = 0;
    for (target, run) in [
        ("pg_frontend", &(|d: &[u8]| fuzzing::frontend(d)) as &dyn Fn(&[u8])),
        ("pg_backend", &|d: &[u8]| fuzzing::backend(d, &masker)),
        ("sql_classify", &|d: &[u8]| fuzzing::sql(d, &rules)),
        ("mask", &|d: &[u8]| fuzzing::mask(d, &masker)),
    ] {
        let found = gatehouse_testkit::fuzz::inputs(target).unwrap();
        assert!(!found.is_empty(), "no seeds for {target} in fuzz/seeds/{target}");
        for (path, bytes) in found {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&bytes)));
            assert!(result.is_ok(), "{target} fails on {}", path.display());
            n += 1;
        }
    }
    assert!(n > 20, "{n} inputs replayed");
}
