// HeraldClient over a fake WebSocket on mocked timers: connect, resume, reconnect rules,
// commands, groups, heartbeat, close. Fast and deterministic (random is injected).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient } from '../../src/herald.js';
import { FakeWebSocket, note, flush, advance, useFakeTimers, record } from './fakes.js';

function makeClient(extra = {}) {
  return new HeraldClient({
    url: 'http://herald.test:8000',
    token: 'tok',
    WebSocket: FakeWebSocket,
    fetch: null,
    networkEvents: null,
    random: () => 0.5,
    ...extra,
  });
}

/**
 * A client on fake timers, its events recorded, connect() called and the first
 * attempt made: where most tests start.
 */
async function connected(t, extra = {}) {
  useFakeTimers(t);
  const c = makeClient(extra);
  const log = record(c);
  c.connect();
  await flush();
  return { c, log };
}
const last = () => FakeWebSocket.all[FakeWebSocket.all.length - 1];
const ids = (list) => list.map((n) => n.id);

test('connects with the token, goes open on initial_state, delivers it ascending', async (t) => {
  const { c, log } = await connected(t);
  assert.equal(FakeWebSocket.all.length, 1);
  const ws = last();
  assert.equal(`${ws.url.origin}${ws.url.pathname}`, 'ws://herald.test:8000/ws/notifications/');
  assert.deepEqual(ws.protocols, ['herald', 'bearer.tok'], 'the token rides in Sec-WebSocket-Protocol');
  assert.equal(ws.url.search, '', 'no token (and no after yet) in the URL, which proxies log');
  assert.equal(c.state, 'connecting');
  ws.accept({ initial: [note(9), note(7), note(3)], unread: 57 });
  assert.equal(c.state, 'open');
  assert.deepEqual(ids(log.notification), [3, 7, 9]);
  assert.equal(c.unreadCount, 57);
  assert.equal(c.lastId, 9);
  assert.deepEqual(ids(c.notifications), [9, 7, 3], 'newest first');
  assert.equal(log.open[0].user, '42');
  assert.equal(log.open[0].transport, 'websocket');
  assert.deepEqual(log.state, ['connecting', 'open']);
  c.close();
});

test('reconnects after 1006 with after=lastId; initial_state + missed merged, no duplicates, ascending', async (t) => {
  const { c, log } = await connected(t, { backoff: { initialMs: 1000, maxMs: 8000 } });
  last().accept({ initial: [note(4), note(2)] });
  last().frame({ type: 'notification', notification: note(5) });
  last().frame({ type: 'notification', notification: note(5) }); // a repeat must not surface
  assert.equal(c.unreadCount, 3);
  last().serverClose(1006);
  assert.equal(c.state, 'reconnecting');
  assert.equal(log.disconnect[0].delayMs, 500, 'backoff: random 0.5 of a 1000 ms window');
  await advance(499);
  assert.equal(FakeWebSocket.all.length, 1, 'not before the backoff delay');
  await advance(1);
  assert.equal(FakeWebSocket.all.length, 2);
  assert.equal(last().after, '5');
  last().accept({ initial: [note(7), note(5), note(4), note(2)], missed: [note(6, { read: true }), note(7)], unread: 5 });
  assert.deepEqual(ids(log.notification), [2, 4, 5, 6, 7]);
  assert.equal(c.unreadCount, 5);
  assert.equal(c.lastId, 7);
  assert.equal(c.notifications.find((n) => n.id === 6).read, true);
  c.close();
});

test('truncated missed: reconnects at once with after = last id of the frame, delivery stays ascending', async (t) => {
  const { c, log } = await connected(t, { after: 0 });
  assert.equal(last().after, '0');
  last().accept({ initial: [note(3000)], missed: [note(1), note(2)], truncated: true });
  assert.notEqual(c.state, 'open');
  await advance(0);
  assert.equal(FakeWebSocket.all.length, 2, 'no backoff for the rest of a truncated missed');
  assert.equal(last().after, '2');
  last().accept({ initial: [note(3000)], missed: [note(3), note(3000)] });
  assert.equal(c.state, 'open');
  assert.deepEqual(ids(log.notification), [1, 2, 3, 3000]);
  c.close();
});

