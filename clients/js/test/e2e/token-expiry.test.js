// Token expiry with a provider that returns fresh tokens: each token lives 2-3 s, so
// the node closes the connection with 1008 ("token expired") again and again; the
// library asks the provider for a new token each time and resumes with `after`.
// Notifications published across those boundaries arrive exactly once, in order.
// Two clients at once on one node: one over WebSocket, one over SSE (where the node
// ends the stream with a close event carrying 1008).

import assert from 'node:assert/strict';
import {
  e2e, HeraldNode, newClient, mintToken, publish, waitState, waitAll, assertExactlyOnce, sleep,
} from '../harness.js';

e2e('token expiry: 1008, a fresh token from the provider, resume (WebSocket and SSE)', { timeoutMs: 40000 }, async (scope) => {
  const node = await HeraldNode.create(scope, { name: 'solo' });
  const clients = [];
  for (const transport of ['websocket', 'sse']) {
    const user = `t-${transport}`;
    const c = { user, transport, calls: 0, sent: [] };
    const token = async () => {
      c.calls += 1;
      return mintToken(user, { ttlS: 3 }); // exp is whole seconds: 2-3 s of life
    };
    Object.assign(c, await newClient(scope, { url: node.url, token, transport }, user));
    clients.push(c);
  }
  for (const c of clients) {
    await waitState(c.client, 'open');
    assert.equal(c.calls, 1);
    assert.equal(c.client.transport, c.transport);
  }

  const until = Date.now() + 7000;
  while (Date.now() < until) {
    for (const c of clients) c.sent.push(await publish(node.url, c.user, { at: Date.now() }));
    await sleep(100);
  }
  for (const c of clients) await waitAll(c.rec, c.sent);
  await sleep(300);

  let total1008 = 0;
  for (const c of clients) {
    assertExactlyOnce(c.rec.ids, c.sent, c.user);
    const seen1008 = c.rec.disconnects.filter((d) => d.code === 1008);
    assert.ok(seen1008.length >= 1, `${c.user}: the node closed with 1008 ${seen1008.length} times in 7 s`);
    assert.ok(seen1008.every((d) => /^token expired/.test(d.reason)), `${c.user}: reason starts with "token expired"`);
    assert.deepEqual(c.rec.disconnects.map((d) => d.code).filter((x) => x !== 1008), [], `${c.user}: no other disconnect`);
    assert.ok(c.calls >= 2 && c.calls >= seen1008.length + 1, `${c.user}: provider called ${c.calls} times for ${seen1008.length} expiries`);
    assert.ok(c.rec.opens.every((o) => o.transport === c.transport), `${c.user}: stayed on ${c.transport}`);
    assert.deepEqual(c.rec.errors.filter((e) => e.fatal), [], `${c.user}: no fatal error`);
    total1008 += seen1008.length;
  }
  assert.equal(await node.metric('herald_disconnects_total', { code: '1008' }), total1008, 'the node counted each 1008');
  assert.equal(await node.metric('herald_resumes_total'), total1008, 'every reconnect resumed with after');
});
