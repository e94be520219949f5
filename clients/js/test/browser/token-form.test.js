// The live page's token form in a real headless Chromium, against one node started
// with HERALD_DEMO=true: a token the client refuses before sending it (a character
// outside a JWT's) leaves the form up with the reason, whether it came in the address
// fragment or was pasted into the form, and a good token pasted after it connects.

import assert from 'node:assert/strict';
import { e2e, HeraldNode, launchChromium, mintToken, newPage, waitFor } from '../harness.js';

e2e('live page: a malformed token is refused in the form, not thrown', { timeoutMs: 60000 }, async (scope) => {
  const context = await launchChromium(scope);
  const node = await HeraldNode.create(scope, { env: { HERALD_DEMO: 'true' } });
  const { page, errors } = await newPage(scope, context);

  const refused = async (how) => {
    await waitFor(async () => page.isVisible('#token-error'), { timeoutMs: 5000, what: `${how}: the reason is shown` });
    assert.match(await page.textContent('#token-error'), /This token cannot be used: .*token/i, how);
    assert.equal(await page.isVisible('#token-form'), true, `${how}: the form stays up`);
    assert.equal(await page.isVisible('#app'), false, `${how}: no empty page behind it`);
  };

  // In the fragment: the form comes up with the reason.
  const resp = await page.goto(`${node.url}/demo/#token=${encodeURIComponent('not a token')}`);
  assert.equal(resp.status(), 200);
  await refused('from the fragment');

  // Pasted into the form.
  await page.fill('#token-input', 'eyJ{bad}');
  await page.click('#token-form button[type=submit]');
  await refused('pasted');

  // Then a good one connects, and the reason goes.
  await page.fill('#token-input', mintToken('w9', { ttlS: 3600 }));
  await page.click('#token-form button[type=submit]');
  await waitFor(async () => (await page.textContent('#state')) === 'open', {
    timeoutMs: 15000,
    what: async () => `the page opens (state ${await page.textContent('#state')})`,
  });
  assert.equal(await page.textContent('#user'), 'w9');
  assert.equal(await page.isVisible('#token-form'), false);
  assert.equal(await page.isVisible('#token-error'), false);
  assert.deepEqual(errors, [], 'no uncaught error on the page');
});
