// Shared pieces of the browser suite: a real `tidepool up` (broker, llm-sim, a worker pool per
// app, the web tier) on a fresh data directory and free loopback ports, Debian's Chromium
// driven by playwright-core, screenshots, and a recorder that watches the chat page's DOM.
// Every wait here ends by itself; a test that would hang fails instead.

import {spawn} from 'node:child_process';
import {existsSync, mkdirSync, mkdtempSync, rmSync} from 'node:fs';
import {tmpdir} from 'node:os';
import {dirname, join, resolve} from 'node:path';
import {fileURLToPath} from 'node:url';

import {after, before} from 'node:test';

import {chromium} from 'playwright-core';

const suiteDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const repoDir = resolve(suiteDir, '..', '..');

export const APP = 'scent-advisor';
// The request subscription of an app is `{app}-workers` unless its app.yaml names another.
export const REQUEST_SUBSCRIPTION = `${APP}-workers`;

const STARTUP_TIMEOUT_MS = 30_000;
const READY_TIMEOUT_MS = 30_000;
// `tidepool up` drains its worker pools on SIGTERM (an idle worker exits at once).
const STOP_TIMEOUT_MS = 40_000;
const RATE_LIMITED_ATTEMPTS = 10;
// "tidepool up: chat   http://127.0.0.1:PORT/ (apps: …)"
const CHAT_LINE = /tidepool up: chat\s+(http:\/\/\S+?)\/\s/;

export function tidepoolBinary() {
  const bin = process.env.TIDEPOOL_BIN ?? join(repoDir, 'build', 'tidepool');
  if (!existsSync(bin)) {
    throw new Error(`tidepool binary not found at ${bin}; build it or set TIDEPOOL_BIN`);
  }
  return bin;
}

