// The server ends every StreamingPull stream after its lifetime (here 2 s) with UNAVAILABLE;
// the client must reopen transparently and keep receiving, losing nothing.

import assert from 'node:assert/strict';
import {after, before, test} from 'node:test';

import {listen, setup, sleep, uniqueName, waitFor} from '../lib/harness.js';

let env;
before(async () => {
  env = await setup(['--stream-lifetime', '2']);
});
after(async () => {
  await env?.close();
});

test('streams closed by the server are reopened and delivery goes on', async () => {
  const [topic] = await env.pubsub.createTopic(uniqueName('reopen-topic'));
  const [sub] = await topic.createSubscription(uniqueName('reopen-sub'));
  const received = new Set();
  const subscriber = listen(sub, message => {
    received.add(message.data.toString());
    message.ack();
  });
  const total = 24;
  try {
    // Published over ~7 s: the streams are ended at least three times meanwhile.
    for (let i = 0; i < total; i += 1) {
      await topic.publishMessage({data: Buffer.from(`m${i}`)});
      await sleep(300);
    }
    await waitFor(() => received.size === total, 20_000, `${total} messages (have ${received.size})`);
  } finally {
    await subscriber.close();
  }
  assert.deepEqual(subscriber.errors, [], 'the client reopened without surfacing an error');
  for (let i = 0; i < total; i += 1) assert.ok(received.has(`m${i}`));
});