test("other users' notifications are delivered but do not move lastId or the unread count", async (t) => {
  const { c, log } = await connected(t);
  last().accept({ initial: [note(10)] });
  last().frame({ type: 'notification', notification: note(99, { user: '43' }) });
  assert.equal(c.lastId, 10);
  assert.equal(c.unreadCount, 1);
  assert.deepEqual(ids(log.notification), [10, 99]);
  assert.deepEqual(ids(c.notifications), [10], 'the list mirrors the own inbox');
  c.close();
});

test('1008 token expired: the provider is called again and the new token is used at once', async (t) => {
  useFakeTimers(t);
  let calls = 0;
  const c = makeClient({ token: async () => `tok${++calls}` });
  c.connect();
  await flush();
  assert.equal(last().token, 'tok1');
  last().accept({ initial: [note(1)] });
  last().serverClose(1008, 'token expired; reconnect with a new token and after');
  await advance(0);
  assert.equal(calls, 2);
  assert.equal(FakeWebSocket.all.length, 2);
  assert.equal(last().token, 'tok2');
  assert.equal(last().after, '1');
  // a rate-abuse 1008 keeps the token and backs off
  last().accept({ initial: [note(1)] });
  last().serverClose(1008, 'rate limit exceeded repeatedly');
  await advance(0);
  assert.equal(FakeWebSocket.all.length, 2, 'backoff, not immediate');
  await advance(250);
  assert.equal(FakeWebSocket.all.length, 3);
  assert.equal(calls, 2);
  c.close();
});

test('1008 token expired with a fixed token string is fatal (it cannot be refreshed)', async (t) => {
  const { c, log } = await connected(t);
  last().accept();
  last().serverClose(1008, 'token expired; reconnect with a new token and after');
  assert.equal(c.state, 'closed');
  assert.equal(log.error[0].fatal, true);
  assert.equal(log.error[0].code, 'token_expired');
});

for (const code of [1003, 1009]) {
  test(`close ${code} is fatal: error event, state closed, no reconnect`, async (t) => {
    const { c, log } = await connected(t);
    last().accept();
    last().serverClose(code, 'bad');
    assert.equal(c.state, 'closed');
    assert.equal(log.error.length, 1);
    assert.equal(log.error[0].fatal, true);
    assert.equal(log.error[0].closeCode, code);
    await advance(120000);
    assert.equal(FakeWebSocket.all.length, 1);
  });
}

test('1012 drain: short jitter, attempt counter not grown', async (t) => {
  const { c, log } = await connected(t, { drainJitterMs: 1000, backoff: { initialMs: 1000, maxMs: 30000 } });
  last().accept();
  for (let i = 0; i < 3; i++) {
    last().serverClose(1012, 'node is draining');
    assert.equal(log.disconnect.at(-1).delayMs, 500, 'random 0.5 × 1000 ms, the same every time');
    await advance(500);
    assert.equal(FakeWebSocket.all.length, i + 2);
    last().accept();
  }
  // a 1006 now still starts at attempt 0 of the backoff
  last().serverClose(1006);
  assert.equal(log.disconnect.at(-1).delayMs, 500);
  c.close();
});

test('backoff grows across failed attempts and resets once a connection stays open stableMs', async (t) => {
  const { c, log } = await connected(t, { backoff: { initialMs: 100, maxMs: 1000 }, stableMs: 5000 });
  for (const expected of [50, 100, 200, 400, 500, 500]) {
    last().failBeforeOpen();
    assert.equal(log.disconnect.at(-1).delayMs, expected);
    await advance(expected);
  }
  last().accept();
  await advance(4999);
  last().serverClose(1006);
  assert.equal(log.disconnect.at(-1).delayMs, 500, 'open < stableMs: no reset');
  await advance(500);
  last().accept();
  await advance(5000);
  last().serverClose(1011);
  assert.equal(log.disconnect.at(-1).delayMs, 50, 'stable for 5 s: back to attempt 0');
  c.close();
});

