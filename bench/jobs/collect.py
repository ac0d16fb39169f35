"""Waits for a side's jobs to be handled and summarizes them (bench/run-jobs).

Workers of every side append one line per handled job to DIR/<side>-<pid>.txt:
    PHASE SEQ PUBLISHED_US START_US END_US
(wall-clock µs: PUBLISHED when the producer created the job, START/END around the handler).

    collect.py --dir DIR --side SIDE --phase P --count N --first-us T [--timeout S]
               [--watch-pids "PID ..."]

Waits until COUNT distinct SEQs of PHASE were handled (fails after --timeout seconds, or as
soon as a watched process is gone), then prints one line on stdout:
    jobs=N seconds=S jobs_per_s=R p50_us=.. p99_us=.. max_us=.. duplicates=D last_end_us=E
seconds = last END - T (T: the producer's first send), so it covers publish → handler end.
Latency = START - PUBLISHED (dispatch latency: from job creation to its handler starting).
"""
import argparse
import glob
import os
import sys
import time

POLL_SECONDS = 0.05


def percentile(sorted_values, p):
    if not sorted_values:
        return 0
    rank = int(p / 100.0 * (len(sorted_values) - 1) + 0.5)
    return sorted_values[min(rank, len(sorted_values) - 1)]


class Reader:
    """Reads the stats files incrementally (complete lines only)."""

    def __init__(self, directory, side, phase):
        self.pattern = os.path.join(directory, f"{side}-*.txt")
        self.phase = phase
        self.offsets = {}
        self.partial = {}
        self.jobs = {}  # seq -> (published_us, start_us, end_us) of its first handling
        self.duplicates = 0

    def poll(self):
        for path in glob.glob(self.pattern):
            with open(path, "rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
                self.offsets[path] = f.tell()
            text = self.partial.get(path, b"") + data
            lines = text.split(b"\n")
            self.partial[path] = lines.pop()
            for line in lines:
                fields = line.split()
                if len(fields) != 5 or fields[0].decode() != self.phase:
                    continue
                seq = int(fields[1])
                if seq in self.jobs:
                    self.duplicates += 1
                    continue
                self.jobs[seq] = (int(fields[2]), int(fields[3]), int(fields[4]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--side", required=True)
    parser.add_argument("--phase", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first-us", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--watch-pids", default="")
    args = parser.parse_args()

    reader = Reader(args.dir, args.side, args.phase)
    deadline = time.monotonic() + args.timeout
    pids = [int(p) for p in args.watch_pids.split()]
    while True:
        reader.poll()
        if len(reader.jobs) >= args.count:
            break
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                sys.exit(f"collect: {args.side}: process {pid} exited with "
                         f"{len(reader.jobs)}/{args.count} jobs handled")
        if time.monotonic() > deadline:
            sys.exit(f"collect: {args.side}: only {len(reader.jobs)}/{args.count} jobs of phase "
                     f"{args.phase} handled after {args.timeout:.0f} s")
        time.sleep(POLL_SECONDS)
    # Lines still in flight (a duplicate handled right after) do not change the result.
    latencies = sorted(start - published for published, start, _ in reader.jobs.values())
    last_end = max(end for _, _, end in reader.jobs.values())
    seconds = (last_end - args.first_us) / 1e6
    print(f"jobs={len(reader.jobs)} seconds={seconds:.3f} "
          f"jobs_per_s={len(reader.jobs) / seconds:.0f} p50_us={percentile(latencies, 50)} "
          f"p99_us={percentile(latencies, 99)} max_us={latencies[-1]} "
          f"duplicates={reader.duplicates} last_end_us={last_end}")


if __name__ == "__main__":
    main()
