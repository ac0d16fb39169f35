// Seek: to a timestamp (acknowledged messages published since then are delivered again) and
// to a snapshot (the acknowledgement state at the snapshot comes back).

import assert from 'node:assert/strict';
import {after, before, test} from 'node:test';

import {v1} from '@google-cloud/pubsub';

import {
  Code, PROJECT, expectGrpcError, listen, setup, sleep, uniqueName, waitFor,
} from '../lib/harness.js';

let env;
before(async () => {
  env = await setup();
});
after(async () => {
  await env?.close();
});

async function publishAll(topic, datas) {
  for (const d of datas) await topic.publishMessage({data: Buffer.from(d)});
}

// Receives and acks on an open subscriber; `seen` counts deliveries per data (pass one in to
// count across subscribers). Closing the subscriber flushes its acks to the broker.
function collector(sub, seen = new Map()) {
  const handle = listen(env.pubsub.subscription(sub.name, {batching: {maxMilliseconds: 10}}),
    message => {
      const data = message.data.toString();
      seen.set(data, (seen.get(data) ?? 0) + 1);
      message.ack();
    });
  return {
    seen,
    handle,
    count: data => seen.get(data) ?? 0,
  };
}

test('seek to a timestamp delivers the acknowledged messages published since', async () => {
  const [topic] = await env.pubsub.createTopic(uniqueName('seek-time-topic'));
  const [sub] = await topic.createSubscription(uniqueName('seek-time-sub'), {
    retainAckedMessages: true,
  });
  const early = ['early-0', 'early-1', 'early-2'];
  const late = ['late-0', 'late-1', 'late-2', 'late-3'];
  await publishAll(topic, early);
  // Subscription.seek(Date) in this client sends the milliseconds as microseconds
  // (nanos = ms % 1000 * 1000), so only a whole second reaches the broker intact: seek to the
  // start of the second after the early messages.
  await sleep(1000 - (Date.now() % 1000) + 20);
  const between = new Date(Math.floor(Date.now() / 1000) * 1000);
  await publishAll(topic, late);

  const c = collector(sub);
  try {
    await waitFor(() => [...early, ...late].every(d => c.count(d) === 1), 15_000,
      'the first delivery of every message');
    await sleep(300);  // acks reach the broker

    await sub.seek(between);
    await waitFor(() => late.every(d => c.count(d) === 2), 15_000,
      'the messages published after the seek time, again');
    await sleep(500);
  } finally {
    await c.handle.close();
  }
  assert.deepEqual(c.handle.errors, []);
  for (const d of early) assert.equal(c.count(d), 1, `${d} is before the seek time: not replayed`);
  for (const d of late) assert.equal(c.count(d), 2, `${d} replayed once`);
});

test('seek to a time keeps sub-second precision (generated v1 client)', async () => {
  // The generated client passes the Timestamp through untouched, unlike Subscription.seek(Date).
  const [topic] = await env.pubsub.createTopic(uniqueName('seek-nanos-topic'));
  const [sub] = await topic.createSubscription(uniqueName('seek-nanos-sub'), {
    retainAckedMessages: true,
  });
  await publishAll(topic, ['first']);
  await sleep(30);
  const between = Date.now();
  await sleep(30);
  await publishAll(topic, ['second']);
  const c = collector(sub);
  const gapic = new v1.SubscriberClient(await env.pubsub.getClientConfig());
  try {
    await waitFor(() => c.count('first') === 1 && c.count('second') === 1, 15_000, 'both messages');
    await sleep(300);
    await gapic.seek({
      subscription: sub.name,
      time: {seconds: Math.floor(between / 1000), nanos: (between % 1000) * 1_000_000},
    });
    await waitFor(() => c.count('second') === 2, 15_000, 'the later message again');
    await sleep(500);
  } finally {
    await c.handle.close();
    await gapic.close();
  }
  assert.equal(c.count('first'), 1, 'published before the seek time: not replayed');
  assert.equal(c.count('second'), 2);
});

test('seek to a snapshot brings back what was unacknowledged when it was taken', async () => {
  const [topic] = await env.pubsub.createTopic(uniqueName('snap-topic'));
  const [sub] = await topic.createSubscription(uniqueName('snap-sub'));
  const before = ['before-0', 'before-1', 'before-2'];
  const after = ['after-0', 'after-1'];
  await publishAll(topic, before);

  const snapId = uniqueName('snap');
  const [snapshot] = await sub.createSnapshot(snapId);
  assert.equal(snapshot.name, `projects/${PROJECT}/snapshots/${snapId}`);
  await expectGrpcError(sub.createSnapshot(snapId), Code.ALREADY_EXISTS, 'a second snapshot of that name');

  const [snapshots] = await env.pubsub.getSnapshots();
  assert.ok(snapshots.some(s => s.name === snapshot.name), 'the snapshot is listed');

  await publishAll(topic, after);
  const c = collector(sub);
  try {
    await waitFor(() => [...before, ...after].every(d => c.count(d) === 1), 15_000,
      'every message once');
    await sleep(300);
    await sub.seek(snapId);
    await waitFor(() => [...before, ...after].every(d => c.count(d) === 2), 15_000,
      'every message again after seeking to the snapshot');
    await sleep(500);
  } finally {
    await c.handle.close();
  }
  assert.deepEqual(c.handle.errors, []);
  for (const d of [...before, ...after]) assert.equal(c.count(d), 2, `${d} delivered exactly twice`);

  await expectGrpcError(sub.seek(uniqueName('no-such-snap')), Code.NOT_FOUND,
    'seek to a missing snapshot');
  await snapshot.delete();
  await expectGrpcError(sub.seek(snapId), Code.NOT_FOUND, 'seek to a deleted snapshot');
});

test('seek to a snapshot taken after acknowledging replays nothing acknowledged before it', async () => {
  const [topic] = await env.pubsub.createTopic(uniqueName('snap2-topic'));
  const [sub] = await topic.createSubscription(uniqueName('snap2-sub'));
  await publishAll(topic, ['old-0', 'old-1']);
  const first = collector(sub);
  try {
    await waitFor(() => first.count('old-0') === 1 && first.count('old-1') === 1, 15_000,
      'the old messages');
  } finally {
    await first.handle.close();  // the acks have reached the broker once this returns
  }
  const snapId = uniqueName('snap-after');
  await sub.createSnapshot(snapId);
  const c = collector(sub, first.seen);
  try {
    await publishAll(topic, ['new-0']);
    await waitFor(() => c.count('new-0') === 1, 15_000, 'the new message');
    await sleep(300);
    await sub.seek(snapId);
    await waitFor(() => c.count('new-0') === 2, 15_000, 'the new message again');
    await sleep(500);
  } finally {
    await c.handle.close();
  }
  assert.equal(c.count('old-0'), 1);
  assert.equal(c.count('old-1'), 1);
  assert.equal(c.count('new-0'), 2);
});
