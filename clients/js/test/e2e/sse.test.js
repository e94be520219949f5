// The SSE transport against real nodes: the wire as curl sees it (retry, welcome,
// initial_state, live notifications with `id:`, Last-Event-ID resume), the library in
// 'sse' mode across a node restart, and a drain that closes SSE streams paced over
// its window with 1012.

import assert from 'node:assert/strict';
import {
  e2e, HeraldNode, SseStream, curlSse, newClient, mintToken, publish, publishMany, waitFor, waitState,
  waitAll, assertExactlyOnce, sleep,
} from '../harness.js';

const ssePath = (token, q = '') => `/sse/notifications/?token=${token}${q}`;

e2e('SSE on the wire: curl -N, then a Last-Event-ID resume', { timeoutMs: 30000 }, async (scope) => {
  const node = await HeraldNode.create(scope, { name: 'solo' });
  const token = mintToken('e1');
  const old = await publish(node.url, 'e1', { text: 'before' });

  const c1 = curlSse(scope, `${node.url}${ssePath(token)}`);
  await waitFor(() => c1.frames('initial_state').length === 1, { what: () => `initial_state in ${JSON.stringify(c1.raw)}` });
  assert.match(c1.raw, /^retry: ?\d+\r?\n/, 'the stream starts with a retry line');
  const [welcome] = c1.frames('welcome');
  assert.equal(welcome.json.type, 'welcome');
  assert.equal(welcome.json.user, 'e1');
  assert.equal(welcome.json.node, 'solo');
  assert.ok(welcome.json.heartbeat_s >= 1);
  const [initial] = c1.frames('initial_state');
  assert.equal(initial.json.unread_count, 1);
  assert.deepEqual(initial.json.notifications.map((n) => n.id), [old]);
  assert.equal(initial.id, String(old), 'initial_state carries the newest id');
  assert.deepEqual(c1.events.map((e) => e.event), ['welcome', 'initial_state']);

  const live = await publish(node.url, 'e1', { text: 'live' });
  await waitFor(() => c1.frames('notification').length === 1, { what: 'a live notification event' });
  const [n] = c1.frames('notification');
  assert.equal(n.id, String(live), 'id: <n> on the notification event');
  assert.equal(n.json.type, 'notification');
  assert.equal(n.json.notification.id, live);
  assert.deepEqual(n.json.notification.message, { text: 'live' });
  c1.kill();
  await c1.exited;

  const missed = await publishMany(node.url, 'e1', 2, (i) => ({ missed: i }));
  // Last-Event-ID alone, and Last-Event-ID beside a smaller after (the larger wins).
  for (const q of ['', '&after=0']) {
    const c2 = curlSse(scope, `${node.url}${ssePath(token, q)}`, ['-H', `Last-Event-ID: ${live}`]);
    await waitFor(() => c2.frames('missed').length === 1, { what: () => `missed (${q}) in ${JSON.stringify(c2.raw)}` });
    const [m] = c2.frames('missed');
    assert.deepEqual(m.json.notifications.map((x) => x.id), missed, `missed holds exactly what was missed (${q})`);
    assert.equal(m.id, String(missed.at(-1)), 'missed carries its newest id');
    assert.deepEqual(c2.events.map((e) => e.event), ['welcome', 'initial_state', 'missed']);
    c2.kill();
  }
});

e2e("the library in 'sse' mode: opening state, live notifications, resume across a restart", { timeoutMs: 40000 }, async (scope) => {
  const node = await HeraldNode.create(scope, { name: 'solo' });
  const pre = await publishMany(node.url, 'e2', 2, (i) => ({ pre: i }));
  const { client, rec } = await newClient(scope, { url: node.url, token: mintToken('e2'), transport: 'sse' }, 'e2');
  await waitState(client, 'open');
  assert.equal(client.transport, 'sse');
  await waitFor(() => client.unreadCount === 2, { what: () => `unreadCount 2 (is ${client.unreadCount})` });
  assert.deepEqual(client.notifications.map((n) => n.id), [...pre].reverse(), 'opening state, newest first');

  const sent = await publishMany(node.url, 'e2', 4, (i) => ({ live: i }));
  const liveIds = () => rec.ids.filter((id) => id > pre.at(-1));
  await waitFor(() => liveIds().length >= sent.length, { what: () => `live ids ${liveIds()}` });
  assertExactlyOnce(liveIds(), sent, 'e2 live');

  await node.kill9();
  await waitFor(() => client.state !== 'open', { what: 'the client notices the dead node' });
  await node.start();
  sent.push(...(await publishMany(node.url, 'e2', 3, (i) => ({ after_restart: i }))));
  await waitState(client, 'open', 15000);
  sent.push(...(await publishMany(node.url, 'e2', 3, (i) => ({ back: i }))));
  await waitFor(() => liveIds().length >= sent.length, { timeoutMs: 15000, what: () => `live ids ${liveIds()}` });
  await sleep(300);
  assertExactlyOnce(liveIds(), sent, 'e2 across the restart');
  const openingIds = rec.ids.filter((id) => id <= pre.at(-1));
  assert.ok(
    openingIds.length === 0 || JSON.stringify(openingIds) === JSON.stringify(pre),
    `the opening notifications are emitted at most once each: ${openingIds}`,
  );
  assert.equal(client.transport, 'sse');
  assert.equal(client.lastId, sent.at(-1));
  assert.ok((await node.metric('herald_resumes_total')) >= 1, 'the reconnect resumed');

  // Commands go through POST /sse/notifications/commands.
  await client.markAllRead();
  assert.equal(client.unreadCount, 0);
  assert.deepEqual(rec.errors.filter((e) => e.fatal), [], 'no fatal error');
});

e2e('a drain closes SSE streams paced over its window, each with 1012', { timeoutMs: 30000 }, async (scope) => {
  const node = await HeraldNode.create(scope, { name: 'solo' });
  const streams = [];
  for (let i = 0; i < 6; i++) {
    const s = await SseStream.open(scope, `${node.url}${ssePath(mintToken(`p${i}`))}`);
    assert.equal(s.status, 200, s.body);
    assert.match(s.headers.get('content-type'), /^text\/event-stream/);
    streams.push(s);
  }
  for (const s of streams) await waitFor(() => s.frames('initial_state').length === 1, { what: 'initial_state' });
  assert.equal((await node.status()).connections, streams.length, 'SSE streams count as connections');

  const start = Date.now();
  await node.drain(2);
  await waitFor(() => streams.every((s) => s.ended), { timeoutMs: 8000, what: 'every stream ends' });
  const closes = streams.map((s) => {
    const c = s.frames('close');
    assert.equal(c.length, 1, `one close event: ${JSON.stringify(s.events.map((e) => e.event))}`);
    return c[0];
  });
  for (const c of closes) {
    assert.equal(c.json.type, 'close');
    assert.equal(c.json.code, 1012);
  }
  const times = closes.map((c) => c.at - start).sort((x, y) => x - y);
  assert.ok(times.at(-1) - times[0] >= 500, `close events spread over the window: ${times} ms`);
  assert.ok(times.at(-1) <= 4000, `all closed within the window (+slack): ${times} ms`);
  for (const s of streams) assert.ok(s.retries.length >= 2, `a jittered retry: before the close (${s.retries})`);
  await waitFor(async () => (await node.status()).state === 'drained', { what: 'drained' });
  // A drained node refuses new streams with 503 and Retry-After.
  const refused = await SseStream.open(scope, `${node.url}${ssePath(mintToken('late'))}`);
  assert.equal(refused.status, 503);
  assert.ok(refused.headers.get('retry-after'));
});
