#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) with cargo fuzz (nightly), starting from
# the captured seeds (fuzz/seeds) and the corpus earlier runs grew (fuzz/corpus). A crash stops
# the run and leaves its input in fuzz/artifacts/TARGET/: copy it to fuzz/regressions/TARGET/
# (the test suite replays every file there, see crates/proto-postgres/tests/fuzz_inputs.rs) and
# fix what it found. See docs/security.md.
#
#   fuzz/run.sh            # 60 s per target
#   fuzz/run.sh 600 mask   # 10 minutes, one target
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=(pg_frontend pg_backend sql_classify mask http_path json_mask)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    echo "== $t for ${SECONDS_EACH}s"
    cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 \
        -max_len=65536 2>&1 | grep -E '^(#[0-9]+\s+DONE|Done|==[0-9]+==|SUMMARY|artifact_prefix|Test unit written)' || true
    if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
        echo "CRASH in $t: $(ls "artifacts/$t"/crash-*)" >&2
        exit 1
    fi
done
echo "no crash"
