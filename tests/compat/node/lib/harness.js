// Shared pieces of the Node compatibility suite: a real `tidepool broker` process on a fresh
// data directory, a @google-cloud/pubsub client pointed at it in emulator mode, and bounded
// waiting helpers. Every wait here ends by itself; a test that would hang fails instead.

import {spawn} from 'node:child_process';
import {existsSync, mkdtempSync, rmSync} from 'node:fs';
import {createServer} from 'node:net';
import {tmpdir} from 'node:os';
import {dirname, join, resolve} from 'node:path';
import {fileURLToPath} from 'node:url';
import {setTimeout as sleep} from 'node:timers/promises';

import {PubSub} from '@google-cloud/pubsub';

// google-auth-library would otherwise probe the GCE metadata server (a link-local address off
// this machine) to find default credentials; the emulator connection needs none.
process.env.METADATA_SERVER_DETECTION = 'none';

const suiteDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');

export const PROJECT = 'tidepool-compat';

// gRPC status codes, as the client reports them in error.code.
export const Code = Object.freeze({
  OK: 0,
  CANCELLED: 1,
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  FAILED_PRECONDITION: 9,
  UNAVAILABLE: 14,
});

const STARTUP_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 15_000;
// The startup line of `tidepool broker`: "... Pub/Sub API on HOST:PORT (port N)".
const STARTUP_LINE = /Pub\/Sub API on \S+:(\d+)\b/;

// A loopback port nothing listens on right now.
function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const {port} = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

export function brokerBinary() {
  const bin = process.env.TIDEPOOL_BIN ?? join(suiteDir, '..', '..', '..', 'build', 'tidepool');
  if (!existsSync(bin)) {
    throw new Error(`tidepool binary not found at ${bin}; build it or set TIDEPOOL_BIN`);
  }
  return bin;
}

// Brokers of this process that are still running: killed if the process exits without
// closing them (a crash or a cancelled test), so that none outlives the suite.
const running = new Set();
process.on('exit', () => {
  for (const proc of running) proc.kill('SIGKILL');
});

// One broker process. start() may be called again after stop()/kill() to restart it on the
// same data directory and port.
export class Broker {
  // extraArgs: more `tidepool broker` flags, e.g. ['--stream-lifetime', '2'].
  constructor(extraArgs = []) {
    this.extraArgs = extraArgs;
    this.dataDir = mkdtempSync(join(tmpdir(), 'tidepool-node-compat-'));
    this.port = 0;  // chosen at the first start, kept for restarts
    this.proc = null;
    this.output = '';  // stdout and stderr of every run, for failure messages
  }

  get address() {
    return `127.0.0.1:${this.port}`;
  }

  // Starts the broker and waits for its startup line. The first start picks a free loopback
  // port (and tries another if that one is taken meanwhile); restarts reuse it.
  async start() {
    if (this.proc) throw new Error('broker already running');
    if (this.port !== 0) return this.#launch();
    for (let attempt = 1; ; attempt += 1) {
      this.port = await freePort();
      try {
        return await this.#launch();
      } catch (e) {
        if (attempt >= 3 || !/cannot listen/.test(e.message)) throw e;
      }
    }
  }

