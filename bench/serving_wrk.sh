#!/usr/bin/env bash
# Serving-layer HTTP benchmark: wrk against merged word queries and against
# /healthz of the same server, in the same run, so their ratio compares like
# with like on a noisy machine.
#
# It starts `lambda demo` (embedded broker + the three layers) without the
# sample producer, produces a generated corpus with `lambda produce`, forces a
# recompute so the batch view holds most words and realtime counts the rest,
# then queries random words of the corpus's vocabulary (its 20,000 most
# frequent words, percent-encoded, uniformly chosen).
#
# Usage: bench/serving_wrk.sh            (defaults below)
#   CORPUS_BYTES=5000000 DURATION=20s CONNECTIONS=64 WRK_THREADS=2 bench/serving_wrk.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CORPUS_BYTES=${CORPUS_BYTES:-5000000}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-2}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
[ -n "${LAMBDA_BIN:-}" ] || cargo build --release -q -p cli
LAMBDA=${LAMBDA_BIN:-target/release/lambda}

work=$(mktemp -d)
demo_pid=
cleanup() {
    [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port); broker_port=$(free_port); batch_port=$(free_port); speed_port=$(free_port)
base="http://127.0.0.1:$http_port"

python3 bench/gen_corpus.py --bytes "$CORPUS_BYTES" --seed 7 --output "$work/corpus.txt"
"$LAMBDA" mapreduce --input "$work/corpus.txt" --output "$work/counts.tsv" 2>/dev/null
python3 - "$work/counts.tsv" "$work/words.txt" <<'EOF'
import sys, urllib.parse
with open(sys.argv[1], encoding="utf-8") as src, open(sys.argv[2], "w") as dst:
    for i, line in enumerate(src):
        if i == 20000:
            break
        dst.write(urllib.parse.quote(line.split("\t")[0], safe="") + "\n")
EOF
# Requests are formatted once, in a shuffled order, so wrk's Lua costs the
# same per request as a plain URL (wrk shares the 2 cores with the server).
cat > "$work/words.lua" <<EOF
local requests = {}
for line in io.lines("$work/words.txt") do
  requests[#requests + 1] = wrk.format("GET", "/v1/words/" .. line)
end
math.randomseed(7)
for i = #requests, 2, -1 do
  local j = math.random(i)
  requests[i], requests[j] = requests[j], requests[i]
end
local n = 0
request = function()
  n = n % #requests + 1
  return requests[n]
end
EOF

RUST_LOG=warn "$LAMBDA" demo --no-sample --data-dir "$work/data" --admin-token bench \
    --http-addr "127.0.0.1:$http_port" --broker-addr "127.0.0.1:$broker_port" \
    --batch-addr "127.0.0.1:$batch_port" --speed-addr "127.0.0.1:$speed_port" \
    ${DEMO_FLAGS:---recompute-interval 1h} >"$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 300); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.2; done

"$LAMBDA" produce "$work/corpus.txt" --brokers "127.0.0.1:$broker_port" --topic events 2>&1 | tail -1
lag() { curl -sf "$base/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["lag"])'; }
for _ in $(seq 600); do [ "$(lag)" = 0 ] && break; sleep 0.5; done
curl -sf -X POST -H "Authorization: Bearer bench" "$base/v1/admin/recompute" >/dev/null
status=$(curl -sf "$base/v1/status")

sleep 5   # let the swap's expiry and background flushes settle

run_wrk() { wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@"; }
wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d3s "$base/healthz" >/dev/null   # warm-up
# Two rounds, alternating, so a noisy moment shows up as a disagreement
# between rounds instead of skewing one endpoint.
for round in 1 2; do
    run_wrk "$base/healthz" >"$work/healthz.$round"
    run_wrk -s "$work/words.lua" "$base" >"$work/words.$round"
done

python3 - "$work" "$status" <<'EOF'
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

work, status = sys.argv[1], json.loads(sys.argv[2])
events = sum(status["events_end"].values())
print(f"corpus: {events} events; batch view v{status['batch']['version']} holds "
      f"{sum(status['batch']['cut'].values())}, realtime the rest")
print(f"{'round':<7}{'endpoint':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'ratio':>8}")
for r in (1, 2):
    health, words = parse(f"{work}/healthz.{r}"), parse(f"{work}/words.{r}")
    for name, (rps, p50, p99, bad) in [("/healthz", health), ("/v1/words/{w}", words)]:
        ratio = f"{words[0] / health[0]:.2f}" if name != "/healthz" else ""
        print(f"{r:<7}{name:<18}{rps:>10.0f}{p50:>9.2f}{p99:>9.2f}{bad:>9}{ratio:>8}")
print("targets: merged-query req/s >= 0.5 x /healthz; merged-query p99 <= 5 ms")
EOF
