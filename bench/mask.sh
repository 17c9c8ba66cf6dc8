#!/usr/bin/env bash
# How fast the gateway masks JSON bodies, against serde_json reading and writing the same
# document in the same run: time per document, MB/s and the ratio to that baseline, for the
# streamed masker with no detectors (tokenising only), with the email detector, and with every
# built-in detector. Builds the example in release mode first.
#
#   bench/mask.sh                    # 20 customers with an email address each (1.6 KB)
#   bench/mask.sh FILE [ROUNDS]      # any JSON document; ROUNDS defaults to 20000
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --quiet -p gatehouse-mask --example json_throughput -- "${1:--}" "${2:-20000}"
