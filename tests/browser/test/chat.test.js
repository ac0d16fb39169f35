// The scent advisor's chat page in Chromium: a conversation streams its reply with step
// progress and recommendation cards, the reply persists, and a reload in the middle of a
// stream resumes it with the reply shown (and stored) exactly once.

import assert from 'node:assert/strict';
import {test} from 'node:test';

import {APP, accessibilityViolations, expecting, newPage, recordChat,
  recording, screenshot, startTidepoolAndBrowser, waitFor} from '../lib/harness.js';

// The llm-sim answers in 0.35-1.2 s and writes 40 tokens/s: a reply takes a few seconds,
// more on a loaded machine. These bound the waits, they are not expected durations.
const REPLY_TIMEOUT_MS = 45_000;
const PAGE_TIMEOUT_MS = 20_000;

// The progress line's words for the pipeline's steps (ui/app.js STEP_WORDS).
const DISCOVERING = 'Understanding what you like…';
const SCORING = 'Scoring the catalog…';
const WRITING = 'Writing…';

const FINAL_REPLY = '[data-testid="message"][data-role="assistant"]:not([data-state])';
const STREAMING_REPLY = '[data-testid="message"][data-role="assistant"][data-state="streaming"]';

// One `tidepool up` and one Chromium for the file's tests.
const env = startTidepoolAndBrowser();

async function openChat(page) {
  await recordChat(page);
  await page.goto(`${env.tidepool.baseUrl}/apps/${APP}`);
  await expecting('the page connects to the event stream',
    page.locator('[data-testid="connection"][data-state="connected"]')
      .waitFor({timeout: PAGE_TIMEOUT_MS}));
  await expecting('the send button is enabled',
    page.locator('[data-testid="send"]:not([disabled])').waitFor({timeout: PAGE_TIMEOUT_MS}));
}

const conversationIdOf = page =>
  page.evaluate(app => localStorage.getItem(`tidepool.conversation.${app}`), APP);

// The user message on screen with this text, once the server accepted it: its request id.
async function sentRequestId(page, text) {
  const user = page.locator('[data-testid="message"][data-role="user"][data-state="sent"]',
                            {hasText: text});
  await expecting(`the server accepts "${text}"`, user.waitFor({timeout: PAGE_TIMEOUT_MS}));
  const requestId = await user.getAttribute('data-request-id');
  assert.match(requestId ?? '', /\S/, 'an accepted user message carries its request id');
  return requestId;
}

async function finalReplyFor(page, requestId) {
  const reply = page.locator(`${FINAL_REPLY}[data-request-id="${requestId}"]`);
  await expecting(`the final reply to ${requestId}`, reply.waitFor({timeout: REPLY_TIMEOUT_MS}));
  return reply;
}

async function cardsOf(reply) {
  const cards = reply.locator('[data-testid="card"]');
  const shown = [];
  for (let i = 0; i < (await cards.count()); i += 1) {
    const card = cards.nth(i);
    shown.push({
      name: (await card.locator('[data-testid="card-name"]').textContent()).trim(),
      score: (await card.locator('[data-testid="card-score"]').textContent()).trim(),
    });
  }
  return shown;
}

// The history's user message and replies for one request.
async function historyFor(conversationId, requestId) {
  const {messages} = await env.tidepool.conversation(conversationId);
  return {
    users: messages.filter(m => m.role === 'user' && m.request_id === requestId),
    replies: messages.filter(m => m.role !== 'user' && m.request_id === requestId),
  };
}

