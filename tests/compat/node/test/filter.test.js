// Subscription filters on attributes: only matching messages are delivered; a malformed filter
// is refused when the subscription is created.

import assert from 'node:assert/strict';
import {after, before, test} from 'node:test';

import {Code, expectGrpcError, listen, setup, sleep, uniqueName, waitFor} from '../lib/harness.js';

let env;
before(async () => {
  env = await setup();
});
after(async () => {
  await env?.close();
});

test('only messages whose attributes match the filter are delivered', async () => {
  const filter = 'attributes.color = "red" AND NOT attributes:skip';
  const [topic] = await env.pubsub.createTopic(uniqueName('filter-topic'));
  const [filtered] = await topic.createSubscription(uniqueName('filter-sub'), {filter});
  const [everything] = await topic.createSubscription(uniqueName('filter-all'));
  const [metadata] = await filtered.getMetadata();
  assert.equal(metadata.filter, filter);

  const messages = [
    {data: 'red-1', attributes: {color: 'red'}, match: true},
    {data: 'blue', attributes: {color: 'blue'}, match: false},
    {data: 'red-skipped', attributes: {color: 'red', skip: 'yes'}, match: false},
    {data: 'plain', attributes: {}, match: false},
    {data: 'red-2', attributes: {color: 'red', size: 'L'}, match: true},
    {data: 'reddish', attributes: {color: 'red '}, match: false},
  ];
  for (const m of messages) {
    await topic.publishMessage({data: Buffer.from(m.data), attributes: m.attributes});
  }

  const got = [];
  const all = [];
  const a = listen(filtered, message => {
    got.push(message.data.toString());
    message.ack();
  });
  const b = listen(everything, message => {
    all.push(message.data.toString());
    message.ack();
  });
  const matching = messages.filter(m => m.match).map(m => m.data);
  try {
    await waitFor(() => got.length >= matching.length && all.length >= messages.length, 15_000,
      'the matching messages on the filtered subscription and all on the other');
    await sleep(1_000);  // a non-matching message, if it were delivered, has had time to arrive
  } finally {
    await a.close();
    await b.close();
  }
  assert.deepEqual([...got].sort(), [...matching].sort(), 'the filtered subscription');
  assert.deepEqual([...all].sort(), messages.map(m => m.data).sort(), 'the unfiltered one');
});

test('an invalid filter is rejected at create with INVALID_ARGUMENT', async () => {
  const [topic] = await env.pubsub.createTopic(uniqueName('badfilter-topic'));
  const bad = [
    'attributes.color = red',
    'attributes:a AND attributes:b OR attributes:c',
    'data = "x"',
    '(attributes:a',
  ];
  for (const filter of bad) {
    const e = await expectGrpcError(
      topic.createSubscription(uniqueName('badfilter-sub'), {filter}),
      Code.INVALID_ARGUMENT,
      `filter ${filter}`,
    );
    assert.match(e.message, /invalid filter/, `message for ${filter}`);
  }
  const [subs] = await topic.getSubscriptions();
  assert.equal(subs.length, 0, 'no subscription was created');
});

test('the filter of an existing subscription cannot be changed', async () => {
  const [topic] = await env.pubsub.createTopic(uniqueName('fixedfilter-topic'));
  const [sub] = await topic.createSubscription(uniqueName('fixedfilter-sub'), {
    filter: 'attributes:a',
  });
  const e = await expectGrpcError(
    sub.setMetadata({filter: 'attributes:b'}),
    Code.INVALID_ARGUMENT,
    'filter update',
  );
  assert.match(e.message, /filter/);
  const [metadata] = await sub.getMetadata();
  assert.equal(metadata.filter, 'attributes:a');
});
