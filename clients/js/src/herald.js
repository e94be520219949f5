// @ts-check
/**
 * @file Herald client: one self-contained ES module for browsers and Node 20+.
 *
 * The node serves this exact file at `/demo/herald.js`, so it has no imports at all and
 * relies only on what browsers and Node 20 both provide (URL, fetch, ReadableStream,
 * TextDecoder, AbortController, setTimeout). Node 20 has no global WebSocket: pass the
 * `ws` package's class as `options.WebSocket`.
 *
 * Section numbers in comments (3.2, 3.10, ...) refer to docs/PROTOCOL.md.
 *
 * The pure parts (backoff, close-code table, id tracking, SSE parser) are exported on
 * their own so they can be tested without sockets or timers.
 */

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/**
 * A stored notification as the node sends it (3.3).
 * @typedef {object} HeraldNotification
 * @property {number} id        positive, increasing in creation order, never reused
 * @property {string} user      the user the notification belongs to
 * @property {unknown} message  the JSON value the backend posted
 * @property {string} created_at UTC, three decimals, `Z`
 * @property {boolean} read
 */

/**
 * @typedef {'connecting' | 'open' | 'reconnecting' | 'closed'} HeraldState
 * @typedef {'auto' | 'websocket' | 'sse'} TransportMode
 * @typedef {'websocket' | 'sse'} TransportName
 * @typedef {string | (() => string | Promise<string>)} TokenSource
 */

/**
 * @typedef {object} BackoffOptions
 * @property {number} [initialMs] first ceiling of the full-jitter window (default 500)
 * @property {number} [maxMs]     cap of the window (default 30000)
 */

/**
 * The subset of an `addEventListener`-capable object this module needs. Browsers'
 * `window` and `ws`'s WebSocket both fit.
 * @typedef {object} EventTargetLike
 * @property {(type: string, fn: (ev: any) => void) => void} addEventListener
 * @property {(type: string, fn: (ev: any) => void) => void} [removeEventListener]
 */

/**
 * Constructor of a WHATWG-style WebSocket (the browser's, Node 22's global, or `ws`),
 * called with the subprotocols that carry the token (`wsProtocols`).
 * @typedef {new (url: string, protocols: string[]) => any} WebSocketCtor
 */

/**
 * @typedef {(input: string, init?: any) => Promise<any>} FetchLike
 */

/**
 * @typedef {object} HeraldOptions
 * @property {string} [url] base URL of the node or load balancer: `http(s)://` or
 *   `ws(s)://`, optionally with a path prefix. Default: `location.origin` in a browser.
 * @property {TokenSource} token a client JWT, or a function returning one (called again
 *   whenever the node says the token is expired or invalid).
 * @property {WebSocketCtor | null} [WebSocket] default `globalThis.WebSocket`.
 * @property {FetchLike | null} [fetch] default `globalThis.fetch` (SSE, SSE commands,
 *   upgrade diagnostics).
 * @property {TransportMode} [transport] default 'auto'.
 * @property {string[]} [groups] extra groups joined after every (re)connect.
 * @property {number} [after] starting resume id (the newest id the app already has).
 * @property {number} [keep] how many of the user's newest notifications
 *   `client.notifications` keeps (default 50).
 * @property {BackoffOptions} [backoff]
 * @property {number} [drainJitterMs] window of the random delay after a 1012 close, and
 *   the jitter added to a 503's Retry-After (default 1000).
 * @property {number} [stableMs] how long a connection must stay open after its opening
 *   frames before the backoff attempt counter resets (default 5000).
 * @property {number} [openTimeoutMs] how long an attempt may take to receive `welcome`
 *   (default 15000).
 * @property {EventTargetLike | null} [networkEvents] where `online`/`offline` events
 *   come from; default `globalThis` when it has `addEventListener` (browsers), null
 *   disables.
 * @property {() => number} [random] source of randomness in [0, 1) (default Math.random).
 */

/**
 * What to do after a connection ended or an attempt failed.
 * - `reconnect`: connect again after `delay`.
 * - `refresh`: get a new token from the provider, then connect again after `delay`.
 * - `fatal`: stop; the client goes to state 'closed'.
 * `delay` is 'backoff' (grow the attempt counter), 'drain' (short jitter, counter kept),
 * 'limit' (the slow schedule of a per-user refusal: between half of and the whole
 * backoff cap, counter kept), 'immediate', or a number of milliseconds (Retry-After).
 * @typedef {object} Decision
 * @property {'reconnect' | 'refresh' | 'fatal'} action
 * @property {'backoff' | 'drain' | 'limit' | 'immediate' | number} delay
 * @property {string} code      machine-readable cause, also used for HeraldError.code
 * @property {boolean} [upgradeFailed] the server was reachable and accepted the token,
 *   but the WebSocket upgrade itself failed (400/405/426): counts towards SSE fallback.
 */

/**
 * Payload of the 'open' event.
 * @typedef {object} OpenInfo
 * @property {TransportName} transport
 * @property {string} user
 * @property {string} node
 * @property {string} connection
 * @property {number} heartbeatS
 */

/**
 * Payload of the 'disconnect' event.
 * @typedef {object} DisconnectInfo
 * @property {number} code       close code (1006 when the transport just went away)
 * @property {string} reason
 * @property {number} [status]   HTTP status when the attempt was refused
 * @property {boolean} willReconnect
 * @property {number} [delayMs]  delay before the next attempt, when known
 * @property {TransportName} transport
 */

/**
 * Payload of the 'change' event.
 * @typedef {object} ChangeInfo
 * @property {number} unreadCount
 * @property {HeraldNotification[]} notifications
 */

/**
 * @typedef {object} HeraldEventMap
 * @property {HeraldNotification} notification
 * @property {{group: string, payload: unknown}} event
 * @property {HeraldState} state
 * @property {ChangeInfo} change
 * @property {HeraldError} error
 * @property {OpenInfo} open
 * @property {DisconnectInfo} disconnect
 */

/**
 * Reply frames (3.5).
 * @typedef {{type: 'marked_read', ids?: number[], all?: boolean, unread_count: number}} MarkedReadReply
 * @typedef {{type: 'subscribed', group: string}} SubscribedReply
 * @typedef {{type: 'unsubscribed', group: string}} UnsubscribedReply
 */

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/**
 * Every error the client reports or rejects with. `code` is stable; `message` is for
 * humans. `fatal` means the client has stopped (state 'closed') and will not reconnect
 * until `connect()` is called again.
 */
export class HeraldError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{fatal?: boolean, status?: number, closeCode?: number, cause?: unknown}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = 'HeraldError';
    /** @type {string} */
    this.code = code;
    /** @type {boolean} */
    this.fatal = extra.fatal ?? false;
    /** @type {number | undefined} HTTP status, when the error came from one */
    this.status = extra.status;
    /** @type {number | undefined} WebSocket close code, when the error came from one */
    this.closeCode = extra.closeCode;
    if (extra.cause !== undefined) this.cause = extra.cause;
  }
}

// ---------------------------------------------------------------------------------------
// Pure logic: backoff, close codes, HTTP refusals
// ---------------------------------------------------------------------------------------

/** Defaults, exported so tests and docs can refer to them instead of repeating numbers. */
export const DEFAULTS = Object.freeze({
  transport: /** @type {TransportMode} */ ('auto'),
  keep: 50,
  initialMs: 500,
  maxMs: 30000,
  drainJitterMs: 1000,
  stableMs: 5000,
  openTimeoutMs: 15000,
  heartbeatS: 25,
  /** consecutive "server reachable, WebSocket upgrade failed" attempts before SSE */
  fallbackAfter: 2,
});

/** The WebSocket subprotocol of Herald clients; the node answers with it (2). */
export const SUBPROTOCOL = 'herald';

/**
 * What a JWT is made of (base64url and dots). Every one of these characters is valid
 * in a WebSocket subprotocol name, so a JWT can ride in `Sec-WebSocket-Protocol`; a
 * string with others is no JWT the node would accept anyway.
 */
const JWT_RE = /^[A-Za-z0-9_.-]+$/;

/**
 * The subprotocols a WebSocket offers to carry `token`: `herald` and `bearer.<jwt>`
 * (PROTOCOL.md 2). The token goes in a header, not in the URL, because proxies write
 * URLs into their logs (nginx's error log, on every request it fails to proxy) and a
 * browser's WebSocket can set no other header. The node answers `herald`, which a
 * browser requires: it fails a connection whose 101 picks none of the offered
 * protocols.
 * @param {string} token
 * @returns {string[]}
 */
export function wsProtocols(token) {
  if (!JWT_RE.test(token)) throw new TypeError('the token is not a JWT: it has characters other than A-Z a-z 0-9 _ - .');
  return [SUBPROTOCOL, `bearer.${token}`];
}

/** Group names as the node checks them (section 1). */
const GROUP_RE = /^[A-Za-z0-9_.-]{1,100}$/;
/** mark_read refuses more ids than this (3.5 [ext]); we refuse before sending. */
const MAX_MARK_IDS = 1000;

