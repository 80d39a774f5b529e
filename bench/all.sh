#!/usr/bin/env bash
# Every performance comparison of the project in one go, one after the other
# (never in parallel: the machine has 2 cores), then one summary table.
#
#   1. `lambda mapreduce` vs DuckDB on the same generated text   (issue 3)
#   2. speed layer vs a plain rdkafka consumer, same topic       (issue 4)
#      (and again without the new word per event: what new keys cost)
#   3. serving layer: merged word queries vs /healthz with wrk   (issue 5)
#      (and a replica resolving and applying 1.4 M upserts, criterion)
#   4. the whole system under sustained load (bench/load.py)     (issue 7)
#   5. produce-to-visible freshness under load (bench/freshness.py) (issue 14)
#   6. recompute time at 1x/2x/4x history, full vs incremental   (issue 18)
#   7. Kappa replay vs a full batch recompute of the same events  (issue 18)
#   8. ranged answers over an hour of one-minute windows (criterion) (issue 17)
#   9. ranged top-K over HTTP under live load (bench/windows_wrk.sh) (issue 17)
#  10. an hour of events at 20,000/s: view size, recompute times  (issue 17)
#  11. scale-out: one instance vs two sharing the partitions (bench/scaleout.py) (issue 16)
#
# Usage: bash bench/all.sh
#   MR_MB=50 MR_RUNS=3 EVENTS=500000 LOAD_RATE=20000 LOAD_SECONDS=300 bash bench/all.sh
#   FRESH_RATES=100,5000,20000 FRESH_SECONDS=60 bash bench/all.sh
#   LOAD_SECONDS=0 skips the load run, FRESH_SECONDS=0 the freshness run.
#   KAPPA_EVENTS=1000000 (0 skips the Kappa run).
#   HOUR_MINUTES=60 (0 skips the hour of events: 72 M events, 5 GB of log).
#   SCALE_EVENTS=1000000 (0 skips the scale-out run).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_DIR:-target/bench}
mkdir -p "$OUT"
MR_MB=${MR_MB:-50}
MR_RUNS=${MR_RUNS:-3}
LOAD_RATE=${LOAD_RATE:-20000}
LOAD_SECONDS=${LOAD_SECONDS:-300}
FRESH_RATES=${FRESH_RATES:-100,5000,20000}
FRESH_SECONDS=${FRESH_SECONDS:-60}
KAPPA_EVENTS=${KAPPA_EVENTS:-1000000}
HOUR_MINUTES=${HOUR_MINUTES:-60}
SCALE_EVENTS=${SCALE_EVENTS:-1000000}

python3 -c 'import duckdb, confluent_kafka' 2>/dev/null || python3 -m pip install -q -r bench/requirements.txt
cargo build --release -q -p cli

step() { printf '\n=== %s\n' "$*" >&2; }

step "1/11 mapreduce vs duckdb (${MR_MB} MB, best of ${MR_RUNS})"
bash bench/mapreduce_vs_duckdb.sh "$MR_MB" "$MR_RUNS" | tee "$OUT/mapreduce.txt"

step "2/11 speed layer vs plain consumer"
cargo bench -q -p lambda-speed --bench throughput 2>/dev/null | tee "$OUT/speed.txt"
# The same without the new word per event: what new keys cost.
VOCABULARY_ONLY=1 cargo bench -q -p lambda-speed --bench throughput 2>/dev/null | tee "$OUT/speed_vocabulary.txt"

step "3/11 serving layer (wrk)"
bash bench/serving_wrk.sh | tee "$OUT/serving.txt"
# What following the speed layer costs a replica (resolve + apply).
EVENTS=200000 cargo bench -q -p lambda-serving --bench apply 2>/dev/null \
  | grep -E '^[0-9]+ releases|time:|thrpt:' | tee "$OUT/apply.txt"

if [ "$LOAD_SECONDS" -gt 0 ]; then
  step "4/11 sustained load (${LOAD_RATE} events/s for ${LOAD_SECONDS} s)"
  python3 bench/load.py --rate "$LOAD_RATE" --duration "$LOAD_SECONDS" 2>"$OUT/load.err" | tee "$OUT/load.txt" || true
