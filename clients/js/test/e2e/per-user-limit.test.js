// The per-user connection limit (PROTOCOL.md 3.1: 429 past
// HERALD_MAX_CONNECTIONS_PER_USER, "close one first", no Retry-After) against a real
// node started with a limit of 2. A third client of the user reports a
// `too_many_connections` error (not fatal), retries on the slow schedule (between half
// of and the whole backoff cap), never falls back to SSE, and opens once one of the
// user's connections closes. Twice: with the `ws` package, which shows the 429 itself,
// and with a browser-like WebSocket, which hides it behind a bare 1006, so the client
// learns it from its diagnostic GET.

import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { e2e, HeraldNode, newClient, mintToken, waitFor, waitState } from '../harness.js';

const MAX_MS = 2000;

/**
 * A `ws` WebSocket with what a browser's lacks hidden: no `on`, so no
 * 'unexpected-response' with the refusal's status and no ping events.
 */
class BrowserLikeWebSocket {
  constructor(url, protocols) {
    const ws = new WebSocket(url, protocols);
    return new Proxy(ws, {
      get: (t, k) => (k === 'on' ? undefined : typeof t[k] === 'function' ? t[k].bind(t) : t[k]),
    });
  }
}

async function limited(scope, WebSocketImpl, user) {
  const node = await HeraldNode.create(scope, { name: 'solo', args: ['--max-connections-per-user', '2'] });
  const token = mintToken(user);
  const holders = [];
  for (let i = 0; i < 2; i++) {
    const h = await newClient(scope, { url: node.url, token, transport: 'websocket' }, `${user}-holder${i}`);
    await waitState(h.client, 'open');
    holders.push(h);
  }
  const { client, rec } = await newClient(
    scope,
    { url: node.url, token, transport: 'auto', WebSocket: WebSocketImpl, backoff: { initialMs: 100, maxMs: MAX_MS } },
    `${user}-third`,
  );
  await waitFor(() => rec.disconnects.length >= 3, { timeoutMs: 4 * MAX_MS, what: () => `three refusals, got ${JSON.stringify(rec.disconnects)}` });
  const want = `user ${user} has 2 connections to this node, the most allowed; close one first`;
  for (const e of rec.errors) assert.deepEqual([e.code, e.fatal, e.message], ['too_many_connections', false, want]);
  assert.ok(rec.errors.length >= 3);
  for (const d of rec.disconnects) {
    assert.equal(d.status, 429);
    assert.ok(d.willReconnect);
    assert.ok(d.delayMs >= MAX_MS / 2 && d.delayMs <= MAX_MS, `slow schedule: ${d.delayMs} ms`);
  }
  const gaps = rec.disconnects.slice(1).map((d, i) => d.at - rec.disconnects[i].at);
  assert.ok(gaps.every((g) => g >= MAX_MS / 2 - 50), `attempts spaced by the slow schedule: ${gaps}`);
  assert.equal(client.state, 'reconnecting');
  assert.equal(client.transport, 'websocket', 'a 429 is no reason to leave WebSocket');

  holders[0].client.close();
  await waitState(client, 'open', 3 * MAX_MS);
  assert.equal(client.transport, 'websocket');
  assert.equal((await node.status()).connections, 2);
  assert.ok((await node.metric('herald_upgrades_refused_total', { code: '429' })) >= 3);
}

e2e('per-user limit: 429 seen by ws is too_many_connections on the slow schedule', { timeoutMs: 30000 }, async (scope) => {
  await limited(scope, WebSocket, 'lim-ws');
});

e2e('per-user limit: a browser-like WebSocket learns the 429 from its diagnostic GET', { timeoutMs: 30000 }, async (scope) => {
  await limited(scope, BrowserLikeWebSocket, 'lim-browser');
});
