#!/usr/bin/env python3
"""Sustained-load run of the whole system, as separate processes.

Starts `lambda broker` (SQLite storage) and the three layers, then for
DURATION seconds at the same time:
  * `lambda produce --rate RATE` sends a generated corpus (Zipf words over a
    200,000-word vocabulary, ~11 words per event);
  * a paced client queries random words of that corpus (QPS per second);
  * a probe produces a unique marker event every 0.5 s (confluent-kafka) and
    polls `/v1/words/<marker>` until it counts 1: produce-to-visible freshness;
  * every 5 s it samples each process's resident memory (VmRSS) and each
    layer's position.
Then prints one table. Exit status 1 if a layer fell behind for good or a
marker never became visible.

Usage: python3 bench/load.py [--rate 20000] [--duration 300] [--interval 10s] [--qps 200]
Needs: target/release/lambda (cargo build --release -p cli) and
`pip install -r bench/requirements.txt` (confluent-kafka).
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# LAMBDA_BIN picks another binary (bench/compare.sh runs two side by side).
LAMBDA = os.environ.get("LAMBDA_BIN") or os.path.join(ROOT, "target", "release", "lambda")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric(url, family):
    total = 0.0
    for line in get(url + "/metrics").splitlines():
        if line.startswith(family) and line[len(family):len(family) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def post(url, token, timeout=3600):
    """POSTs with a bearer token; the JSON answer."""
    req = urllib.request.Request(url, method="POST", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return float("nan")
    return float("nan")


def stop_all(procs, work):
    """SIGTERMs every process still running, kills those that do not exit
    within 20 s, and removes the work directory."""
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(work, ignore_errors=True)


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def wait_http(url, path="/metrics", timeout=60):
    """Waits until `url + path` answers; exits the script after `timeout`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            get(url + path, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url}{path} did not answer within {timeout} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--duration", type=int, default=300)
    ap.add_argument("--interval", default="10s", help="batch recompute interval")
    ap.add_argument("--qps", type=int, default=200, help="paced /v1/words queries per second")
    args = ap.parse_args()
    if not os.path.exists(LAMBDA):
        raise SystemExit("build first: cargo build --release -p cli")
    from confluent_kafka import Producer

    work = tempfile.mkdtemp(prefix="lambda-load-")
    procs = {}
    try:
        events = args.rate * args.duration
        corpus = os.path.join(work, "corpus.txt")
        # ~70 bytes per event; 5% more so production never runs dry.
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gen_corpus.py"),
                        "--bytes", str(int(events * 70 * 1.2)), "--seed", "11",
                        "--output", corpus + ".all"], check=True)
        with open(corpus + ".all") as f, open(corpus, "w") as out:  # exactly `events` lines
            for i, line in enumerate(f):
                if i >= events:
                    break
                out.write(line)
        os.remove(corpus + ".all")
        vocab = os.path.join(work, "words.txt")
        subprocess.run([LAMBDA, "mapreduce", "--input", corpus, "--output", vocab + ".tsv"],
                       check=True, stderr=subprocess.DEVNULL)
        with open(vocab + ".tsv") as f, open(vocab, "w") as out:
            for i, line in enumerate(f):
                if i >= 20000:
                    break
                out.write(urllib.parse.quote(line.split("\t")[0]) + "\n")

        broker = f"127.0.0.1:{free_port()}"
        addr = {r: f"127.0.0.1:{free_port()}" for r in ("batch", "speed", "serve")}
        logs = {}

        def start(name, argv):
            logs[name] = open(os.path.join(work, f"{name}.log"), "w")
            procs[name] = subprocess.Popen([LAMBDA] + argv, stdout=subprocess.DEVNULL,
                                           stderr=logs[name], env={**os.environ, "RUST_LOG": "warn"})

        start("broker", ["broker", "--broker-addr", broker, "--data-dir", os.path.join(work, "broker")])
        time.sleep(1.5)
        common = ["--brokers", broker, "--partitions", "4"]
        start("batch", ["batch", *common, "--data-dir", os.path.join(work, "batch"),
                        "--http-addr", addr["batch"], "--recompute-interval", args.interval])
        wait_http("http://" + addr["batch"])
        start("speed", ["speed", *common, "--data-dir", os.path.join(work, "speed"),
                        "--http-addr", addr["speed"], "--batch-url", addr["batch"]])
        start("serve", ["serve", *common, "--data-dir", os.path.join(work, "serve"),
                        "--http-addr", addr["serve"], "--batch-url", addr["batch"]])
        for r in ("speed", "serve"):
            wait_http("http://" + addr[r])
        serve = "http://" + addr["serve"]
        time.sleep(2)

        samples = []  # (t, {proc: rss}, batch ingested, speed consumed)
        t0 = time.time()

        def sample():
            return (time.time() - t0,
                    {n: rss_mb(p.pid) for n, p in procs.items() if n in ("broker", "batch", "speed", "serve")},
                    metric("http://" + addr["batch"], "lambda_batch_records_ingested_total"),
                    metric("http://" + addr["speed"], "lambda_speed_records_consumed_total"),
                    metric("http://" + addr["speed"], "lambda_speed_upserts_published_total"))

        samples.append(sample())
        start("produce", ["produce", corpus, "--brokers", broker, "--rate", str(args.rate)])
        with open(vocab) as f:
            words = [w.strip() for w in f if w.strip()]
        latencies, failures = [], [0]
        stop = threading.Event()

        def querier():
            # Paced queries on one keep-alive connection: a steady read load
            # beside ingestion (wrk would saturate both cores by itself).
            import http.client
            rng = random.Random(7)
            conn = http.client.HTTPConnection(addr["serve"], timeout=10)
            due = time.time()
            while not stop.is_set():
                due += 1.0 / args.qps
                started = time.time()
                try:
                    conn.request("GET", "/v1/words/" + rng.choice(words))
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        failures[0] += 1
                    latencies.append(time.time() - started)
                except Exception:
                    failures[0] += 1
                    conn.close()
                    conn = http.client.HTTPConnection(addr["serve"], timeout=10)
                time.sleep(max(0.0, due - time.time()))

        qt = threading.Thread(target=querier, daemon=True)
        qt.start()
        fresh, missed = [], 0
        producer = Producer({"bootstrap.servers": broker, "linger.ms": 0, "acks": "all"})

        def sampler():
            while not stop.wait(5):
                try:
                    samples.append(sample())
                except Exception as e:  # a layer not answering is reported, not fatal
                    print(f"sample failed: {e}", file=sys.stderr)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        n = 0
        while time.time() - t0 < args.duration:
            marker = f"loadprobe{n}x{random.randrange(10**9)}"
            n += 1
            producer.produce("events", marker.encode())
            producer.flush(10)
            sent = time.time()
            while time.time() - sent < 30:
                try:
                    if json.loads(get(f"{serve}/v1/words/{marker}"))["count"] >= 1:
                        fresh.append(time.time() - sent)
                        break
                except Exception:
                    pass
                time.sleep(0.005)
            else:
                missed += 1
            time.sleep(max(0.0, 0.5 - (time.time() - sent)))
        producer.flush(10)
        del producer
        produced_ok = procs["produce"].wait(timeout=1800) == 0
        produce_seconds = time.time() - t0
        stop.set()
        th.join()
        qt.join()
        end = sample()
        # Catch-up: how long until both layers hold everything produced.
        total = events + n
        deadline = time.time() + 300
        while time.time() < deadline and (end[2] < total or end[3] < total):
            time.sleep(2)
            end = sample()
        samples.append(end)

        during = [s for s in samples if s[0] <= args.duration + 1]
        first, last = during[0], during[-1]
        span = last[0] - first[0]
        warm = next((s for s in during if s[0] >= 30), first)
        print()
        print(f"Load: {args.rate} events/s offered for {args.duration} s, recompute every {args.interval}, "
              f"{args.qps} queries/s; {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
        print()
        print("| measure | value |")
        print("|---|---|")
        print(f"| events produced (incl. {n} probes) | {total:,} ({'all delivered' if produced_ok else 'DELIVERY ERRORS'}) |")
        print(f"| producer achieved, events/s | {events / produce_seconds:,.0f} (finished at {produce_seconds:.0f} s) |")
        print(f"| batch ingest, events/s during the run | {(last[2] - first[2]) / span:,.0f} |")
        print(f"| speed consume, events/s during the run | {(last[3] - first[3]) / span:,.0f} |")
        print(f"| not yet ingested at t = duration (batch / speed; includes what the producer had not sent yet) | {total - n - last[2]:,.0f} / {total - n - last[3]:,.0f} |")
        print(f"| realtime upserts published per event | {last[4] / max(last[3], 1):.2f} |")
        print(f"| caught up, {end[0] - produce_seconds:.0f} s after the producer finished | {end[2] >= total and end[3] >= total} |")
        print(f"| produce-to-visible p50 / p99 / max ({len(fresh)} probes, {missed} missed) | "
              f"{pct(fresh, 50) * 1e3:.0f} / {pct(fresh, 99) * 1e3:.0f} / {max(fresh, default=float('nan')) * 1e3:.0f} ms |")
        print(f"| HTTP /v1/words at {args.qps}/s: p50 / p99 / max, failures ({len(latencies)} requests) | "
              f"{pct(latencies, 50) * 1e3:.1f} / {pct(latencies, 99) * 1e3:.1f} / {max(latencies, default=float('nan')) * 1e3:.1f} ms, {failures[0]} |")
        for name in ("broker", "batch", "speed", "serve"):
            mid = [s[1][name] for s in during if s[0] >= args.duration / 2]
            print(f"| RSS {name}: at 30 s / at half time / at end (MB) | "
                  f"{warm[1][name]:.0f} / {mid[0] if mid else float('nan'):.0f} / {last[1][name]:.0f} |")
        ok = missed == 0 and produced_ok and end[2] >= total and end[3] >= total
        return 0 if ok else 1
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    import urllib.parse
    sys.exit(main())
