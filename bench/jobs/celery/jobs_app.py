"""Celery side of bench/run-jobs: the no-op task and its stats recorder.

Every handled job appends one line "PHASE SEQ PUBLISHED_US START_US END_US" (wall-clock µs) to
$JOBS_STATS_DIR/celery-<pid>.txt. Lines are buffered in memory and written by a thread every
20 ms, so the handler itself does no I/O; bench/jobs/collect.py counts and summarizes them.

Configuration (environment): JOBS_REDIS_URL (broker), JOBS_STATS_DIR, JOBS_CELERY_PREFETCH
(worker_prefetch_multiplier, default 4 as in Celery).
"""
import os
import threading
import time

from celery import Celery

FLUSH_INTERVAL_SECONDS = 0.02

app = Celery("jobs", broker=os.environ.get("JOBS_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    # No result backend: a no-op job has no result, and Celery then stores nothing per task.
    task_ignore_result=True,
    worker_prefetch_multiplier=int(os.environ.get("JOBS_CELERY_PREFETCH", "4")),
    worker_send_task_events=False,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


class Recorder:
    """Per-process buffer of stats lines, flushed by a thread started in the process that
    records (prefork children are forked after import, and threads do not survive a fork)."""

    def __init__(self):
        self.pid = None
        self.lock = threading.Lock()
        self.lines = []

    def add(self, line):
        if self.pid != os.getpid():
            self._start()
        with self.lock:
            self.lines.append(line)

    def _start(self):
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.lines = []
        path = os.path.join(os.environ["JOBS_STATS_DIR"], f"celery-{self.pid}.txt")
        threading.Thread(target=self._flush_loop, args=(path,), daemon=True).start()

    def _flush_loop(self, path):
        with open(path, "a", buffering=1 << 20) as out:
            while True:
                time.sleep(FLUSH_INTERVAL_SECONDS)
                with self.lock:
                    lines, self.lines = self.lines, []
                if lines:
                    out.write("".join(lines))
                    out.flush()


recorder = Recorder()


@app.task(name="jobs.noop")
def noop(phase, seq, published_us):
    start_us = time.time_ns() // 1000
    recorder.add(f"{phase} {seq} {published_us} {start_us} {time.time_ns() // 1000}\n")