test('a conversation streams text with step progress and recommendation cards', async t => {
  const page = await newPage(env.browser);
  await openChat(page);
  const conversationId = await conversationIdOf(page);
  assert.match(conversationId ?? '', /^c-/, 'the page keeps its conversation id');

  const question = 'something fresh and citrusy for summer, under 100 euros';
  await page.locator('[data-testid="input"]').fill(question);
  await page.locator('[data-testid="input"]').press('Enter');
  assert.equal(await page.locator('[data-testid="input"]').inputValue(), '',
               'Enter sends the message and empties the box');
  const requestId = await sentRequestId(page, question);

  // Mid-stream: some text shown, the reply not final yet.
  await expecting('streamed text in a reply not final yet', page.waitForFunction(selector => {
    const node = document.querySelector(selector);
    return node && node.querySelector('.message-text').textContent.length > 0;
  }, STREAMING_REPLY, {timeout: REPLY_TIMEOUT_MS, polling: 'raf'}));
  await screenshot(page, 'conversation-streaming');

  const reply = await finalReplyFor(page, requestId);
  await expecting('the progress line is cleared', page.waitForFunction(
    () => document.querySelector('[data-testid="progress"]').textContent === '', null,
    {timeout: PAGE_TIMEOUT_MS}));
  const finalText = await reply.locator('.message-text').textContent();
  assert.ok(finalText.trim().length > 0, 'the final reply has text');
  assert.equal(await page.locator('[data-testid="message"]:not([data-role="user"])').count(), 1,
               'one reply on the page: the streamed message became the final one');
  const cards = await cardsOf(reply);
  await screenshot(page, 'conversation-with-cards');

  // Step progress: the progress line named the steps as they ran, in order, and is empty now.
  const {progress, replies} = await recording(page);
  const steps = progress.filter(words => [DISCOVERING, SCORING, WRITING].includes(words));
  const seen = `the progress line showed ${JSON.stringify(progress)}`;
  assert.ok(steps.includes(DISCOVERING), `the discovery step is shown; ${seen}`);
  assert.ok(steps.includes(WRITING), `the writing step is shown; ${seen}`);
  assert.ok(steps.indexOf(DISCOVERING) < steps.lastIndexOf(WRITING),
            `discovery is shown before writing; ${seen}`);
  assert.equal(progress[progress.length - 1], '', 'the progress line is cleared at the end');

  // Streaming: the text grew in several steps, each a prefix of the final text, while the
  // cards (the scoring tool's result, which comes before the copy) were already shown.
  const partial = replies.filter(r => r.requestId === requestId && r.state === 'streaming' &&
                                      r.text.length > 0);
  const lengths = [...new Set(partial.map(r => r.text.length))];
  assert.ok(lengths.length >= 3, `the text grew in pieces; saw lengths ${JSON.stringify(lengths)}`);
  assert.ok(lengths.some(n => n < finalText.length), 'some text was shown before the reply ended');
  for (const r of partial) {
    assert.ok(finalText.startsWith(r.text),
              `streamed text is a prefix of the reply: ${JSON.stringify(r.text)}`);
  }
  assert.ok(partial.some(r => r.cards > 0), 'the cards were shown while the text streamed');
  t.diagnostic(`progress line: ${JSON.stringify(progress)}; text seen at ${lengths.length} ` +
               `lengths before its final ${finalText.length} characters; ${cards.length} cards`);

  // Cards: one to three (top 3 of the catalog after exclusions), each with a name and a score.
  assert.ok(cards.length >= 1 && cards.length <= 3, `1-3 cards, got ${cards.length}`);
  for (const card of cards) {
    assert.match(card.name, /\S/, 'a card names its fragrance');
    assert.match(card.score, /\d/, `a card shows its score: ${JSON.stringify(card)}`);
  }

  // The history holds exactly that reply, with those cards.
  const history = await historyFor(conversationId, requestId);
  assert.equal(history.users.length, 1, 'one user message in the history');
  assert.equal(history.replies.length, 1, 'one reply in the history');
  assert.equal(history.replies[0].role, 'assistant');
  assert.equal(history.replies[0].text, finalText, 'the page shows the stored reply');
  const storedNames = (history.replies[0].cards?.recommendations?.results ?? []).map(r => r.name);
  assert.deepEqual(cards.map(c => c.name), storedNames, 'the cards are the stored results');

  // The reply persists: a reload shows the same conversation from the history.
  await page.reload();
  const again = await finalReplyFor(page, requestId);
  assert.equal(await again.locator('.message-text').textContent(), finalText);
  assert.deepEqual(await cardsOf(again), cards);
  assert.equal(await page.locator('[data-testid="message"][data-role="user"]').count(), 1);
  assert.equal(await page.locator('[data-testid="message"][data-role="assistant"]').count(), 1);
  assert.equal(await conversationIdOf(page), conversationId);
  await screenshot(page, 'conversation-after-reload');
  assert.deepEqual(await accessibilityViolations(page), [],
                   'axe-core finds no accessibility problems in the conversation');

  assert.deepEqual(page.errors, [], 'no script errors on the page');
  await page.context().close();
});

