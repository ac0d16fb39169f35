// BullMQ worker of bench/run-jobs: one Worker with --concurrency async slots, a no-op
// processor that records "PHASE SEQ PUBLISHED_US START_US END_US" for each job. Lines are
// buffered and appended to $JOBS_STATS_DIR/bullmq-<pid>.txt every 20 ms. Closes on SIGTERM.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { Worker } = require('bullmq');
const { QUEUE_NAME, nowMicros, connection, option } = require('./common');

const FLUSH_INTERVAL_MS = 20;
const statsPath = path.join(process.env.JOBS_STATS_DIR, `bullmq-${process.pid}.txt`);
let lines = [];

function flush() {
  if (lines.length === 0) return;
  fs.appendFileSync(statsPath, lines.join(''));
  lines = [];
}

const worker = new Worker(
  QUEUE_NAME,
  async (job) => {
    const start = nowMicros();
    lines.push(`${job.data.phase} ${job.data.seq} ${job.data.published_us} ${start} ${nowMicros()}\n`);
  },
  {
    connection: connection(),
    concurrency: Number(option('concurrency', '50')),
    // Completed jobs are not kept (no result to read back), as Celery keeps none here.
    removeOnComplete: { count: 0 },
    removeOnFail: { count: 1000 },
  },
);
worker.on('failed', (job, err) => {
  console.error(`bullmq worker: job ${job && job.id} failed: ${err}`);
});
worker.on('error', (err) => {
  console.error(`bullmq worker: ${err}`);
});

const timer = setInterval(flush, FLUSH_INTERVAL_MS);
let closing = false;
async function shutdown() {
  if (closing) return;
  closing = true;
  await worker.close();
  clearInterval(timer);
  flush();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
