// The harness itself, checked with raw `ws` clients (no library): a node starts,
// takes a minted token, delivers a published notification, restarts after kill -9 on
// the same port and data dir, and a two-node cluster behind nginx carries both.

import assert from 'node:assert/strict';
import WebSocket from 'ws';
import {
  e2e, HeraldNode, Nginx, startCluster, mintToken, publish, waitFor, sleep,
} from '../harness.js';

/** A raw WebSocket that collects parsed frames and its close code. */
function rawClient(scope, url) {
  const ws = new WebSocket(url);
  const c = { ws, frames: [], close: null, error: null };
  ws.on('message', (d) => c.frames.push(JSON.parse(d.toString())));
  ws.on('close', (code) => (c.close = code));
  ws.on('error', (e) => (c.error = e));
  ws.on('unexpected-response', (req, res) => {
    c.error = new Error(`upgrade refused: ${res.statusCode}`);
    c.close = res.statusCode;
  });
  scope.defer(() => ws.terminate());
  c.opened = () =>
    waitFor(() => c.frames.some((f) => f.type === 'initial_state') || c.close !== null, {
      what: () => `initial_state on ${url.replace(/token=[^&]+/, 'token=…')} (${c.error?.message})`,
    }).then(() => assert.ok(c.frames.some((f) => f.type === 'initial_state'), `opened (close ${c.close})`));
  c.ids = () =>
    c.frames.flatMap((f) =>
      f.type === 'notification' ? [f.notification.id] : f.type === 'missed' ? f.notifications.map((n) => n.id) : [],
    );
  return c;
}

e2e('harness: a node, a raw ws client, kill -9 and restart on the same port', { timeoutMs: 30000 }, async (scope) => {
  const node = await HeraldNode.create(scope, { name: 'solo' });
  const token = mintToken('h1');
  const c1 = rawClient(scope, `${node.wsUrl}/ws/notifications/?token=${token}`);
  await c1.opened();
  assert.equal(c1.frames[0].type, 'welcome');
  assert.equal(c1.frames[0].node, 'solo');
  const a = await node.publish('h1', { text: 'one' });
  await waitFor(() => c1.ids().length === 1, { what: 'first notification' });
  assert.deepEqual(c1.ids(), [a]);

  await node.kill9();
  await waitFor(() => c1.close !== null, { what: 'close after kill -9' });
  assert.equal(c1.close, 1006);
  await assert.rejects(publish(node.url, 'h1', {}), 'the API is down with the node');

  await node.restart();
  const b = await node.publish('h1', { text: 'two' });
  const c2 = rawClient(scope, `${node.wsUrl}/ws/notifications/?token=${token}&after=${a}`);
  await c2.opened();
  await waitFor(() => c2.frames.some((f) => f.type === 'missed'), { what: 'missed' });
  assert.deepEqual(c2.ids(), [b], 'the notification published while away arrives in missed');
  const st = await node.status();
  assert.equal(st.state, 'serving');
  assert.equal(st.connections, 1);

  // An expired token is refused at the upgrade.
  const old = rawClient(scope, `${node.wsUrl}/ws/notifications/?token=${mintToken('h1', { ttlS: -1 })}`);
  await waitFor(() => old.close !== null, { what: 'refusal' });
  assert.equal(old.close, 401);
});

e2e('harness: a two-node cluster behind nginx', { timeoutMs: 40000 }, async (scope) => {
  const { nodes } = await startCluster(scope, 2);
  const ng = await Nginx.start(scope, nodes);
  const wsBase = ng.url.replace('http', 'ws');
  const clients = [];
  for (let i = 0; i < 4; i++) {
    const c = rawClient(scope, `${wsBase}/ws/notifications/?token=${mintToken(`c${i}`)}`);
    await c.opened();
    clients.push(c);
  }
  const byNode = {};
  for (const c of clients) byNode[c.frames[0].node] = (byNode[c.frames[0].node] || 0) + 1;
  assert.deepEqual(byNode, { A: 2, B: 2 }, 'least_conn spreads 2/2');
  const sent = [];
  for (let i = 0; i < 4; i++) sent.push(await publish(ng.url, `c${i}`, { i }));
  for (let i = 0; i < 4; i++) {
    await waitFor(() => clients[i].ids().length === 1, { what: `c${i} notification` });
    assert.deepEqual(clients[i].ids(), [sent[i]]);
  }
  // A drain of A: its two clients get 1012, within the window.
  await nodes[0].drain(1);
  const onA = clients.filter((c) => c.frames[0].node === 'A');
  await waitFor(() => onA.every((c) => c.close !== null), { what: 'drain closes', timeoutMs: 5000 });
  assert.deepEqual(onA.map((c) => c.close), [1012, 1012]);
  await waitFor(async () => (await nodes[0].status()).state === 'drained', { what: 'drained' });
  await sleep(10);
});
