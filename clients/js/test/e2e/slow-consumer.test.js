// A slow consumer closed with 1013 that resumes: the client reaches a node with a
// small queue (--queue-capacity 5, --queue-expiry-ms 1000) through a TCP proxy that
// stops forwarding the node's bytes, as a client that stops reading would. A burst
// of large notifications fills the kernel buffers, the node's write stalls, and the
// node closes the connection as a slow consumer (1013). Once the proxy forwards again,
// the client reads what was buffered, reconnects with `after`, and gets everything
// else in `missed` (following each truncated one, 1 MiB a frame): every id exactly
// once, in order. Once over WebSocket, once over
// SSE.

import assert from 'node:assert/strict';
import {
  e2e, HeraldNode, TcpProxy, newClient, mintToken, publish, publishMany, waitFor, waitState, waitAll,
  assertExactlyOnce, sleep,
} from '../harness.js';

const PAD = 'x'.repeat(256 * 1024);

for (const transport of ['websocket', 'sse']) {
e2e(`slow consumer (${transport}): 1013, then a resume that loses nothing`, { timeoutMs: 60000 }, async (scope) => {
  const node = await HeraldNode.create(scope, {
    name: 'solo',
    args: ['--queue-capacity', '5', '--queue-expiry-ms', '1000', '--max-message-bytes', String(PAD.length + 1024)],
  });
  const proxy = await TcpProxy.start(scope, node.port);
  const { client, rec } = await newClient(scope, { url: proxy.url, token: mintToken('s1'), transport }, 's1');
  await waitState(client, 'open');

  const sent = await publishMany(node.url, 's1', 3, (i) => ({ small: i }));
  await waitAll(rec, sent);

  proxy.pauseToClient();
  // Large notifications until the node gives up on the connection.
  let burst = 0;
  while ((await node.metric('herald_slow_consumer_disconnects_total')) === 0) {
    assert.ok(burst < 400, `no 1013 after ${burst} notifications of 256 KiB`);
    sent.push(await publish(node.url, 's1', { burst, pad: PAD }));
    burst += 1;
    if (burst > 20) await sleep(20); // let the write deadline pass
  }
  assert.equal(await node.metric('herald_disconnects_total', { code: '1013' }), 1, 'closed with 1013');
  // More while the client is cut off: these can only come through `missed`.
  sent.push(...(await publishMany(node.url, 's1', 3, (i) => ({ while_cut: i }))));

  proxy.resumeToClient();
  await waitFor(() => client.state === 'open' && rec.states.filter((s) => s.state === 'open').length >= 2, {
    timeoutMs: 20000,
    what: () => `the client reconnects (states ${rec.states.map((s) => s.state)})`,
  });
  sent.push(...(await publishMany(node.url, 's1', 3, (i) => ({ after: i }))));

  await waitAll(rec, sent, 20000);
  await sleep(300);
  assertExactlyOnce(rec.ids, sent, 's1');
  assert.ok(burst >= 2, `burst of ${burst}`);
  // A `missed` frame holds at most 1 MiB of notifications: the library follows each
  // truncated one with another resume, so there is one for every 1 MiB dropped.
  const resumes = await node.metric('herald_resumes_total');
  assert.ok(resumes >= 1, 'the reconnect resumed with after');
  assert.ok((await node.metric('herald_resume_replayed_total')) >= 3, 'what was dropped came in missed');
  // The 1013, then the library's own closes (1000) to fetch the rest of each
  // truncated `missed`: one fewer than the resumes.
  assert.deepEqual(
    rec.disconnects.map((d) => d.code),
    [1013, ...Array(resumes - 1).fill(1000)],
    'the library saw the 1013 close, then closed only to follow truncated frames',
  );
  assert.ok(rec.opens.every((o) => o.transport === transport), `stayed on ${transport}`);
  assert.deepEqual(rec.errors.filter((e) => e.fatal), [], 'no fatal error');
});
}
