//! The inputs the suite replays through each fuzz target: its seeds (`fuzz/seeds/TARGET/`) and
//! every input a fuzz run ever crashed on (`fuzz/regressions/TARGET/`).

use std::path::PathBuf;

/// Every seed and regression input of `target`, with its path.
pub fn inputs(target: &str) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries {
            let path = e?.path();
            let bytes = std::fs::read(&path)?;
            out.push((path, bytes));
        }
    }
    Ok(out)
}
