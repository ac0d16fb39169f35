// Topic and subscription administration through the official client: create, get, exists,
// list with paging, update, delete, and the errors the client sees for each misuse.

import assert from 'node:assert/strict';
import {after, before, describe, test} from 'node:test';

import {Code, PROJECT, expectGrpcError, setup, uniqueName} from '../lib/harness.js';

let env;
before(async () => {
  env = await setup();
});
after(async () => {
  await env?.close();
});

// Walks a listing page by page with autoPaginate off; returns every page's names.
async function listPages(list, pageSize) {
  const pages = [];
  let query = {pageSize, autoPaginate: false};
  for (let guard = 0; guard < 50 && query; guard += 1) {
    const [items, next] = await list(query);
    pages.push(items.map(item => (typeof item === 'string' ? item : item.name)));
    query = next && next.pageToken ? next : null;
  }
  return pages;
}

describe('topics', () => {
  test('create, get, exists and getMetadata return the topic', async () => {
    const id = uniqueName('admin-topic');
    const [topic, created] = await env.pubsub.createTopic({name: id, labels: {team: 'storage'}});
    assert.equal(topic.name, `projects/${PROJECT}/topics/${id}`);
    assert.equal(created.name, topic.name);
    assert.deepEqual(created.labels, {team: 'storage'});

    const [exists] = await env.pubsub.topic(id).exists();
    assert.equal(exists, true);
    const [, metadata] = await env.pubsub.topic(id).get();
    assert.equal(metadata.name, topic.name);
    assert.deepEqual(metadata.labels, {team: 'storage'});

    const [missing] = await env.pubsub.topic(uniqueName('never-created')).exists();
    assert.equal(missing, false);
  });

  test('creating a topic twice fails with ALREADY_EXISTS', async () => {
    const id = uniqueName('dup-topic');
    await env.pubsub.createTopic(id);
    const e = await expectGrpcError(env.pubsub.createTopic(id), Code.ALREADY_EXISTS, 'second create');
    assert.match(e.message, new RegExp(id));
  });

  test('get and delete of a missing topic fail with NOT_FOUND', async () => {
    const topic = env.pubsub.topic(uniqueName('ghost-topic'));
    await expectGrpcError(topic.get(), Code.NOT_FOUND, 'get');
    await expectGrpcError(topic.getMetadata(), Code.NOT_FOUND, 'getMetadata');
    await expectGrpcError(topic.delete(), Code.NOT_FOUND, 'delete');
    await expectGrpcError(topic.publishMessage({data: Buffer.from('x')}), Code.NOT_FOUND, 'publish');
  });

  test('bad topic names fail with INVALID_ARGUMENT naming the problem', async () => {
    const cases = [
      ['goog-reserved', /must not start with "goog"/],
      ['ab', /3 to 255 characters/],
      ['1starts-with-digit', /must start with a letter/],
      ['has*star', /character '\*' is not allowed/],
      ['x'.repeat(256), /3 to 255 characters/],
    ];
    for (const [id, problem] of cases) {
      const e = await expectGrpcError(env.pubsub.createTopic(id), Code.INVALID_ARGUMENT, `create ${id}`);
      assert.match(e.message, problem, `message for ${id}`);
      assert.match(e.message, /invalid topic name/, `message for ${id}`);
    }
  });

  test('listing pages through every topic exactly once', async () => {
    const prefix = uniqueName('page');
    const ids = [];
    for (let i = 0; i < 7; i += 1) ids.push(`${prefix}-${i}`);
    await Promise.all(ids.map(id => env.pubsub.createTopic(id)));

    const pages = await listPages(q => env.pubsub.getTopics(q), 3);
    for (const page of pages.slice(0, -1)) assert.equal(page.length, 3, 'full pages before the last');
    const all = pages.flat();
    assert.equal(new Set(all).size, all.length, 'no topic listed twice');
    for (const id of ids) assert.ok(all.includes(`projects/${PROJECT}/topics/${id}`), `${id} listed`);

    // Auto-pagination gathers the same set. (The client passes autoPaginate through as given, so
    // it must be set explicitly next to a pageSize.)
    const [everything] = await env.pubsub.getTopics({pageSize: 2, autoPaginate: true});
    assert.deepEqual(everything.map(t => t.name).sort(), [...all].sort());
  });

  test('setMetadata updates labels and message retention', async () => {
    const id = uniqueName('update-topic');
    const [topic] = await env.pubsub.createTopic(id);
    const [updated] = await topic.setMetadata({
      labels: {env: 'compat'},
      messageRetentionDuration: {seconds: 7200},
    });
    assert.deepEqual(updated.labels, {env: 'compat'});
    assert.equal(Number(updated.messageRetentionDuration.seconds), 7200);

    const [metadata] = await topic.getMetadata();
    assert.deepEqual(metadata.labels, {env: 'compat'});
    assert.equal(Number(metadata.messageRetentionDuration.seconds), 7200);

    // Subscriptions report the retention of their topic.
    const [, subMetadata] = await topic.createSubscription(uniqueName('retained-sub'));
    assert.equal(Number(subMetadata.topicMessageRetentionDuration?.seconds), 7200);

    const e = await expectGrpcError(
      topic.setMetadata({messageRetentionDuration: {seconds: 60}}),
      Code.INVALID_ARGUMENT,
      'retention below 10 minutes',
    );
    assert.match(e.message, /message_retention_duration/);
  });

  test('delete removes the topic; its subscriptions remain, detached', async () => {
    const id = uniqueName('doomed-topic');
    const [topic] = await env.pubsub.createTopic(id);
    const [sub] = await topic.createSubscription(uniqueName('orphan-sub'));
    await topic.delete();
    const [exists] = await topic.exists();
    assert.equal(exists, false);
    const [metadata] = await sub.getMetadata();
    assert.equal(metadata.topic, '_deleted-topic_');
    // The name is free again.
    await env.pubsub.createTopic(id);
  });
});

