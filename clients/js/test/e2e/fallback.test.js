// The 'auto' transport falls back to SSE when the WebSocket cannot connect, against a
// real node:
//  - a browser-like WebSocket (no `ws` extras) that fails at once with error + close
//    1006, as a browser's does when something in between blocks upgrades;
//  - a subclass of the `ws` package that dials a closed port (connection refused).
// In both cases the client should end up on SSE and receive notifications.

import assert from 'node:assert/strict';
import WebSocket from 'ws';
import {
  e2e, HeraldNode, freePort, newClient, mintToken, publishMany, waitFor, waitState, waitAll,
} from '../harness.js';

async function fallsBackToSse(scope, WebSocketImpl, attempts, user, waitMs = 15000) {
  const node = await HeraldNode.create(scope, { name: 'solo' });
  const { client, rec } = await newClient(
    scope,
    { url: node.url, token: mintToken(user), transport: 'auto', WebSocket: WebSocketImpl },
    user,
  );
  await waitFor(() => client.state === 'open' && client.transport === 'sse', {
    timeoutMs: waitMs,
    what: () =>
      `open on SSE (state ${client.state}, transport ${client.transport}, ${attempts()} WebSocket attempts, ` +
      `disconnects ${JSON.stringify(rec.disconnects.map((d) => [d.code, d.status, d.reason]))})`,
  });
  assert.ok(attempts() >= 1, 'the WebSocket was tried first');

  const sent = await publishMany(node.url, user, 5);
  await waitAll(rec, sent);
  assert.equal(client.transport, 'sse');
  // (SSE streams count in websocket_connections_total too: admitted by the same code.)
  assert.equal((await node.status()).connections, 1, 'one connection: the SSE stream');
  await waitState(client, 'open');
  assert.deepEqual(rec.opens.map((o) => o.transport), ['sse']);
}

e2e("'auto' falls back to SSE: a browser-like WebSocket that fails with 1006", { timeoutMs: 30000 }, async (scope) => {
  let attempts = 0;
  class BlockedWebSocket extends EventTarget {
    constructor(url) {
      super();
      attempts += 1;
      this.url = url;
      this.readyState = 0;
      setTimeout(() => {
        this.readyState = 3;
        this.dispatchEvent(new Event('error'));
        this.dispatchEvent(Object.assign(new Event('close'), { code: 1006, reason: '', wasClean: false }));
      }, 5);
    }
    send() {
      throw new Error('InvalidStateError: not open');
    }
    close() {}
  }
  BlockedWebSocket.CONNECTING = 0;
  BlockedWebSocket.OPEN = 1;
  BlockedWebSocket.CLOSING = 2;
  BlockedWebSocket.CLOSED = 3;
  await fallsBackToSse(scope, BlockedWebSocket, () => attempts, 'f1');
});

e2e("'auto' falls back to SSE: a ws WebSocket that cannot connect", { timeoutMs: 20000 }, async (scope) => {
  const closedPort = await freePort();
  let attempts = 0;
  class RefusedWebSocket extends WebSocket {
    constructor(url, ...rest) {
      attempts += 1;
      super(`ws://127.0.0.1:${closedPort}/ws/notifications/`, ...rest);
    }
  }
  await fallsBackToSse(scope, RefusedWebSocket, () => attempts, 'f2');
});
