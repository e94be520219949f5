// In-process fakes for client tests: a WHATWG-style WebSocket the test drives by hand,
// and helpers to run the client on node:test's mock timers.
import { mock } from 'node:test';

/** A WebSocket whose server side is the test. Instances are recorded in `FakeWebSocket.all`. */
export class FakeWebSocket {
  /** @type {FakeWebSocket[]} */
  static all = [];
  static reset() {
    FakeWebSocket.all = [];
  }
  constructor(url, protocols) {
    this.url = new URL(url);
    /** the subprotocols offered, as a browser would send them */
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.closedByClient = null;
    this.listeners = new Map();
    FakeWebSocket.all.push(this);
  }
  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(fn);
  }
  dispatch(type, ev) {
    for (const fn of this.listeners.get(type) ?? []) fn(ev);
  }
  send(text) {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(text));
  }
  close(code, reason) {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }
  // --- the server side ---
  open() {
    this.readyState = 1;
    this.dispatch('open', {});
  }
  frame(obj) {
    this.dispatch('message', { data: JSON.stringify(obj) });
  }
  /** welcome + initial_state (+ missed when the client sent after) */
  accept({ user = '42', heartbeat_s = 25, unread = null, initial = [], missed = [], truncated = false } = {}) {
    this.open();
    this.frame({ type: 'welcome', user, node: 'n1', connection: 'n1-1', heartbeat_s });
    this.frame({ type: 'initial_state', unread_count: unread ?? initial.filter((n) => !n.read).length, notifications: initial });
    if (this.url.searchParams.has('after')) this.frame({ type: 'missed', notifications: missed, ...(truncated ? { truncated: true } : {}) });
  }
  serverClose(code, reason = '') {
    this.readyState = 3;
    this.dispatch('close', { code, reason });
  }
  /** What a browser reports for a refused or failed upgrade. */
  failBeforeOpen() {
    this.readyState = 3;
    this.dispatch('error', {});
    this.dispatch('close', { code: 1006, reason: '' });
  }
  get after() {
    return this.url.searchParams.get('after');
  }
  /** The token the attempt offered as the subprotocol `bearer.<jwt>`, beside `herald`. */
  get token() {
    const [herald, bearer, ...rest] = this.protocols ?? [];
    if (herald !== 'herald' || !bearer?.startsWith('bearer.') || rest.length) {
      throw new Error(`unexpected subprotocols ${JSON.stringify(this.protocols)}`);
    }
    return bearer.slice('bearer.'.length);
  }
  sentOf(type) {
    return this.sent.filter((f) => f.type === type);
  }
}

export const note = (id, { read = false, user = '42' } = {}) => ({ id, user, message: { text: `n${id}` }, created_at: '2026-01-01T00:00:00.000Z', read });

/** Lets promise chains and awaited provider calls run (setImmediate is not mocked). */
export const flush = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

/** Moves the mocked clock, then lets the work it started settle. */
export async function advance(ms) {
  mock.timers.tick(ms);
  await flush();
}

export function useFakeTimers(t) {
  mock.timers.enable({ apis: ['setTimeout'] });
  FakeWebSocket.reset();
  t.after(() => mock.timers.reset());
}

/** Records every payload of every event type. */
export function record(client) {
  const log = { notification: [], event: [], state: [], change: [], error: [], open: [], disconnect: [] };
  for (const type of Object.keys(log)) client.on(type, (p) => log[type].push(p));
  return log;
}
