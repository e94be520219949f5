// Heartbeats, both transports, against a node with --heartbeat-s 1:
//  - an idle but healthy connection is never dropped (the node's pings, or SSE's
//    comment lines, keep the library's watchdog quiet);
//  - a connection that goes silent (a TCP proxy stops forwarding the node's bytes: a
//    half-open link) is given up by the library within a few heartbeats, and once the
//    path works again the client resumes with `after`: what was published during the
//    silence arrives exactly once, in order.

import assert from 'node:assert/strict';
import {
  e2e, HeraldNode, TcpProxy, newClient, mintToken, publish, publishMany, waitFor, waitState, waitAll,
  assertExactlyOnce, sleep,
} from '../harness.js';

e2e('heartbeat: idle connections stay, silent ones are replaced and resume (WebSocket and SSE)', { timeoutMs: 40000 }, async (scope) => {
  const node = await HeraldNode.create(scope, { name: 'solo', args: ['--heartbeat-s', '1'] });
  const clients = [];
  for (const transport of ['websocket', 'sse']) {
    const proxy = await TcpProxy.start(scope, node.port);
    const user = `h-${transport}`;
    const c = { user, transport, proxy, sent: [] };
    Object.assign(c, await newClient(scope, { url: proxy.url, token: mintToken(user), transport }, user));
    clients.push(c);
  }
  for (const c of clients) await waitState(c.client, 'open');

  // Idle for 4 heartbeats: nothing happens.
  await sleep(4000);
  for (const c of clients) {
    assert.deepEqual(c.rec.disconnects, [], `${c.user}: an idle healthy connection stays`);
    c.sent.push(await publish(node.url, c.user, { idle: true }));
  }
  for (const c of clients) await waitAll(c.rec, c.sent);

  // Silence: the node's bytes stop reaching the client.
  const silentAt = Date.now();
  for (const c of clients) c.proxy.pauseToClient();
  for (const c of clients) c.sent.push(...(await publishMany(node.url, c.user, 3, (i) => ({ silent: i }))));
  for (const c of clients) {
    await waitFor(() => c.rec.disconnects.length >= 1, { timeoutMs: 8000, what: `${c.user}: the library gives up on the silent link` });
    const d = c.rec.disconnects[0];
    assert.equal(d.code, 1006, `${c.user}: ${d.reason}`);
    assert.ok(d.at - silentAt <= 4500, `${c.user}: noticed after ${d.at - silentAt} ms (heartbeat 1 s)`);
  }
  for (const c of clients) c.proxy.resumeToClient();
  for (const c of clients) {
    await waitFor(() => c.client.state === 'open' && c.rec.opens.length >= 2, {
      timeoutMs: 10000,
      what: () => `${c.user}: back (states ${c.rec.states.map((s) => s.state)})`,
    });
    c.sent.push(...(await publishMany(node.url, c.user, 2, (i) => ({ back: i }))));
  }
  for (const c of clients) {
    await waitAll(c.rec, c.sent);
    await sleep(200);
    assertExactlyOnce(c.rec.ids, c.sent, c.user);
    assert.deepEqual(c.rec.errors.filter((e) => e.fatal), [], `${c.user}: no fatal error`);
  }
});
