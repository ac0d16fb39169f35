// Dead-letter policy (a message nacked max_delivery_attempts times moves to the dead-letter
// topic, with the attributes Pub/Sub adds) and retry policy (a nack waits out the backoff).

import assert from 'node:assert/strict';
import {after, before, test} from 'node:test';

import {PROJECT, listen, setup, sleep, uniqueName, waitFor} from '../lib/harness.js';

let env;
before(async () => {
  env = await setup();
});
after(async () => {
  await env?.close();
});

test('a message nacked 5 times moves to the dead-letter topic with its source attributes', async () => {
  const maxAttempts = 5;
  const [topic] = await env.pubsub.createTopic(uniqueName('dl-source'));
  const [deadTopic] = await env.pubsub.createTopic(uniqueName('dl-dead'));
  const [deadSub] = await deadTopic.createSubscription(uniqueName('dl-dead-sub'));
  const subId = uniqueName('dl-sub');
  const [sub] = await topic.createSubscription(subId, {
    deadLetterPolicy: {deadLetterTopic: deadTopic.name, maxDeliveryAttempts: maxAttempts},
  });
  const [metadata] = await sub.getMetadata();
  assert.equal(metadata.deadLetterPolicy.deadLetterTopic, deadTopic.name);
  assert.equal(metadata.deadLetterPolicy.maxDeliveryAttempts, maxAttempts);

  const publishedId = await topic.publishMessage({
    data: Buffer.from('poison'),
    attributes: {origin: 'compat'},
  });

  const attempts = [];
  const source = listen(env.pubsub.subscription(sub.name, {batching: {maxMilliseconds: 10}}),
    message => {
      attempts.push({id: message.id, attempt: message.deliveryAttempt});
      message.nack();
    });
  const dead = [];
  const sink = listen(deadSub, message => {
    dead.push(message);
    message.ack();
  });
  try {
    await waitFor(() => dead.length >= 1, 30_000,
      `the dead-lettered message (source saw ${attempts.length} deliveries)`);
    await sleep(500);  // room for a stray extra delivery to show up
  } finally {
    await source.close();
    await sink.close();
  }
  assert.deepEqual(source.errors, []);
  assert.deepEqual(sink.errors, []);

  assert.deepEqual(attempts.map(a => a.attempt), [1, 2, 3, 4, 5],
    'deliveryAttempt counts each delivery, and the message stops after the 5th');
  for (const a of attempts) assert.equal(a.id, publishedId);

  assert.equal(dead.length, 1, 'dead-lettered once');
  const [letter] = dead;
  assert.equal(letter.data.toString(), 'poison');
  const attrs = letter.attributes;
  assert.equal(attrs.origin, 'compat', 'the original attributes are kept');
  assert.equal(attrs.CloudPubSubDeadLetterSourceDeliveryCount, String(maxAttempts));
  assert.equal(attrs.CloudPubSubDeadLetterSourceSubscription, subId);
  assert.equal(attrs.CloudPubSubDeadLetterSourceSubscriptionProject, PROJECT);
  assert.ok(attrs.CloudPubSubDeadLetterSourceTopicPublishTime, 'publish time attribute present');
});

test('CloudPubSubDeadLetterSourceTopicPublishTime is an RFC 3339 timestamp of the original publish', async () => {
  // Pub/Sub writes this attribute as a timestamp such as "2022-08-12T15:56:29.732+00:00";
  // consumers parse it as a date.
  const [topic] = await env.pubsub.createTopic(uniqueName('dlt-source'));
  const [deadTopic] = await env.pubsub.createTopic(uniqueName('dlt-dead'));
  const [deadSub] = await deadTopic.createSubscription(uniqueName('dlt-dead-sub'));
  const [sub] = await topic.createSubscription(uniqueName('dlt-sub'), {
    deadLetterPolicy: {deadLetterTopic: deadTopic.name, maxDeliveryAttempts: 5},
  });
  await topic.publishMessage({data: Buffer.from('timestamped')});
  let publishTime = null;
  const source = listen(env.pubsub.subscription(sub.name, {batching: {maxMilliseconds: 10}}),
    message => {
      publishTime = message.publishTime;
      message.nack();
    });
  let letter = null;
  const sink = listen(deadSub, message => {
    letter = message;
    message.ack();
  });
  try {
    await waitFor(() => letter !== null, 30_000, 'the dead-lettered message');
  } finally {
    await source.close();
    await sink.close();
  }
  const value = letter.attributes.CloudPubSubDeadLetterSourceTopicPublishTime;
  assert.match(value, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/,
    `RFC 3339 timestamp expected, got "${value}"`);
  const parsed = Date.parse(value);
  assert.ok(Math.abs(parsed - publishTime.getTime()) <= 1,
    `the attribute (${value}) is the source message's publish time (${publishTime.toISOString()})`);
});

test('retry policy: a nacked message comes back no sooner than the minimum backoff', async () => {
  const minBackoffMs = 1000;
  const [topic] = await env.pubsub.createTopic(uniqueName('retry-topic'));
  const [sub] = await topic.createSubscription(uniqueName('retry-sub'), {
    retryPolicy: {minimumBackoff: {seconds: 1}, maximumBackoff: {seconds: 5}},
  });
  const [metadata] = await sub.getMetadata();
  assert.equal(Number(metadata.retryPolicy.minimumBackoff.seconds), 1);
  assert.equal(Number(metadata.retryPolicy.maximumBackoff.seconds), 5);

  await topic.publishMessage({data: Buffer.from('retry me')});
  const arrivals = [];
  const subscriber = listen(env.pubsub.subscription(sub.name, {batching: {maxMilliseconds: 10}}),
    message => {
      arrivals.push(Date.now());
      if (arrivals.length === 1) message.nack();
      else message.ack();
    });
  try {
    await waitFor(() => arrivals.length >= 2, 20_000, 'the redelivery after the backoff');
  } finally {
    await subscriber.close();
  }
  const gap = arrivals[1] - arrivals[0];
  // Generous: the backoff is 1 s from when the nack reached the broker; allow for clock and
  // scheduling slack but not for an immediate redelivery.
  assert.ok(gap >= minBackoffMs * 0.8,
    `redelivered after ${gap} ms, expected at least ~${minBackoffMs} ms`);
});

test('without a retry policy a nacked message comes back promptly', async () => {
  const [topic] = await env.pubsub.createTopic(uniqueName('noretry-topic'));
  const [sub] = await topic.createSubscription(uniqueName('noretry-sub'));
  await topic.publishMessage({data: Buffer.from('again')});
  const arrivals = [];
  const subscriber = listen(env.pubsub.subscription(sub.name, {batching: {maxMilliseconds: 10}}),
    message => {
      arrivals.push(Date.now());
      if (arrivals.length === 1) message.nack();
      else message.ack();
    });
  try {
    await waitFor(() => arrivals.length >= 2, 10_000, 'the redelivery');
  } finally {
    await subscriber.close();
  }
  assert.ok(arrivals[1] - arrivals[0] < 5_000, `redelivered after ${arrivals[1] - arrivals[0]} ms`);
});