fi

if [ "$FRESH_SECONDS" -gt 0 ]; then
  step "5/11 freshness (${FRESH_RATES} events/s, ${FRESH_SECONDS} s each)"
  python3 bench/freshness.py --rates "$FRESH_RATES" --seconds "$FRESH_SECONDS" | tee "$OUT/freshness.txt" || true
  # The demo's own bucket size (64, for its sample's rate) at 20,000/s.
  python3 bench/freshness.py --rates 20000 --seconds "$FRESH_SECONDS" --bucket-size 64 | tee "$OUT/freshness64.txt" || true
fi

step "6/11 recompute: full vs incremental at 1x/2x/4x history"
cargo bench -q -p lambda-batch --bench recompute 2>/dev/null | tee "$OUT/recompute.txt"

if [ "$KAPPA_EVENTS" -gt 0 ]; then
  step "7/11 Lambda and Kappa reprocessing ${KAPPA_EVENTS} events"
  python3 bench/kappa.py --events "$KAPPA_EVENTS" 2>"$OUT/kappa.err" | tee "$OUT/kappa.txt" || true
fi

step "8/11 ranged answers over an hour of one-minute windows"
cargo bench -q -p lambda-serving --bench windows 2>&1 | grep -E '^(view|first|top_10|word_)|time:' | tee "$OUT/windows.txt"

step "9/11 ranged top-K over HTTP under live load (wrk)"
bash bench/windows_wrk.sh | tee "$OUT/windows_wrk.txt"

if [ "$HOUR_MINUTES" -gt 0 ]; then
  step "10/11 ${HOUR_MINUTES} minutes of events at 20,000/s: view size and recompute times"
  BENCH_MINUTES="$HOUR_MINUTES" cargo bench -q -p lambda-batch --bench hour 2>/dev/null | tee "$OUT/hour.txt"
fi

if [ "$SCALE_EVENTS" -gt 0 ]; then
  step "11/11 scale-out: one instance vs two over ${SCALE_EVENTS} events"
  python3 bench/scaleout.py --events "$SCALE_EVENTS" 2>"$OUT/scaleout.err" | tee "$OUT/scaleout.txt" || true
fi

python3 - "$OUT" <<'EOF'
import os, re, sys, time
out = sys.argv[1]
def read(name):
    p = os.path.join(out, name)
    return open(p).read() if os.path.exists(p) else ""
def find(text, pattern, group=1):
    m = re.search(pattern, text, re.M)
    return m.group(group) if m else "?"
mr, sp, sv, ld = read("mapreduce.txt"), read("speed.txt"), read("serving.txt"), read("load.txt")
spv, ap = read("speed_vocabulary.txt"), read("apply.txt")
fr, fr64 = read("freshness.txt"), read("freshness64.txt")
rc, kp, wn = read("recompute.txt"), read("kappa.txt"), read("windows.txt")
ww, hr, so = read("windows_wrk.txt"), read("hour.txt"), read("scaleout.txt")
def fresh(rate, text=None):
    # | rate | probes | p50 | p99 | max | missed | ...
    m = re.search(r"^\| " + rate + r" \| \d+ \| (\S+) \| (\S+) \| (\S+) \| (\d+) \|", text or fr, re.M)
    return f"{m.group(1)} / {m.group(2)} / {m.group(3)} ({m.group(4)} missed)" if m else "?"