test('groups are subscribed after welcome on every connection; subscribe() resolves on subscribed', async (t) => {
  useFakeTimers(t);
  const c = makeClient({ groups: ['org_5'] });
  c.connect();
  await flush();
  last().accept();
  assert.deepEqual(last().sentOf('subscribe'), [{ type: 'subscribe', group: 'org_5' }]);
  last().frame({ type: 'subscribed', group: 'org_5' });
  const p = c.subscribe('broadcast');
  assert.deepEqual(last().sentOf('subscribe').at(-1), { type: 'subscribe', group: 'broadcast' });
  last().frame({ type: 'subscribed', group: 'broadcast' });
  assert.deepEqual(await p, { type: 'subscribed', group: 'broadcast' });
  last().serverClose(1006);
  await advance(250);
  last().accept();
  assert.deepEqual(last().sentOf('subscribe').map((f) => f.group), ['org_5', 'broadcast']);
  c.close();
});

test('subscribe: an error reply rejects and drops the group; while disconnected it waits for the next connection', async (t) => {
  const { c, log } = await connected(t);
  last().accept();
  const denied = c.subscribe('org_9');
  last().frame({ type: 'error', code: 'forbidden', message: 'not in token' });
  await assert.rejects(denied, { code: 'forbidden' });
  assert.deepEqual(c.groups, []);
  last().serverClose(1006);
  const later = c.subscribe('org_5');
  let settled = false;
  later.then(() => (settled = true));
  await flush();
  assert.equal(settled, false);
  await advance(250);
  last().accept();
  assert.deepEqual(last().sentOf('subscribe'), [{ type: 'subscribe', group: 'org_5' }]);
  last().frame({ type: 'subscribed', group: 'org_5' });
  assert.deepEqual(await later, { type: 'subscribed', group: 'org_5' });
  await assert.rejects(c.subscribe('bad name!'), { code: 'bad_request' });
  assert.equal(log.error.length, 0, 'the caller got the rejections; nothing unsolicited');
  const unsub = c.unsubscribe('org_5');
  assert.deepEqual(last().sent.at(-1), { type: 'unsubscribe', group: 'org_5' });
  last().frame({ type: 'unsubscribed', group: 'org_5' });
  assert.deepEqual(await unsub, { type: 'unsubscribed', group: 'org_5' });
  assert.deepEqual(c.groups, []);
  last().serverClose(1006);
  assert.deepEqual(await c.unsubscribe('org_7'), { type: 'unsubscribed', group: 'org_7' }, 'disconnected: at once');
  c.close();
});

test('markRead / markAllRead: replies are matched in request order, state updated, errors reject the right call', async (t) => {
  const { c, log } = await connected(t);
  last().accept({ initial: [note(3), note(2), note(1)], unread: 3 });
  const a = c.markRead([1]);
  const b = c.markRead([2, 99]);
  const d = c.markAllRead();
  assert.deepEqual(last().sent.slice(-3), [
    { type: 'mark_read', ids: [1] },
    { type: 'mark_read', ids: [2, 99] },
    { type: 'mark_all_read' },
  ]);
  last().frame({ type: 'marked_read', ids: [1], unread_count: 2 });
  last().frame({ type: 'error', code: 'rate_limited', message: 'too many frames; slow down' });
  last().frame({ type: 'marked_read', all: true, unread_count: 0 });
  assert.deepEqual(await a, { type: 'marked_read', ids: [1], unread_count: 2 });
  await assert.rejects(b, { code: 'rate_limited' });
  assert.equal((await d).all, true);
  assert.equal(c.unreadCount, 0);
  assert.ok(c.notifications.every((n) => n.read));
  assert.ok(log.change.length >= 3);
  await assert.rejects(c.markRead([0]), { code: 'bad_request' });
  await assert.rejects(c.markRead(Array.from({ length: 1001 }, (_, i) => i + 1)), { code: 'bad_request' });
  const pending = c.markRead([3]);
  last().serverClose(1006);
  await assert.rejects(pending, { code: 'not_connected' });
  await assert.rejects(c.markRead([3]), { code: 'not_connected' });
  c.close();
});

