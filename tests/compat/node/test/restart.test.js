// State survives a crash: publish, SIGKILL the broker, start it again on the same data
// directory and port, and the same client finds its topics, subscriptions and messages.

import assert from 'node:assert/strict';
import {after, before, test} from 'node:test';

import {AckResponses, Duration} from '@google-cloud/pubsub';

import {PROJECT, listen, setup, sleep, uniqueName, waitFor, withTimeout} from '../lib/harness.js';

let env;
before(async () => {
  env = await setup();
});
after(async () => {
  await env?.close();
});

// Receives on `sub` until `done(received)` or the timeout. With `confirm`, acks with
// ackWithResponse and counts a message as received only once its ack is confirmed. Returns
// the received messages in arrival order.
async function receive(sub, done, what, {confirm = false, ms = 20_000, options = {}} = {}) {
  const received = [];
  const handle = listen(
    env.pubsub.subscription(sub.name, {batching: {maxMilliseconds: 10}, ...options}),
    async message => {
      if (!confirm) {
        received.push(message);
        message.ack();
        return;
      }
      const response = await message.ackWithResponse().catch(e => e);
      if (response === AckResponses.Success) received.push(message);
    });
  try {
    await waitFor(() => done(received), ms, what);
  } finally {
    await handle.close();
  }
  return received;
}

test('topics, subscriptions and messages survive SIGKILL and restart', async () => {
  const total = 30;
  const topicId = uniqueName('durable-topic');
  const [topic] = await env.pubsub.createTopic({name: topicId, labels: {tier: 'durable'}});
  const [plain] = await topic.createSubscription(uniqueName('durable-plain'), {
    ackDeadlineSeconds: 20,
    labels: {kind: 'plain'},
  });
  const [filtered] = await topic.createSubscription(uniqueName('durable-filtered'), {
    filter: 'attributes.parity = "even"',
  });
  const [exact] = await topic.createSubscription(uniqueName('durable-exact'), {
    enableExactlyOnceDelivery: true,
  });

  const ids = [];
  for (let i = 0; i < total; i += 1) {
    ids.push(await topic.publishMessage({
      data: Buffer.from(`durable ${i}`),
      attributes: {index: String(i), parity: i % 2 === 0 ? 'even' : 'odd'},
    }));
  }

  // Acknowledge everything on the exactly-once subscription: a confirmed ack is durable. The
  // leases are the shortest allowed (10 s), so that an ack lost in the crash would show as a
  // redelivery within the test.
  const confirmed = new Set();
  await receive(exact, got => {
    for (const m of got) confirmed.add(m.id);
    return confirmed.size >= total;
  }, 'every message confirmed on the exactly-once subscription', {
    confirm: true,
    options: {
      minAckDeadline: Duration.from({seconds: 10}),
      maxAckDeadline: Duration.from({seconds: 10}),
    },
  });
  const leasesOverAt = Date.now() + 10_000 + 2_000;

  const killed = await env.broker.kill();
  assert.equal(killed.signal, 'SIGKILL');
  await env.broker.start();

  const redelivered = [];
  const exactAfter = listen(env.pubsub.subscription(exact.name), message => {
    redelivered.push(message.id);
    message.ack();
  });

  // The same client reconnects to the restarted broker.
  const [topicMeta] = await withTimeout(topic.getMetadata(), 20_000, 'getMetadata after restart');
  assert.equal(topicMeta.name, `projects/${PROJECT}/topics/${topicId}`);
  assert.deepEqual(topicMeta.labels, {tier: 'durable'});
  const [plainMeta] = await plain.getMetadata();
  assert.equal(plainMeta.ackDeadlineSeconds, 20);
  assert.deepEqual(plainMeta.labels, {kind: 'plain'});
  const [filteredMeta] = await filtered.getMetadata();
  assert.equal(filteredMeta.filter, 'attributes.parity = "even"');
  const [exactMeta] = await exact.getMetadata();
  assert.equal(exactMeta.enableExactlyOnceDelivery, true);
  const [subs] = await topic.getSubscriptions();
  assert.equal(subs.length, 3);

  // Every message published before the crash is delivered, with its id.
  const fromPlain = await receive(plain, got => new Set(got.map(m => m.id)).size >= total,
    `all ${total} messages on the plain subscription`);
  const byIndex = new Map(fromPlain.map(m => [Number(m.attributes.index), m]));
  for (let i = 0; i < total; i += 1) {
    assert.equal(byIndex.get(i)?.id, ids[i], `message ${i} kept its id`);
    assert.equal(byIndex.get(i)?.data.toString(), `durable ${i}`);
  }

  const evens = ids.filter((_, i) => i % 2 === 0);
  const fromFiltered = await receive(filtered, got => new Set(got.map(m => m.id)).size >= evens.length,
    'the even messages on the filtered subscription');
  assert.deepEqual([...new Set(fromFiltered.map(m => m.id))].sort(), [...evens].sort(),
    'the filter still applies after the restart');

  // Nothing confirmed under exactly-once comes back, also once the old leases have run out.
  await sleep(Math.max(0, leasesOverAt - Date.now()));
  await exactAfter.close();
  assert.deepEqual(redelivered, [], 'confirmed acknowledgements survived the crash');

  // New messages get ids not used before the crash.
  const newId = await topic.publishMessage({data: Buffer.from('after restart')});
  assert.ok(!ids.includes(newId), `id ${newId} is new`);
  const [another] = await env.pubsub.createTopic(uniqueName('after-restart'));
  assert.ok(another.name);
});

test('an open subscriber keeps receiving across a broker crash and restart', async () => {
  const [topic] = await env.pubsub.createTopic(uniqueName('reconnect-topic'));
  const [sub] = await topic.createSubscription(uniqueName('reconnect-sub'));
  const got = [];
  const handle = listen(env.pubsub.subscription(sub.name, {batching: {maxMilliseconds: 10}}),
    message => {
      got.push(message.data.toString());
      message.ack();
    });
  try {
    await topic.publishMessage({data: Buffer.from('before crash')});
    await waitFor(() => got.includes('before crash'), 15_000, 'the message before the crash');
    await env.broker.kill();
    await env.broker.start();
    await withTimeout(topic.publishMessage({data: Buffer.from('after crash')}), 30_000,
      'publish after restart');
    await waitFor(() => got.includes('after crash'), 60_000,
      'the message published after the restart, on the same subscriber');
  } finally {
    await handle.close();
  }
  // Stream errors the client retried are not surfaced as 'error' events.
  assert.deepEqual(handle.errors.map(e => e.message), []);
});
