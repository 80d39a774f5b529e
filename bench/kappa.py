#!/usr/bin/env python3
"""Lambda and Kappa reprocessing the same events on this machine.

Starts `lambda broker` (SQLite storage), produces EVENTS generated events
(`lambda produce`), lets `lambda batch` ingest them all, then reprocesses
everything both ways, one after the other:
  * Lambda: a full batch recompute over the master log
    (`POST /recompute?mode=full`), then an incremental one after 1 % more
    events (at least 8,192, so the cut moves);
  * Kappa: `lambda replay` from offset 0 into a fresh store and realtime
    topic, compared word for word with the batch view at its cut
    (`--compare-with ... --exit-after-check`).
For each: wall time, the state it keeps on disk, and the process's peak
resident memory (VmRSS sampled every 100 ms). Prints one table; exit
status 1 if the replay does not agree with the batch view.

Usage: python3 bench/kappa.py [--events 1000000]
Needs: target/release/lambda (cargo build --release -p cli).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import LAMBDA, ROOT, free_port, post, metric, rss_mb, stop_all, wait_http  # noqa: E402

TOKEN = "bench-kappa-token"


def du_mb(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except FileNotFoundError:
                pass
    return total / 1e6


class PeakRss:
    """Samples a process's VmRSS every 100 ms until stopped."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.wait(0.1):
            rss = rss_mb(self.pid)
            if rss == rss:  # not NaN
                self.peak = max(self.peak, rss)

    def finish(self):
        self.stop.set()
        self.thread.join()
        return self.peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    args = ap.parse_args()
    if not os.path.exists(LAMBDA):
        raise SystemExit("build first: cargo build --release -p cli")
    work = tempfile.mkdtemp(prefix="lambda-kappa-")
    procs = {}
    try:
        corpus = os.path.join(work, "corpus.txt")
        # At least two buckets (1024 offsets) per partition, so the cut moves.
        extra = max(args.events // 100, 8 * 1024)
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gen_corpus.py"),
                        "--bytes", str(int((args.events + extra) * 70 * 1.2)), "--seed", "5",
                        "--output", corpus + ".all"], check=True)
        with open(corpus + ".all") as f, open(corpus, "w") as first, open(corpus + ".more", "w") as more:
            for i, line in enumerate(f):
                if i >= args.events + extra:
                    break
                (first if i < args.events else more).write(line)
        os.remove(corpus + ".all")

        broker = f"127.0.0.1:{free_port()}"
        batch_addr, replay_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        logs = []

        def start(name, argv):
            log = open(os.path.join(work, f"{name}.log"), "w")
            logs.append(log)
            procs[name] = subprocess.Popen([LAMBDA] + argv, stdout=subprocess.DEVNULL, stderr=log,
                                           env={**os.environ, "RUST_LOG": "warn"})

        start("broker", ["broker", "--broker-addr", broker, "--data-dir", os.path.join(work, "broker")])
        time.sleep(1.5)
        common = ["--brokers", broker, "--partitions", "4"]
        # The batch layer creates the topics.
        start("batch", ["batch", *common, "--data-dir", os.path.join(work, "batch"),
                        "--http-addr", batch_addr, "--recompute-interval", "1h",
                        "--full-recompute-every", "0s", "--admin-token", TOKEN])
        wait_http("http://" + batch_addr)
        t = time.time()
        subprocess.run([LAMBDA, "produce", corpus, "--brokers", broker],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        produce_s = time.time() - t
        t = time.time()
        while metric("http://" + batch_addr, "lambda_batch_log_end_offset") < args.events:
            time.sleep(0.2)
        ingest_s = time.time() - t

        batch_rss = PeakRss(procs["batch"].pid)
        t = time.time()
        full = post(f"http://{batch_addr}/recompute?mode=full", TOKEN)
        full_s = time.time() - t
        batch_peak = batch_rss.finish()
        subprocess.run([LAMBDA, "produce", corpus + ".more", "--brokers", broker],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while metric("http://" + batch_addr, "lambda_batch_log_end_offset") < args.events + extra:
            time.sleep(0.2)
        t = time.time()
        incr = post(f"http://{batch_addr}/recompute?mode=incremental", TOKEN)
        incr_s = time.time() - t
        lambda_state = du_mb(os.path.join(work, "batch"))
        log_mb = du_mb(os.path.join(work, "batch", "master-log"))

        t = time.time()
        replay = subprocess.Popen(
            [LAMBDA, "replay", *common, "--data-dir", os.path.join(work, "replay"),
             "--realtime-topic", "lambda.realtime.replay", "--http-addr", replay_addr,
             "--compare-with", "http://" + batch_addr, "--exit-after-check"],
            stdout=subprocess.PIPE, stderr=open(os.path.join(work, "replay.log"), "w"), text=True,
            env={**os.environ, "RUST_LOG": "warn"})
        replay_rss = PeakRss(replay.pid)
        out, _ = replay.communicate()
        replay_s = time.time() - t
        replay_peak = replay_rss.finish()
        replay_state = du_mb(os.path.join(work, "replay"))
        agreed = replay.returncode == 0 and "agrees with batch view" in out

        n = args.events + extra
        print(f"Lambda and Kappa reprocessing {n:,} events ({(os.path.getsize(corpus) + os.path.getsize(corpus + '.more')) / 1e6:.0f} MB of text), "
              f"{os.cpu_count()} cores; produced in {produce_s:.1f} s, then ingested by the batch layer in {ingest_s:.1f} s more")
        print(f"{'':44} {'seconds':>9} {'events/s':>12} {'state MB':>9} {'peak RSS MB':>12}")
        print(f"{'Lambda: full recompute (master log)':44} {full_s:9.2f} {args.events / full_s:12,.0f} "
              f"{lambda_state:9.1f} {batch_peak:12.0f}")
        print(f"{f'Lambda: incremental recompute (+{extra:,})':44} {incr_s:9.2f} {extra / incr_s:12,.0f} "
              f"{'':>9} {'':>12}")
        print(f"{'Kappa: lambda replay from offset 0':44} {replay_s:9.2f} {n / replay_s:12,.0f} "
              f"{replay_state:9.1f} {replay_peak:12.0f}")
        print(f"master log {log_mb:.1f} MB; views v{full['version']} (full) and v{incr['version']} (incremental)")
        print(out.strip().splitlines()[-1] if out.strip() else "replay: no output")
        return 0 if agreed else 1
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    sys.exit(main())
