// The per-user connection limit (PROTOCOL.md 3.1) in a real headless Chromium: the
// live page of a user who already holds the one connection a node allows. A browser's
// WebSocket hides the refused upgrade's 429 behind a bare 1006, so the library learns
// it from its diagnostic GET (the Node tests fake such a socket; this one is real). The
// page must say `too_many_connections` with the node's reason, keep WebSocket (a 429 is
// no reason to fall back to SSE), retry on the slow schedule, and open once the other
// connection closes.

import assert from 'node:assert/strict';
import { e2e, HeraldNode, launchChromium, mintToken, newClient, newPage, waitFor, waitState } from '../harness.js';

e2e('live page: a user over the per-user limit is told so, and opens when a place frees', { timeoutMs: 90000 }, async (scope) => {
  const context = await launchChromium(scope);
  const node = await HeraldNode.create(scope, {
    env: { HERALD_DEMO: 'true' },
    args: ['--max-connections-per-user', '1'],
  });
  const user = 'lim-page';
  const token = mintToken(user, { ttlS: 3600 });
  const holder = await newClient(scope, { url: node.url, token, transport: 'websocket' }, `${user}-holder`);
  await waitState(holder.client, 'open');

  const { page, errors } = await newPage(scope, context);
  const logText = () => page.textContent('#log');

  await page.goto(`${node.url}/demo/#token=${encodeURIComponent(token)}`);
  const reason = `user ${user} has 1 connections to this node, the most allowed; close one first`;
  // The error, then the disconnect, then the state: wait for all three.
  await waitFor(
    async () => (await logText()).includes(`error too_many_connections: ${reason}`)
      && (await page.textContent('#state')) === 'reconnecting',
    { timeoutMs: 15000, what: async () => `the page reports the 429 and waits (log: ${await logText()})` },
  );
  const log = await logText();
  const refusal = log.match(/disconnected \(HTTP 429\), retry in (\d+) ms/);
  assert.ok(refusal, `the refusal, with its status, in the log: ${log}`);
  const delay = Number(refusal[1]);
  assert.ok(delay >= 15000 && delay <= 30000, `the slow schedule (half of and up to the 30 s cap): ${delay} ms`);
  assert.equal(await page.textContent('#transport'), 'websocket', 'no fallback to SSE over a 429');
  assert.doesNotMatch(log, /error too_many_connections \(fatal\)/, 'a 429 is not fatal');
  assert.ok((await node.metric('herald_upgrades_refused_total', { code: '429' })) >= 1);

  // A place frees: the page's next try opens.
  holder.client.close();
  await waitFor(async () => (await page.textContent('#state')) === 'open', {
    timeoutMs: 40000,
    what: async () => `the page opens once the holder closed (state ${await page.textContent('#state')})`,
  });
  assert.equal(await page.textContent('#user'), user);
  assert.equal(await page.textContent('#transport'), 'websocket');
  assert.equal((await node.status()).connections, 1);
  assert.deepEqual(errors, [], 'no uncaught error on the page');
});
