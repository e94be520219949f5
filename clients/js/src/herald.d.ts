// Type declarations for ./herald.js (hand-written: the public API only).
// Keep in step with the JSDoc in herald.js; `npm run typecheck` checks both files and
// test/types/usage.ts, which exercises this API the way an application would.

/** A stored notification as the node sends it (PROTOCOL.md 3.3). */
export interface HeraldNotification {
  /** Positive, increasing in creation order, never reused. */
  id: number;
  /** The user the notification belongs to. */
  user: string;
  /** The JSON value the backend posted. */
  message: unknown;
  /** UTC with three decimals and a `Z`. */
  created_at: string;
  read: boolean;
}

export type HeraldState = 'connecting' | 'open' | 'reconnecting' | 'closed';
export type TransportMode = 'auto' | 'websocket' | 'sse';
export type TransportName = 'websocket' | 'sse';
export type TokenSource = string | (() => string | Promise<string>);

export interface BackoffOptions {
  /** First ceiling of the full-jitter window. Default 500. */
  initialMs?: number;
  /** Cap of the window. Default 30000. */
  maxMs?: number;
}

/** The part of an EventTarget the client uses (browsers' `window`, `ws` sockets). */
export interface EventTargetLike {
  addEventListener(type: string, fn: (ev: any) => void): void;
  removeEventListener?(type: string, fn: (ev: any) => void): void;
}

/**
 * A WHATWG-style WebSocket constructor: the browser's, Node 22's global, or `ws`. It
 * is given the subprotocols that carry the token (`wsProtocols`).
 */
export type WebSocketCtor = new (url: string, protocols: string[]) => any;
export type FetchLike = (input: string, init?: any) => Promise<any>;

export interface HeraldOptions {
  /** Base URL of the node or load balancer (`http(s)://` or `ws(s)://`, optional path
   * prefix). Default: `location.origin` in a browser page. */
  url?: string;
  /** A client JWT, or a function returning one; the function is called again when the
   * node refuses or expires the token. */
  token: TokenSource;
  /** Default `globalThis.WebSocket`. In Node 20 pass the `ws` package's class. */
  WebSocket?: WebSocketCtor | null;
  /** Default `globalThis.fetch`: SSE, SSE commands, upgrade diagnostics. */
  fetch?: FetchLike | null;
  /** Default 'auto': WebSocket, falling back to SSE (see README). */
  transport?: TransportMode;
  /** Extra groups joined after every (re)connect. */
  groups?: string[];
  /** Starting resume id: the newest own notification id the app already has. */
  after?: number;
  /** How many of the user's newest notifications `notifications` keeps. Default 50. */
  keep?: number;
  backoff?: BackoffOptions;
  /** Window of the random delay after a 1012 close, and the jitter added to a
   * Retry-After. Default 1000. */
  drainJitterMs?: number;
  /** How long a connection must stay open after its opening frames before the backoff
   * counter resets. Default 5000. */
  stableMs?: number;
  /** How long an attempt may wait for `welcome`. Default 15000. */
  openTimeoutMs?: number;
  /** Source of `online`/`offline` events. Default `globalThis` when it has
   * `addEventListener` (browsers); null disables. */
  networkEvents?: EventTargetLike | null;
  /** Randomness in [0, 1). Default Math.random. */
  random?: () => number;
}

/** What the client does after a close or a refused attempt. */
export interface Decision {
  action: 'reconnect' | 'refresh' | 'fatal';
  /** 'backoff' grows the attempt counter; 'drain' is a short jitter; a number is ms. */
  delay: 'backoff' | 'drain' | 'limit' | 'immediate' | number;
  code: string;
  /** Node reachable and token accepted, but the WebSocket upgrade failed. */
  upgradeFailed?: boolean;
}

export interface OpenInfo {
  transport: TransportName;
  user: string;
  node: string;
  connection: string;
  heartbeatS: number;
}

export interface DisconnectInfo {
  /** Close code; 1006 when the transport just went away. */
  code: number;
  reason: string;
  /** HTTP status, when the attempt was refused. */
  status?: number;
  willReconnect: boolean;
  /** Delay before the next attempt, when one is scheduled. */
  delayMs?: number;
  transport: TransportName;
}

export interface ChangeInfo {
  unreadCount: number;
  notifications: HeraldNotification[];
}

export interface HeraldEventMap {
  notification: HeraldNotification;
  event: { group: string; payload: unknown };
  state: HeraldState;
  change: ChangeInfo;
  error: HeraldError;
  open: OpenInfo;
  disconnect: DisconnectInfo;
}

export interface MarkedReadReply {
  type: 'marked_read';
  ids?: number[];
  all?: boolean;
  unread_count: number;
}
export interface SubscribedReply {
  type: 'subscribed';
  group: string;
}
export interface UnsubscribedReply {
  type: 'unsubscribed';
  group: string;
}

