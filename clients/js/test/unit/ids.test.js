// IdTracker: resume point, de-duplication and ascending delivery (PROTOCOL.md 3.2, 3.10, 3.11).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IdTracker } from '../../src/herald.js';

const n = (id, read = false, user = '42') => ({ id, user, message: { text: `n${id}` }, created_at: '2026-01-01T00:00:00.000Z', read });
const ids = (list) => list.map((x) => x.id);

test('first open without after: initial_state (newest first) is delivered ascending, lastId = newest', () => {
  const t = new IdTracker();
  t.setUser('42');
  const r = t.opening([n(9), n(7), n(3)], null);
  assert.deepEqual(ids(r.deliver), [3, 7, 9]);
  assert.equal(t.lastId, 9);
  assert.equal(r.truncated, false);
});

test('reopen with after: old unread ids in initial_state are not delivered again; missed is merged ascending', () => {
  const t = new IdTracker({ after: 9 });
  t.setUser('42');
  // initial_state: newest unread first, including 7 and 9 that were already delivered
  const r = t.opening([n(12), n(9), n(7)], { notifications: [n(10, true), n(11), n(12)] });
  assert.deepEqual(ids(r.deliver), [10, 11, 12], 'each new id once, ascending, read ones included');
  assert.equal(t.lastId, 12);
  assert.deepEqual(ids(r.known), [7, 9, 10, 11, 12], 'known carries the fresh flags for the UI list');
});

test('a missed copy wins over the initial_state copy of the same id', () => {
  const t = new IdTracker({ after: 1 });
  t.setUser('42');
  const r = t.opening([n(2, false)], { notifications: [n(2, true)] });
  assert.equal(r.deliver.length, 1);
  assert.equal(r.deliver[0].read, true);
});

test('truncated missed: ids above its last id are held back, resume point = last id of missed', () => {
  const t = new IdTracker({ after: 0 });
  t.setUser('42');
  const first = t.opening([n(5000), n(4999)], { notifications: [n(1), n(2), n(3)], truncated: true });
  assert.deepEqual(ids(first.deliver), [1, 2, 3], 'initial_state ids 4999/5000 wait for their turn');
  assert.equal(first.truncated, true);
  assert.equal(t.lastId, 3, 'reconnect with after=3 fetches the rest');
  const second = t.opening([n(5000), n(4999)], { notifications: [n(4), n(4999), n(5000)] });
  assert.deepEqual(ids(second.deliver), [4, 4999, 5000]);
  assert.equal(t.lastId, 5000);
});

test('extraUnread counts unread missed notifications newer than the snapshot', () => {
  const t = new IdTracker({ after: 5 });
  t.setUser('42');
  assert.equal(t.opening([n(6)], { notifications: [n(6), n(7), n(8, true)] }).extraUnread, 1, 'only 7: unread and newer than 6');
  const t2 = new IdTracker({ after: 5 });
  t2.setUser('42');
  assert.equal(t2.opening([], { notifications: [n(6), n(7)] }).extraUnread, 2, 'empty snapshot list: every unread one is new');
});

test('live: in-order own ids are delivered once; repeats and older ids are dropped', () => {
  const t = new IdTracker();
  t.setUser('42');
  t.opening([n(3)], null);
  assert.equal(t.live(n(3)), false, 'already in initial_state');
  assert.equal(t.live(n(4)), true);
  assert.equal(t.live(n(4)), false);
  assert.equal(t.live(n(2)), false);
  assert.equal(t.live(n(5)), true);
  assert.equal(t.lastId, 5);
});

test("other users' notifications are delivered once but never move lastId", () => {
  const t = new IdTracker();
  t.setUser('42');
  t.opening([n(10)], null);
  assert.equal(t.live(n(50, false, '43')), true);
  assert.equal(t.live(n(50, false, '43')), false, 'a repeat is caught by the recent set');
  assert.equal(t.live(n(5, false, '43')), true, 'no watermark for other users');
  assert.equal(t.lastId, 10);
  assert.equal(t.live(n(11)), true, 'own stream unaffected');
});

test('the recent set of other users is bounded', () => {
  const t = new IdTracker({ recentLimit: 3 });
  t.setUser('42');
  for (const id of [1, 2, 3, 4]) assert.equal(t.live(n(id, false, '43')), true);
  assert.equal(t.live(n(1, false, '43')), true, 'id 1 was evicted (oldest)');
  assert.equal(t.live(n(4, false, '43')), false);
});

test('across reconnects the sequence of deliveries is strictly ascending with no repeats', () => {
  const t = new IdTracker();
  t.setUser('42');
  const out = [];
  out.push(...t.opening([n(4), n(2)], null).deliver);
  for (const id of [5, 6]) if (t.live(n(id))) out.push(n(id));
  // reconnect after=6: snapshot repeats 2 and 4 and 6; missed repeats nothing (node) but we also replay 6
  out.push(...t.opening([n(8), n(6), n(4), n(2)], { notifications: [n(6), n(7), n(8)] }).deliver);
  for (const id of [8, 9]) if (t.live(n(id))) out.push(n(id));
  assert.deepEqual(ids(out), [2, 4, 5, 6, 7, 8, 9]);
});

test('a different user from welcome resets the resume point', () => {
  const t = new IdTracker({ after: 100 });
  assert.equal(t.setUser('42'), false, 'first user: nothing to reset');
  assert.equal(t.lastId, 100);
  assert.equal(t.setUser('43'), true);
  assert.equal(t.lastId, null);
});
