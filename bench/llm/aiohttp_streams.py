#!/usr/bin/env python3
"""The Python peer of bench/llm/streams.cpp (bench/run-llm-streams): the same closed loop of N
users, each keeping one streamed Chat Completion in flight, with asyncio and aiohttp (Debian's
python3-aiohttp) in one process and one thread.

    aiohttp_streams.py --base-url URL [--streams N] [--seconds S] [--warmup S] [--ramp S]
                       [--ttft-ms MS] [--tokens-per-second R] [--output-tokens K]
                       [--drain S] [--server-pid PID]

Same flags, window and measurements as llm_streams (see bench/llm/streams.cpp): one
aiohttp.ClientSession with an unlimited keep-alive TCPConnector; each call POSTs the same body
as tidepool's client (stream: true, stream_options.include_usage), reads the event stream line
by line to its end, json.loads every `data:` event, and takes the content deltas and the usage.
A call succeeds with HTTP 200, a [DONE] event and usage.completion_tokens == --output-tokens.
Prints one JSON line; peak RSS is ru_maxrss.
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import threading
import time

import aiohttp

MODEL = "bench-model"
PROMPT = "Tell me about Santal 33 by Le Labo and Terre d'Hermes."


def own_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid):
    """utime + stime of another process from /proc/PID/stat; -1 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return -1.0
    # Fields after the command name, which is in parentheses and may hold spaces; utime and
    # stime are fields 14 and 15 of proc(5).
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile_ms(values, fraction):
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


class Run:
    def __init__(self, args):
        self.args = args
        self.url = args.base_url.rstrip("/") + "/chat/completions"
        self.body = json.dumps({
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }).encode()
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        self.ttft = []
        self.total = []
        self.completed = 0
        self.errors = 0
        self.completed_outside = 0
        self.errors_outside = 0
        self.first_error = ""

    async def call(self, session):
        """One streamed call: (time to first content delta or None, error or "")."""
        start = time.monotonic()
        first = None
        done = False
        completion_tokens = -1
        async with session.post(self.url, data=self.body, headers=self.headers) as response:
            if response.status != 200:
                text = await response.text()
                return None, f"HTTP {response.status}: {text[:200]}"
            # Read to the end of the body (past [DONE]) so the connection goes back to the pool.
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    continue
                event = json.loads(data)
                usage = event.get("usage")
                if usage:
                    completion_tokens = usage.get("completion_tokens", -1)
                choices = event.get("choices")
                if choices:
                    content = (choices[0].get("delta") or {}).get("content")
                    if content and first is None:
                        first = time.monotonic() - start
        if not done:
            return first, "stream ended without [DONE]"
        if completion_tokens != self.args.output_tokens:
            return first, (f"incomplete reply: {completion_tokens} of "
                           f"{self.args.output_tokens} tokens")
        return first, ""

    async def user(self, session, index):
        await asyncio.sleep(max(0.0, self.start + self.args.ramp * index / self.args.streams
                                - time.monotonic()))
        while time.monotonic() < self.window_end:
            call_start = time.monotonic()
            try:
                ttft, error = await self.call(session)
            except Exception as e:  # any failure of one call is counted, not fatal
                ttft, error = None, f"{type(e).__name__}: {e}"
            call_end = time.monotonic()
            in_window = self.window_start <= call_end < self.window_end
            if error:
                self.first_error = self.first_error or error
                if in_window:
                    self.errors += 1
                else:
                    self.errors_outside += 1
                continue
            if not in_window:
                self.completed_outside += 1
                continue
            self.completed += 1
            self.ttft.append(ttft)
            self.total.append(call_end - call_start)

    def window_clock(self):
        """Samples CPU times at the window's edges, on a thread of its own: a busy event loop
        wakes its own timers late."""
        time.sleep(max(0.0, self.window_start - time.monotonic()))
        self.cpu_start = own_cpu_seconds()
        self.server_cpu_start = process_cpu_seconds(self.args.server_pid)
        time.sleep(max(0.0, self.window_end - time.monotonic()))
        self.cpu_end = own_cpu_seconds()
        self.server_cpu_end = process_cpu_seconds(self.args.server_pid)

    async def main(self):
        args = self.args
        self.start = time.monotonic()
        self.window_start = self.start + args.warmup
        self.window_end = self.window_start + args.seconds
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        # Like tidepool's client: 60 s for the first byte and between reads, 600 s a call.
        timeout = aiohttp.ClientTimeout(total=600, sock_connect=10, sock_read=60)
        clock = threading.Thread(target=self.window_clock, daemon=True)
        clock.start()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            users = [asyncio.create_task(self.user(session, i)) for i in range(args.streams)]
            _, pending = await asyncio.wait(users, timeout=self.window_end + args.drain
                                            - time.monotonic())
            for task in pending:
                task.cancel()
        clock.join()
        self.drained = not pending


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--streams", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--ramp", type=float, default=None)
    parser.add_argument("--ttft-ms", type=float, default=500)
    parser.add_argument("--tokens-per-second", type=float, default=50)
    parser.add_argument("--output-tokens", type=int, default=200)
    parser.add_argument("--drain", type=float, default=10)
    parser.add_argument("--server-pid", type=int, default=0)
    args = parser.parse_args()
    ideal_call = args.ttft_ms / 1000 + (args.output_tokens / args.tokens_per_second
                                        if args.tokens_per_second > 0 else 0)
    if args.ramp is None:
        args.ramp = ideal_call

    run = Run(args)
    asyncio.run(run.main())

    per_second = run.completed / args.seconds
    theoretical = args.streams / ideal_call
    out = {
        "client": "aiohttp",
        "streams": args.streams,
        "threads": 1,
        "window_s": args.seconds,
        "warmup_s": args.warmup,
        "ramp_s": round(args.ramp, 3),
        "completions": run.completed,
        "completions_per_s": round(per_second, 1),
        "theoretical_per_s": round(theoretical, 1),
        "fraction_of_max": round(per_second / theoretical, 4),
        "ttft_p50_ms": round(percentile_ms(run.ttft, 0.50), 1),
        "ttft_p99_ms": round(percentile_ms(run.ttft, 0.99), 1),
        "total_p50_ms": round(percentile_ms(run.total, 0.50), 1),
        "total_p99_ms": round(percentile_ms(run.total, 0.99), 1),
        "errors": run.errors,
        "errors_outside_window": run.errors_outside,
        "completions_outside_window": run.completed_outside,
        "first_error": run.first_error,
        # ru_maxrss is in kB on Linux.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpu_s": round(run.cpu_end - run.cpu_start, 2),
        "drained": run.drained,
        "aiohttp": aiohttp.__version__,
        "python": sys.version.split()[0],
    }
    if args.server_pid > 0:
        out["server_cpu_s"] = round(run.server_cpu_end - run.server_cpu_start, 2)
    print(json.dumps(out), flush=True)
    return 0 if run.errors == 0 and run.drained else 1


if __name__ == "__main__":
    sys.exit(main())