test('live unread notifications raise unreadCount; the list keeps the newest `keep`', async (t) => {
  useFakeTimers(t);
  const c = makeClient({ keep: 2 });
  c.connect();
  await flush();
  last().accept({ initial: [note(1)], unread: 1 });
  last().frame({ type: 'notification', notification: note(2) });
  last().frame({ type: 'notification', notification: note(3) });
  assert.equal(c.unreadCount, 3);
  assert.deepEqual(ids(c.notifications), [3, 2]);
  c.close();
});

test('events are delivered with group and payload', async (t) => {
  const { c, log } = await connected(t);
  last().accept();
  last().frame({ type: 'event', group: 'org_5', payload: { x: 1 } });
  assert.deepEqual(log.event, [{ group: 'org_5', payload: { x: 1 } }]);
  c.close();
});

test('heartbeat: silent socket gets a ping; pong keeps it; two silent heartbeats drop it', async (t) => {
  const { c, log } = await connected(t);
  last().accept({ heartbeat_s: 10 });
  await advance(5000); // tick 1: the opening frames count as activity
  await advance(5000); // tick 2: first idle tick
  assert.equal(last().sentOf('ping').length, 0);
  await advance(5000); // tick 3: idle for ~one heartbeat: ping
  assert.equal(last().sentOf('ping').length, 1);
  last().frame({ type: 'pong' });
  for (let i = 0; i < 4; i++) await advance(5000);
  assert.equal(c.state, 'open', 'the pong proved liveness');
  assert.ok(last().sentOf('ping').length >= 2, 'still pinging while idle');
  // from now on the node is silent
  const before = FakeWebSocket.all.length;
  for (let i = 0; i < 4; i++) await advance(5000);
  assert.equal(c.state, 'reconnecting');
  assert.match(log.disconnect.at(-1).reason, /heartbeat/);
  assert.equal(log.disconnect.at(-1).code, 1006);
  await advance(1000);
  assert.equal(FakeWebSocket.all.length, before + 1);
  c.close();
});

test('a throwing listener does not break the client', async (t) => {
  useFakeTimers(t);
  const c = makeClient();
  const seen = [];
  const errors = [];
  c.on('notification', () => {
    throw new Error('boom');
  });
  c.on('notification', (n) => seen.push(n.id));
  c.on('error', (e) => errors.push(e.code));
  c.connect();
  await flush();
  last().accept({ initial: [note(2), note(1)] });
  assert.deepEqual(seen, [1, 2]);
  assert.deepEqual(errors, ['listener', 'listener']);
  assert.equal(c.state, 'open');
  c.close();
});

test('on() returns an unsubscribe function; off() removes too', async (t) => {
  useFakeTimers(t);
  const c = makeClient();
  const a = [];
  const b = [];
  const fnB = (s) => b.push(s);
  const stop = c.on('state', (s) => a.push(s));
  c.on('state', fnB);
  c.connect();
  stop();
  c.off('state', fnB);
  c.close();
  assert.deepEqual(a, ['connecting']);
  assert.deepEqual(b, ['connecting']);
});

test('close() stops everything: no reconnect, pending calls rejected, socket closed, no timer left', async (t) => {
  useFakeTimers(t);
  const c = makeClient();
  c.connect();
  await flush();
  const ws = last();
  ws.accept({ heartbeat_s: 5 });
  const pending = c.markAllRead();
  c.close();
  assert.equal(c.state, 'closed');
  assert.deepEqual(ws.closedByClient?.code, 1000);
  await assert.rejects(pending, { code: 'not_connected' });
  ws.serverClose(1006); // late events of the old socket are ignored
  await advance(600000);
  assert.equal(FakeWebSocket.all.length, 1);
  assert.equal(c.timers.size, 0, 'every timer cleared, so a Node process can exit');
  await assert.rejects(c.markRead([1]), { code: 'closed' });
  // connect() again starts over, resuming where it was
  c.connect();
  await flush();
  assert.equal(FakeWebSocket.all.length, 2);
  c.close();
});