describe('subscriptions', () => {
  test('create, get, exists and getMetadata return the settings', async () => {
    const [topic] = await env.pubsub.createTopic(uniqueName('sub-admin-topic'));
    const id = uniqueName('admin-sub');
    const [sub, created] = await topic.createSubscription(id, {
      ackDeadlineSeconds: 30,
      labels: {owner: 'compat'},
      messageRetentionDuration: {seconds: 3600},
    });
    assert.equal(sub.name, `projects/${PROJECT}/subscriptions/${id}`);
    assert.equal(created.topic, topic.name);
    assert.equal(created.ackDeadlineSeconds, 30);

    const [exists] = await env.pubsub.subscription(id).exists();
    assert.equal(exists, true);
    const [metadata] = await env.pubsub.subscription(id).getMetadata();
    assert.equal(metadata.name, sub.name);
    assert.equal(metadata.topic, topic.name);
    assert.equal(metadata.ackDeadlineSeconds, 30);
    assert.deepEqual(metadata.labels, {owner: 'compat'});
    assert.equal(Number(metadata.messageRetentionDuration.seconds), 3600);
    assert.equal(Number(metadata.expirationPolicy?.ttl?.seconds), 31 * 24 * 3600,
      'the default expiration policy is 31 days');
    assert.equal(metadata.state, 'ACTIVE');
    assert.equal(metadata.detached, false);

    const [missing] = await env.pubsub.subscription(uniqueName('no-such-sub')).exists();
    assert.equal(missing, false);
  });

  test('creating a subscription twice fails with ALREADY_EXISTS', async () => {
    const [topic] = await env.pubsub.createTopic(uniqueName('dup-sub-topic'));
    const id = uniqueName('dup-sub');
    await topic.createSubscription(id);
    await expectGrpcError(topic.createSubscription(id), Code.ALREADY_EXISTS, 'second create');
  });

  test('missing subscriptions and topics fail with NOT_FOUND', async () => {
    const ghostTopic = env.pubsub.topic(uniqueName('ghost'));
    const e = await expectGrpcError(
      ghostTopic.createSubscription(uniqueName('sub-of-ghost')),
      Code.NOT_FOUND,
      'subscription to a missing topic',
    );
    assert.match(e.message, /topic not found/);
    const ghostSub = env.pubsub.subscription(uniqueName('ghost-sub'));
    await expectGrpcError(ghostSub.getMetadata(), Code.NOT_FOUND, 'getMetadata');
    await expectGrpcError(ghostSub.delete(), Code.NOT_FOUND, 'delete');
    await expectGrpcError(ghostSub.setMetadata({labels: {a: 'b'}}), Code.NOT_FOUND, 'setMetadata');
  });

  test('bad subscription settings fail with INVALID_ARGUMENT naming the problem', async () => {
    const [topic] = await env.pubsub.createTopic(uniqueName('bad-sub-topic'));
    let e = await expectGrpcError(
      topic.createSubscription('goog-sub'),
      Code.INVALID_ARGUMENT,
      'reserved name',
    );
    assert.match(e.message, /invalid subscription name/);
    assert.match(e.message, /must not start with "goog"/);

    e = await expectGrpcError(
      topic.createSubscription(uniqueName('short-deadline'), {ackDeadlineSeconds: 5}),
      Code.INVALID_ARGUMENT,
      'ack deadline of 5 s',
    );
    assert.match(e.message, /ack_deadline_seconds must be between 10 and 600/);

    e = await expectGrpcError(
      topic.createSubscription(uniqueName('few-attempts'), {
        deadLetterPolicy: {deadLetterTopic: topic.name, maxDeliveryAttempts: 2},
      }),
      Code.INVALID_ARGUMENT,
      'max delivery attempts of 2',
    );
    assert.match(e.message, /max_delivery_attempts/);
  });

  test('listing pages through subscriptions, per project and per topic', async () => {
    const [topic] = await env.pubsub.createTopic(uniqueName('list-sub-topic'));
    const [other] = await env.pubsub.createTopic(uniqueName('list-sub-other'));
    const prefix = uniqueName('listed');
    const ids = [];
    for (let i = 0; i < 5; i += 1) ids.push(`${prefix}-${i}`);
    for (const id of ids) await topic.createSubscription(id);
    await other.createSubscription(`${prefix}-other`);

    const pages = await listPages(q => env.pubsub.getSubscriptions(q), 2);
    const all = pages.flat();
    assert.ok(pages.length >= 3, `at least 3 pages of 2, got ${pages.length}`);
    assert.equal(new Set(all).size, all.length, 'no subscription listed twice');
    for (const id of [...ids, `${prefix}-other`]) {
      assert.ok(all.includes(`projects/${PROJECT}/subscriptions/${id}`), `${id} listed`);
    }

    const topicPages = await listPages(q => topic.getSubscriptions(q), 2);
    const ofTopic = topicPages.flat();
    assert.deepEqual(
      ofTopic.sort(),
      ids.map(id => `projects/${PROJECT}/subscriptions/${id}`).sort(),
      'a topic lists only its own subscriptions',
    );
  });

  test('setMetadata updates labels, ack deadline and retention', async () => {
    const [topic] = await env.pubsub.createTopic(uniqueName('upd-sub-topic'));
    const [sub] = await topic.createSubscription(uniqueName('upd-sub'));
    const [updated] = await sub.setMetadata({
      labels: {stage: 'two'},
      ackDeadlineSeconds: 45,
      messageRetentionDuration: 1800,
    });
    assert.deepEqual(updated.labels, {stage: 'two'});
    assert.equal(updated.ackDeadlineSeconds, 45);
    assert.equal(Number(updated.messageRetentionDuration.seconds), 1800);

    const [metadata] = await sub.getMetadata();
    assert.deepEqual(metadata.labels, {stage: 'two'});
    assert.equal(metadata.ackDeadlineSeconds, 45);
    assert.equal(Number(metadata.messageRetentionDuration.seconds), 1800);

    const e = await expectGrpcError(
      sub.setMetadata({messageRetentionDuration: 30}),
      Code.INVALID_ARGUMENT,
      'retention of 30 s',
    );
    assert.match(e.message, /message_retention_duration/);
  });

  test('detachSubscription detaches it from its topic', async () => {
    const [topic] = await env.pubsub.createTopic(uniqueName('detach-topic'));
    const [sub] = await topic.createSubscription(uniqueName('detach-sub'));
    assert.equal(await sub.detached().then(([d]) => d), false);
    await env.pubsub.detachSubscription(sub.name);
    const [metadata] = await sub.getMetadata();
    assert.equal(metadata.detached, true);
    assert.equal(await sub.detached().then(([d]) => d), true);
    await expectGrpcError(env.pubsub.detachSubscription(uniqueName('ghost-sub')), Code.NOT_FOUND,
      'detach a missing subscription');
  });

  test('delete removes the subscription', async () => {
    const [topic] = await env.pubsub.createTopic(uniqueName('del-sub-topic'));
    const [sub] = await topic.createSubscription(uniqueName('del-sub'));
    await sub.delete();
    const [exists] = await sub.exists();
    assert.equal(exists, false);
    const [names] = await topic.getSubscriptions();
    assert.equal(names.length, 0);
  });
});