/**
 * Capped full-jitter exponential backoff: a uniform delay in
 * `[0, min(maxMs, initialMs * 2^attempt))`.
 *
 * Full jitter (rather than "exponential plus a little noise") spreads a crowd of clients
 * that lost the same node over the whole window, so they do not come back in waves.
 *
 * @param {number} attempt 0 for the first retry
 * @param {BackoffOptions} [opts]
 * @param {() => number} [random]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, opts = {}, random = Math.random) {
  const initial = opts.initialMs ?? DEFAULTS.initialMs;
  const max = opts.maxMs ?? DEFAULTS.maxMs;
  // 2^attempt overflows to Infinity long after the cap has taken over; min() copes.
  const ceiling = Math.min(max, initial * Math.pow(2, Math.max(0, attempt)));
  return Math.floor(random() * ceiling);
}

/**
 * What to do after a close with this code and reason: the table of 3.10, made
 * executable.
 *
 * - 1003 (we sent binary) and 1009 (we sent an oversized frame) are client bugs:
 *   reconnecting would just repeat them, so they are fatal.
 * - 1008 is two things (3.7, 3.8); the reason text tells them apart: "token expired..."
 *   needs a new token and may reconnect at once; anything else is rate abuse and backs off.
 * - 1012 is a drain or shutdown: the node is fine with us coming back, somewhere else,
 *   soon; a short random delay spreads the herd without punishing the client.
 * - 1006, 1011, 1013 and anything unknown: back off and resume with `after`.
 *
 * @param {number} code
 * @param {string} [reason]
 * @returns {Decision}
 */
export function decideClose(code, reason = '') {
  switch (code) {
    case 1003:
      return { action: 'fatal', delay: 'immediate', code: 'unsupported_data' };
    case 1009:
      return { action: 'fatal', delay: 'immediate', code: 'message_too_big' };
    case 1008:
      if (/^token expired/i.test(reason)) {
        return { action: 'refresh', delay: 'immediate', code: 'token_expired' };
      }
      return { action: 'reconnect', delay: 'backoff', code: 'policy_violation' };
    case 1012:
      return { action: 'reconnect', delay: 'drain', code: 'service_restart' };
    case 1011:
      return { action: 'reconnect', delay: 'backoff', code: 'internal' };
    case 1013:
      return { action: 'reconnect', delay: 'backoff', code: 'slow_consumer' };
    default:
      return { action: 'reconnect', delay: 'backoff', code: 'connection_lost' };
  }
}

/**
 * Parses a Retry-After header value (seconds, or an HTTP date) into milliseconds.
 * @param {string | null | undefined} value
 * @param {number} [now] current time in ms (for the date form)
 * @returns {number | null}
 */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null) return null;
  const v = String(value).trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const t = Date.parse(v);
  if (Number.isNaN(t)) return null;
  return Math.max(0, t - now);
}

/**
 * What to do after an attempt was refused with an HTTP status (3.1, and the same
 * refusals on the SSE endpoint).
 *
 * - 401: the token is missing, expired or invalid: get a new one. Backoff still applies,
 *   so a provider that keeps returning bad tokens does not cause a tight loop.
 * - 403: the Origin (or a group) is not allowed; retrying cannot fix that: fatal.
 * - 429: the user holds the most connections the node allows (3.1). It lasts until one
 *   of them closes, which the node cannot predict (no Retry-After): the slow 'limit'
 *   schedule, not the backoff that would repeat the refusal within seconds.
 * - 503 (and any status with Retry-After): wait what the node asked for.
 * - 400/405/426: the node was reached and accepted the token (it checks the token
 *   before the upgrade), so the upgrade itself failed: a proxy that strips the
 *   Upgrade header, typically. `upgradeFailed` feeds the SSE fallback rule.
 * - anything else (404 behind a load balancer mid-deploy, 502, ...): back off.
 *
 * @param {number} status
 * @param {string | null} [retryAfter] the Retry-After header, if any
 * @returns {Decision}
 */
export function decideStatus(status, retryAfter = null) {
  if (status === 401) return { action: 'refresh', delay: 'backoff', code: 'unauthorized' };
  if (status === 403) return { action: 'fatal', delay: 'immediate', code: 'forbidden' };
  const ra = parseRetryAfter(retryAfter);
  if (status === 429) return { action: 'reconnect', delay: ra ?? 'limit', code: 'too_many_connections' };
  if (status === 503 || ra != null) {
    return { action: 'reconnect', delay: ra ?? 'backoff', code: status === 503 ? 'unavailable' : `http_${status}` };
  }
  if (status === 400 || status === 405 || status === 426) {
    return { action: 'reconnect', delay: 'backoff', code: 'upgrade_failed', upgradeFailed: true };
  }
  return { action: 'reconnect', delay: 'backoff', code: `http_${status}` };
}

/**
 * Reads the `exp` claim of a JWT without verifying it, so the client can refresh a token
 * that is about to expire before presenting it (saves a refused upgrade). Returns null
 * when the token is not a readable JWT.
 * @param {string} token
 * @returns {number | null} expiry in ms since the epoch
 */
