#!/usr/bin/env python3
"""Scale-out on this machine: one instance of a layer against two sharing
the partitions (`--share-partitions`), over the same events.

Starts `lambda broker` (SQLite storage), produces EVENTS generated events
to a 4-partition topic (`lambda produce`), then measures, one after the
other:
  * batch: k = 1, 2 batch layers on one fresh store ingest everything; then
    a full recompute asked of the first (`POST /recompute?mode=full`, which
    the other instances run at the same time on their partitions), timed
    to the answer;
  * speed: k = 1, 2 speed layers (no batch layer: every event counted from
    offset 0) from start until their positions together reach the topic's
    end, and the same from the moment the group assigned the partitions;
  * failover: with two instances of each caught up, the second SIGKILLed;
    the time until the first owns every partition (the group's session
    timeout is 10 s, plus a heartbeat).
Prints one table. On 2 cores two instances share the same two cores, so
the figures show the cost of sharing, not the gain from more machines.

Usage: python3 bench/scaleout.py [--events 1000000]
Needs: target/release/lambda (cargo build --release -p cli).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import LAMBDA, ROOT, free_port, post, get, stop_all, wait_http  # noqa: E402

TOKEN = "bench-scaleout-token"
PARTITIONS = 4


def status(addr):
    try:
        return json.loads(get(f"http://{addr}/status", timeout=2))
    except Exception:
        return None


def batch_owned(addr):
    s = status(addr)
    return (s or {}).get("owned") or []


def speed_positions(addr):
    s = status(addr)
    return {int(p): o for p, o in ((s or {}).get("positions") or {}).items()}


def wait(what, check, timeout=600, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return time.time()
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    args = ap.parse_args()
    if not os.path.exists(LAMBDA):
        raise SystemExit("build first: cargo build --release -p cli")
    work = tempfile.mkdtemp(prefix="lambda-scaleout-")
    procs, logs = {}, []

    def start(name, argv):
        log = open(os.path.join(work, f"{name}.log"), "w")
        logs.append(log)
        procs[name] = subprocess.Popen([LAMBDA] + argv, stdout=subprocess.DEVNULL, stderr=log,
                                       env={**os.environ, "RUST_LOG": "info"})

    def stop(name, sig=signal.SIGTERM):
        p = procs.pop(name)
        p.send_signal(sig)
        p.wait(timeout=60)

    try:
        corpus = os.path.join(work, "corpus.txt")
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gen_corpus.py"),
                        "--bytes", str(int(args.events * 70 * 1.2)), "--seed", "7",
                        "--output", corpus + ".all"], check=True)
        with open(corpus + ".all") as f, open(corpus, "w") as out:
            for i, line in enumerate(f):
                if i >= args.events:
                    break
                out.write(line)
        os.remove(corpus + ".all")
        broker = f"127.0.0.1:{free_port()}"
        start("broker", ["broker", "--broker-addr", broker, "--data-dir", os.path.join(work, "broker")])
        time.sleep(1.5)
        common = ["--brokers", broker, "--partitions", str(PARTITIONS), "--share-partitions"]
        # A layer creates the topics (4 partitions); then the events go in.
        init = f"127.0.0.1:{free_port()}"
        start("init", ["speed", "--brokers", broker, "--partitions", str(PARTITIONS),
                       "--data-dir", os.path.join(work, "init"), "--http-addr", init])
        wait_http("http://" + init)
        stop("init")
        subprocess.run([LAMBDA, "produce", corpus, "--brokers", broker],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        n = args.events
        rows = []

        # --- batch: ingest, then a full recompute on k instances.
        batch_addrs = {}
        for k in (1, 2):
            store = "file://" + os.path.join(work, f"store-{k}") + "/"
            names = [f"batch{k}-{i}" for i in range(k)]
            for name in names:
                batch_addrs[name] = f"127.0.0.1:{free_port()}"
                start(name, ["batch", *common, "--data-dir", os.path.join(work, name),
                             "--store-url", store, "--http-addr", batch_addrs[name],
                             "--recompute-interval", "1h", "--full-recompute-every", "0s",
                             "--admin-token", TOKEN])
            for name in names:
                wait_http("http://" + batch_addrs[name])
            t0 = time.time()
            # Each instance's log ends for the partitions it owns (an
            # instance keeps the log of a partition it was revoked).
            wait("the batch instances to ingest everything",
                 lambda: sum(sum(((status(batch_addrs[m]) or {}).get("ends") or {}).values())
                             for m in names) >= n
                 and sum(len(batch_owned(batch_addrs[m])) for m in names) == PARTITIONS,
                 every=0.2)
            ingest_s = time.time() - t0
            t = time.time()
            view = post(f"http://{batch_addrs[names[0]]}/recompute?mode=full", TOKEN)
            full_s = time.time() - t
            h = view["header"]
            # Every offset below the (bucket-aligned) cut, each counted once.
            assert sum(h["cut"].values()) == h["events"] + h["skipped_records"] > n - 4 * 1024, h
            rows.append((f"batch x{k}: ingest (from start)", ingest_s, n / ingest_s))
            rows.append((f"batch x{k}: full recompute", full_s, n / full_s))
            if k == 2:
                # Failover: the second dies; the first takes its partitions.
                t = time.time()
                stop(names[1], signal.SIGKILL)
                took = wait("the first batch instance to own every partition",
                            lambda: len(batch_owned(batch_addrs[names[0]])) == PARTITIONS) - t
                rows.append(("batch: SIGKILL -> survivor owns all", took, None))
            for name in names:
                if name in procs:
                    stop(name)

        # --- speed: k instances count everything from offset 0.
        for k in (1, 2):
            names = [f"speed{k}-{i}" for i in range(k)]
            addrs = {m: f"127.0.0.1:{free_port()}" for m in names}
            t0 = time.time()
            for name in names:
                start(name, ["speed", *common, "--data-dir", os.path.join(work, name),
                             "--realtime-topic", f"lambda.realtime.{k}", "--http-addr", addrs[name]])
            assigned = wait("the speed instances to own every partition",
                            lambda: sum(len(speed_positions(addrs[m])) for m in names) == PARTITIONS)
            done = wait("the speed instances to count everything",
                        lambda: sum(sum(speed_positions(addrs[m]).values()) for m in names) >= n)
            rows.append((f"speed x{k}: start -> counted all", done - t0, n / (done - t0)))
            rows.append((f"speed x{k}: assigned -> counted all", done - assigned, n / (done - assigned)))
            if k == 2:
                t = time.time()
                stop(names[1], signal.SIGKILL)
                took = wait("the first speed instance to own every partition",
                            lambda: len(speed_positions(addrs[names[0]])) == PARTITIONS) - t
                rows.append(("speed: SIGKILL -> survivor owns all", took, None))
            for name in names:
                if name in procs:
                    stop(name)

        print(f"Scale-out over {n:,} events, {PARTITIONS} partitions, {os.cpu_count()} cores, "
              f"one `lambda broker` (SQLite)")
        print(f"{'':40} {'seconds':>9} {'events/s':>12}")
        for what, s, rate in rows:
            print(f"{what:40} {s:9.2f} {'' if rate is None else f'{rate:12,.0f}'}")
        return 0
    finally:
        stop_all(procs, work)
        for log in logs:
            log.close()


if __name__ == "__main__":
    sys.exit(main())