test('offline closes the socket and waits; online reconnects at once', async (t) => {
  useFakeTimers(t);
  const net = new EventTarget();
  const c = makeClient({ networkEvents: net });
  c.connect();
  await flush();
  const ws = last();
  ws.accept({ initial: [note(4)] });
  net.dispatchEvent(new Event('offline'));
  assert.equal(c.state, 'reconnecting');
  assert.ok(ws.closedByClient);
  await advance(600000);
  assert.equal(FakeWebSocket.all.length, 1, 'no attempts while offline');
  net.dispatchEvent(new Event('online'));
  await flush();
  assert.equal(FakeWebSocket.all.length, 2);
  assert.equal(last().after, '4');
  c.close();
  net.dispatchEvent(new Event('online'));
  await flush();
  assert.equal(FakeWebSocket.all.length, 2, 'listeners removed on close');
});

test('a ws-style socket reports the refused upgrade: 503 honours Retry-After, 403 is fatal', async (t) => {
  useFakeTimers(t);
  class WsLike extends FakeWebSocket {
    constructor(url) {
      super(url);
      this.handlers = {};
    }
    on(type, fn) {
      this.handlers[type] = fn;
    }
    terminate() {
      this.readyState = 3;
      queueMicrotask(() => this.dispatch('close', { code: 1006, reason: '' }));
    }
    refuse(status, headers = {}) {
      this.handlers['unexpected-response']({}, { statusCode: status, headers, resume() {} });
    }
  }
  const c = makeClient({ WebSocket: WsLike, drainJitterMs: 1000 });
  const log = record(c);
  c.connect();
  await flush();
  last().refuse(503, { 'retry-after': '5' });
  await flush();
  assert.equal(log.disconnect.at(-1).status, 503);
  assert.equal(log.disconnect.at(-1).delayMs, 5500, 'Retry-After 5 s plus 0.5 × 1000 ms jitter');
  await advance(5499);
  assert.equal(FakeWebSocket.all.length, 1);
  await advance(1);
  assert.equal(FakeWebSocket.all.length, 2);
  last().refuse(403);
  await flush();
  assert.equal(c.state, 'closed');
  assert.equal(log.error.at(-1).code, 'forbidden');
  assert.equal(log.error.at(-1).status, 403);
});

test('browser-style failure before open: a diagnostic GET tells 401 (refresh) from 403 (fatal)', async (t) => {
  useFakeTimers(t);
  const statuses = [401, 403];
  const requests = [];
  const inits = [];
  const fetch = async (url, init) => {
    requests.push(new URL(url));
    inits.push(init);
    return new Response('{"error":"x"}', { status: statuses.shift() });
  };
  let calls = 0;
  const c = makeClient({ fetch, token: async () => `tok${++calls}`, transport: 'websocket' });
  const log = record(c);
  c.connect();
  await flush();
  last().failBeforeOpen();
  await flush();
  assert.equal(requests[0].protocol, 'http:');
  assert.equal(requests[0].pathname, '/ws/notifications/');
  assert.equal(requests[0].searchParams.get('token'), null, 'not in the URL');
  assert.equal(inits[0].headers.authorization, 'Bearer tok1', 'fetch cannot set Sec-WebSocket-Protocol');
  await advance(250);
  assert.equal(calls, 2, '401: a new token was requested');
  assert.equal(last().token, 'tok2');
  last().failBeforeOpen();
  await flush();
  assert.equal(c.state, 'closed');
  assert.equal(log.error.at(-1).code, 'forbidden');
});

