//! Every fuzz seed (captured client traffic) and every input a fuzz run ever crashed on
//! (`fuzz/regressions/TARGET/`) replayed through the fuzz targets' entry points, in the normal
//! test suite: a fixed crash stays fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use gatehouse_mask::Masker;
use gatehouse_proto_postgres::fuzzing;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            out.push((path, bytes));
        }
    }
    out
}

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
        let found = inputs(target);
        assert!(!found.is_empty(), "no seeds for {target} in fuzz/seeds/{target}");
        for (path, bytes) in found {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&bytes)));
            assert!(result.is_ok(), "{target} fails on {}", path.display());
            n += 1;
        }
    }
    assert!(n > 20, "{n} inputs replayed");
}
