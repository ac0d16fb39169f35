// The StreamingPull protocol as the generated v1 client speaks it, below the handwritten
// Subscriber: what the first response holds, deadline updates on an open stream, and the
// confirmations an exactly-once subscription sends for acks made on the stream.

import assert from 'node:assert/strict';
import {after, before, test} from 'node:test';

import {v1} from '@google-cloud/pubsub';

import {setup, sleep, uniqueName, waitFor} from '../lib/harness.js';

let env;
let gapic;
before(async () => {
  env = await setup();
  gapic = new v1.SubscriberClient(await env.pubsub.getClientConfig());
});
after(async () => {
  await gapic?.close();
  await env?.close();
});

// Opens a StreamingPull stream; `responses` collects what the server sends, `error` how the
// stream failed, if it did before close(), which half-closes and cancels it.
function openStream(firstRequest) {
  const stream = gapic.streamingPull();
  const responses = [];
  const state = {responses, error: null, ended: false, stream};
  stream.on('data', r => responses.push(r));
  stream.on('error', e => {
    if (!state.closing) state.error = e;  // the cancel in close() is ours
  });
  stream.on('end', () => (state.ended = true));
  stream.on('close', () => (state.ended = true));
  stream.write(firstRequest);
  state.messages = () => responses.flatMap(r => r.receivedMessages ?? []);
  state.close = async () => {
    state.closing = true;
    stream.end();
    stream.cancel?.();
    await waitFor(() => state.ended, 5_000, 'the stream to close').catch(() => {});
  };
  return state;
}

test('the first response carries the subscription properties', async () => {
  const [topic] = await env.pubsub.createTopic(uniqueName('props-topic'));
  const [sub] = await topic.createSubscription(uniqueName('props-sub'), {
    enableExactlyOnceDelivery: true,
    enableMessageOrdering: true,
  });
  await topic.publishMessage({data: Buffer.from('after the properties')});
  const s = openStream({subscription: sub.name, streamAckDeadlineSeconds: 10});
  try {
    await waitFor(() => s.messages().length >= 1, 10_000, 'the message on the stream');
  } finally {
    await s.close();
  }
  const [first] = s.responses;
  assert.ok(first.subscriptionProperties, 'the first response has subscriptionProperties');
  assert.equal(first.subscriptionProperties.exactlyOnceDeliveryEnabled, true);
  assert.equal(first.subscriptionProperties.messageOrderingEnabled, true);
});

test('a stream ack deadline updated on an open stream applies to later deliveries', async () => {
  // StreamingPullRequest.stream_ack_deadline_seconds "must be provided in the first request on
  // the stream, but it can also be updated on subsequent requests from client to server".
  const [topic] = await env.pubsub.createTopic(uniqueName('deadline-topic'));
  const [sub] = await topic.createSubscription(uniqueName('deadline-sub'));
  const s = openStream({subscription: sub.name, streamAckDeadlineSeconds: 10});
  try {
    await waitFor(() => s.responses.length >= 1, 10_000, 'the first response');
    s.stream.write({streamAckDeadlineSeconds: 60});
    await sleep(300);
    await topic.publishMessage({data: Buffer.from('leased for a minute')});
    await waitFor(() => s.messages().length >= 1, 10_000, 'the delivery');
    // Neither acked nor extended: under the 60 s lease the message must stay with this
    // stream; under the initial 10 s lease it would be delivered again by now.
    await sleep(13_000);
  } finally {
    await s.close();
  }
  assert.equal(s.error, null, `stream error: ${s.error?.message}`);
  const deliveries = s.messages();
  assert.equal(deliveries.length, 1,
    `one delivery expected within the 60 s lease, got ${deliveries.length} ` +
    `(ack ids ${deliveries.map(m => m.ackId).join(', ')})`);
});

test('exactly-once: acks sent on the stream are confirmed, unknown ones reported invalid', async () => {
  const [topic] = await env.pubsub.createTopic(uniqueName('confirm-topic'));
  const [sub] = await topic.createSubscription(uniqueName('confirm-sub'), {
    enableExactlyOnceDelivery: true,
  });
  await topic.publishMessage({data: Buffer.from('confirm me')});
  const s = openStream({subscription: sub.name, streamAckDeadlineSeconds: 60});
  let ackId;
  const bogus = '0-999999-1';
  try {
    await waitFor(() => s.messages().length >= 1, 10_000, 'the delivery');
    ackId = s.messages()[0].ackId;
    s.stream.write({ackIds: [ackId, bogus]});
    await waitFor(() => s.responses.some(r => r.acknowledgeConfirmation), 10_000,
      'an acknowledge confirmation');
  } finally {
    await s.close();
  }
  const confirmation = s.responses.find(r => r.acknowledgeConfirmation).acknowledgeConfirmation;
  assert.deepEqual(confirmation.ackIds, [ackId]);
  assert.deepEqual(confirmation.invalidAckIds, [bogus]);
});
