// HeraldClient over SSE with an in-process fetch: stream parsing, resume, close events,
// commands over POST, groups via reopen.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient } from '../../src/herald.js';
import { note, flush, advance, useFakeTimers, record } from './fakes.js';

/** A fake node: every GET of the stream gets a controllable ReadableStream. */
function fakeNode() {
  const streams = [];
  const posts = [];
  let postReply = (frame) => ({ status: 200, body: { type: 'marked_read', ...(frame.ids ? { ids: frame.ids } : { all: true }), unread_count: 0 } });
  const fetch = async (url, init = {}) => {
    const u = new URL(url);
    if (init.method === 'POST') {
      const frame = JSON.parse(init.body);
      posts.push({ u, init, frame });
      const r = postReply(frame);
      return new Response(JSON.stringify(r.body), { status: r.status });
    }
    let ctrl;
    const body = new ReadableStream({ start: (c) => (ctrl = c) });
    const enc = new TextEncoder();
    const s = {
      u,
      init,
      aborted: false,
      write: (text) => ctrl.enqueue(enc.encode(text)),
      frame: (f, id) => s.write(`event: ${f.type}\n${id ? `id: ${id}\n` : ''}data: ${JSON.stringify(f)}\n\n`),
      end: () => ctrl.close(),
      accept({ initial = [], missed = [], heartbeat_s = 25, unread = null } = {}) {
        s.write('retry: 3000\n\n');
        s.frame({ type: 'welcome', user: '42', node: 'n1', connection: 'n1-1', heartbeat_s });
        s.frame({ type: 'initial_state', unread_count: unread ?? initial.length, notifications: initial });
        if (u.searchParams.has('after')) s.frame({ type: 'missed', notifications: missed });
      },
    };
    init.signal?.addEventListener('abort', () => {
      s.aborted = true;
      try {
        ctrl.error(new DOMException('aborted', 'AbortError'));
      } catch {}
    });
    streams.push(s);
    return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
  };
  return { fetch, streams, posts, setPostReply: (fn) => (postReply = fn) };
}

function makeClient(node, extra = {}) {
  return new HeraldClient({ url: 'https://herald.test', token: 'tok', transport: 'sse', fetch: node.fetch, WebSocket: null, networkEvents: null, random: () => 0.5, ...extra });
}

test('SSE: Authorization header, frames parsed, 1012 close event honours the jittered retry, resume with after', async (t) => {
  useFakeTimers(t);
  const node = fakeNode();
  const c = makeClient(node, { groups: ['org_5'] });
  const log = record(c);
  c.connect();
  await flush();
  const s = node.streams[0];
  assert.equal(s.u.pathname, '/sse/notifications/');
  assert.equal(s.u.searchParams.get('groups'), 'org_5');
  assert.equal(s.u.searchParams.get('token'), null, 'the token travels in a header, not the URL');
  assert.equal(s.init.headers.authorization, 'Bearer tok');
  s.accept({ initial: [note(2), note(1)] });
  s.write(':\n\n');
  s.frame({ type: 'notification', notification: note(3) }, 3);
  s.frame({ type: 'event', group: 'org_5', payload: { a: 1 } });
  await flush();
  assert.equal(c.state, 'open');
  assert.equal(c.transport, 'sse');
  assert.deepEqual(log.notification.map((n) => n.id), [1, 2, 3]);
  assert.deepEqual(log.event, [{ group: 'org_5', payload: { a: 1 } }]);
  s.write('retry: 700\n\n');
  s.write('event: close\ndata: {"type":"close","code":1012,"reason":"node is draining"}\n\n');
  s.end();
  await flush();
  assert.equal(log.disconnect.at(-1).code, 1012);
  assert.equal(log.disconnect.at(-1).delayMs, 700, 'the node already jittered the retry');
  await advance(700);
  assert.equal(node.streams.length, 2);
  assert.equal(node.streams[1].u.searchParams.get('after'), '3');
  c.close();
});

test('SSE: a stream that ends without a close event is a 1006 with backoff', async (t) => {
  useFakeTimers(t);
  const node = fakeNode();
  const c = makeClient(node);
  const log = record(c);
  c.connect();
  await flush();
  node.streams[0].accept();
  await flush();
  node.streams[0].end();
  await flush();
  assert.equal(log.disconnect.at(-1).code, 1006);
  assert.equal(log.disconnect.at(-1).delayMs, 250);
  c.close();
});

test('SSE: markRead POSTs the frame to the commands endpoint and applies the reply', async (t) => {
  useFakeTimers(t);
  const node = fakeNode();
  const c = makeClient(node);
  c.connect();
  await flush();
  node.streams[0].accept({ initial: [note(5)], unread: 1 });
  await flush();
  const reply = await c.markRead([5]);
  assert.deepEqual(reply, { type: 'marked_read', ids: [5], unread_count: 0 });
  assert.equal(node.posts[0].u.pathname, '/sse/notifications/commands');
  assert.equal(node.posts[0].init.headers.authorization, 'Bearer tok');
  assert.deepEqual(node.posts[0].frame, { type: 'mark_read', ids: [5] });
  assert.equal(c.unreadCount, 0);
  assert.equal(c.notifications[0].read, true);
  node.setPostReply(() => ({ status: 503, body: { error: 'node is draining' } }));
  await assert.rejects(c.markAllRead(), { code: 'unavailable', status: 503 });
  c.close();
});

test('SSE: subscribe reopens the stream with the new groups and after, and resolves once it is open', async (t) => {
  useFakeTimers(t);
  const node = fakeNode();
  const c = makeClient(node);
  c.connect();
  await flush();
  node.streams[0].accept({ initial: [note(8)] });
  await flush();
  const p = c.subscribe('org_5');
  await flush();
  assert.equal(node.streams.length, 2);
  assert.equal(node.streams[0].aborted, true, 'the old stream is released');
  assert.equal(node.streams[1].u.searchParams.get('groups'), 'org_5');
  assert.equal(node.streams[1].u.searchParams.get('after'), '8');
  node.streams[1].accept({ initial: [note(8)] });
  assert.deepEqual(await p, { type: 'subscribed', group: 'org_5' });
  c.close();
});

test('SSE: 401 asks the provider for a new token; 403 while joining a new group rejects only that subscribe', async (t) => {
  useFakeTimers(t);
  let calls = 0;
  const responses = [401];
  const base = fakeNode();
  const fetch = async (url, init) => {
    const st = responses.shift();
    if (st) return new Response('{"error":"nope"}', { status: st });
    return base.fetch(url, init);
  };
  const c = makeClient(base, { fetch, token: () => `tok${++calls}` });
  const log = record(c);
  c.connect();
  await flush();
  await advance(250);
  assert.equal(calls, 2);
  base.streams[0].accept();
  await flush();
  assert.equal(base.streams[0].init.headers.authorization, 'Bearer tok2');
  responses.push(403);
  const p = c.subscribe('secret');
  await assert.rejects(p, { code: 'forbidden' });
  await flush();
  assert.deepEqual(c.groups, []);
  assert.notEqual(c.state, 'closed');
  assert.equal(base.streams.at(-1).u.searchParams.get('groups'), '', 'reopened without the refused group (groups= joins no extra group)');
  assert.equal(log.error.filter((e) => e.fatal).length, 0);
  c.close();
});
