// SseParser: the WHATWG event-stream rules the node's SSE endpoint relies on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseParser } from '../../src/herald.js';

const events = (items) => items.filter((i) => i.kind === 'event');

test('event, id and data fields; data spread over several lines is joined with \\n', () => {
  const p = new SseParser();
  const out = p.push('event: initial_state\nid: 7\ndata: {"type":\ndata: "initial_state"}\n\n');
  assert.deepEqual(out, [{ kind: 'event', event: 'initial_state', data: '{"type":\n"initial_state"}', id: '7' }]);
  assert.equal(JSON.parse(out[0].data).type, 'initial_state');
});

test('comments are reported (heartbeats) and do not dispatch events', () => {
  const p = new SseParser();
  assert.deepEqual(p.push(':\n\n: hello\n\n'), [
    { kind: 'comment', text: '' },
    { kind: 'comment', text: 'hello' },
  ]);
});

test('retry: digits only', () => {
  const p = new SseParser();
  assert.deepEqual(p.push('retry: 2500\nretry: soon\n\n'), [{ kind: 'retry', ms: 2500 }]);
});

test('CRLF and lone CR line endings', () => {
  const p = new SseParser();
  const out = events(p.push('event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\r'));
  assert.deepEqual(out.map((e) => [e.event, e.data]), [['a', '1'], ['b', '2']]);
});

test('default event type is message; an event with no data is not dispatched; id persists', () => {
  const p = new SseParser();
  const out = events(p.push('id: 3\ndata: x\n\nevent: lonely\n\ndata: y\n\n'));
  assert.deepEqual(out.map((e) => [e.event, e.data, e.id]), [['message', 'x', '3'], ['message', 'y', '3']]);
});

test('field without colon, value without leading space, unknown fields', () => {
  const p = new SseParser();
  const out = events(p.push('data\ndata:no-space\nfoo: bar\n\n'));
  assert.equal(out[0].data, '\nno-space');
});

test('a leading BOM is skipped', () => {
  const p = new SseParser();
  assert.equal(events(p.push('\uFEFFdata: x\n\n'))[0].data, 'x');
});

test('chunk boundaries anywhere (every split point, CRLF split between chunks) give the same result', () => {
  const stream = 'retry: 1000\r\n:\r\n\r\nevent: notification\r\nid: 12\r\ndata: {"type":"notification",\r\ndata: "n":1}\r\n\r\nevent: close\ndata: {"code":1012}\n\n';
  const whole = new SseParser().push(stream);
  assert.equal(events(whole).length, 2);
  for (let i = 0; i <= stream.length; i++) {
    for (let j = i; j <= stream.length; j += 7) {
      const p = new SseParser();
      const got = [...p.push(stream.slice(0, i)), ...p.push(stream.slice(i, j)), ...p.push(stream.slice(j))];
      assert.deepEqual(got, whole, `split at ${i}/${j}`);
    }
  }
});

test('one character at a time', () => {
  const stream = 'event: welcome\r\ndata: {"a":1}\r\n\r\n';
  const p = new SseParser();
  const got = [];
  for (const ch of stream) got.push(...p.push(ch));
  assert.deepEqual(got, [{ kind: 'event', event: 'welcome', data: '{"a":1}', id: '' }]);
});
