// Ordering keys: with enableMessageOrdering on the subscription and messageOrdering on the
// publisher, every key's messages arrive in publish order, also across a nack.

import assert from 'node:assert/strict';
import {after, before, test} from 'node:test';

import {listen, setup, uniqueName, waitFor} from '../lib/harness.js';

let env;
before(async () => {
  env = await setup();
});
after(async () => {
  await env?.close();
});

const KEYS = ['alpha', 'beta', 'gamma'];
const PER_KEY = 40;

async function orderedPair() {
  const [topic] = await env.pubsub.createTopic(uniqueName('ordered-topic'));
  const [sub] = await topic.createSubscription(uniqueName('ordered-sub'), {
    enableMessageOrdering: true,
  });
  const [metadata] = await sub.getMetadata();
  assert.equal(metadata.enableMessageOrdering, true);
  const publisher = env.pubsub.topic(topic.name, {
    messageOrdering: true,
    batching: {maxMessages: 10, maxMilliseconds: 5},
  });
  // Interleaved: alpha-0, beta-0, gamma-0, alpha-1, ... plus unkeyed messages between.
  const publishes = [];
  for (let i = 0; i < PER_KEY; i += 1) {
    for (const key of KEYS) {
      publishes.push(
        publisher.publishMessage({data: Buffer.from(`${key}-${i}`), orderingKey: key}),
      );
    }
    publishes.push(publisher.publishMessage({data: Buffer.from(`plain-${i}`)}));
  }
  await Promise.all(publishes);
  return env.pubsub.subscription(sub.name, {batching: {maxMilliseconds: 10}});
}

function sequenceOf(data) {
  const [key, n] = data.split('-');
  return {key, n: Number(n)};
}

test('per-key order is preserved on receipt with interleaved keys', async () => {
  const sub = await orderedPair();
  const received = new Map(KEYS.map(k => [k, []]));
  let plain = 0;
  const wrongKeys = [];  // asserting inside the handler would only reach the 'debug' event
  const subscriber = listen(sub, message => {
    const {key, n} = sequenceOf(message.data.toString());
    if (key === 'plain') {
      if (message.orderingKey) wrongKeys.push([message.data.toString(), message.orderingKey]);
      plain += 1;
    } else {
      if (message.orderingKey !== key) wrongKeys.push([message.data.toString(), message.orderingKey]);
      received.get(key).push(n);
    }
    // Ack at varied moments, so that keys progress at different speeds.
    setTimeout(() => message.ack(), (n * 7) % 13);
  });
  const done = () => plain >= PER_KEY && KEYS.every(k => received.get(k).length >= PER_KEY);
  try {
    await waitFor(done, 60_000, 'every message of every key');
  } finally {
    await subscriber.close();
  }
  assert.deepEqual(subscriber.errors, []);
  assert.deepEqual(wrongKeys, [], 'every message carries the ordering key it was published with');
  const expected = Array.from({length: PER_KEY}, (_, i) => i);
  for (const key of KEYS) assert.deepEqual(received.get(key), expected, `order of key ${key}`);
  assert.equal(plain, PER_KEY);
});

test('a nacked message comes back before the later messages of its key', async () => {
  const sub = await orderedPair();
  const received = new Map(KEYS.map(k => [k, []]));
  const acked = new Map(KEYS.map(k => [k, []]));
  let nacked = false;
  const subscriber = listen(sub, message => {
    const {key, n} = sequenceOf(message.data.toString());
    if (key === 'plain') {
      message.ack();
      return;
    }
    received.get(key).push(n);
    if (key === 'beta' && n === 5 && !nacked) {
      nacked = true;
      message.nack();
      return;
    }
    acked.get(key).push(n);
    message.ack();
  });
  try {
    await waitFor(() => KEYS.every(k => acked.get(k).length >= PER_KEY), 60_000,
      'every keyed message acked');
  } finally {
    await subscriber.close();
  }
  assert.deepEqual(subscriber.errors, []);
  const expected = Array.from({length: PER_KEY}, (_, i) => i);
  for (const key of KEYS) assert.deepEqual(acked.get(key), expected, `acked order of key ${key}`);
  const beta = received.get('beta');
  assert.deepEqual(beta.slice(0, 8), [0, 1, 2, 3, 4, 5, 5, 6],
    'beta-5 is redelivered before beta-6 is delivered');
});