test("auto mode: two upgrade failures with the node reachable (426) fall back to SSE", async (t) => {
  useFakeTimers(t);
  const sse = [];
  const fetch = async (url, init) => {
    const u = new URL(url);
    if (u.pathname === '/ws/notifications/') return new Response('', { status: 426 });
    sse.push({ u, init });
    return new Response('{"error":"draining"}', { status: 503, headers: { 'retry-after': '1' } });
  };
  const c = makeClient({ fetch });
  c.connect();
  await flush();
  last().failBeforeOpen();
  await flush();
  await advance(250);
  last().failBeforeOpen();
  await flush();
  await advance(0);
  assert.equal(FakeWebSocket.all.length, 2, 'no third WebSocket');
  assert.equal(sse.length, 1);
  assert.equal(sse[0].u.pathname, '/sse/notifications/');
  assert.equal(sse[0].init.headers.authorization, 'Bearer tok');
  assert.equal(c.transport, 'sse');
  c.close();
});

test('a resume point the node never issued (400 "beyond the newest") is dropped, not retried', async (t) => {
  useFakeTimers(t);
  const requests = [];
  const fetch = async (url) => {
    requests.push(new URL(url));
    const body = '{"error":"after (900) is beyond the newest notification id (12); resume from an id you received"}';
    return new Response(body, { status: 400 });
  };
  const c = makeClient({ fetch, after: 900, transport: 'websocket' });
  const log = record(c);
  c.connect();
  await flush();
  assert.equal(last().after, '900');
  last().failBeforeOpen();
  await flush();
  assert.equal(requests.length, 1, 'one diagnostic GET');
  assert.equal(log.error.at(-1).code, 'resume_reset');
  assert.equal(log.error.at(-1).fatal, false);
  assert.notEqual(c.state, 'closed');
  await advance(0);
  await flush();
  assert.equal(last().after, null, 'the next attempt opens without after');
  c.close();
});

test('any other 400 to an attempt with after is not a reset', async (t) => {
  useFakeTimers(t);
  const fetch = async () => new Response('{"error":"after must be an integer >= 0"}', { status: 400 });
  const c = makeClient({ fetch, after: 5, transport: 'websocket' });
  const log = record(c);
  c.connect();
  await flush();
  last().failBeforeOpen();
  await flush();
  assert.equal(log.error.some((e) => e.code === 'resume_reset'), false);
  await advance(60_000);
  await flush();
  assert.equal(last().after, '5', 'the resume point is kept');
  c.close();
});

test('a token that is not a JWT is refused before it is sent: at construction, or from the provider', async (t) => {
  assert.throws(() => makeClient({ token: 'not a jwt' }), /options\.token is not a JWT/);
  const { c, log } = await connected(t, { token: async () => 'bad token, with spaces' });
  assert.equal(FakeWebSocket.all.length, 0, 'no attempt with it');
  assert.equal(log.error[0].code, 'token_provider');
  assert.match(log.error[0].message, /no JWT/);
  assert.equal(c.state, 'reconnecting', 'a provider may do better next time');
  c.close();
});

test('429 at connect: a too_many_connections error (not fatal) and the slow schedule, not the backoff', async (t) => {
  useFakeTimers(t);
  const why = 'user 42 has 2 connections to this node, the most allowed; close one first';
  const fetch = async () => new Response(JSON.stringify({ error: why }), { status: 429 });
  const c = makeClient({ fetch, transport: 'websocket', backoff: { initialMs: 100, maxMs: 8000 } });
  const log = record(c);
  c.connect();
  await flush();
  for (let i = 0; i < 3; i++) {
    last().failBeforeOpen();
    await flush();
    const e = log.error.at(-1);
    assert.deepEqual([e.code, e.fatal, e.status, e.message], ['too_many_connections', false, 429, why]);
    const d = log.disconnect.at(-1);
    assert.deepEqual([d.status, d.willReconnect], [429, true]);
    assert.equal(d.delayMs, 6000, 'half the cap plus random 0.5 of the other half, every time');
    await advance(5999);
    assert.equal(FakeWebSocket.all.length, i + 1, 'not sooner');
    await advance(1);
    assert.equal(FakeWebSocket.all.length, i + 2);
  }
  assert.equal(c.state, 'reconnecting');
  assert.equal(log.error.length, 3);
  c.close();
});
