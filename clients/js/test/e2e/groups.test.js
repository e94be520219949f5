// Groups against a two-node cluster, over both transports: subscribe and unsubscribe
// while notifications keep coming (over SSE each change reopens the stream with a new
// `groups=` list and `after`, so nothing may be lost or repeated), group events that
// cross nodes through Redis, a group the token does not allow (forbidden, and the
// connection goes on), and the `groups` option joined at connect.

import assert from 'node:assert/strict';
import {
  e2e, startCluster, newClient, mintToken, publishContinuously, publishEvent, waitFor, waitState, waitAll,
  assertExactlyOnce, sleep,
} from '../harness.js';

e2e('groups: subscribe, events across nodes, unsubscribe, forbidden (WebSocket and SSE)', { timeoutMs: 45000 }, async (scope) => {
  const { nodes } = await startCluster(scope, 2);
  const [a, b] = nodes;
  const clients = [];
  for (const [transport, node] of [['websocket', a], ['sse', b]]) {
    const user = `g-${transport}`;
    const c = { user, transport };
    Object.assign(c, await newClient(scope, { url: node.url, token: mintToken(user, { groups: ['org_5'] }), transport }, user));
    clients.push(c);
  }
  // A third client joins org_5 from the start, through the `groups` option.
  const early = await newClient(scope, { url: b.url, token: mintToken('g-early', { groups: ['org_5'] }), transport: 'sse', groups: ['org_5'] }, 'g-early');
  for (const c of [...clients, early]) await waitState(c.client, 'open');

  const pub = publishContinuously(a.url, clients.map((c) => c.user), { intervalMs: 60, scope });
  await sleep(300);
  const replies = await Promise.all(clients.map((c) => c.client.subscribe('org_5')));
  for (const r of replies) assert.deepEqual(r, { type: 'subscribed', group: 'org_5' });
  await sleep(200);

  await publishEvent(b.url, 'org_5', { k: 1 });
  const eventsOf = (rec) => rec.events.filter((e) => e.group === 'org_5').map((e) => e.payload.k);
  for (const c of [...clients, early]) {
    await waitFor(() => eventsOf(c.rec).includes(1), { what: () => `${c.rec.label}: event k=1 (${JSON.stringify(c.rec.events)})` });
  }

  // A group the token does not list: refused, and the connection goes on.
  for (const c of clients) {
    await assert.rejects(c.client.subscribe('org_6'), (e) => e.code === 'forbidden', `${c.user}: org_6 is forbidden`);
  }
  await sleep(200);

  const unsub = await Promise.all(clients.map((c) => c.client.unsubscribe('org_5')));
  for (const r of unsub) assert.deepEqual(r, { type: 'unsubscribed', group: 'org_5' });
  await sleep(200);
  await publishEvent(a.url, 'org_5', { k: 2 });
  await waitFor(() => eventsOf(early.rec).includes(2), { what: 'g-early: event k=2' });
  await sleep(500);
  await pub.stop();
  assert.deepEqual(pub.errors.map(String), [], 'every publish answered 201');

  for (const c of clients) {
    assert.deepEqual(eventsOf(c.rec), [1], `${c.user}: k=1 once, and not k=2 after unsubscribing`);
    await waitAll(c.rec, pub.sent.get(c.user));
    await sleep(200);
    assertExactlyOnce(c.rec.ids, pub.sent.get(c.user), `${c.user} across the group changes`);
    assert.equal(c.client.state, 'open');
    assert.equal(c.client.transport, c.transport);
    assert.deepEqual(c.rec.errors.filter((e) => e.fatal), [], `${c.user}: no fatal error`);
  }
  assert.deepEqual(eventsOf(early.rec), [1, 2]);
  // Over SSE, the group changes reopened the stream: each reopen resumed with after.
  const sse = clients.find((c) => c.transport === 'sse');
  assert.ok(sse.rec.opens.length >= 3, `the SSE stream reopened for each change (${sse.rec.opens.length} opens)`);
});