/** Every error the client reports or rejects with. */
export declare class HeraldError extends Error {
  constructor(code: string, message: string, extra?: { fatal?: boolean; status?: number; closeCode?: number; cause?: unknown });
  /** Stable, machine-readable. */
  code: string;
  /** The client stopped (state 'closed') and will not reconnect on its own. */
  fatal: boolean;
  status: number | undefined;
  closeCode: number | undefined;
}

export declare const DEFAULTS: Readonly<{
  transport: TransportMode;
  keep: number;
  initialMs: number;
  maxMs: number;
  drainJitterMs: number;
  stableMs: number;
  openTimeoutMs: number;
  heartbeatS: number;
  fallbackAfter: number;
}>;

/** Uniform delay in [0, min(maxMs, initialMs * 2^attempt)). */
export declare function backoffDelay(attempt: number, opts?: BackoffOptions, random?: () => number): number;
/** The close-code table of PROTOCOL.md 3.10. */
export declare function decideClose(code: number, reason?: string): Decision;
/** The upgrade/stream refusal statuses of PROTOCOL.md 3.1. */
export declare function decideStatus(status: number, retryAfter?: string | null): Decision;
/** The WebSocket subprotocol of Herald clients, which the node answers with. */
export declare const SUBPROTOCOL: 'herald';
/**
 * The subprotocols that carry a token on a WebSocket: `['herald', 'bearer.<jwt>']`.
 * Throws a TypeError when the token has characters no JWT has.
 */
export declare function wsProtocols(token: string): string[];
/** An HTTP refusal of an attempt; `error` is the node's text, read for a 400 or a 429. */
export interface Refusal {
  status: number;
  retryAfter: string | null;
  error?: string;
}
/** True when a 400 says the `after` sent is beyond every id the node's store issued. */
export declare function resumeRefused(http: Refusal, sentAfter: number | null): boolean;
/** Retry-After (seconds or HTTP date) in ms, or null. */
export declare function parseRetryAfter(value: string | null | undefined, now?: number): number | null;
/** The `exp` claim of a JWT in ms since the epoch, unverified; null if unreadable. */
export declare function jwtExpiry(token: string): number | null;
/** An endpoint URL under a http(s) or ws(s) base, in the given scheme family. */
export declare function endpointUrl(
  base: string,
  scheme: 'ws' | 'http',
  path: string,
  query?: Record<string, string | number | null | undefined>,
): string;

export interface OpeningResult {
  /** New notifications, ascending by id. */
  deliver: HeraldNotification[];
  /** Own notifications of the frames not held back, ascending (fresh read flags). */
  known: HeraldNotification[];
  /** `missed` was cut: reconnect at once with `after` = lastId. */
  truncated: boolean;
  /** Unread notifications in `missed` created after the `initial_state` snapshot. */
  extraUnread: number;
}

/** Resume point and de-duplication (see herald.js for the reasoning). */
export declare class IdTracker {
  constructor(opts?: { after?: number | null; recentLimit?: number });
  /** Newest own notification id delivered: the `after` of the next connect. */
  lastId: number | null;
  /** The connection's user, from `welcome`. */
  user: string | null;
  /** Forgets the resume point and recent ids: the next connect opens from the snapshot. */
  resetResume(): void;
  /** Sets the user; returns true (and forgets the resume point) when it changed. */
  setUser(user: string): boolean;
  isOwn(n: HeraldNotification): boolean;
  opening(
    initial: HeraldNotification[],
    missed: { notifications: HeraldNotification[]; truncated?: boolean } | null,
  ): OpeningResult;
  /** True when a live notification is new (and advances the resume point). */
  live(n: HeraldNotification): boolean;
}

export type SseItem =
  | { kind: 'event'; event: string; data: string; id: string }
  | { kind: 'comment'; text: string }
  | { kind: 'retry'; ms: number };

/** Incremental text/event-stream parser. */
export declare class SseParser {
  /** The last event id seen. */
  lastEventId: string;
  /** Feeds decoded text of any size; returns the complete items, in order. */
  push(chunk: string): SseItem[];
}

/** The Herald real-time client. */
export declare class HeraldClient {
  constructor(options: HeraldOptions);
  readonly state: HeraldState;
  /** Transport of the current or last connection. */
  readonly transport: TransportName | null;
  readonly unreadCount: number;
  /** The user's newest notifications, newest first (a copy). */
  readonly notifications: HeraldNotification[];
  /** The resume point. */
  readonly lastId: number | null;
  /** The user id from the last `welcome`. */
  readonly user: string | null;
  /** The groups joined after every connect. */
  readonly groups: string[];
  on<K extends keyof HeraldEventMap>(type: K, fn: (payload: HeraldEventMap[K]) => void): () => void;
  off<K extends keyof HeraldEventMap>(type: K, fn: (payload: HeraldEventMap[K]) => void): void;
  connect(): this;
  close(): void;
  markRead(ids: number[]): Promise<MarkedReadReply>;
  markAllRead(): Promise<MarkedReadReply>;
  subscribe(group: string): Promise<SubscribedReply>;
  unsubscribe(group: string): Promise<UnsubscribedReply>;
}