rows = [
    ("mapreduce MB/s (2 threads, warm cache)", find(mr, r"^lambda mapreduce\s+\S+\s+(\S+)"), ">= 300"),
    ("mapreduce speed vs DuckDB", find(mr, r"speed ratio.*: (\S+)"), ">= 5x"),
    ("mapreduce max RSS MB", find(mr, r"^lambda mapreduce\s+\S+\s+\S+\s+(\S+)"), "< 2 x (input + table)"),
    ("speed layer / plain consumer", find(sp, r"ratio speed/plain: (\S+)"), ">= 0.8"),
    ("speed layer / plain consumer, no new word per event", find(spv, r"ratio speed/plain: (\S+)"), ""),
    ("merged words / healthz req/s (round 2)", find(sv, r"^2\s+/v1/words/\{w\}\s+\S+\s+\S+\s+\S+\s+\S+\s+(\S+)"), ">= 0.5"),
    ("serving replica: upserts resolved and applied per s", find(ap, r"thrpt:\s+\[\S+ \S+ (\S+ \S+)"), ""),
    ("merged words p99 ms (round 2)", find(sv, r"^2\s+/v1/words/\{w\}\s+\S+\s+\S+\s+(\S+)"), "<= 5"),
    ("load: batch ingest events/s", find(ld, r"batch ingest, events/s during the run \| ([\d,]+)"), ">= 20,000 offered"),
    ("load: speed consume events/s", find(ld, r"speed consume, events/s during the run \| ([\d,]+)"), ">= 20,000 offered"),
    ("load: produce-to-visible p50/p99/max ms", find(ld, r"produce-to-visible p50 / p99 / max [^|]*\| ([^|]+) ms"), ""),
    ("load: HTTP p50/p99/max", find(ld, r"HTTP /v1/words at [^|]*\| ([^|,]+)"), ""),
    ("freshness p50/p99/max ms at 100/s", fresh("100"), "p99 <= 100, 0 missed"),
    ("freshness p50/p99/max ms at 5,000/s", fresh("5,000"), "p99 <= 100, 0 missed"),
    ("freshness p50/p99/max ms at 20,000/s", fresh("20,000"), "p99 <= 100, 0 missed"),
    ("  the same with the demo's bucket size 64", fresh("20,000", fr64), ""),
    ("recompute time 4x/1x history: full", find(rc, r"full (\S+x), incremental"), "grows"),
    ("recompute time 4x/1x history: incremental", find(rc, r"incremental (\S+x)$"), "flat (about 1x)"),
    ("full recompute s (Lambda)", find(kp, r"^Lambda: full recompute \(master log\)\s+(\S+)"), ""),
    ("replay s (Kappa)", find(kp, r"^Kappa: lambda replay from offset 0\s+(\S+)"), ""),
    ("replay agrees with the batch view", "yes" if "agrees with batch view" in kp else "no", "yes"),
    ("ranged top 10 over an hour, in process", find(wn, r"^top_10_last_hour\s+time:\s+\[\S+ \S+ (\S+ \S+)"), ""),
    ("ranged top 10 over HTTP p99 ms (round 1 / 2)", find(ww, r"^1\s+/v1/top\?k=10&from=-1h\s+\S+\s+\S+\s+(\S+)") + " / " + find(ww, r"^2\s+/v1/top\?k=10&from=-1h\s+\S+\s+\S+\s+(\S+)"), "<= 20 at 64 connections"),
    ("an hour at 20,000/s: view MB", find(hr, r"^batch view\s+(\S+) MB"), ""),
    ("an hour at 20,000/s: full / incremental recompute s", find(hr, r"^full recompute\s+(\S+) s") + " / " + find(hr, r"incremental\s+(\S+) s"), ""),
    ("full recompute s, 1 / 2 batch instances", find(so, r"^batch x1: full recompute\s+(\S+)") + " / " + find(so, r"^batch x2: full recompute\s+(\S+)"), ""),
    ("speed events/s, 1 / 2 instances", find(so, r"^speed x1: assigned -> counted all\s+\S+\s+(\S+)") + " / " + find(so, r"^speed x2: assigned -> counted all\s+\S+\s+(\S+)"), ""),
    ("SIGKILL -> survivor owns all s, batch / speed", find(so, r"^batch: SIGKILL -> survivor owns all\s+(\S+)") + " / " + find(so, r"^speed: SIGKILL -> survivor owns all\s+(\S+)"), "session timeout 10 s"),
]
print(f"\nSummary ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release})\n")
print("| measure | value | target |")
print("|---|---|---|")
for name, value, target in rows:
    print(f"| {name} | {value.strip()} | {target} |")
EOF