export function jwtExpiry(token) {
  try {
    const part = token.split('.')[1];
    if (!part || typeof atob !== 'function') return null;
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/**
 * Builds the endpoint URL under a base that may be http(s) or ws(s), with or without a
 * path prefix.
 * @param {string} base
 * @param {'ws' | 'http'} scheme which family the result must use
 * @param {string} path e.g. '/ws/notifications/'
 * @param {Record<string, string | number | null | undefined>} [query]
 * @returns {string}
 */
export function endpointUrl(base, scheme, path, query = {}) {
  const u = new URL(base);
  const secure = u.protocol === 'https:' || u.protocol === 'wss:';
  u.protocol = scheme === 'ws' ? (secure ? 'wss:' : 'ws:') : secure ? 'https:' : 'http:';
  u.pathname = u.pathname.replace(/\/+$/, '') + path;
  u.search = '';
  u.hash = '';
  for (const [k, v] of Object.entries(query)) {
    // An empty value is kept: `groups=` (no extra groups) differs from no `groups`
    // (every group of the token) on the SSE stream (PROTOCOL.md 3.12).
    if (v !== null && v !== undefined) u.searchParams.set(k, String(v));
  }
  return u.toString();
}

// ---------------------------------------------------------------------------------------
// Pure logic: ids, resume point, de-duplication
// ---------------------------------------------------------------------------------------

/**
 * @typedef {object} OpeningResult
 * @property {HeraldNotification[]} deliver new notifications, ascending by id
 * @property {HeraldNotification[]} known   every own notification of the frames that is
 *   not held back (for the UI list: fresh read flags), ascending
 * @property {boolean} truncated the `missed` frame was cut: reconnect at once
 * @property {number} extraUnread unread notifications in `missed` created after the
 *   `initial_state` snapshot (so not in its `unread_count`)
 */

/**
 * Tracks the resume point and decides which notifications are new.
 *
 * The resume point `lastId` is the newest id of the user's OWN notifications that the
 * client has delivered (3.10 resume rule). Per-user ids reach a connection in id order
 * (3.4, 3.11, 7.5), and everything this tracker delivers is delivered in ascending order,
 * so `lastId` doubles as a watermark: an own notification with `id <= lastId` is a
 * duplicate. That keeps de-duplication O(1) in memory for the user's own stream.
 *
 * Notifications of other users (a subscribed `user_<x>` group) are not replayed by
 * `missed` and are not ordered with ours, so they neither move `lastId` nor use the
 * watermark: a bounded set of recently seen ids catches repeats instead.
 *
 * The opening of a connection is the subtle part: `initial_state` lists the newest
 * unread notifications (newest first, possibly ids far above `after`), `missed` lists
 * everything after `after` (oldest first, at most 1000). They are merged, sorted
 * ascending and filtered by the watermark. When `missed` is truncated, ids above the
 * last id of `missed` are held back: the next connection (with `after` = that last id)
 * replays them in order, so delivery stays ascending and nothing in the gap is skipped.
 */
export class IdTracker {
  /**
   * @param {{after?: number | null, recentLimit?: number}} [opts]
   */
  constructor(opts = {}) {
    /** @type {number | null} newest own id delivered; the `after` of the next connect */
    this.lastId = opts.after ?? null;
    /** @type {string | null} the user of the connection (from `welcome`) */
    this.user = null;
    /** @private */
    this.recentLimit = opts.recentLimit ?? 1000;
    /** @private @type {Set<number>} ids of other users' notifications recently delivered */
    this.recent = new Set();
  }

  /**
   * Forgets the resume point and the recent ids: the next connect opens from the
   * snapshot (a new user, or a store that never issued our ids).
   */
  resetResume() {
    this.lastId = null;
    this.recent.clear();
  }

  /**
   * Sets the connection's user. A different user (the token provider switched accounts)
   * invalidates the resume point: another user's ids mean nothing for this one.
   * @param {string} user
   * @returns {boolean} true when the user changed from a known, different one
   */
  setUser(user) {
    const changed = this.user !== null && this.user !== user;
    if (changed) this.resetResume();
    this.user = user;
    return changed;
  }

  /** @param {HeraldNotification} n */
  isOwn(n) {
    return this.user === null || n.user === this.user;
  }

  /**
   * Merges the opening frames of a connection (3.2).
   * @param {HeraldNotification[]} initial `initial_state.notifications` (newest first)
   * @param {{notifications: HeraldNotification[], truncated?: boolean} | null} missed
   *   the `missed` frame, or null when the connection was opened without `after`
   * @returns {OpeningResult}
   */
  opening(initial, missed) {
    /** @type {Map<number, HeraldNotification>} */
    const byId = new Map();
    const initialOwn = (initial || []).filter((n) => this.isOwn(n));
    const missedOwn = ((missed && missed.notifications) || []).filter((n) => this.isOwn(n));
    for (const n of initialOwn) byId.set(n.id, n);
    // `missed` is read after the snapshot: where both carry an id, its copy is fresher.
    for (const n of missedOwn) byId.set(n.id, n);

    let cap = Infinity;
    const truncated = !!(missed && missed.truncated && missedOwn.length > 0);
    if (truncated) cap = Math.max(...missedOwn.map((n) => n.id));

    const known = [...byId.values()].filter((n) => n.id <= cap).sort((a, b) => a.id - b.id);
    const last = this.lastId;
    const deliver = known.filter((n) => last === null || n.id > last);
    if (deliver.length) this.lastId = deliver[deliver.length - 1].id;
    if (truncated && (this.lastId === null || this.lastId < cap)) this.lastId = cap;

    // Unread notifications in `missed` newer than every id of the snapshot's unread list
    // were created after the snapshot: the list holds the NEWEST unread ones, so anything
    // unread and newer would be in it. An empty list means no unread at snapshot time.
    const snapMax = initialOwn.length ? Math.max(...initialOwn.map((n) => n.id)) : 0;
    const extraUnread = missedOwn.filter((n) => !n.read && n.id > snapMax).length;
    return { deliver, known, truncated, extraUnread };
  }

  /**
   * Decides whether a live notification frame is new, and advances the resume point.
   * @param {HeraldNotification} n
   * @returns {boolean} true to deliver
   */
  live(n) {
    if (this.isOwn(n)) {
      if (this.lastId !== null && n.id <= this.lastId) return false;
      this.lastId = n.id;
      return true;
    }
    if (this.recent.has(n.id)) return false;
    this.recent.add(n.id);
    if (this.recent.size > this.recentLimit) {
      // Sets iterate in insertion order: drop the oldest.
      const oldest = this.recent.values().next().value;
      if (oldest !== undefined) this.recent.delete(oldest);
    }
    return true;
  }
}

// ---------------------------------------------------------------------------------------
// Pure logic: text/event-stream parser
// ---------------------------------------------------------------------------------------

/**
 * @typedef {{kind: 'event', event: string, data: string, id: string}} SseEvent
 * @typedef {{kind: 'comment', text: string}} SseComment
 * @typedef {{kind: 'retry', ms: number}} SseRetry
 * @typedef {SseEvent | SseComment | SseRetry} SseItem
 */

/**
 * Incremental `text/event-stream` parser (WHATWG HTML "event stream interpretation").
 *
 * We parse the stream ourselves instead of using EventSource because EventSource cannot
 * send an Authorization header, hides the HTTP status (401 vs 403 vs 503) and
 * Retry-After, and reconnects on its own schedule with its own resume header. Here the
 * client's own reconnect rules apply to both transports.
 *
 * Feed decoded text in chunks of any size (a chunk may end anywhere, even between the
 * CR and LF of one line ending). Comments are reported too: the node's heartbeat is an
 * empty comment, and the watchdog needs to see it.
 */
export class SseParser {
  constructor() {
    /** @private */ this.buf = '';
    /** @private */ this.data = /** @type {string[]} */ ([]);
    /** @private */ this.hasData = false;
    /** @private */ this.event = '';
    /** @private */ this.firstChunk = true;
    /** @private a chunk ended with CR: a LF at the start of the next one is its pair */
    this.skipLf = false;
    /** the last event id seen (persists across events, as the spec says) */
    this.lastEventId = '';
  }

  /**
   * @param {string} chunk
   * @returns {SseItem[]} complete items, in stream order
   */
  push(chunk) {
    /** @type {SseItem[]} */
    const out = [];
    let text = chunk;
    if (this.firstChunk && text.length) {
      this.firstChunk = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.skipLf && text.length) {
      if (text[0] === '\n') text = text.slice(1);
      this.skipLf = false;
    }
    this.buf += text;
    let start = 0;
    for (let i = 0; i < this.buf.length; i++) {
      const c = this.buf[i];
      if (c !== '\n' && c !== '\r') continue;
      this.line(this.buf.slice(start, i), out);
      if (c === '\r') {
        if (i + 1 < this.buf.length) {
          if (this.buf[i + 1] === '\n') i++;
        } else {
          this.skipLf = true;
        }
      }
      start = i + 1;
    }
    this.buf = this.buf.slice(start);
    return out;
  }

  /**
   * Processes one complete line.
   * @private
   * @param {string} line
   * @param {SseItem[]} out
   */
  line(line, out) {
    if (line === '') {
      if (this.hasData) {
        out.push({ kind: 'event', event: this.event || 'message', data: this.data.join('\n'), id: this.lastEventId });
      }
      this.data = [];
      this.hasData = false;
      this.event = '';
      return;
    }
    if (line[0] === ':') {
      out.push({ kind: 'comment', text: line.slice(1).replace(/^ /, '') });
      return;
    }
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    switch (field) {
      case 'data':
        this.data.push(value);
        this.hasData = true;
        break;
      case 'event':
        this.event = value;
        break;
      case 'id':
        if (!value.includes('\0')) this.lastEventId = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) out.push({ kind: 'retry', ms: Number(value) });
        break;
      default:
        break; // unknown fields are ignored, per the spec
    }
  }
}

// ---------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------

/**
 * An HTTP refusal of an attempt: its status, its Retry-After, and for a 400 the node's
 * `error` text (it tells a resume point the store never issued from a bad request).
 * @typedef {{status: number, retryAfter: string | null, error?: string}} Refusal
 */

/**
 * One attempt at a connection over one transport.
 * @typedef {object} Conn
 * @property {TransportName} kind
 * @property {any} [ws]                      the WebSocket, for kind 'websocket'
 * @property {AbortController} [abort]      aborts the SSE fetch
 * @property {boolean} socketOpen            the WebSocket 'open' event fired
 * @property {boolean} welcomed              `welcome` received
 * @property {boolean} ready                 opening frames processed: state 'open'
 * @property {number | null} sentAfter       the `after` this attempt was opened with
 * @property {any} [initial]                 `initial_state`, kept until `missed` arrives
 * @property {HeraldNotification[]} early    live notifications that came before the
 *   opening frames were processed (defensive: the node orders them after, 3.11)
 * @property {Refusal | null} http refusal, if seen
 * @property {number} heartbeatMs
 * @property {boolean} activity              something arrived since the last tick
 * @property {number} idleTicks              heartbeat ticks without activity
 * @property {number | null} sseRetryMs      last `retry:` of the SSE stream
 * @property {boolean} supportsPingEvents    a `ws`-style socket that reports pings
 */

/**
 * @typedef {object} Pending
 * @property {string} expect reply type that settles it
 * @property {(v: any) => void} resolve
 * @property {(e: HeraldError) => void} reject
 */

/**
 * Herald real-time client. See README.md for the rules it implements.
 *
 * Lifecycle: `new HeraldClient(opts)` → `connect()` → ... → `close()`. `connect()`
 * after a `close()` or a fatal error starts again (the resume point is kept).
 */
export class HeraldClient {
  /** @param {HeraldOptions} options */
  constructor(options) {
    if (!options || (typeof options.token !== 'string' && typeof options.token !== 'function')) {
      throw new TypeError('HeraldClient: options.token must be a string or a function returning one');
    }
    if (typeof options.token === 'string' && !JWT_RE.test(options.token)) {
      throw new TypeError('HeraldClient: options.token is not a JWT: it has characters other than A-Z a-z 0-9 _ - .');
    }
    const loc = /** @type {any} */ (globalThis).location;
    const url = options.url ?? (loc && loc.origin);
    if (!url) throw new TypeError('HeraldClient: options.url is required outside a browser page');
    const transport = options.transport ?? DEFAULTS.transport;
    if (!['auto', 'websocket', 'sse'].includes(transport)) {
      throw new TypeError(`HeraldClient: unknown transport ${JSON.stringify(transport)}`);
    }
    for (const g of options.groups ?? []) {
      if (!GROUP_RE.test(g)) throw new TypeError(`HeraldClient: invalid group name ${JSON.stringify(g)}`);
    }
    /** @private */
    this.opts = {
      url: String(url),
      token: options.token,
      transport,
      keep: options.keep ?? DEFAULTS.keep,
      backoff: { initialMs: options.backoff?.initialMs ?? DEFAULTS.initialMs, maxMs: options.backoff?.maxMs ?? DEFAULTS.maxMs },
      drainJitterMs: options.drainJitterMs ?? DEFAULTS.drainJitterMs,
      stableMs: options.stableMs ?? DEFAULTS.stableMs,
      openTimeoutMs: options.openTimeoutMs ?? DEFAULTS.openTimeoutMs,
      random: options.random ?? Math.random,
    };
    // Resolved lazily so a page may install a polyfill after importing the module.
    /** @private */ this.WebSocketOpt = options.WebSocket;
    /** @private */ this.fetchOpt = options.fetch;
    /** @private @type {EventTargetLike | null} */
    this.network =
      options.networkEvents !== undefined
        ? options.networkEvents
        : typeof (/** @type {any} */ (globalThis).addEventListener) === 'function'
          ? /** @type {any} */ (globalThis)
          : null;

    /** @private */ this.tracker = new IdTracker({ after: options.after ?? null });
    /** @private @type {Set<string>} groups wanted on every connection */
    this.wanted = new Set(options.groups ?? []);
    /** @private @type {Map<string, {resolve: (v: any) => void, reject: (e: HeraldError) => void}[]>} */
    this.subWaiters = new Map();
    /** @private @type {Map<string, {resolve: (v: any) => void, reject: (e: HeraldError) => void}[]>} */
    this.unsubWaiters = new Map();
    /** @private @type {Pending[]} WebSocket requests in send order: replies come in order */
    this.pending = [];
    /** @private @type {Map<string, any>} */
    this.timers = new Map();
    /** @private @type {Map<string, Set<(payload: any) => void>>} */
    this.listeners = new Map();
    /** @private @type {Map<number, HeraldNotification>} the user's newest notifications */
    this.byId = new Map();

    /** @private @type {HeraldState} */ this._state = 'closed';
    /** @private @type {TransportName | null} */ this._transport = null;
    /** @private */ this._unread = 0;
    /** @private @type {Conn | null} */ this.conn = null;
    /** @private bumped to abandon whatever attempt is in flight (close, offline, ...) */
    this.epoch = 0;
    /** @private backoff attempt counter */ this.attempt = 0;
    /** @private @type {string | null} cached token from the provider */ this.token = null;
    /** @private the next attempt must call the provider */ this.needFreshToken = false;
    /** @private consecutive WebSocket upgrade failures with the node reachable */
    this.upgradeFailures = 0;
    /** @private 'auto' mode gave up on WebSocket for this client */ this.sseFallback = false;
    /** @private browser reported offline; no attempts until 'online' */ this.offline = false;
    /** @private @type {{welcome: any} | null} */ this.session = null;
    /** @private */ this.reopenQueued = false;

    /** @private */ this.onOffline = () => this.goOffline();
    /** @private */ this.onOnline = () => this.goOnline();
  }

  // ----- public state ------------------------------------------------------------------

  /** @returns {HeraldState} */
  get state() {
    return this._state;
  }
  /** @returns {TransportName | null} transport of the current or last connection */
  get transport() {
    return this._transport;
  }
  /** @returns {number} the user's unread count, as the node last reported it plus live arrivals */
  get unreadCount() {
    return this._unread;
  }
  /** @returns {HeraldNotification[]} the user's newest notifications, newest first (a copy) */
  get notifications() {
    return [...this.byId.values()].sort((a, b) => b.id - a.id).map((n) => ({ ...n }));
  }
  /** @returns {number | null} the resume point: newest own notification id delivered */
  get lastId() {
    return this.tracker.lastId;
  }
  /** @returns {string | null} the user id from the last `welcome` */
  get user() {
    return this.tracker.user;
  }
  /** @returns {string[]} the groups joined after every connect */
  get groups() {
    return [...this.wanted];
  }

  // ----- events -----------------------------------------------------------------------

  /**
   * Adds a listener. Returns a function that removes it.
   * @template {keyof HeraldEventMap} K
   * @param {K} type
   * @param {(payload: HeraldEventMap[K]) => void} fn
   * @returns {() => void}
   */
  on(type, fn) {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => this.off(type, fn);
  }

  /**
   * Removes a listener added with `on`.
   * @template {keyof HeraldEventMap} K
   * @param {K} type
   * @param {(payload: HeraldEventMap[K]) => void} fn
   */
  off(type, fn) {
    this.listeners.get(type)?.delete(fn);
  }

  /**
   * Calls the listeners of one type. A listener that throws is reported on 'error' (or
   * the console, if an 'error' listener throws) and never breaks the client: the client
   * is in the middle of a state change when it emits.
   * @private
   * @template {keyof HeraldEventMap} K
   * @param {K} type
   * @param {HeraldEventMap[K]} payload
   */
  emit(type, payload) {
    const set = this.listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(payload);
      } catch (err) {
        if (type === 'error') {
          globalThis.console?.error?.('herald: an error listener threw', err);
        } else {
          this.emit('error', new HeraldError('listener', `a '${type}' listener threw: ${describe(err)}`, { cause: err }));
        }
      }
    }
  }

  // ----- lifecycle --------------------------------------------------------------------

  /**
   * Starts connecting (no-op if already started). Returns the client for chaining.
   * @returns {this}
   */
  connect() {
    if (this._state !== 'closed') return this;
    this.attempt = 0;
    this.upgradeFailures = 0;
    this.sseFallback = false;
    this.epoch++;
    if (this.network) {
      this.network.addEventListener('offline', this.onOffline);
      this.network.addEventListener('online', this.onOnline);
      const nav = /** @type {any} */ (globalThis).navigator;
      this.offline = this.network === /** @type {any} */ (globalThis) && nav?.onLine === false;
    }
    this.setState('connecting');
    if (!this.offline) void this.attemptConnect();
    return this;
  }

  /**
   * Closes the connection for good: no reconnect, every timer cleared, pending requests
   * rejected with code 'closed'. `connect()` may start again later.
   */
  close() {
    this.shutdown(new HeraldError('closed', 'the client was closed'));
  }

  // ----- commands ---------------------------------------------------------------------

  /**
   * Marks notifications read. Resolves with the node's `marked_read` reply; the client's
   * `unreadCount` and read flags are updated from it before the promise resolves.
   *
   * Over WebSocket this needs an open connection: while disconnected it rejects with
   * code 'not_connected' rather than queueing, because a queued "mark read" replayed
   * minutes later, after the user moved on, is more surprising than a visible failure
   * the UI can retry. Over SSE it is a plain POST and works whenever a token is at hand.
   *
   * @param {number[]} ids
   * @returns {Promise<MarkedReadReply>}
   */
  markRead(ids) {
    if (!Array.isArray(ids) || !ids.every((id) => Number.isSafeInteger(id) && id > 0)) {
      return Promise.reject(new HeraldError('bad_request', 'markRead: ids must be an array of positive integers'));
    }
    if (ids.length > MAX_MARK_IDS) {
      return Promise.reject(new HeraldError('bad_request', `markRead: at most ${MAX_MARK_IDS} ids per call`));
    }
    return this.command({ type: 'mark_read', ids }, 'marked_read');
  }

  /**
   * Marks all of the user's notifications read. Same rules as `markRead`.
   * @returns {Promise<MarkedReadReply>}
   */
  markAllRead() {
    return this.command({ type: 'mark_all_read' }, 'marked_read');
  }

  /**
   * Joins a group now and after every reconnect. Resolves with the `subscribed` reply once
   * a connection has joined it (the current one, or the next one when disconnected);
   * rejects with the node's error (`forbidden`, `bad_request`, ...), and then the group is
   * dropped from the wanted set. Over SSE the stream is reopened with the new `groups=`
   * list and `after`, so nothing is missed.
   * @param {string} group
   * @returns {Promise<SubscribedReply>}
   */
  subscribe(group) {
    if (typeof group !== 'string' || !GROUP_RE.test(group)) {
      return Promise.reject(new HeraldError('bad_request', `invalid group name ${JSON.stringify(group)}`));
    }
    if (this._state === 'closed') return Promise.reject(new HeraldError('closed', 'the client is closed'));
    this.wanted.add(group);
    const p = this.waitFor(this.subWaiters, group);
    this.rejectWaiters(this.unsubWaiters, group, new HeraldError('cancelled', `subscribe(${group}) superseded this unsubscribe`));
    const c = this.conn;
    if (c && c.kind === 'websocket' && c.welcomed) this.sendSubscribe(group);
    else if (c && c.kind === 'sse') this.queueReopen();
    return p;
  }

  /**
   * Leaves a group and stops re-joining it. Resolves with the `unsubscribed` reply, or at
   * once when disconnected (a new connection starts with the personal group only).
   * @param {string} group
   * @returns {Promise<UnsubscribedReply>}
   */
  unsubscribe(group) {
    if (typeof group !== 'string' || !GROUP_RE.test(group)) {
      return Promise.reject(new HeraldError('bad_request', `invalid group name ${JSON.stringify(group)}`));
    }
    this.wanted.delete(group);
    this.rejectWaiters(this.subWaiters, group, new HeraldError('cancelled', `unsubscribe(${group}) cancelled this subscribe`));
    const c = this.conn;
    if (c && c.kind === 'websocket' && c.welcomed) {
      const p = this.waitFor(this.unsubWaiters, group);
      this.request({ type: 'unsubscribe', group }, 'unsubscribed').then(
        (reply) => this.settleWaiters(this.unsubWaiters, group, reply),
        (/** @type {HeraldError} */ err) =>
          // Disconnected before the reply: the next connection starts without the
          // group anyway, so the unsubscribe has taken effect.
          err.code === 'not_connected'
            ? this.settleWaiters(this.unsubWaiters, group, { type: 'unsubscribed', group })
            : this.rejectWaiters(this.unsubWaiters, group, err),
      );
      return p;
    }
    if (c && c.kind === 'sse') {
      const p = this.waitFor(this.unsubWaiters, group);
      this.queueReopen();
      return p;
    }
    return Promise.resolve({ type: 'unsubscribed', group });
  }

  // ----- internals: attempts ----------------------------------------------------------

  /** @private @param {HeraldState} s */
  setState(s) {
    if (this._state === s) return;
    this._state = s;
    this.emit('state', s);
  }

  /**
   * Which transport the next attempt uses.
   * @private
   * @returns {TransportName | null}
   */
  pickTransport() {
    const hasWs = !!this.wsCtor();
    const hasSse = !!this.fetchFn() && typeof ReadableStream !== 'undefined';
    if (this.opts.transport === 'websocket') return hasWs ? 'websocket' : null;
    if (this.opts.transport === 'sse') return hasSse ? 'sse' : null;
    if (hasWs && !this.sseFallback) return 'websocket';
    return hasSse ? 'sse' : hasWs ? 'websocket' : null;
  }

  /** @private @returns {WebSocketCtor | null} */
  wsCtor() {
    if (this.WebSocketOpt !== undefined) return this.WebSocketOpt;
    return /** @type {any} */ (globalThis).WebSocket ?? null;
  }

  /** @private @returns {FetchLike | null} */
  fetchFn() {
    if (this.fetchOpt !== undefined) return this.fetchOpt;
    // Wrapped: browsers throw "Illegal invocation" when fetch is called detached.
    return typeof globalThis.fetch === 'function' ? (input, init) => globalThis.fetch(input, init) : null;
  }

  /**
   * The token for the next attempt: the string, the cached provider token, or a fresh one
   * when the node refused the last one or the JWT is about to expire.
   * @private
   * @returns {Promise<string>}
   */
  async getToken() {
    const src = this.opts.token;
    if (typeof src === 'string') return src;
    const exp = this.token ? jwtExpiry(this.token) : null;
    const stale = exp !== null && exp - Date.now() < 5000;
    if (this.token && !this.needFreshToken && !stale) return this.token;
    let t;
    try {
      t = await src();
    } catch (err) {
      throw new HeraldError('token_provider', `the token provider failed: ${describe(err)}`, { cause: err });
    }
    if (typeof t !== 'string' || t === '') throw new HeraldError('token_provider', 'the token provider returned no token');
    if (!JWT_RE.test(t)) throw new HeraldError('token_provider', 'the token provider returned no JWT: it has characters other than A-Z a-z 0-9 _ - .');
    this.token = t;
    this.needFreshToken = false;
    return t;
  }

  /** @private */
  async attemptConnect() {
    const epoch = ++this.epoch;
    const kind = this.pickTransport();
    if (!kind) {
      this.fatal(
        new HeraldError('no_transport', `no usable transport for mode '${this.opts.transport}': pass options.WebSocket (Node: the ws package) or use a runtime with fetch and ReadableStream`, { fatal: true }),
      );
      return;
    }
    let token;
    try {
      token = await this.getToken();
    } catch (err) {
      if (epoch !== this.epoch) return;
      this.emit('error', /** @type {HeraldError} */ (err));
      this.scheduleReconnect(this.nextDelay('backoff'));
      return;
    }
    if (epoch !== this.epoch) return;
    this._transport = kind;
    /** @type {Conn} */
    const conn = {
      kind,
      socketOpen: false,
      welcomed: false,
      ready: false,
      sentAfter: this.tracker.lastId,
      early: [],
      http: null,
      heartbeatMs: DEFAULTS.heartbeatS * 1000,
      activity: false,
      idleTicks: 0,
      sseRetryMs: null,
      supportsPingEvents: false,
    };
    this.conn = conn;
    this.setTimer('open', this.opts.openTimeoutMs, () => this.lost(conn, 1006, 'timed out waiting for the welcome frame'));
    if (kind === 'websocket') this.openWebSocket(conn, token);
    else void this.openSse(conn, token);
  }

  /**
   * @private
   * @param {Conn} conn
   * @param {string} token
   */
  openWebSocket(conn, token) {
    const Ctor = /** @type {WebSocketCtor} */ (this.wsCtor());
    const url = endpointUrl(this.opts.url, 'ws', '/ws/notifications/', { after: conn.sentAfter });
    let ws;
    try {
      ws = new Ctor(url, wsProtocols(token));
    } catch (err) {
      // A malformed URL or a blocked port: a browser throws synchronously.
      this.fatal(new HeraldError('bad_url', `cannot open ${url}: ${describe(err)}`, { fatal: true, cause: err }));
      return;
    }
    conn.ws = ws;
    const live = () => this.conn === conn;
    ws.addEventListener('open', () => {
      if (live()) conn.socketOpen = true;
    });
    ws.addEventListener('message', (/** @type {{data: unknown}} */ ev) => {
      if (!live()) return;
      this.markActivity(conn);
      this.handleText(conn, typeof ev.data === 'string' ? ev.data : String(ev.data));
    });
    ws.addEventListener('close', (/** @type {{code?: number, reason?: string}} */ ev) => {
      if (live()) void this.wsClosed(conn, ev.code ?? 1006, ev.reason ?? '');
    });
    // Errors are always followed by 'close'; the listener only keeps `ws` from throwing.
    ws.addEventListener('error', () => {});
    if (typeof ws.on === 'function') {
      // The `ws` package: it shows the refused upgrade's status (which a browser hides
      // behind a bare 1006) and the node's protocol pings (which a browser answers
      // without telling the page).
      conn.supportsPingEvents = true;
      ws.on('unexpected-response', (/** @type {any} */ _req, /** @type {any} */ res) => {
        if (!live()) return;
        const ra = res.headers?.['retry-after'];
        /** @type {Refusal} */
        const refusal = { status: res.statusCode, retryAfter: Array.isArray(ra) ? ra[0] : (ra ?? null) };
        conn.http = refusal;
        // terminate() aborts the handshake; ws then emits 'close' (1006), handled above.
        if (!READ_BODY.includes(res.statusCode) || typeof res.on !== 'function') {
          res.resume?.();
          ws.terminate();
          return;
        }
        // A 400's or 429's reason matters (see READ_BODY): read its small body first.
        let body = '';
        res.setEncoding?.('utf8');
        res.on('data', (/** @type {string} */ chunk) => {
          if (body.length < 4096) body += chunk;
        });
        const done = () => {
          refusal.error = errorText(body);
          ws.terminate();
        };
        res.on('end', done);
        res.on('error', done);
      });
      ws.on('ping', () => {
        if (live()) this.markActivity(conn);
      });
    }
  }

  /**
   * A WebSocket closed. A browser reports a refused upgrade as a bare 1006 before
   * 'open'; then one plain GET of the same URL (it answers the refusal status: 401, 403,
   * 503 while draining, or 400/426 because it is not an upgrade) tells us what actually
   * happened. `ws`
   * reports refusals itself ('unexpected-response'), but a socket that failed with no
   * HTTP answer at all (refused, reset, blocked) is diagnosed the same way: if plain
   * HTTP reaches the node where WebSocket cannot, that counts towards the SSE fallback.
   * @private
   * @param {Conn} conn
   * @param {number} code
   * @param {string} reason
   */
  async wsClosed(conn, code, reason) {
    if (!conn.socketOpen && !conn.http) {
      const fetchFn = this.fetchFn();
      if (fetchFn) {
        const epoch = this.epoch;
        this.detach(conn);
        conn.http = await this.diagnose(fetchFn, conn);
        if (epoch !== this.epoch) return;
        this.conn = conn; // re-attach for lost()'s staleness check
      }
    }
    this.lost(conn, code, reason);
  }

  /**
   * @private
   * @param {FetchLike} fetchFn
   * @param {Conn} conn
   * @returns {Promise<Refusal | null>}
   */
  async diagnose(fetchFn, conn) {
    try {
      const token = typeof this.opts.token === 'string' ? this.opts.token : this.token;
      const url = endpointUrl(this.opts.url, 'http', '/ws/notifications/', { after: conn.sentAfter });
      // `fetch` cannot send Sec-WebSocket-Protocol; Authorization keeps the token out
      // of the URL all the same.
      const headers = token ? { authorization: `Bearer ${token}` } : {};
      const res = await fetchFn(url, { method: 'GET', headers, cache: 'no-store', credentials: 'omit' });
      /** @type {Refusal} */
      const refusal = { status: res.status, retryAfter: res.headers?.get?.('retry-after') ?? null };
      if (READ_BODY.includes(res.status)) {
        refusal.error = errorText(await res.text().catch(() => ''));
      } else {
        try {
          await res.body?.cancel?.();
        } catch {
          /* the body is not needed */
        }
      }
      return refusal;
    } catch {
      return null; // unreachable, or CORS hid the answer: plain backoff
    }
  }

  /**
   * Opens the SSE stream and pumps it through the parser until it ends.
   * @private
   * @param {Conn} conn
   * @param {string} token
   */
  async openSse(conn, token) {
    const fetchFn = /** @type {FetchLike} */ (this.fetchFn());
    const abort = new AbortController();
    conn.abort = abort;
    const groups = [...this.wanted].join(',');
    const url = endpointUrl(this.opts.url, 'http', '/sse/notifications/', { after: conn.sentAfter, groups });
    const live = () => this.conn === conn;
    let res;
    try {
      res = await fetchFn(url, {
        method: 'GET',
        headers: { accept: 'text/event-stream', authorization: `Bearer ${token}` },
        cache: 'no-store',
        signal: abort.signal,
      });
    } catch (err) {
      if (live()) this.lost(conn, 1006, `stream request failed: ${describe(err)}`);
      return;
    }
    if (!live()) {
      abort.abort();
      return;
    }
    if (res.status !== 200) {
      const body = await res.text().catch(() => '');
      conn.http = { status: res.status, retryAfter: res.headers?.get?.('retry-after') ?? null, error: errorText(body) };
      if (live()) this.lost(conn, 1006, conn.http.error || `HTTP ${res.status}`);
      return;
    }
    const ctype = res.headers?.get?.('content-type') ?? '';
    if (!/^text\/event-stream/i.test(ctype) || !res.body) {
      abort.abort();
      this.lost(conn, 1006, `unexpected response (${ctype || 'no content-type'})`);
      return;
    }
    conn.socketOpen = true;
    const parser = new SseParser();
    const decoder = new TextDecoder();
    const reader = res.body.getReader();
    /** @type {{code: number, reason: string} | null} */
    let closeFrame = null;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (!live()) break;
        if (done) break;
        this.markActivity(conn);
        for (const item of parser.push(decoder.decode(value, { stream: true }))) {
          if (!live()) break;
          if (item.kind === 'retry') conn.sseRetryMs = item.ms;
          else if (item.kind === 'event') {
            if (item.event === 'close') {
              const f = safeJson(item.data);
              closeFrame = { code: typeof f?.code === 'number' ? f.code : 1006, reason: typeof f?.reason === 'string' ? f.reason : '' };
            } else {
              this.handleText(conn, item.data);
            }
          }
        }
        if (closeFrame) break;
      }
    } catch (err) {
      if (live()) this.lost(conn, 1006, `stream failed: ${describe(err)}`);
      return;
    } finally {
      abort.abort(); // releases the connection whichever way the loop ended
    }
    if (!live()) return;
    if (closeFrame) this.lost(conn, closeFrame.code, closeFrame.reason);
    else this.lost(conn, 1006, 'the stream ended without a close event');
  }

  // ----- internals: frames ------------------------------------------------------------

  /**
   * @private
   * @param {Conn} conn
   * @param {string} text
   */
  handleText(conn, text) {
    const f = safeJson(text);
    if (!f || typeof f.type !== 'string') return; // the node never sends these; ignore
    switch (f.type) {
      case 'welcome':
        return this.onWelcome(conn, f);
      case 'initial_state':
        conn.initial = f;
        if (conn.sentAfter === null) this.onOpening(conn, f, null);
        return;
      case 'missed':
        return this.onOpening(conn, conn.initial ?? { unread_count: this._unread, notifications: [] }, f);
      case 'notification':
        if (!f.notification || typeof f.notification.id !== 'number') return;
        if (!conn.ready) conn.early.push(f.notification);
        else this.onLive(f.notification);
        return;
      case 'event':
        this.emit('event', { group: f.group, payload: f.payload });
        return;
      case 'pong':
      case 'marked_read':
      case 'subscribed':
      case 'unsubscribed':
      case 'error':
        return this.onReply(f);
      default:
        return; // newer node, newer frame: ignore
    }
  }

  /**
   * @private
   * @param {Conn} conn
   * @param {any} f
   */
  onWelcome(conn, f) {
    conn.welcomed = true;
    this.clearTimer('open');
    if (conn.kind === 'websocket') this.upgradeFailures = 0;
    if (typeof f.user === 'string' && this.tracker.setUser(f.user)) {
      // A different user: nothing we hold belongs to them.
      this.byId.clear();
      this._unread = 0;
    }
    this.session = { welcome: f };
    const hb = typeof f.heartbeat_s === 'number' && f.heartbeat_s > 0 ? f.heartbeat_s : DEFAULTS.heartbeatS;
    conn.heartbeatMs = hb * 1000;
    this.startHeartbeat(conn);
    // Groups are per connection: join them again now, so their events flow while the
    // opening frames are still on their way. SSE chose them with groups= already.
    if (conn.kind === 'websocket') for (const g of this.wanted) this.sendSubscribe(g);
  }

  /**
   * The opening frames are in: merge, deliver, go 'open' (or fetch the rest of a
   * truncated `missed` at once).
   * @private
   * @param {Conn} conn
   * @param {any} initial
   * @param {any} missed
   */
  onOpening(conn, initial, missed) {
    const list = Array.isArray(initial.notifications) ? initial.notifications : [];
    const result = this.tracker.opening(list, missed && Array.isArray(missed.notifications) ? missed : null);
    if (typeof initial.unread_count === 'number') this._unread = initial.unread_count + result.extraUnread;
    this.syncReadFlags(list, initial.unread_count);
    for (const n of result.known) this.byId.set(n.id, { ...n });
    this.trimList();
    this.emitChange();
    for (const n of result.deliver) this.emit('notification', n);
    if (this.conn !== conn) return; // a listener closed the client
    if (result.truncated) {
      // More than 1000 missed: get the rest now, from the last id of this frame.
      this.detach(conn);
      this.closeTransport(conn, 'fetching the rest of a truncated missed frame');
      this.emit('disconnect', { code: 1000, reason: 'missed was truncated', willReconnect: true, delayMs: 0, transport: conn.kind });
      this.scheduleReconnect(0);
      return;
    }
    conn.ready = true;
    this.setState('open');
    const w = this.session?.welcome ?? {};
    this.emit('open', { transport: conn.kind, user: String(w.user ?? ''), node: String(w.node ?? ''), connection: String(w.connection ?? ''), heartbeatS: conn.heartbeatMs / 1000 });
    if (this.conn !== conn) return;
    // The backoff counter resets only once the connection proved itself: a node that
    // accepts and then drops us right away keeps growing the delay.
    this.setTimer('stable', this.opts.stableMs, () => {
      this.attempt = 0;
    });
    if (conn.kind === 'sse') this.settleSseGroupWaiters();
    const early = conn.early;
    conn.early = [];
    for (const n of early) this.onLive(n);
  }

  /**
   * The snapshot lists the newest unread notifications: anything we hold that it should
   * list but does not was read elsewhere (another tab, another device) meanwhile.
   * @private
   * @param {HeraldNotification[]} list
   * @param {number} unreadCount
   */
  syncReadFlags(list, unreadCount) {
    const own = list.filter((n) => this.tracker.isOwn(n));
    const ids = new Set(own.map((n) => n.id));
    const complete = typeof unreadCount === 'number' && own.length >= unreadCount;
    const floor = complete || own.length === 0 ? -Infinity : Math.min(...ids);
    for (const n of this.byId.values()) {
      if (!n.read && !ids.has(n.id) && n.id >= floor && (complete || own.length > 0)) n.read = true;
    }
  }

  /**
   * @private
   * @param {HeraldNotification} n
   */
  onLive(n) {
    if (!this.tracker.live(n)) return;
    if (this.tracker.isOwn(n)) {
      this.byId.set(n.id, { ...n });
      if (!n.read) this._unread++;
      this.trimList();
      this.emitChange();
    }
    this.emit('notification', n);
  }

  /** @private */
  trimList() {
    const keep = Math.max(0, this.opts.keep);
    if (this.byId.size <= keep) return;
    const ids = [...this.byId.keys()].sort((a, b) => b - a);
    for (const id of ids.slice(keep)) this.byId.delete(id);
  }

  /** @private */
  emitChange() {
    this.emit('change', { unreadCount: this._unread, notifications: this.notifications });
  }

  /**
   * Applies a `marked_read` reply to the local state.
   * @private
   * @param {any} reply
   */
  applyMarkedRead(reply) {
    if (reply.all) for (const n of this.byId.values()) n.read = true;
    for (const id of Array.isArray(reply.ids) ? reply.ids : []) {
      const n = this.byId.get(id);
      if (n) n.read = true;
    }
    if (typeof reply.unread_count === 'number') this._unread = reply.unread_count;
    this.emitChange();
  }

  /**
   * Settles the oldest outstanding request. The node handles a connection's frames in
   * order and replies to each once (3.5), so replies match requests first-in first-out;
   * an `error` frame answers whichever request is oldest.
   * @private
   * @param {any} f
   */
  onReply(f) {
    let i = 0;
    if (f.type !== 'error') {
      i = this.pending.findIndex((p) => p.expect === f.type);
    }
    if (i < 0 || i >= this.pending.length) {
      if (f.type === 'error') this.emit('error', new HeraldError(String(f.code ?? 'error'), String(f.message ?? 'error from the node')));
      return;
    }
    const [p] = this.pending.splice(i, 1);
    if (f.type === 'error') p.reject(new HeraldError(String(f.code ?? 'error'), String(f.message ?? 'error from the node')));
    else p.resolve(f);
  }

  // ----- internals: requests ----------------------------------------------------------

  /**
   * Sends a client frame on the open WebSocket and waits for its reply.
   * @private
   * @param {object} frame
   * @param {string} expect
   * @returns {Promise<any>}
   */
  request(frame, expect) {
    const c = this.conn;
    if (!c || c.kind !== 'websocket' || !c.welcomed || !c.ws || c.ws.readyState !== 1) {
      return Promise.reject(new HeraldError('not_connected', 'not connected; try again once the client is open'));
    }
    return new Promise((resolve, reject) => {
      this.pending.push({ expect, resolve, reject });
      try {
        c.ws.send(JSON.stringify(frame));
      } catch (err) {
        this.pending.pop();
        reject(new HeraldError('not_connected', `send failed: ${describe(err)}`, { cause: err }));
      }
    });
  }

  /**
   * mark_read / mark_all_read over whichever transport is in use.
   * @private
   * @param {object} frame
   * @param {string} expect
   * @returns {Promise<any>}
   */
  async command(frame, expect) {
    if (this._state === 'closed') throw new HeraldError('closed', 'the client is closed');
    let reply;
    if (this._transport === 'sse') reply = await this.postCommand(frame, false);
    else {
      if (this._state !== 'open') throw new HeraldError('not_connected', 'not connected; try again once the client is open');
      reply = await this.request(frame, expect);
    }
    this.applyMarkedRead(reply);
    return reply;
  }

  /**
   * POST a client frame to the SSE command endpoint. A 401 gets one retry with a fresh
   * token from the provider.
   * @private
   * @param {object} frame
   * @param {boolean} retried
   * @returns {Promise<any>}
   */
  async postCommand(frame, retried) {
    const fetchFn = this.fetchFn();
    if (!fetchFn) throw new HeraldError('no_transport', 'fetch is not available');
    if (retried) this.needFreshToken = true;
    const token = await this.getToken();
    const url = endpointUrl(this.opts.url, 'http', '/sse/notifications/commands');
    let res;
    try {
      res = await fetchFn(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify(frame),
        cache: 'no-store',
      });
    } catch (err) {
      throw new HeraldError('not_connected', `command request failed: ${describe(err)}`, { cause: err });
    }
    const body = await res.text().catch(() => '');
    if (res.status === 401 && !retried && typeof this.opts.token === 'function') return this.postCommand(frame, true);
    if (res.status !== 200) {
      throw new HeraldError(statusCode(res.status), errorText(body) || `HTTP ${res.status}`, { status: res.status });
    }
    const reply = safeJson(body);
    if (!reply || typeof reply !== 'object') throw new HeraldError('internal', 'the node answered a command with no JSON');
    if (reply.type === 'error') throw new HeraldError(String(reply.code ?? 'error'), String(reply.message ?? 'error'));
    return reply;
  }

  /** @private @param {string} group */
  sendSubscribe(group) {
    this.request({ type: 'subscribe', group }, 'subscribed').then(
      (reply) => this.settleWaiters(this.subWaiters, group, reply),
      (/** @type {HeraldError} */ err) => {
        if (err.code === 'not_connected') return; // waiters wait for the next connection
        // The node refused the group: stop asking for it on every reconnect. 'internal'
        // is a broker hiccup in cluster mode, and the node keeps the membership (3.5).
        if (err.code !== 'internal') this.wanted.delete(group);
        if (!this.subWaiters.has(group)) this.emit('error', new HeraldError(err.code, `subscribe(${group}): ${err.message}`));
        this.rejectWaiters(this.subWaiters, group, err);
      },
    );
  }

  /**
   * @private
   * @param {Map<string, {resolve: (v: any) => void, reject: (e: HeraldError) => void}[]>} map
   * @param {string} group
   * @returns {Promise<any>}
   */
  waitFor(map, group) {
    return new Promise((resolve, reject) => {
      const list = map.get(group) ?? [];
      list.push({ resolve, reject });
      map.set(group, list);
    });
  }

  /**
   * @private
   * @param {Map<string, {resolve: (v: any) => void, reject: (e: HeraldError) => void}[]>} map
   * @param {string} group
   * @param {any} value
   */
  settleWaiters(map, group, value) {
    const list = map.get(group);
    map.delete(group);
    for (const w of list ?? []) w.resolve(value);
  }

  /**
   * @private
   * @param {Map<string, {resolve: (v: any) => void, reject: (e: HeraldError) => void}[]>} map
   * @param {string} group
   * @param {HeraldError} err
   */
  rejectWaiters(map, group, err) {
    const list = map.get(group);
    map.delete(group);
    for (const w of list ?? []) w.reject(err);
  }

  /**
   * An SSE stream opened with the wanted groups: every subscribe/unsubscribe that was
   * waiting for it is done.
   * @private
   */
  settleSseGroupWaiters() {
    for (const g of [...this.subWaiters.keys()]) {
      if (this.wanted.has(g)) this.settleWaiters(this.subWaiters, g, { type: 'subscribed', group: g });
    }
    for (const g of [...this.unsubWaiters.keys()]) {
      if (!this.wanted.has(g)) this.settleWaiters(this.unsubWaiters, g, { type: 'unsubscribed', group: g });
    }
  }

  /**
   * Over SSE the group list is fixed when the stream opens: reopen with the new list and
   * `after` (the resume covers the gap). Several calls in one tick share one reopen.
   * @private
   */
  queueReopen() {
    if (this.reopenQueued) return;
    this.reopenQueued = true;
    void Promise.resolve().then(() => {
      this.reopenQueued = false;
      const c = this.conn;
      if (!c || c.kind !== 'sse' || this._state === 'closed') return;
      this.detach(c);
      this.closeTransport(c, 'changing groups');
      this.setState('reconnecting');
      void this.attemptConnect();
    });
  }

  // ----- internals: heartbeat ---------------------------------------------------------

  /** @private @param {Conn} conn */
  markActivity(conn) {
    conn.activity = true;
  }

  /**
   * Liveness watchdog, ticking every heartbeat_s / 2 after `welcome`.
   *
   * The node pings every heartbeat_s (3.8), but a browser answers pings without telling
   * the page, so "time since the last ping" cannot be measured there. Instead, any
   * inbound traffic counts: a frame, a `ws` ping event, an SSE chunk or comment. When a
   * WebSocket has been silent for about one heartbeat, the client sends {"type":"ping"}
   * itself (one rate-limit token, 3.7) and the `pong` proves the node alive. After about
   * two heartbeats of silence (four idle ticks: between 2 and 2.5 heartbeats) the
   * connection is declared dead, dropped, and treated as a 1006.
   * @private
   * @param {Conn} conn
   */
  startHeartbeat(conn) {
    const tick = Math.max(1, Math.floor(conn.heartbeatMs / 2));
    conn.activity = false;
    conn.idleTicks = 0;
    const run = () => {
      if (this.conn !== conn) return;
      if (conn.activity) conn.idleTicks = 0;
      else conn.idleTicks++;
      conn.activity = false;
      if (conn.idleTicks >= 4) {
        this.lost(conn, 1006, 'heartbeat timeout: nothing heard for two heartbeats');
        return;
      }
      if (conn.idleTicks === 2 && conn.kind === 'websocket') {
        this.request({ type: 'ping' }, 'pong').catch(() => {});
      }
      this.setTimer('heartbeat', tick, run);
    };
    this.setTimer('heartbeat', tick, run);
  }

  // ----- internals: endings -----------------------------------------------------------

  /**
   * Stops listening to a connection: its late callbacks are ignored from now on.
   * @private
   * @param {Conn} conn
   */
  detach(conn) {
    if (this.conn === conn) this.conn = null;
    this.clearTimer('open');
    this.clearTimer('heartbeat');
    this.clearTimer('stable');
    const err = new HeraldError('not_connected', 'the connection closed before the node replied');
    for (const p of this.pending.splice(0)) p.reject(err);
  }

  /**
   * @private
   * @param {Conn} conn
   * @param {string} why
   * @param {boolean} [hard] drop without a closing handshake (the peer is gone)
   */
  closeTransport(conn, why, hard = false) {
    if (conn.ws) {
      try {
        // `ws` waits up to 30 s for the closing handshake after close(); a connection
        // still opening, or one we consider dead, does not deserve that.
        if (typeof conn.ws.terminate === 'function' && (hard || conn.ws.readyState !== 1)) conn.ws.terminate();
        else conn.ws.close(1000, why.slice(0, 100));
      } catch {
        /* already closed */
      }
    }
    conn.abort?.abort();
  }

  /**
   * A connection ended or an attempt failed: decide, report, and reconnect or stop.
   * @private
   * @param {Conn} conn
   * @param {number} code
   * @param {string} reason
   */
  lost(conn, code, reason) {
    if (this.conn !== conn) return;
    this.detach(conn);
    this.closeTransport(conn, reason, code === 1006);
    const http = conn.http;
    let decision = http ? decideStatus(http.status, http.retryAfter) : decideClose(code, reason);

    if (http && resumeRefused(http, conn.sentAfter)) {
      // The node never issued the id we resume from: its store was replaced or wiped.
      // Resuming can never work; start over from the opening snapshot instead.
      this.tracker.resetResume();
      this.emit('error', new HeraldError('resume_reset', `${http.error}; reconnecting without after`, { status: 400 }));
      decision = { action: 'reconnect', delay: 'immediate', code: 'resume_reset' };
    } else if (conn.kind === 'sse' && http && (http.status === 400 || http.status === 403)) {
      // Over SSE a 400/403 may be about a group just added to groups=: drop those
      // groups, fail their subscribe() calls, and reopen without them.
      const fresh = [...this.subWaiters.keys()].filter((g) => this.wanted.has(g));
      if (fresh.length) {
        const err = new HeraldError(http.status === 403 ? 'forbidden' : 'bad_request', `${reason} (while joining ${fresh.join(', ')})`, { status: http.status });
        for (const g of fresh) {
          this.wanted.delete(g);
          this.rejectWaiters(this.subWaiters, g, err);
        }
        decision = { action: 'reconnect', delay: 'immediate', code: err.code };
      } else if (http.status === 400) {
        decision = { action: 'fatal', delay: 'immediate', code: 'bad_request' };
      }
    }

    if (conn.kind === 'websocket' && decision.upgradeFailed && this.opts.transport === 'auto') {
      this.upgradeFailures++;
      if (this.upgradeFailures >= DEFAULTS.fallbackAfter && this.fetchFn() && typeof ReadableStream !== 'undefined') {
        // The node answers and accepts the token, yet WebSocket keeps failing: something
        // in between (a proxy, a firewall) blocks upgrades. SSE is plain HTTP.
        this.sseFallback = true;
        decision = { action: 'reconnect', delay: 'immediate', code: 'websocket_unavailable' };
      }
    }

    if (decision.action === 'refresh' && typeof this.opts.token !== 'function') {
      decision = { action: 'fatal', delay: 'immediate', code: decision.code };
    }
    if (decision.action === 'fatal') {
      const msg = fatalMessage(decision.code, code, reason, http?.status);
      this.emit('disconnect', { code, reason, status: http?.status, willReconnect: false, transport: conn.kind });
      this.fatal(new HeraldError(decision.code, msg, { fatal: true, status: http?.status, closeCode: http ? undefined : code }));
      return;
    }
    if (decision.action === 'refresh') this.needFreshToken = true;
    if (decision.code === 'too_many_connections') {
      // Not a failure the client can fix, nor one that passes in seconds: the app
      // decides what the user sees (too many tabs or devices), and may close().
      const why = http?.error || 'the user holds the most connections the node allows';
      this.emit('error', new HeraldError('too_many_connections', why, { status: 429 }));
      if (this._state === 'closed') return; // a listener closed the client
    }
    let delay;
    if (conn.kind === 'sse' && decision.delay === 'drain' && conn.sseRetryMs !== null) {
      // The node sends a jittered retry: before a 1012 on SSE; it already spread the herd.
      delay = Math.min(conn.sseRetryMs, this.opts.backoff.maxMs);
    } else {
      delay = this.nextDelay(decision.delay);
    }
    this.emit('disconnect', { code, reason, status: http?.status, willReconnect: true, delayMs: delay, transport: conn.kind });
    if (this._state === 'closed') return; // a listener closed the client
    this.scheduleReconnect(delay);
  }

  /**
   * @private
   * @param {Decision['delay']} kind
   * @returns {number}
   */
  nextDelay(kind) {
    const r = this.opts.random;
    if (kind === 'immediate') return 0;
    if (kind === 'drain') return Math.floor(r() * this.opts.drainJitterMs);
    if (kind === 'limit') {
      const cap = this.opts.backoff.maxMs;
      return Math.floor(cap / 2 + r() * (cap / 2));
    }
    if (typeof kind === 'number') return kind + Math.floor(r() * this.opts.drainJitterMs);
    return backoffDelay(this.attempt++, this.opts.backoff, r);
  }

  /**
   * @private
   * @param {number} delay
   */
  scheduleReconnect(delay) {
    this.setState('reconnecting');
    if (this.offline) return; // 'online' reconnects at once
    this.setTimer('reconnect', delay, () => void this.attemptConnect());
  }

  /** @private @param {HeraldError} err */
  fatal(err) {
    this.emit('error', err);
    this.shutdown(err);
  }

  /**
   * @private
   * @param {HeraldError} err what pending requests are rejected with
   */
  shutdown(err) {
    this.epoch++;
    const c = this.conn;
    if (c) {
      this.detach(c);
      this.closeTransport(c, 'client closed');
    }
    for (const name of [...this.timers.keys()]) this.clearTimer(name);
    if (this.network) {
      this.network.removeEventListener?.('offline', this.onOffline);
      this.network.removeEventListener?.('online', this.onOnline);
    }
    this.offline = false;
    for (const g of [...this.subWaiters.keys()]) this.rejectWaiters(this.subWaiters, g, err);
    for (const g of [...this.unsubWaiters.keys()]) this.rejectWaiters(this.unsubWaiters, g, err);
    this.setState('closed');
  }

  /**
   * The browser lost the network: close the socket now (it would only time out) and
   * wait for 'online' instead of burning backoff attempts against no network.
   * @private
   */
  goOffline() {
    if (this._state === 'closed' || this.offline) return;
    this.offline = true;
    this.epoch++;
    this.clearTimer('reconnect');
    const c = this.conn;
    if (c) {
      this.detach(c);
      this.closeTransport(c, 'offline');
      this.emit('disconnect', { code: 1006, reason: 'offline', willReconnect: true, transport: c.kind });
    }
    this.setState('reconnecting');
  }

  /** @private */
  goOnline() {
    if (this._state === 'closed' || !this.offline) return;
    this.offline = false;
    this.attempt = 0;
    this.clearTimer('reconnect');
    if (!this.conn) void this.attemptConnect();
  }

  /**
   * @private
   * @param {string} name
   * @param {number} ms
   * @param {() => void} fn
   */
  setTimer(name, ms, fn) {
    this.clearTimer(name);
    this.timers.set(
      name,
      setTimeout(() => {
        this.timers.delete(name);
        fn();
      }, ms),
    );
  }

  /** @private @param {string} name */
  clearTimer(name) {
    const t = this.timers.get(name);
    if (t !== undefined) {
      clearTimeout(t);
      this.timers.delete(name);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/** @param {string} text @returns {any} */
function safeJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** @param {unknown} err @returns {string} */
function describe(err) {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Refusals whose `error` text the client reads: a 400's tells a resume point the store
 * never issued from a bad request (`resumeRefused`), a 429's is what the app shows.
 */
const READ_BODY = [400, 429];

/** The `error` text of a node's JSON error body. @param {string} body @returns {string} */
function errorText(body) {
  const j = safeJson(body);
  return j && typeof j.error === 'string' ? j.error : '';
}

/**
 * Whether a refusal says the resume point is beyond every id the node's store has
 * issued (PROTOCOL 3.1): a 400 to an attempt that sent `after`, naming it.
 * @param {Refusal} http
 * @param {number | null} sentAfter
 * @returns {boolean}
 */
export function resumeRefused(http, sentAfter) {
  return http.status === 400 && sentAfter !== null && /beyond the newest notification id/.test(http.error ?? '');
}

/** @param {number} status @returns {string} */
function statusCode(status) {
  return status === 400 ? 'bad_request' : status === 401 ? 'unauthorized' : status === 403 ? 'forbidden' : status === 503 ? 'unavailable' : `http_${status}`;
}

/**
 * @param {string} code
 * @param {number} closeCode
 * @param {string} reason
 * @param {number | undefined} status
 */
function fatalMessage(code, closeCode, reason, status) {
  const where = status ? `HTTP ${status}` : `close ${closeCode}`;
  const why = reason ? `: ${reason}` : '';
  switch (code) {
    case 'forbidden':
      return `the node refused the connection (${where}${why}); check HERALD_ALLOWED_ORIGINS and the token's groups`;
    case 'unauthorized':
    case 'token_expired':
      return `the node refused the token (${where}${why}) and the token is a fixed string; pass a token provider function to refresh it`;
    case 'unsupported_data':
      return `the node closed the connection (${where}${why}): the client sent binary data`;
    case 'message_too_big':
      return `the node closed the connection (${where}${why}): the client sent a frame over the size limit`;
    default:
      return `the connection cannot continue (${where}${why})`;
  }
}
