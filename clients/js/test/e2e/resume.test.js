// Resume after kill -9 and restart: a single node on SQLite is killed under a
// connected client and started again on the same port and data dir. Notifications
// published right after the restart, before the client is back, reach it through
// `missed`; those published while it reconnects and after it is back arrive live.
// Every id exactly once, in order.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  e2e, HeraldNode, TcpProxy, newClient, mintToken, publish, publishMany, waitFor, waitState, waitAll,
  assertExactlyOnce, sleep,
} from '../harness.js';

e2e('resume after kill -9 and restart of a single node', { timeoutMs: 45000 }, async (scope) => {
  const node = await HeraldNode.create(scope, { name: 'solo' });
  // The client reaches the node through a gate that can turn connections away, so
  // "published after the restart, before the client reconnected" is not left to timing.
  const gate = await TcpProxy.start(scope, node.port);
  const { client, rec } = await newClient(
    scope,
    { url: gate.url, token: mintToken('r1'), transport: 'websocket' },
    'r1',
  );
  await waitState(client, 'open');
  assert.equal(client.transport, 'websocket');

  const sent = await publishMany(node.url, 'r1', 5, (i) => ({ before: i }));
  await waitAll(rec, sent);

  gate.refuse(true);
  await node.kill9();
  await waitFor(() => client.state === 'reconnecting' || client.state === 'connecting', {
    what: () => `the client notices the dead node (state ${client.state})`,
  });
  // The API is down with the node: nothing can be published meanwhile.
  await assert.rejects(publish(node.url, 'r1', { lost: true }));
  await sleep(300); // a few failed reconnects against the gate

  await node.start(); // same port, same data dir
  const early = await publishMany(node.url, 'r1', 3, (i) => ({ early: i }));
  sent.push(...early);
  assert.notEqual(client.state, 'open', 'the client cannot be back yet: the gate refuses');
  assert.equal(await node.metric('herald_resumes_total'), 0);

  gate.refuse(false);
  // Publish while the client reconnects ...
  const during = [];
  while (client.state !== 'open' && during.length < 40) {
    during.push(await publish(node.url, 'r1', { during: during.length }));
    await sleep(50);
  }
  await waitState(client, 'open');
  sent.push(...during);
  // ... and after.
  sent.push(...(await publishMany(node.url, 'r1', 4, (i) => ({ after: i }))));

  await waitAll(rec, sent);
  await sleep(300);
  assertExactlyOnce(rec.ids, sent, 'r1 (after a quiet 300 ms)');
  assert.equal(client.lastId, sent.at(-1));
  assert.equal(await node.metric('herald_resumes_total'), 1, 'one resume with after');
  assert.ok(
    (await node.metric('herald_resume_replayed_total')) >= early.length,
    'the notifications published while the client was away came in missed',
  );
  assert.equal(rec.disconnects[0].code, 1006, 'kill -9: the transport just went away');
  assert.ok(rec.disconnects.every((d) => d.willReconnect), 'every disconnect reconnects');
  assert.deepEqual(rec.errors.filter((e) => e.fatal), [], 'no fatal error');
});

// A store replaced under the clients (the data dir wiped, a database restored from an
// older backup): the node refuses their resume point with 400, since it never issued
// it (PROTOCOL 3.1). The library reports `resume_reset`, opens from the snapshot, and
// takes the new store's ids, on both transports.
for (const transport of ['websocket', 'sse']) {
  e2e(`a resume point the store never issued is reset, not retried (${transport})`, { timeoutMs: 45000 }, async (scope) => {
    const node = await HeraldNode.create(scope, { name: `wiped-${transport}` });
    const { client, rec } = await newClient(scope, { url: node.url, token: mintToken('w1'), transport }, 'w1');
    await waitState(client, 'open');
    const old = await publishMany(node.url, 'w1', 5, (i) => ({ old: i }));
    await waitAll(rec, old);

    await node.kill9();
    for (const f of fs.readdirSync(node.dataDir)) {
      if (f.startsWith('herald.db')) fs.rmSync(path.join(node.dataDir, f));
    }
    await node.start(); // same port, an empty store
    await waitFor(() => rec.errors.some((e) => e.code === 'resume_reset'), {
      what: () => `a resume_reset error (errors: ${JSON.stringify(rec.errors)})`,
    });
    await waitState(client, 'open');
    assert.equal(client.lastId, null, 'no resume point left from the old store');
    const fresh = await publishMany(node.url, 'w1', 3, (i) => ({ fresh: i }));
    assert.ok(fresh[0] <= old[0], `the new store counts from the start again (${fresh})`);
    // The ids start over, so the waitAll helper's ascending check does not apply.
    await waitFor(() => rec.ids.length >= old.length + fresh.length, {
      what: () => `the new store's notifications (ids ${rec.ids})`,
    });
    await sleep(200);
    assert.deepEqual(rec.ids, [...old, ...fresh], 'each once: the old ones, then the new store\'s');
    assert.equal(client.lastId, fresh.at(-1));
    assert.deepEqual(rec.errors.filter((e) => e.fatal), [], 'no fatal error');
  });
}
