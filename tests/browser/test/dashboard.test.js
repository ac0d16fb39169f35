// The operators' dashboard in Chromium: it shows the scent advisor's worker pool with its
// instances and the backlog of the app's request subscription, and its numbers follow the
// traffic (messages accepted, replies stored, the throughput chart).

import assert from 'node:assert/strict';
import {test} from 'node:test';

import {APP, REQUEST_SUBSCRIPTION, accessibilityViolations, expecting,
  newPage, screenshot, startTidepoolAndBrowser} from '../lib/harness.js';

// The dashboard polls every second; replies take a few seconds each on the llm-sim.
const PAGE_TIMEOUT_MS = 20_000;
const REPLIES_TIMEOUT_MS = 60_000;
const MESSAGES = 4;

// One `tidepool up` and one Chromium for the file's tests.
const env = startTidepoolAndBrowser();

// The text of the web tier's table row labelled `label` ("Messages accepted", …), or null.
function webText(page, label) {
  return page.evaluate(wanted => {
    const rows = [...document.querySelectorAll('[data-testid="web"] tr')];
    const row = rows.find(r => r.querySelector('th')?.textContent === wanted);
    return row?.querySelector('td')?.textContent ?? null;
  }, label);
}

// The number in that row ("1,234" reads as 1234), or null.
async function webNumber(page, label) {
  const digits = (await webText(page, label))?.replace(/[^\d]/g, '');
  return digits ? Number(digits) : null;
}

function waitForWebText(page, label, pattern, timeout) {
  return expecting(`"${label}" to match ${pattern}`, page.waitForFunction(([wanted, source]) => {
    const rows = [...document.querySelectorAll('[data-testid="web"] tr')];
    const row = rows.find(r => r.querySelector('th')?.textContent === wanted);
    return new RegExp(source).test(row?.querySelector('td')?.textContent ?? '');
  }, [label, pattern.source], {timeout}));
}

function waitForWebNumber(page, label, atLeast, timeout) {
  return expecting(`"${label}" shows at least ${atLeast}`, page.waitForFunction(([wanted, min]) => {
    const rows = [...document.querySelectorAll('[data-testid="web"] tr')];
    const row = rows.find(r => r.querySelector('th')?.textContent === wanted);
    const digits = row?.querySelector('td')?.textContent.replace(/[^\d]/g, '') ?? '';
    return digits !== '' && Number(digits) >= min;
  }, [label, atLeast], {timeout}));
}

test('the dashboard shows the pool and the backlog, and follows the traffic', async () => {
  const page = await newPage(env.browser);
  await page.goto(`${env.tidepool.baseUrl}/dashboard`);
  await expecting('the dashboard goes live', page.locator(
    '[data-testid="dashboard-status"][data-state="live"]').waitFor({timeout: PAGE_TIMEOUT_MS}));

  // The app's pool, with at least one running instance.
  const pool = page.locator(`[data-testid="pool"][data-pool="${APP}"]`);
  await expecting(`the ${APP} pool`, pool.waitFor({timeout: PAGE_TIMEOUT_MS}));
  const states = await pool.locator('[data-testid="pool-states"]').textContent();
  const instances = Number(/^(\d+) instances?:/.exec(states)?.[1] ?? 0);
  assert.ok(instances >= 1, `the pool lists its instances: "${states}"`);
  assert.match(states, /running \d+/, `an instance is running: "${states}"`);
  assert.ok(await pool.locator('.instance').count() >= 1, 'each instance has its chip');

  // The backlog row of the app's request subscription.
  const backlog = page.locator(
    `[data-testid="backlog"][data-subscription$="${REQUEST_SUBSCRIPTION}"]`);
  await expecting(`the backlog row of ${REQUEST_SUBSCRIPTION}`,
                  backlog.waitFor({timeout: PAGE_TIMEOUT_MS}));
  assert.match(await backlog.locator('th').textContent(), new RegExp(`${REQUEST_SUBSCRIPTION}$`));
  assert.match(await backlog.locator('td').first().textContent(), /^\d[\d,]*$/,
               'the backlog is a number');

  await waitForWebNumber(page, 'Messages accepted', 0, PAGE_TIMEOUT_MS);
  const acceptedBefore = await webNumber(page, 'Messages accepted');
  const repliesBefore = await webNumber(page, 'Replies stored');
  // POST latency (web.post_latency_ms, where the server reports it): no POST yet, so no
  // figure at all, rather than "0 ms".
  const idleLatency = (await env.tidepool.dashboard()).web?.post_latency_ms;
  if (idleLatency) {
    assert.equal(idleLatency.count, 0, 'no POST has been timed yet');
    for (const label of ['POST latency p50', 'POST latency p99']) {
      assert.equal(await webText(page, label), '–', `"${label}" shows no figure before any POST`);
    }
  }
  await screenshot(page, 'dashboard-idle');

  // Traffic: a few messages through the API, as another shopper's browser would send them.
  const {id} = await env.tidepool.api(`/v1/apps/${APP}/conversations`, {method: 'POST', body: {}});
  const texts = ['Something fresh and citrusy for summer', 'A warm woody scent for winter',
    'Roses and jasmine, around 120 dollars', 'A light aquatic scent for the gym'];
  for (const text of texts.slice(0, MESSAGES)) {
    const accepted = await env.tidepool.api(`/v1/apps/${APP}/conversations/${id}/messages`,
                                        {method: 'POST', body: {text}});
    assert.equal(accepted.status, 'accepted');
  }

  // The numbers follow: accepted at once, the throughput chart shows a rate above zero, and
  // the replies as the pool answers.
  await waitForWebNumber(page, 'Messages accepted', acceptedBefore + MESSAGES, PAGE_TIMEOUT_MS);
  await expecting('a throughput above 0/s', page.waitForFunction(() => {
    const label = document.querySelector('[data-testid="throughput-chart"]')
      .getAttribute('aria-label');
    const m = /accepted ([\d.]+)\/s/.exec(label ?? '');
    return m && Number(m[1]) > 0;
  }, null, {timeout: PAGE_TIMEOUT_MS}));
  if (idleLatency) {
    // The server's latency window is 10 s: the page shows it within a poll or two of the POSTs.
    await waitForWebText(page, 'POST latency p50', /^\d[\d.,]* ms$/, PAGE_TIMEOUT_MS);
    await waitForWebText(page, 'POST latency p99', /^\d[\d.,]* ms$/, PAGE_TIMEOUT_MS);
  }
  await screenshot(page, 'dashboard-traffic');
  await waitForWebNumber(page, 'Replies stored', repliesBefore + MESSAGES, REPLIES_TIMEOUT_MS);
  assert.equal(await webNumber(page, 'Messages accepted'), acceptedBefore + MESSAGES,
               'exactly the messages sent were accepted');

  // Every reply is answered, so the request backlog drains back to zero on the page.
  await expecting('the request backlog back at 0', page.waitForFunction(subscription => {
    const row = document.querySelector(
      `[data-testid="backlog"][data-subscription$="${subscription}"]`);
    return row?.querySelector('td')?.textContent === '0';
  }, REQUEST_SUBSCRIPTION, {timeout: PAGE_TIMEOUT_MS}));

  await screenshot(page, 'dashboard');
  assert.deepEqual(await accessibilityViolations(page), [],
                   'axe-core finds no accessibility problems on the dashboard');

  assert.deepEqual(page.errors, [], 'no script errors on the page');
  await page.context().close();
});
