// Exactly-once delivery: ackWithResponse() confirms a valid ack, and rejects with the client's
// AckError (INVALID) for an ack id whose lease has expired and whose message was redelivered.
// That rejection depends on the ErrorInfo the broker puts in grpc-status-details-bin.

import assert from 'node:assert/strict';
import {after, before, test} from 'node:test';

import {AckError, AckResponses, Duration, v1} from '@google-cloud/pubsub';

import {Code, expectGrpcError, listen, setup, sleep, uniqueName, waitFor} from '../lib/harness.js';

let env;
before(async () => {
  env = await setup();
});
after(async () => {
  await env?.close();
});

async function exactlyOncePair() {
  const [topic] = await env.pubsub.createTopic(uniqueName('eod-topic'));
  const [sub] = await topic.createSubscription(uniqueName('eod-sub'), {
    enableExactlyOnceDelivery: true,
  });
  const [metadata] = await sub.getMetadata();
  assert.equal(metadata.enableExactlyOnceDelivery, true);
  return {topic, sub};
}

test('ackWithResponse resolves SUCCESS and the message is not delivered again', async () => {
  const {topic, sub} = await exactlyOncePair();
  await topic.publishMessage({data: Buffer.from('exactly once')});

  const deliveries = [];
  const responses = [];
  const failures = [];
  const subscriber = listen(sub, async message => {
    deliveries.push(message);
    try {
      responses.push(await message.ackWithResponse());
    } catch (e) {
      failures.push(e);
    }
  });
  try {
    await waitFor(() => responses.length + failures.length >= 1, 15_000, 'the ack response');
  } finally {
    await subscriber.close();
  }
  assert.deepEqual(failures, []);
  assert.deepEqual(responses, [AckResponses.Success]);

  // The ack id is spent: a nack of it through the generated client fails with the ErrorInfo
  // the real service sends (were the ack lost, the nack would succeed and redeliver at once).
  const gapic = new v1.SubscriberClient(await env.pubsub.getClientConfig());
  try {
    const e = await expectGrpcError(
      gapic.modifyAckDeadline({
        subscription: sub.name,
        ackIds: [deliveries[0].ackId],
        ackDeadlineSeconds: 0,
      }),
      Code.INVALID_ARGUMENT,
      'nack of an acknowledged message',
    );
    assert.equal(e.reason, 'EXACTLY_ONCE_ACKID_FAILURE');
    assert.equal(e.domain, 'pubsub.googleapis.com');
    assert.deepEqual(e.errorInfoMetadata, {[deliveries[0].ackId]: 'PERMANENT_FAILURE_INVALID_ACK_ID'});
  } finally {
    await gapic.close();
  }

  // A fresh subscriber finds nothing: the acknowledgement held.
  const again = [];
  const second = listen(env.pubsub.subscription(sub.name), message => {
    again.push(message);
    message.ack();
  });
  await sleep(1_500);
  await second.close();
  assert.equal(again.length, 0, 'an acknowledged message is not redelivered');
  assert.deepEqual([...subscriber.errors, ...second.errors], []);
});

test('nackWithResponse resolves SUCCESS and the message comes back with a new ack id', async () => {
  const {topic, sub} = await exactlyOncePair();
  await topic.publishMessage({data: Buffer.from('not yet')});
  const deliveries = [];
  const responses = [];
  const subscriber = listen(env.pubsub.subscription(sub.name, {batching: {maxMilliseconds: 10}}),
    async message => {
      deliveries.push(message);
      const respond = deliveries.length === 1 ? message.nackWithResponse() : message.ackWithResponse();
      responses.push(await respond.catch(e => e));
    });
  try {
    await waitFor(() => responses.length >= 2, 15_000, 'the nack and the ack after the redelivery');
  } finally {
    await subscriber.close();
  }
  assert.deepEqual(responses, [AckResponses.Success, AckResponses.Success]);
  assert.equal(deliveries[0].id, deliveries[1].id);
  assert.notEqual(deliveries[0].ackId, deliveries[1].ackId);
});

test('an ack after the lease expired and the message was redelivered rejects with AckError INVALID', async () => {
  const {topic, sub} = await exactlyOncePair();
  await topic.publishMessage({data: Buffer.from('too late')});

  // The shortest lease Pub/Sub allows (10 s; the client would otherwise use 60 s under
  // exactly-once), which the client stops extending after a second, so that the broker's lease
  // runs out and the message is delivered again.
  const subscriber = env.pubsub.subscription(sub.name, {
    minAckDeadline: Duration.from({seconds: 10}),
    maxAckDeadline: Duration.from({seconds: 10}),
    maxExtensionTime: Duration.from({seconds: 1}),
    batching: {maxMilliseconds: 10},
  });
  const deliveries = [];
  const listener = listen(subscriber, message => deliveries.push(message));
  let stale;
  let fresh;
  try {
    await waitFor(() => deliveries.length >= 2, 30_000, 'the redelivery after the lease expired');
    const [first, second] = deliveries;
    assert.equal(first.id, second.id);
    assert.notEqual(first.ackId, second.ackId, 'the redelivery has a new ack id');
    stale = await first.ackWithResponse().then(r => ({response: r}), e => ({error: e}));
    fresh = await second.ackWithResponse().then(r => ({response: r}), e => ({error: e}));
  } finally {
    await listener.close();
  }
  assert.ok(stale.error, `the stale ack must fail, it resolved ${stale.response}`);
  assert.ok(stale.error instanceof AckError, `AckError expected, got ${stale.error}`);
  assert.equal(stale.error.errorCode, AckResponses.Invalid);
  assert.equal(fresh.error, undefined, `the current ack id succeeds: ${fresh.error}`);
  assert.equal(fresh.response, AckResponses.Success);
});