test('reloading in the middle of a stream resumes it, and the reply appears exactly once',
     async t => {
  const page = await newPage(env.browser);
  await openChat(page);
  const conversationId = await conversationIdOf(page);

  // The reload has to land while the reply streams (a couple of seconds). On a slow machine
  // it may land after the end; then the next message tries again.
  const questions = [
    'A warm woody scent for winter evenings, nothing too sweet, no vanilla',
    'Something with rose and jasmine for a spring wedding, around 120 dollars',
    'A light aquatic scent for the gym, nothing heavy, under 80 dollars',
  ];
  let resumed = null;
  for (const [index, question] of questions.entries()) {
    await page.locator('[data-testid="input"]').fill(question);
    await page.locator('[data-testid="send"]').click();
    const requestId = await sentRequestId(page, question);
    const reply = `[data-testid="message"][data-request-id="${requestId}"]` +
                  ':not([data-role="user"])';
    // The streamed text so far, or null when the reply was final before a poll saw it.
    const before = await expecting('streamed text before the reload', page.waitForFunction(
      selector => {
        const node = document.querySelector(selector);
        if (node && !node.dataset.state) return {text: null};
        const text = node?.querySelector('.message-text').textContent;
        return text ? {text} : null;
      }, reply, {timeout: REPLY_TIMEOUT_MS, polling: 'raf'})).then(h => h.jsonValue())
      .then(({text}) => text);
    if (before === null) {
      t.diagnostic(`message ${index + 1}: the reply ended before it could be reloaded`);
      await finalReplyFor(page, requestId);
      continue;
    }

    await page.reload({waitUntil: 'domcontentloaded'});
    assert.equal(await conversationIdOf(page), conversationId,
                 'the reloaded page continues the same conversation');
    const user = page.locator('[data-testid="message"][data-role="user"]', {hasText: question});
    await expecting('the question after the reload', user.waitFor({timeout: PAGE_TIMEOUT_MS}));
    const finalReply = await finalReplyFor(page, requestId);
    const finalText = await finalReply.locator('.message-text').textContent();
    await screenshot(page, `reload-resumed-${index + 1}`);

    // Exactly once on screen: one question, one reply, and no text doubled by a replay.
    assert.equal(await user.count(), 1, 'the question is shown once');
    assert.equal(await page.locator(reply).count(), 1, 'the reply is shown once');
    assert.equal(await page.locator('[data-testid="message"][data-role="error"]').count(), 0);
    assert.ok(finalText.startsWith(before),
              `the text seen before the reload begins the reply:\n${before}\n---\n${finalText}`);
    const history = await historyFor(conversationId, requestId);
    assert.equal(history.users.length, 1, 'one user message in the history');
    assert.equal(history.replies.length, 1, 'exactly one reply in the history');
    assert.equal(history.replies[0].text, finalText, 'the page shows the stored reply');

    // Did the reloaded page see the reply still streaming? Then it resumed mid-stream.
    const {replies} = await recording(page);
    const afterReload = replies.filter(r => r.requestId === requestId && r.state === 'streaming');
    for (const r of afterReload) {
      assert.ok(finalText.startsWith(r.text), 'text streamed after the reload is a prefix of ' +
                `the reply: ${JSON.stringify(r.text)}`);
    }
    if (afterReload.length > 0) {
      // What the reader saw before the reload is back at once, not rebuilt from nothing.
      assert.ok(afterReload[0].text.startsWith(before),
                `the partial reply is restored after the reload:\n${before}\n---\n` +
                afterReload[0].text);
    }
    // Resumed: tokens kept coming over the reloaded page's stream, not only the final event.
    if (!afterReload.some(r => r.text.length > afterReload[0].text.length)) {
      t.diagnostic(`message ${index + 1}: the reply was written before the reloaded page ` +
                   'streamed it; trying again');
      continue;
    }
    resumed = {requestId, finalText};
    t.diagnostic(`message ${index + 1}: reloaded at ${before.length} of ${finalText.length} ` +
                 `characters; the reloaded page restored ${afterReload[0].text.length} and ` +
                 `streamed ${afterReload.length - 1} more states`);
    break;
  }
  assert.ok(resumed, `no reload of ${questions.length} landed while a reply streamed`);

  // And once more from the history alone: every question has exactly one reply.
  await page.reload();
  await finalReplyFor(page, resumed.requestId);
  const {messages} = await env.tidepool.conversation(conversationId);
  const userCount = messages.filter(m => m.role === 'user').length;
  assert.equal(messages.length, 2 * userCount, 'one reply per question in the history');
  await waitFor(async () => (await page.locator(FINAL_REPLY).count()) === userCount,
                PAGE_TIMEOUT_MS, `${userCount} replies on the page`);
  assert.equal(await page.locator('[data-testid="message"][data-role="assistant"]').count(),
               userCount, 'one reply per question on the page');
  assert.equal(await page.locator('[data-testid="message"][data-role="user"]').count(), userCount);

  assert.deepEqual(page.errors, [], 'no script errors on the page');
  await page.context().close();
});
