// A paced drain of one node of two: 20 library clients (15 WebSocket, 5 SSE) connect
// through nginx to a two-node cluster (PostgreSQL + Redis). While notifications are published
// continuously, node A drains over 2 s; its clients get 1012, reconnect through nginx
// with `after` and land on B. Nothing is lost, nothing arrives twice, and A ends
// drained with no connection.

import assert from 'node:assert/strict';
import {
  e2e, startCluster, Nginx, newClient, mintToken, publishContinuously, waitFor, waitState, waitAll,
  assertExactlyOnce, sleep,
} from '../harness.js';

const USERS = Array.from({ length: 20 }, (_, i) => `d${i}`);

e2e('paced drain of one node of two, clients through nginx', { timeoutMs: 60000 }, async (scope) => {
  const { nodes } = await startCluster(scope, 2);
  const [a, b] = nodes;
  const ng = await Nginx.start(scope, nodes);

  const clients = [];
  for (const [i, u] of USERS.entries()) {
    // Every fourth client streams over SSE (nginx's /sse/ location), the rest use WebSocket.
    const transport = i % 4 === 3 ? 'sse' : 'websocket';
    clients.push({ user: u, transport, ...(await newClient(scope, { url: ng.url, token: mintToken(u), transport }, u)) });
  }
  for (const c of clients) await waitState(c.client, 'open');
  const [sa, sb] = [await a.status(), await b.status()];
  assert.equal(sa.connections + sb.connections, USERS.length);
  assert.ok(sa.connections >= 5, `nginx least_conn gave A ${sa.connections} of ${USERS.length}`);

  const pub = publishContinuously(ng.url, USERS, { intervalMs: 100, scope });
  await sleep(800);
  const drainedAt = Date.now();
  const answer = await a.drain(2);
  assert.equal(answer.state, 'draining');
  assert.equal(answer.drain_remaining, sa.connections);
  await waitFor(async () => (await a.status()).state === 'drained', { timeoutMs: 8000, what: 'A drained' });
  const drainTook = Date.now() - drainedAt;
  await sleep(800); // publishing goes on after the drain
  const sent = await pub.stop();
  assert.deepEqual(pub.errors.map(String), [], 'every publish answered 201');
  assert.ok(pub.rounds >= 10, `published ${pub.rounds} rounds`);

  for (const c of clients) await waitAll(c.rec, sent.get(c.user), 15000);
  await sleep(300);
  for (const c of clients) {
    assertExactlyOnce(c.rec.ids, sent.get(c.user), c.user);
    assert.equal(c.client.state, 'open', `${c.user} is connected`);
    assert.equal(c.client.transport, c.transport, `${c.user} stays on ${c.transport}`);
  }
  const [fa, fb] = [await a.status(), await b.status()];
  assert.equal(fa.state, 'drained');
  assert.equal(fa.connections, 0, 'A holds no connection');
  assert.equal(fb.connections, USERS.length, 'every client moved to B');
  assert.ok(drainTook >= 1000, `a 2 s drain was paced (took ${drainTook} ms)`);
  assert.equal(await a.metric('herald_disconnects_total', { code: '1012' }), sa.connections);
  const moved = clients.filter((c) => c.rec.disconnects.length > 0);
  assert.equal(moved.length, sa.connections, 'exactly the clients of A were disconnected');
  for (const c of moved) {
    assert.deepEqual(c.rec.disconnects.map((d) => d.code), [1012], `${c.user}: one 1012`);
    assert.deepEqual(c.rec.opens.map((o) => o.node), ['A', 'B'], `${c.user}: from A to B`);
  }
  const closes = moved.map((c) => c.rec.disconnects[0].at).sort((x, y) => x - y);
  assert.ok(closes.at(-1) - closes[0] >= 800, `the 1012s were spread over the 2 s window: ${closes.map((t) => t - closes[0])}`);
});
