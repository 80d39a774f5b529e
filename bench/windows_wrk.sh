#!/usr/bin/env bash
# Ranged top-K over HTTP: wrk on `/v1/top?k=10&from=<an hour ago>` against a
# system holding an hour of one-minute windows over a 200,000-word
# vocabulary, while live events keep arriving (issue 17).
#
# It starts `lambda demo` without the sample producer, produces a generated
# corpus (Zipf words over a 200,000-word vocabulary) with event times spread
# evenly over the last hour (`lambda produce --backdate 1h`), forces a
# recompute so the batch view holds the hour's windows, then, while
# `lambda produce --rate LIVE_RATE` keeps adding events stamped now (so the
# realtime side of every answer changes all the time and the per-generation
# answer cache rarely hits), runs wrk on the ranged top-K, the all-time
# top-K and /healthz of the same server, two rounds alternating.
#
# Usage: bench/windows_wrk.sh            (defaults below)
#   CORPUS_BYTES=80000000 LIVE_RATE=2000 DURATION=20s CONNECTIONS=64 bench/windows_wrk.sh
#   DEMO_FLAGS="--micro-batch-records 100000" bench/windows_wrk.sh   (more `lambda demo` flags)
set -euo pipefail
cd "$(dirname "$0")/.."

CORPUS_BYTES=${CORPUS_BYTES:-80000000}
LIVE_RATE=${LIVE_RATE:-2000}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-2}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
[ -n "${LAMBDA_BIN:-}" ] || cargo build --release -q -p cli
LAMBDA=${LAMBDA_BIN:-target/release/lambda}

work=$(mktemp -d)
demo_pid=
live_pid=
cleanup() {
    [ -n "$live_pid" ] && kill "$live_pid" 2>/dev/null && wait "$live_pid" 2>/dev/null
    [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port); broker_port=$(free_port); batch_port=$(free_port); speed_port=$(free_port)
base="http://127.0.0.1:$http_port"

python3 bench/gen_corpus.py --bytes "$CORPUS_BYTES" --seed 7 --vocabulary 200000 --output "$work/history.txt"
python3 bench/gen_corpus.py --bytes $((LIVE_RATE * 200 * 70)) --seed 8 --vocabulary 200000 --output "$work/live.txt"

RUST_LOG=warn "$LAMBDA" demo --no-sample --data-dir "$work/data" --admin-token bench \
    --http-addr "127.0.0.1:$http_port" --broker-addr "127.0.0.1:$broker_port" \
    --batch-addr "127.0.0.1:$batch_port" --speed-addr "127.0.0.1:$speed_port" \
    --recompute-interval 1h ${DEMO_FLAGS:-} >"$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 300); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.2; done
curl -sf "$base/healthz" >/dev/null || { cat "$work/demo.log"; exit 1; }

started=$(date +%s.%N)
"$LAMBDA" produce "$work/history.txt" --backdate 1h --brokers "127.0.0.1:$broker_port" --topic events 2>&1 | tail -1
lag() { curl -sf "$base/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["lag"])'; }
for _ in $(seq 1200); do [ "$(lag)" = 0 ] && break; sleep 0.5; done
recompute_started=$(date +%s.%N)
curl -sSf -X POST -H "Authorization: Bearer bench" "$base/v1/admin/recompute" >/dev/null || { echo "the forced recompute failed:"; tail -20 "$work/demo.log"; exit 1; }
recompute_done=$(date +%s.%N)
status=$(curl -sf "$base/v1/status")
view_bytes=$(find "$work/data" -path '*views*' -type f -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f1)

# The range: the hour the history covers, rounded down to its first window.
from_ms=$(( ($(date +%s) - 3600) * 1000 ))
"$LAMBDA" produce "$work/live.txt" --rate "$LIVE_RATE" --brokers "127.0.0.1:$broker_port" --topic events >/dev/null 2>&1 &
live_pid=$!
sleep 3

first=$(curl -s -o /dev/null -w '%{time_total}' "$base/v1/top?k=10&from=$from_ms")
curl -sf "$base/v1/top?k=10&from=$from_ms" >"$work/ranged.json"

run_wrk() { wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@"; }
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d3s "$base/healthz" >/dev/null   # warm-up
for round in 1 2; do
    run_wrk "$base/healthz" >"$work/healthz.$round"
    run_wrk "$base/v1/top?k=10&from=$from_ms" >"$work/ranged.$round"
    run_wrk "$base/v1/top?k=10" >"$work/alltime.$round"
done
kill "$live_pid" 2>/dev/null; wait "$live_pid" 2>/dev/null || true; live_pid=

python3 - "$work" "$status" "$view_bytes" "$started" "$recompute_started" "$recompute_done" "$first" <<'EOF'
import json, re, sys

def parse(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    def ms(label):
        m = re.search(label + r"\s+([\d.]+)(us|ms|s)\b", text)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return rps, ms("50%"), ms("99%"), int(errors.group(1)) if errors else 0

work, status, view_bytes = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3] or 0)
started, rstart, rdone, first = (float(x) for x in sys.argv[4:8])
ranged = json.load(open(f"{work}/ranged.json"))
events = sum(status["events_end"].values())
print(f"history: {events} events stamped over the last hour, 1-minute windows, "
      f"200,000-word vocabulary; ingested in {rstart - started:.0f} s")
print(f"batch view v{status['batch']['version']}: {view_bytes / 1e6:.1f} MB on disk; "
      f"recompute forced and served in {rdone - rstart:.1f} s")
r = ranged["range"]
print(f"range {r['from']} .. {r['to']}: top word {ranged['words'][0]['word']!r} "
      f"{ranged['words'][0]['count']}, complete={r['complete']}, late={r['late_events']}; "
      f"first ranged answer of this view {float(first) * 1000:.0f} ms")
print(f"{'round':<7}{'endpoint':<26}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
for n in (1, 2):
    for name, file in [("/healthz", "healthz"), ("/v1/top?k=10&from=-1h", "ranged"),
                       ("/v1/top?k=10", "alltime")]:
        rps, p50, p99, bad = parse(f"{work}/{file}.{n}")
        print(f"{n:<7}{name:<26}{rps:>10.0f}{p50:>9.2f}{p99:>9.2f}{bad:>9}")
print("target: ranged top-10 over the hour p99 <= 20 ms at 64 connections")
EOF
