// Publishing with client-side batching and receiving through StreamingPull, within flow control.

import assert from 'node:assert/strict';
import {after, before, test} from 'node:test';

import {listen, setup, sleep, uniqueName, waitFor} from '../lib/harness.js';

let env;
before(async () => {
  env = await setup();
});
after(async () => {
  await env?.close();
});

test('1000 messages published in batches of 100 all get ids and all arrive', async () => {
  const total = 1000;
  const [topic] = await env.pubsub.createTopic(uniqueName('batch-topic'));
  const [sub] = await topic.createSubscription(uniqueName('batch-sub'));
  const batched = env.pubsub.topic(topic.name, {
    batching: {maxMessages: 100, maxMilliseconds: 50},
  });

  const ids = await Promise.all(
    Array.from({length: total}, (_, i) =>
      batched.publishMessage({data: Buffer.from(`message ${i}`), attributes: {index: String(i)}}),
    ),
  );
  assert.equal(ids.length, total);
  assert.equal(new Set(ids).size, total, 'every message id is distinct');
  for (const id of ids) assert.match(id, /^\S+$/, 'ids are non-empty');

  const received = new Map();  // index -> message
  let duplicates = 0;
  const subscriber = listen(sub, message => {
    const index = Number(message.attributes.index);
    if (received.has(index)) duplicates += 1;
    received.set(index, message);
    message.ack();
  });
  try {
    await waitFor(() => received.size === total, 30_000, `${total} messages (have ${received.size})`);
  } finally {
    await subscriber.close();
  }
  assert.deepEqual(subscriber.errors, []);
  assert.equal(duplicates, 0, 'acked promptly, nothing is delivered twice');
  const before = Date.now();
  for (let i = 0; i < total; i += 1) {
    const m = received.get(i);
    assert.equal(m.data.toString(), `message ${i}`);
    assert.equal(m.id, ids[i], `message ${i} carries the id its publish returned`);
    assert.ok(m.publishTime.getTime() <= before && m.publishTime.getTime() > before - 120_000,
      'publish time is recent');
  }
});

test('flow control: never more than maxMessages un-acked in the handler', async () => {
  const total = 200;
  const limit = 10;
  const [topic] = await env.pubsub.createTopic(uniqueName('flow-topic'));
  const [sub] = await topic.createSubscription(uniqueName('flow-sub'));
  const batched = env.pubsub.topic(topic.name, {batching: {maxMessages: 100, maxMilliseconds: 20}});
  await Promise.all(
    Array.from({length: total}, (_, i) => batched.publishMessage({data: Buffer.from(String(i))})),
  );

  // One stream, so that the server's max_outstanding_messages alone bounds what arrives; the
  // client's default allowExcessMessages hands over whatever the server sends.
  const flowed = env.pubsub.subscription(sub.name, {
    flowControl: {maxMessages: limit},
    streamingOptions: {maxStreams: 1},
  });
  let inHandler = 0;
  let peak = 0;
  const seen = new Set();
  const subscriber = listen(flowed, message => {
    inHandler += 1;
    peak = Math.max(peak, inHandler);
    seen.add(message.data.toString());
    setTimeout(() => {
      inHandler -= 1;
      message.ack();
    }, 15);
  });
  try {
    await waitFor(() => seen.size === total, 60_000, `${total} messages (have ${seen.size})`);
  } finally {
    await subscriber.close();
  }
  assert.deepEqual(subscriber.errors, []);
  assert.ok(peak <= limit, `at most ${limit} un-acked at once, saw ${peak}`);
  assert.ok(peak >= 2, `messages are handled concurrently (peak ${peak})`);
});

test('a nacked message is delivered again, with a new ack id', async () => {
  const [topic] = await env.pubsub.createTopic(uniqueName('redeliver-topic'));
  const [sub] = await topic.createSubscription(uniqueName('redeliver-sub'));
  await topic.publishMessage({data: Buffer.from('once more')});
  const deliveries = [];
  const subscriber = listen(sub, message => {
    deliveries.push(message);
    if (deliveries.length === 1) message.nack();
    else message.ack();
  });
  try {
    await waitFor(() => deliveries.length >= 2, 20_000, 'redelivery after nack');
    await sleep(300);
  } finally {
    await subscriber.close();
  }
  assert.equal(deliveries[0].id, deliveries[1].id);
  assert.deepEqual(deliveries.map(m => m.deliveryAttempt), [0, 0],
    'deliveryAttempt is only set under a dead-letter policy');
  assert.notEqual(deliveries[0].ackId, deliveries[1].ackId, 'a new delivery has a new ack id');
  assert.equal(deliveries.length, 2, 'acked after the second delivery: no third');
});