// Processes of this test file that are still running: their whole process group (tidepool
// and the worker instances it started) is killed if the file exits without stopping them.
const running = new Set();
process.on('exit', () => {
  for (const proc of running) {
    try {
      process.kill(-proc.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

// One `tidepool up`. Every listener is on port 0 (the kernel picks a free one); the web
// address is read from the startup line.
export class Tidepool {
  constructor() {
    this.dataDir = mkdtempSync(join(tmpdir(), 'tidepool-browser-'));
    this.proc = null;
    this.baseUrl = '';
    this.output = '';  // stdout and stderr, for failure messages
  }

  async start() {
    const args = ['up', '--data-dir', this.dataDir, '--listen', '127.0.0.1:0',
      '--broker-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
      '--llm-sim-listen', '127.0.0.1:0'];
    // From the repository root: `up` finds apps/ and ui/ there. Its own process group, so
    // that an emergency kill also reaches the worker instances.
    const proc = spawn(tidepoolBinary(), args,
                       {cwd: repoDir, detached: true, stdio: ['ignore', 'pipe', 'pipe']});
    this.proc = proc;
    running.add(proc);
    this.exited = new Promise(resolveExit => {
      proc.once('exit', (code, signal) => {
        running.delete(proc);
        resolveExit({code, signal});
      });
    });
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', chunk => (this.output += chunk));
    proc.stdout.setEncoding('utf8');
    this.baseUrl = await new Promise((resolveUrl, reject) => {
      const timer = setTimeout(() => reject(new Error(
        `tidepool up printed no chat address within ${STARTUP_TIMEOUT_MS} ms:\n${this.output}`)),
        STARTUP_TIMEOUT_MS);
      proc.stdout.on('data', chunk => {
        this.output += chunk;
        const m = CHAT_LINE.exec(this.output);
        if (m) {
          clearTimeout(timer);
          resolveUrl(m[1]);
        }
      });
      proc.once('close', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(
          `tidepool up exited before starting (code ${code}, signal ${signal}):\n${this.output}`));
      });
      proc.once('error', e => {
        clearTimeout(timer);
        reject(new Error(`cannot run ${tidepoolBinary()}: ${e.message}`));
      });
    });
    // Ready: the web tier's store and event stream are up, and the app's pool has a running
    // instance, so that the first message is not timed against a worker's start-up.
    await waitFor(async () => (await fetch(`${this.baseUrl}/readyz`).catch(() => null))?.ok,
                  READY_TIMEOUT_MS, `${this.baseUrl}/readyz to answer 200`);
    await waitFor(async () => {
      const pool = (await this.dashboard()).pools?.find(p => p.name === APP);
      return (pool?.instances ?? []).some(i => i.state === 'running');
    }, READY_TIMEOUT_MS, `a running instance of the ${APP} pool`);
    return this;
  }

  // One API call; like the UI, it waits out a 429 (the per-address POST rate limit, which the
  // browser and this process share on loopback) and tries again.
  async api(path, {method = 'GET', body} = {}) {
    for (let attempt = 1; ; attempt += 1) {
      const response = await fetch(`${this.baseUrl}${path}`, {
        method,
        headers: body === undefined ? {} : {'Content-Type': 'application/json'},
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const data = await response.json().catch(() => null);
      if (response.status === 429 && attempt < RATE_LIMITED_ATTEMPTS) {
        const seconds = Number(response.headers.get('Retry-After')) || 1;
        await new Promise(r => setTimeout(r, seconds * 1000));
        continue;
      }
      if (!response.ok) {
        throw new Error(`${method} ${path}: HTTP ${response.status} ${JSON.stringify(data)}`);
      }
      return data;
    }
  }

  dashboard() {
    return this.api('/v1/dashboard');
  }

  conversation(id) {
    return this.api(`/v1/apps/${APP}/conversations/${encodeURIComponent(id)}`);
  }

  // Stops tidepool with SIGTERM (SIGKILL to the group after the timeout) and removes its
  // data; throws if it did not exit cleanly, which is itself a failure worth seeing.
  async close() {
    const proc = this.proc;
    let result = null;
    if (proc?.pid === undefined) {
      // never started (the binary could not be run)
    } else if (proc.exitCode !== null || proc.signalCode !== null) {
      result = await this.exited;  // it ended by itself: a crash unless it says otherwise
    } else {
      proc.kill('SIGTERM');
      let timer;
      const timeout = new Promise(r => (timer = setTimeout(() => r('timeout'), STOP_TIMEOUT_MS)));
      result = await Promise.race([this.exited, timeout]);
      clearTimeout(timer);
      if (result === 'timeout') {
        try {
          process.kill(-proc.pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
        result = {...(await this.exited), timedOut: true};
      }
    }
    rmSync(this.dataDir, {recursive: true, force: true});
    if (result && (result.code !== 0 || result.timedOut)) {
      throw new Error(
        `tidepool up did not stop cleanly on SIGTERM (${JSON.stringify(result)}):\n${this.output}`);
    }
  }
}

// Debian's Chromium (never a downloaded browser). As root it needs --no-sandbox; without the
// background-networking flags it keeps dialling Google's hosts, which this kind of machine
// refuses. playwright-core gives every launch a fresh, empty profile.
export function launchBrowser() {
  const executablePath = process.env.TIDEPOOL_CHROMIUM ?? '/usr/bin/chromium';
  if (!existsSync(executablePath)) {
    throw new Error(`no Chromium at ${executablePath}: install Debian's chromium package ` +
                    '(scripts/setup does) or set TIDEPOOL_CHROMIUM');
  }
  return chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

// Starts a `tidepool up` and a Chromium before the calling file's tests and stops both after
// them: `env.tidepool` and `env.browser` are set once they run.
export function startTidepoolAndBrowser() {
  const env = {tidepool: undefined, browser: undefined};
  before(async () => {
    env.tidepool = new Tidepool();  // assigned first, so that after() stops it if start() fails
    await env.tidepool.start();
    env.browser = await launchBrowser();
  });
  after(async () => {
    await env.browser?.close();
    await env.tidepool?.close();
  });
  return env;
}

// A page that remembers its uncaught errors (a script error is a UI bug, whatever the test).
export async function newPage(browser) {
  const context = await browser.newContext({viewport: {width: 1280, height: 900}});
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', e => page.errors.push(`${e.name}: ${e.message}`));
  return page;
}

export const artifactsDir =
  resolve(process.env.TIDEPOOL_BROWSER_ARTIFACTS ?? join(suiteDir, 'artifacts'));

export async function screenshot(page, name) {
  mkdirSync(artifactsDir, {recursive: true});
  const path = join(artifactsDir, `${name}.png`);
  await page.screenshot({path, fullPage: true});
  return path;
}

// Installed before the chat page's own scripts (on every load, reloads included): records
// every text the progress line shows and every state of every assistant message, as DOM
// mutations happen, so that a short state between two polls is not missed. Read it with
// recording(page).
export async function recordChat(page) {
  await page.addInitScript(() => {
    const log = {progress: [], replies: []};
    window.__tidepoolRecording = log;
    const last = new Map();  // message node → its last recorded "state|text|cards"
    const observe = () => {
      const progress = document.querySelector('[data-testid="progress"]');
      const text = progress?.textContent ?? '';
      if (log.progress[log.progress.length - 1] !== text) log.progress.push(text);
      const selector = '[data-testid="message"][data-role="assistant"]';
      for (const node of document.querySelectorAll(selector)) {
        const snapshot = {
          at: performance.now(),
          requestId: node.dataset.requestId ?? null,
          state: node.dataset.state ?? 'final',
          text: node.querySelector('.message-text')?.textContent ?? '',
          cards: node.querySelectorAll('[data-testid="card"]').length,
        };
        const key = `${snapshot.state}|${snapshot.text}|${snapshot.cards}`;
        if (last.get(node) === key) continue;
        last.set(node, key);
        log.replies.push(snapshot);
      }
    };
    document.addEventListener('DOMContentLoaded', () => {
      observe();
      new MutationObserver(observe).observe(document.body, {
        subtree: true, childList: true, characterData: true, attributes: true,
      });
    });
  });
}

export function recording(page) {
  return page.evaluate(() => window.__tidepoolRecording);
}

// Polls `predicate` until it returns something truthy (which is returned) or `ms` passes.
export async function waitFor(predicate, ms, what, intervalMs = 100) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() >= deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise(r => setTimeout(r, intervalMs));
  }
}

// Awaits a Playwright wait, naming what was awaited when it fails (a bare "Timeout 20000ms
// exceeded" does not say which state the page never reached).
export async function expecting(what, promise) {
  try {
    return await promise;
  } catch (e) {
    e.message = `${what}: ${e.message}`;
    throw e;
  }
}

const axeScript = join(suiteDir, 'node_modules', 'axe-core', 'axe.min.js');

// The accessibility problems axe-core finds on the page as it is now (WCAG 2.1 A and AA, and
// axe's best practices), one line each: "impact rule: help [selectors]".
export async function accessibilityViolations(page) {
  await page.addScriptTag({path: axeScript});
  const {violations} = await page.evaluate(() => window.axe.run(document, {
    runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']},
  }));
  return violations.map(v => `${v.impact} ${v.id}: ${v.help} ` +
                             `[${v.nodes.map(n => n.target.join(' ')).join(', ')}]`);
}
