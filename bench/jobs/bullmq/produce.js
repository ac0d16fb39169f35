// BullMQ producer of bench/run-jobs: adds --count no-op jobs with Queue.addBulk, --batch jobs
// per call and --inflight calls outstanding, then prints "first_us=... last_us=..." (wall
// clock of the first send and of the last addBulk's reply).
//
//   node produce.js --count N --phase w|m [--batch 1000] [--inflight 4] [--rate JOBS_PER_S]
//
// With --rate, jobs go out one add() at a time on schedule (for latency at a fixed load).
'use strict';

const { Queue } = require('bullmq');
const { QUEUE_NAME, nowMicros, connection, option } = require('./common');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const count = Number(option('count'));
  const phase = option('phase');
  const batch = Number(option('batch', '1000'));
  const inflight = Number(option('inflight', '4'));
  const rate = Number(option('rate', '0'));
  const queue = new Queue(QUEUE_NAME, { connection: connection() });
  await queue.waitUntilReady();
  const jobOptions = { removeOnComplete: true, removeOnFail: 1000 };
  const firstUs = nowMicros();
  if (rate > 0) {
    const pending = [];
    for (let seq = 0; seq < count; seq++) {
      const dueUs = firstUs + (seq * 1e6) / rate;
      const waitMs = (dueUs - nowMicros()) / 1000;
      if (waitMs > 1) await sleep(waitMs);
      pending.push(queue.add('noop', { phase, seq, published_us: nowMicros() }, jobOptions));
    }
    await Promise.all(pending);
  } else {
    let next = 0;
    async function sender() {
      while (next < count) {
        const from = next;
        next = Math.min(count, next + batch);
        const jobs = [];
        for (let seq = from; seq < next; seq++) {
          jobs.push({ name: 'noop', data: { phase, seq, published_us: nowMicros() }, opts: jobOptions });
        }
        await queue.addBulk(jobs);
      }
    }
    await Promise.all(Array.from({ length: inflight }, sender));
  }
  const lastUs = nowMicros();
  await queue.close();
  console.log(`first_us=${firstUs} last_us=${lastUs}`);
}

main().catch((err) => {
  console.error(`bullmq producer: ${err.stack || err}`);
  process.exit(1);
});
