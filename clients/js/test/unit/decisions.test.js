// Pure decision logic: backoff, close codes (PROTOCOL.md 3.10), refusal statuses (3.1).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, decideClose, decideStatus, parseRetryAfter, endpointUrl, jwtExpiry, wsProtocols, SUBPROTOCOL, DEFAULTS } from '../../src/herald.js';

test('backoff: full jitter stays within [0, min(max, initial * 2^attempt))', () => {
  const opts = { initialMs: 100, maxMs: 5000 };
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(5000, 100 * 2 ** attempt);
    for (const r of [0, 0.25, 0.5, 0.999999]) {
      const d = backoffDelay(attempt, opts, () => r);
      assert.ok(d >= 0 && d < ceiling, `attempt ${attempt}, r ${r}: ${d} not in [0, ${ceiling})`);
    }
    assert.equal(backoffDelay(attempt, opts, () => 0), 0, 'r = 0 gives no delay: jitter is full');
  }
});

test('backoff: the window doubles per attempt until the cap, then stays at the cap', () => {
  const top = (attempt) => backoffDelay(attempt, { initialMs: 500, maxMs: 30000 }, () => 0.999999);
  assert.deepEqual([0, 1, 2, 3].map(top), [499, 999, 1999, 3999]);
  assert.equal(top(6), 29999, '500 * 64 = 32000 is capped at 30000');
  assert.equal(top(60), 29999);
  assert.equal(top(5000), 29999, 'huge attempts (2^n = Infinity) still respect the cap');
});

test('backoff: defaults are 500 ms initial and 30 s cap', () => {
  assert.equal(backoffDelay(0, {}, () => 0.999999), DEFAULTS.initialMs - 1);
  assert.equal(backoffDelay(100, undefined, () => 0.999999), DEFAULTS.maxMs - 1);
});

test('close codes: 1003 and 1009 are fatal (client bugs do not loop)', () => {
  assert.equal(decideClose(1003).action, 'fatal');
  assert.equal(decideClose(1009).action, 'fatal');
});

test('close codes: 1008 "token expired" refreshes the token and reconnects at once', () => {
  const d = decideClose(1008, 'token expired; reconnect with a new token and after');
  assert.deepEqual([d.action, d.delay, d.code], ['refresh', 'immediate', 'token_expired']);
});

test('close codes: 1008 for rate abuse backs off without touching the token', () => {
  const d = decideClose(1008, 'rate limit exceeded repeatedly');
  assert.deepEqual([d.action, d.delay], ['reconnect', 'backoff']);
  assert.equal(decideClose(1008, '').action, 'reconnect');
});

test('close codes: 1012 (drain) uses the short jitter, not the backoff', () => {
  assert.deepEqual([decideClose(1012).action, decideClose(1012).delay], ['reconnect', 'drain']);
});

test('close codes: 1006, 1011, 1013, 1000 and unknown codes back off', () => {
  for (const code of [1006, 1011, 1013, 1000, 1001, 4000]) {
    const d = decideClose(code);
    assert.deepEqual([d.action, d.delay], ['reconnect', 'backoff'], `code ${code}`);
  }
  assert.equal(decideClose(1013).code, 'slow_consumer');
  assert.equal(decideClose(1011).code, 'internal');
});

test('statuses: 401 refreshes, 403 is fatal', () => {
  assert.equal(decideStatus(401).action, 'refresh');
  assert.equal(decideStatus(401).delay, 'backoff', 'a provider returning bad tokens must not loop tightly');
  assert.deepEqual([decideStatus(403).action, decideStatus(403).code], ['fatal', 'forbidden']);
});

test('statuses: 429 is the per-user limit, on the slow schedule unless Retry-After says', () => {
  assert.deepEqual(decideStatus(429), { action: 'reconnect', delay: 'limit', code: 'too_many_connections' });
  assert.equal(decideStatus(429, '7').delay, 7000);
  assert.equal(decideStatus(429).upgradeFailed, undefined, 'not an upgrade a proxy broke');
});

test('statuses: 503 honours Retry-After in seconds', () => {
  assert.deepEqual(decideStatus(503, '5'), { action: 'reconnect', delay: 5000, code: 'unavailable' });
  assert.equal(decideStatus(503, '1').delay, 1000);
  assert.equal(decideStatus(503, null).delay, 'backoff', 'no header: plain backoff');
});

test('statuses: 400/405/426 mean the upgrade itself failed', () => {
  for (const s of [400, 405, 426]) {
    const d = decideStatus(s);
    assert.equal(d.upgradeFailed, true, `status ${s}`);
    assert.equal(d.action, 'reconnect');
  }
  assert.equal(decideStatus(502).upgradeFailed, undefined);
  assert.equal(decideStatus(404).action, 'reconnect');
});

test('Retry-After parses seconds and HTTP dates', () => {
  assert.equal(parseRetryAfter('7'), 7000);
  assert.equal(parseRetryAfter(' 0 '), 0);
  assert.equal(parseRetryAfter(null), null);
  assert.equal(parseRetryAfter('soon'), null);
  const now = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:10 GMT', now), 10000);
});

test('endpoint URLs follow the base scheme family, keep a path prefix, drop empty params', () => {
  assert.equal(endpointUrl('http://h:8000', 'ws', '/ws/notifications/', { after: null }), 'ws://h:8000/ws/notifications/');
  assert.equal(endpointUrl('https://h/herald/', 'ws', '/ws/notifications/', { after: 0 }), 'wss://h/herald/ws/notifications/?after=0');
  assert.equal(endpointUrl('wss://h', 'http', '/sse/notifications/', { groups: '' }), 'https://h/sse/notifications/?groups=');
  assert.equal(endpointUrl('ws://h/', 'http', '/sse/notifications/', { groups: 'a,b' }), 'http://h/sse/notifications/?groups=a%2Cb');
});

test('jwtExpiry reads exp without verifying, null for non-JWTs', () => {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  assert.equal(jwtExpiry(`${b64({ alg: 'HS256' })}.${b64({ sub: '42', exp: 1700000000 })}.sig`), 1700000000000);
  assert.equal(jwtExpiry('not-a-jwt'), null);
  assert.equal(jwtExpiry(`${b64({})}.${b64({ sub: '42' })}.sig`), null);
});

test('wsProtocols: the token as bearer.<jwt> beside herald; no JWT, no offer', () => {
  assert.equal(SUBPROTOCOL, 'herald');
  assert.deepEqual(wsProtocols('aB0_-.x.y'), ['herald', 'bearer.aB0_-.x.y']);
  for (const bad of ['', 'a b', 'a,b', 'a=', 'a/b', 'é']) assert.throws(() => wsProtocols(bad), TypeError, JSON.stringify(bad));
});
