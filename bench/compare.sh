#!/usr/bin/env bash
# Two builds of `lambda` side by side, in one run on this machine: the
# freshness and serving benchmarks alternate between them (old, new, old,
# new), so both see the same machine state; compare the two columns of each
# round, not figures from different days.
#
# Usage: bash bench/compare.sh OLD_BIN NEW_BIN [ROUNDS]
#   FRESH_RATES=100,5000,20000 FRESH_SECONDS=30 bash bench/compare.sh /tmp/lambda-old target/release/lambda
#   OLD_FLAGS / NEW_FLAGS: the demo flags that turn periodic recomputes off
#   for each binary (default `--recompute-interval 1h`; before 2026-12-02
#   the flag was `--interval`).
#
# The speed layer's throughput is a library benchmark: run
# `cargo bench -p lambda-speed --bench throughput` in each checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1
new=$2
rounds=${3:-2}
FRESH_RATES=${FRESH_RATES:-100,5000,20000}
FRESH_SECONDS=${FRESH_SECONDS:-30}
python3 -c 'import confluent_kafka' 2>/dev/null || python3 -m pip install -q -r bench/requirements.txt
for round in $(seq "$rounds"); do
  for side in old new; do
    bin=${!side}
    flags_var=${side^^}_FLAGS
    printf '\n=== round %s: %s (%s)\n' "$round" "$side" "$bin"
    LAMBDA_BIN=$bin python3 bench/freshness.py --rates "$FRESH_RATES" --seconds "$FRESH_SECONDS" || true
    LAMBDA_BIN=$bin DEMO_FLAGS="${!flags_var:---recompute-interval 1h}" bash bench/serving_wrk.sh || true
  done
done
