// Shared by the BullMQ producer and worker of bench/run-jobs.
'use strict';

const { performance } = require('node:perf_hooks');

const QUEUE_NAME = 'jobs';

// Wall-clock microseconds, comparable with the other sides' time.time_ns() / CLOCK_REALTIME.
function nowMicros() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

function connection() {
  const url = new URL(process.env.JOBS_REDIS_URL || 'redis://127.0.0.1:6379/0');
  // A Worker needs maxRetriesPerRequest: null (BullMQ blocks on the connection).
  return { host: url.hostname, port: Number(url.port), maxRetriesPerRequest: null };
}

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) {
    if (fallback === undefined) throw new Error(`--${name} is required`);
    return fallback;
  }
  return process.argv[i + 1];
}

module.exports = { QUEUE_NAME, nowMicros, connection, option };
