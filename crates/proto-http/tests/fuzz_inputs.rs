//! Every fuzz seed and every input a fuzz run ever crashed on (`fuzz/regressions/TARGET/`),
//! replayed through the HTTP fuzz targets' entry points in the normal test suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use gatehouse_mask::Masker;
use gatehouse_proto_http::fuzzing;

#[test]
fn every_seed_and_regression_input_passes_the_http_targets() {
    let masker = Arc::new(Masker::builtin().unwrap());
    for (target, run) in [
        ("http_path", &(|d: &[u8]| fuzzing::path(d)) as &dyn Fn(&[u8])),
        ("json_mask", &|d: &[u8]| fuzzing::json(d, &masker)),
    ] {
        let found = gatehouse_testkit::fuzz::inputs(target).unwrap();
        assert!(!found.is_empty(), "no seeds for {target} in fuzz/seeds/{target}");
        for (path, bytes) in found {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&bytes)));
            assert!(result.is_ok(), "{target} fails on {}", path.display());
        }
    }
}
