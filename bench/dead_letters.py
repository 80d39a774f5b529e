#!/usr/bin/env python3
"""How fast the speed layer gets through records when some are not events.

Starts `lambda broker` (SQLite storage), produces RECORDS records of which
one in BAD_EVERY is invalid UTF-8 (a dead letter), then starts
`lambda speed` (Kappa architecture, so no batch layer is needed) and times
it from start until its checkpointed position covers every record; checks
that the dead-letter topic's `lambda_dead_letters_total` equals the bad
records. Prints one line. LAMBDA_BIN picks the binary, so two builds can be
compared one after the other.

Usage: python3 bench/dead_letters.py [--records 100000] [--bad-every 100]
Needs: target/release/lambda (cargo build --release -p cli) and
confluent-kafka (pip install -r bench/requirements.txt).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import LAMBDA, free_port, metric, stop_all, wait_http  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--bad-every", type=int, default=100)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="lambda-dlq-")
    procs = {}
    try:
        brokers = f"127.0.0.1:{free_port()}"
        procs["broker"] = subprocess.Popen(
            [LAMBDA, "broker", "--broker-addr", brokers, "--data-dir", f"{work}/broker"],
            stdout=subprocess.DEVNULL,
            stderr=open(f"{work}/broker.log", "w"),
        )
        admin = AdminClient({"bootstrap.servers": brokers})
        deadline = time.time() + 60
        while True:
            try:
                admin.list_topics(timeout=2)
                break
            except Exception:
                if time.time() > deadline:
                    raise SystemExit("the broker did not answer within 60 s")
                time.sleep(0.2)
        for topic in ("events", "events.dlq", "events.rt"):
            admin.create_topics([NewTopic(topic, 3, 1)])[topic].result()
        producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
        bad = 0
        for i in range(args.records):
            if i % args.bad_every == 0:
                value, bad = b"\xff\xfe not text %d" % i, bad + 1
            else:
                value = b"lambda kappa stream w%d" % i
            while True:
                try:
                    producer.produce("events", value, key=str(i))
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.flush()

        http = f"http://127.0.0.1:{free_port()}"
        started = time.time()
        procs["speed"] = subprocess.Popen(
            [LAMBDA, "speed", "--brokers", brokers, "--topic", "events",
             "--dead-letter-topic", "events.dlq", "--realtime-topic", "events.rt",
             "--partitions", "3", "--data-dir", f"{work}/speed",
             "--http-addr", http.removeprefix("http://"), "--architecture", "kappa"],
            stdout=subprocess.DEVNULL,
            stderr=open(f"{work}/speed.log", "w"),
        )
        wait_http(http)
        while metric(http, "lambda_speed_position") < args.records:
            if time.time() - started > 600:
                raise SystemExit("the speed layer did not get through in 600 s")
            time.sleep(0.02)
        elapsed = time.time() - started
        dead = metric(http, "lambda_dead_letters_total")
        print(
            f"{os.path.basename(LAMBDA)}: {args.records:,} records, {bad:,} not events "
            f"(1 in {args.bad_every}): all checkpointed {elapsed:.2f} s after start "
            f"({args.records / elapsed:,.0f} records/s), {dead:,.0f} dead letters"
        )
        if dead != bad:
            raise SystemExit(f"{dead:.0f} dead letters for {bad} bad records")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
