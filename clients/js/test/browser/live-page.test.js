// The live page in a real headless Chromium, through nginx, in front of a two-node
// cluster started with HERALD_DEMO=true. Two tabs follow two users: one on the default
// transport ('auto': WebSocket), one with `#transport=sse`. Notifications are
// published continuously while the cluster goes through a rolling restart (drain A,
// restart A, drain B, restart B); each tab moves from node to node and, at the end,
// its list `#notifications` holds every id published to its user exactly once, in id
// order, and `#unread` shows the right count. The WebSocket tab's sockets carry the
// token in their subprotocol, not their URL. A screenshot of the WebSocket tab goes
// to test/output/live-page.png (and of the SSE tab to live-page-sse.png).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  e2e, startCluster, Nginx, launchChromium, mintToken, publish, waitFor, sleep, describeDiff, OUTPUT_DIR,
} from '../harness.js';
const TABS = [
  { user: 'w1', fragment: '', transport: 'websocket', shot: 'live-page.png' },
  { user: 'w2', fragment: '&transport=sse', transport: 'sse', shot: 'live-page-sse.png' },
];

e2e('live page: a rolling restart of a two-node cluster behind nginx', { timeoutMs: 90000 }, async (scope) => {
  const context = await launchChromium(scope, { viewport: { width: 1100, height: 900 } });
  const { nodes } = await startCluster(scope, 2, { env: { HERALD_DEMO: 'true' } });
  const ng = await Nginx.start(scope, nodes);
  const base = ng.url;

  for (const tab of TABS) {
    tab.log = [];
    scope.addLog(`browser console (${tab.user})`, () => tab.log.join('\n'));
    tab.page = await context.newPage();
    tab.page.on('console', (m) => tab.log.push(`[${m.type()}] ${m.text()}`));
    tab.page.on('pageerror', (e) => tab.log.push(`[pageerror] ${e.stack || e}`));
    // Every WebSocket the page opens: the token rides in its subprotocol, never in its
    // URL (and Chromium fails a socket whose 101 does not answer `herald`).
    tab.sockets = [];
    tab.page.on('websocket', (ws) => tab.sockets.push(ws.url()));
    tab.page.on('requestfailed', (r) =>
      tab.log.push(`[requestfailed] ${r.url().replace(/token=[^&]+/, 'token=…')} ${r.failure()?.errorText}`),
    );
    const resp = await tab.page.goto(`${base}/demo/#token=${mintToken(tab.user, { ttlS: 3600 })}${tab.fragment}`);
    assert.equal(resp.status(), 200, `GET ${base}/demo/`);
    tab.state = () => tab.page.textContent('#state');
    await waitFor(async () => (await tab.state()) === 'open', {
      timeoutMs: 15000,
      what: async () => `${tab.user}: the page opens (state ${await tab.state()})`,
    });
    assert.equal(await tab.page.textContent('#transport'), tab.transport);
    assert.equal(await tab.page.textContent('#user'), tab.user);
    assert.equal(await tab.page.isVisible('#token-form'), false, 'no token form when the fragment has a token');
    assert.equal(await tab.page.isVisible('#app'), true);
    // The token left the address bar at once.
    assert.ok(!tab.page.url().includes('token='), `the fragment is cleared: ${tab.page.url()}`);
  }
  const connections = async () => Promise.all(nodes.map(async (n) => (n.running ? (await n.status()).connections : 0)));
  assert.equal((await connections()).reduce((a, b) => a + b), TABS.length, 'one connection per tab');

  // Publish continuously to a node that is up (directly: nginx's passive failure
  // marks then only see the pages' own traffic).
  const sent = new Map(TABS.map((t) => [t.user, []]));
  const pubErrors = [];
  let stop = false;
  scope.defer(() => {
    stop = true;
  });
  let up = nodes.slice();
  const publisher = (async () => {
    for (let round = 0; !stop && round < 500; round++) {
      for (const tab of TABS) {
        // Picked per publish: `up` changes while a round runs (a node about to stop).
        const target = up[round % up.length];
        try {
          sent.get(tab.user).push(await publish(target.url, tab.user, { text: `notification ${round + 1} for ${tab.user}` }));
        } catch (e) {
          pubErrors.push(String(e));
        }
      }
      await sleep(150);
    }
  })();

  // The rolling restart: each node in turn drains (the tabs move to the other one),
  // stops, and comes back.
  for (const [i, other] of [[0, 1], [1, 0]]) {
    const n = nodes[i];
    await sleep(700);
    await n.drain(1);
    await waitFor(async () => (await n.status()).state === 'drained', { timeoutMs: 8000, what: `${n.name} drained` });
    await waitFor(async () => (await nodes[other].status()).connections === TABS.length, {
      timeoutMs: 15000,
      what: `the tabs move to ${nodes[other].name}`,
    });
    up = [nodes[other]];
    await n.stop();
    await sleep(300);
    await n.start();
    up = nodes.slice();
  }
  await sleep(700);
  stop = true;
  await publisher;
  assert.deepEqual(pubErrors, [], 'every publish answered 201');

  for (const tab of TABS) {
    const want = sent.get(tab.user);
    assert.ok(want.length >= 15, `published ${want.length} to ${tab.user}`);
    const listed = () =>
      tab.page.$$eval('#notifications [data-id]', (els) => els.map((e) => Number(e.getAttribute('data-id'))));
    let ids = [];
    await waitFor(
      async () => {
        ids = await listed();
        return ids.length >= want.length;
      },
      {
        timeoutMs: 15000,
        what: () => `${tab.user}: the page lists ${want.length}: ${describeDiff([...ids].reverse(), want)}`,
      },
    );
    await sleep(300);
    ids = await listed();
    assert.deepEqual([...ids].reverse(), want, `${tab.user}: every id exactly once, newest first: ${describeDiff([...ids].reverse(), want)}`);
    assert.equal((await tab.page.textContent('#unread')).trim(), String(want.length), `${tab.user}: #unread`);
    assert.equal((await tab.page.textContent('#count')).trim(), String(want.length), `${tab.user}: #count`);
    assert.equal(await tab.state(), 'open');
    assert.equal(await tab.page.textContent('#transport'), tab.transport, `${tab.user} stayed on ${tab.transport}`);
    // Each tab went A -> B -> A (or B -> A -> B): the page's own log shows its opens.
    const opens = await tab.page.$$eval('#log li', (els) => els.map((e) => e.textContent).filter((t) => / open via /.test(t)));
    assert.ok(opens.length >= 2, `${tab.user}: moved between nodes: ${opens.join(' | ')}`);

    fs.mkdirSync(OUTPUT_DIR, { recursive: true });
    await tab.page.screenshot({ path: path.join(OUTPUT_DIR, tab.shot), fullPage: false });
    // Marking the newest one read, through the page's own button (a command over
    // the tab's transport), brings the count down by one.
    await tab.page.click(`#notifications [data-id="${want.at(-1)}"] button`);
    await waitFor(async () => (await tab.page.textContent('#unread')).trim() === String(want.length - 1), {
      what: async () => `${tab.user}: #unread ${want.length - 1} after mark read (is ${await tab.page.textContent('#unread')})`,
    });
    assert.equal(await tab.page.getAttribute(`#notifications [data-id="${want.at(-1)}"]`, 'class'), '', 'no longer unread');
    if (tab.transport === 'websocket') {
      assert.ok(tab.sockets.length >= 2, `${tab.user}: a socket per node: ${tab.sockets.length}`);
      for (const url of tab.sockets) assert.ok(!url.includes('token='), `${tab.user}: no token in ${url}`);
    }
    const errors = tab.log.filter((l) => l.startsWith('[pageerror]'));
    assert.deepEqual(errors, [], `${tab.user}: no uncaught error on the page`);
  }
});
