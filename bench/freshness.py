#!/usr/bin/env python3
"""Produce-to-visible freshness of `lambda demo` under background load.

For each rate, starts `lambda demo --no-sample` (embedded broker on SQLite,
all three layers in one process) in a new data directory, then for SECONDS:
  * `lambda produce --rate RATE` (librdkafka) sends a generated corpus to the
    events topic: the background load;
  * every 250 ms a probe produces one event with a unique word through
    confluent-kafka (acks=all, flushed) and polls `/v1/words/<word>` every
    2 ms until it counts 1. Its latency runs from just before the produce
    call to the first answer that counts it; a probe not visible within
    10 s is missed.
Prints one row per rate: probes, p50 / p99 / max, missed, the serving
layer's own view (`/v1/status` visibility) and the mean time per stage from
`lambda_stage_seconds` (the latency budget).

The demo runs with realtime buckets of `--bucket-size` offsets (default
1024, every role's default): the demo's own 64 suits its sample's 20
events/s, where larger buckets would hide the hand-off from speed to batch
layer, not a load of thousands of events/s, where each frequent word would
change up to 16 times as many (word, bucket) counts per micro-batch for every
layer to publish, resolve, apply and expire. `--bucket-size 64` measures
the demo's own setting (bench/all.sh does both at 20,000 events/s).

Usage: python3 bench/freshness.py [--rates 100,5000,20000] [--seconds 60] [--bucket-size 1024] [--keep DIR]
Needs: target/release/lambda (cargo build --release -p cli) and
`pip install -r bench/requirements.txt` (confluent-kafka).
Exit status 1 if a probe was missed or the load could not be delivered.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from load import free_port, get, wait_http  # same directory: helpers shared with the load run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# LAMBDA_BIN picks another binary (bench/compare.sh runs two side by side).
LAMBDA = os.environ.get("LAMBDA_BIN") or os.path.join(ROOT, "target", "release", "lambda")
PROBE_EVERY = 0.25
POLL_EVERY = 0.002
MISSED_AFTER = 10.0
# With --keep: what the layers say about swaps, expiries and compactions,
# without the embedded broker's per-request lines.
KEEP_LOG = "warn,batch_layer=info,speed_layer=info,serving_layer=info,lambda_realtime_store=info"


def pct(values, p):
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    values = sorted(values)
    rank = max(1, -(-len(values) * p // 100))
    return values[int(rank) - 1]


def stage_sums(urls):
    """(sum seconds, count) per stage of lambda_stage_seconds over the layers."""
    sums = {}
    for url in urls:
        for line in get(url + "/metrics").splitlines():
            for suffix, i in (("_sum{", 0), ("_count{", 1)):
                head = "lambda_stage_seconds" + suffix
                if line.startswith(head):
                    stage = line[len(head):].split('stage="', 1)[1].split('"', 1)[0]
                    sums.setdefault(stage, [0.0, 0.0])[i] += float(line.rsplit(" ", 1)[1])
    return sums


def corpus_for(work, events):
    path = os.path.join(work, f"corpus-{events}.txt")
    if not os.path.exists(path):
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gen_corpus.py"),
                        "--bytes", str(int(events * 70 * 1.2) + 10_000), "--seed", "5",
                        "--output", path + ".all"], check=True)
        with open(path + ".all") as f, open(path, "w") as out:
            for i, line in enumerate(f):
                if i >= events:
                    break
                out.write(line)
        os.remove(path + ".all")
    return path


def run_rate(rate, seconds, work, bucket_size, keep=None):
    from confluent_kafka import Producer

    data = os.path.join(work, f"demo-{rate}")
    broker = f"127.0.0.1:{free_port()}"
    addr = {r: f"127.0.0.1:{free_port()}" for r in ("serve", "batch", "speed")}
    log = open(os.path.join(work, f"demo-{rate}.log"), "w")
    demo = subprocess.Popen(
        [LAMBDA, "demo", "--no-sample", "--data-dir", data, "--broker-addr", broker,
         "--http-addr", addr["serve"], "--batch-addr", addr["batch"], "--speed-addr", addr["speed"],
         "--bucket-size", str(bucket_size), *os.environ.get("FRESH_DEMO_FLAGS", "").split()],
        stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": KEEP_LOG if keep else "warn"})
    load = None
    try:
        serve = "http://" + addr["serve"]
        wait_http(serve, "/readyz", timeout=120)
        corpus = corpus_for(work, rate * (seconds + 30))
        load = subprocess.Popen([LAMBDA, "produce", corpus, "--brokers", broker, "--rate", str(rate)],
                                stdout=subprocess.DEVNULL, stderr=log)
        time.sleep(3)  # let the load reach its rate
        stages_before = stage_sums([serve, "http://" + addr["speed"]])
        producer = Producer({"bootstrap.servers": broker, "linger.ms": 0, "acks": "all"})
        latencies, missed, probes = [], 0, []
        pending = {}  # word -> produce time
        lock = threading.Lock()
        stop = threading.Event()

        def poller():
            nonlocal missed
            import http.client
            conn = http.client.HTTPConnection(addr["serve"], timeout=5)
            while not (stop.is_set() and not pending):
                with lock:
                    words = list(pending.items())
                for word, t0 in words:
                    try:
                        conn.request("GET", "/v1/words/" + word)
                        r = conn.getresponse()
                        body = r.read()
                        seen = r.status == 200 and json.loads(body)["count"] >= 1
                    except Exception:
                        conn.close()
                        conn = http.client.HTTPConnection(addr["serve"], timeout=5)
                        seen = False
                    now = time.time()
                    if seen:
                        latencies.append(now - t0)
                        probes.append((t0, now - t0))
                    elif now - t0 > MISSED_AFTER:
                        missed += 1
                    else:
                        continue
                    with lock:
                        del pending[word]
                time.sleep(POLL_EVERY)

        th = threading.Thread(target=poller, daemon=True)
        th.start()
        due, end, n = time.time(), time.time() + seconds, 0
        while time.time() < end:
            word = f"probe{rate}x{n}x{os.getpid()}"
            n += 1
            t0 = time.time()
            producer.produce("events", word.encode())
            producer.flush(10)
            with lock:
                pending[word] = t0
            due += PROBE_EVERY
            time.sleep(max(0.0, due - time.time()))
        stop.set()
        th.join(MISSED_AFTER + 5)
        status = json.loads(get(serve + "/v1/status"))
        stages_after = stage_sums([serve, "http://" + addr["speed"]])
        budget = {}
        for stage, (s1, c1) in stages_after.items():
            s0, c0 = stages_before.get(stage, (0.0, 0.0))
            budget[stage] = (s1 - s0) / (c1 - c0) * 1e3 if c1 > c0 else float("nan")
        load.terminate()
        load_ok = load.wait(timeout=30) in (0, -15)
        if keep:
            with open(os.path.join(keep, f"probes-{rate}.tsv"), "w") as out:
                out.write("produced_utc\tlatency_ms\n")
                for t0, latency in sorted(probes):
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0)) + f"{t0 % 1:.3f}"[1:]
                    out.write(f"{stamp}Z\t{latency * 1e3:.1f}\n")
        return {
            "rate": rate, "probes": n, "latencies": latencies, "missed": missed,
            "visibility": status.get("visibility", {}), "budget": budget, "load_ok": load_ok,
        }
    finally:
        if load and load.poll() is None:
            load.kill()
        demo.terminate()
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()
        log.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="100,5000,20000")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--bucket-size", type=int, default=1024,
                    help="the demo's realtime bucket size (its own default is 64, see above)")
    ap.add_argument("--keep", metavar="DIR",
                    help="keep each rate's demo log (our crates at info) and its probes "
                         "(produce time, latency) in DIR, to line slow probes up with "
                         "what the layers logged (view swaps, expiries, compactions)")
    args = ap.parse_args()
    if not os.path.exists(LAMBDA):
        raise SystemExit("build first: cargo build --release -p cli")
    work = tempfile.mkdtemp(prefix="lambda-fresh-")
    rows = []
    try:
        for rate in [int(r) for r in args.rates.split(",")]:
            print(f"rate {rate} events/s for {args.seconds} s ...", file=sys.stderr)
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
            rows.append(run_rate(rate, args.seconds, work, args.bucket_size, args.keep))
            if args.keep:
                shutil.copy(os.path.join(work, f"demo-{rate}.log"), args.keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stages = ["consume", "checkpoint", "publish", "apply"]
    print("| background events/s | probes | p50 ms | p99 ms | max ms | missed "
          "| serving's own p50 / p99 ms | " + " | ".join(f"{s} ms (mean)" for s in stages) + " |")
    print("|" + "---|" * (7 + len(stages)))
    ok = True
    for r in rows:
        ms = [x * 1e3 for x in r["latencies"]]
        v = r["visibility"]
        ok &= r["missed"] == 0 and r["load_ok"]
        print(f"| {r['rate']:,} | {r['probes']} | {pct(ms, 50):.1f} | {pct(ms, 99):.1f} | "
              f"{max(ms) if ms else float('nan'):.1f} | {r['missed']} | "
              f"{v.get('p50_ms', float('nan')):.1f} / {v.get('p99_ms', float('nan')):.1f} | "
              + " | ".join(f"{r['budget'].get(s, float('nan')):.1f}" for s in stages) + " |")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
