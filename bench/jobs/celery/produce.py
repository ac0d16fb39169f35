"""Celery producer of bench/run-jobs: sends COUNT no-op jobs and prints, on stdout, one line
"first_us=... last_us=..." (wall clock of the first and last send).

    produce.py --count N --phase w|m [--rate JOBS_PER_S]

Celery has no batch publish: each apply_async is one LPUSH on the Redis list, sent on one
producer (connection) reused for all jobs. --rate 0 (default) sends as fast as it can.
"""
import argparse
import time

from jobs_app import app, noop


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--phase", required=True)
    parser.add_argument("--rate", type=float, default=0)
    args = parser.parse_args()
    interval_ns = int(1e9 / args.rate) if args.rate > 0 else 0
    with app.producer_or_acquire() as producer:
        begin_ns = time.time_ns()
        first_us = begin_ns // 1000
        for i in range(args.count):
            if interval_ns:
                due = begin_ns + i * interval_ns
                while time.time_ns() < due:
                    time.sleep(max(0, (due - time.time_ns()) / 1e9))
            noop.apply_async(args=(args.phase, i, time.time_ns() // 1000), producer=producer)
        last_us = time.time_ns() // 1000
    print(f"first_us={first_us} last_us={last_us}", flush=True)


if __name__ == "__main__":
    main()