  async #launch() {
    const args = ['broker', '--data-dir', this.dataDir, '--listen', `127.0.0.1:${this.port}`,
      '--admin-listen', '127.0.0.1:0', ...this.extraArgs];
    const proc = spawn(brokerBinary(), args, {stdio: ['ignore', 'pipe', 'pipe']});
    this.proc = proc;
    running.add(proc);
    this.exited = new Promise(resolveExit => {
      proc.once('exit', (code, signal) => {
        running.delete(proc);
        if (this.proc === proc) this.proc = null;
        resolveExit({code, signal});
      });
    });
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', chunk => (this.output += chunk));
    proc.stdout.setEncoding('utf8');
    const port = await new Promise((resolvePort, reject) => {
      let seen = '';
      const timer = setTimeout(() => {
        proc.kill('SIGKILL');
        reject(new Error(
          `broker printed no startup line within ${STARTUP_TIMEOUT_MS} ms:\n${this.output}`));
      }, STARTUP_TIMEOUT_MS);
      proc.stdout.on('data', chunk => {
        this.output += chunk;
        seen += chunk;
        const m = STARTUP_LINE.exec(seen);
        if (m) {
          clearTimeout(timer);
          resolvePort(Number(m[1]));
        }
      });
      proc.once('close', (code, signal) => {  // after 'exit', once stderr is fully read
        clearTimeout(timer);
        reject(new Error(
          `broker exited before starting (code ${code}, signal ${signal}):\n${this.output}`));
      });
      proc.once('error', e => {
        clearTimeout(timer);
        reject(new Error(`cannot run ${brokerBinary()}: ${e.message}`));
      });
    });
    if (port !== this.port) throw new Error(`broker listens on port ${port}, not ${this.port}`);
    return this;
  }

  // Sends `signal` and waits for the process to end; SIGKILL if it has not within the timeout.
  async stop(signal = 'SIGTERM') {
    const proc = this.proc;
    if (!proc) return null;
    proc.kill(signal);
    let timer;
    const timeout = new Promise(r => (timer = setTimeout(() => r('timeout'), STOP_TIMEOUT_MS)));
    let result = await Promise.race([this.exited, timeout]);
    clearTimeout(timer);
    if (result === 'timeout') {
      proc.kill('SIGKILL');
      result = {...(await this.exited), timedOut: true};
    }
    return result;
  }

  kill() {
    return this.stop('SIGKILL');
  }

  // Stops the broker with SIGTERM and removes its data; throws if it did not drain and exit
  // cleanly, which is itself a failure worth seeing.
  async close() {
    const result = await this.stop('SIGTERM');
    rmSync(this.dataDir, {recursive: true, force: true});
    if (result && (result.code !== 0 || result.timedOut)) {
      const how = JSON.stringify(result);
      throw new Error(`broker did not stop cleanly on SIGTERM (${how}):\n${this.output}`);
    }
  }
}

export function newClient(broker) {
  return new PubSub({
    projectId: PROJECT,
    apiEndpoint: broker.address,
    emulatorMode: true,
  });
}

// Starts a broker and a client for one test file; returns {broker, pubsub, close}.
export async function setup(extraArgs = []) {
  const broker = new Broker(extraArgs);
  try {
    await broker.start();
  } catch (e) {
    await broker.close().catch(() => {});  // removes the data directory
    throw e;
  }
  const pubsub = newClient(broker);
  return {
    broker,
    pubsub,
    async close() {
      await withTimeout(pubsub.close(), 10_000, 'pubsub.close()').catch(() => {});
      await broker.close();
    },
  };
}

let counter = 0;
// A resource id unique within the run: names never collide between tests of one broker.
export function uniqueName(prefix) {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}`;
}

export async function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// Polls `predicate` until it returns true or `ms` passes; then fails with `what`.
export async function waitFor(predicate, ms, what, intervalMs = 50) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() >= deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

// Asserts that `promise` rejects with the gRPC `code`; returns the error for further checks.
export async function expectGrpcError(promise, code, what) {
  let error;
  try {
    await promise;
  } catch (e) {
    error = e;
  }
  if (!error) throw new Error(`${what}: expected gRPC code ${code}, but the call succeeded`);
  if (error.code !== code) {
    throw new Error(`${what}: expected gRPC code ${code}, got ${error.code}: ${error.message}`);
  }
  return error;
}

// Opens a streaming-pull subscriber and hands every message to `onMessage`. Subscriber errors
// are collected, not thrown, so that a test can assert on them. close() ends the stream.
export function listen(subscription, onMessage) {
  const errors = [];
  subscription.on('message', onMessage);
  subscription.on('error', e => errors.push(e));
  return {
    errors,
    async close() {
      subscription.removeAllListeners('message');
      await withTimeout(subscription.close(), 10_000, 'subscription.close()');
      subscription.removeAllListeners('error');
    },
  };
}

export {sleep};
