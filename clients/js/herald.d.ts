// Type definitions for herald.js (the Herald browser client). Kept in step with herald.js.

/** Version of this client. */
export declare const VERSION: string;

/** Reconnect backoff: the n-th consecutive failed attempt waits `min(maxDelay, minDelay * factor^n)` ± `jitter`. */
export interface ReconnectOptions {
  /** Delay before the first retry, ms. Default 500. */
  minDelay: number;
  /** The delay never exceeds this, ms. Default 30000. */
  maxDelay: number;
  /** Growth per consecutive failure. Default 2. */
  factor: number;
  /** ± this fraction of the delay, at random (0 = none, 1 = 0…2×). Default 0.3. */
  jitter: number;
}

export declare const DEFAULT_RECONNECT: Readonly<ReconnectOptions>;

/** The minimal WebSocket surface herald.js uses (the browser's `WebSocket` fits). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
}

export interface HeraldOptions {
  /** The user token (JWT), or a function returning one; a function is called before every connection attempt and every `collect()`. */
  token: string | (() => string | Promise<string>);
  /** The server, e.g. `https://herald.example.com` (ws:// and wss:// work too). Default: `location.origin`. */
  url?: string;
  /** Acknowledge new messages right after the `message` listeners ran. Default true. */
  autoAck?: boolean;
  /** Backoff policy, or `false` to never reconnect. */
  reconnect?: Partial<ReconnectOptions> | false;
  /** Ping after this many ms without a frame from the server; 0 disables. Default 25000. */
  heartbeat?: number;
  /** Close (code 4000) and reconnect if nothing arrives this many ms after a ping. Default 10000. */
  heartbeatTimeout?: number;
  /** Abandon (code 4001) an attempt without a `welcome` after this many ms. Default 15000. */
  connectTimeout?: number;
  /** The replay burst is over after this many ms without a message frame. Default 300. */
  replayIdle?: number;
  /** How many recent message ids are remembered for de-duplication. Default 1000. */
  dedupSize?: number;
  /** Check the token over HTTP after this many consecutive failed attempts; a 401 stops reconnecting. Default 1. */
  authProbeFailures?: number;
  /** WebSocket constructor. Default `globalThis.WebSocket`. */
  WebSocket?: new (url: string) => WebSocketLike;
  /** fetch function. Default `globalThis.fetch`. */
  fetch?: typeof fetch;
}

/** A message as emitted by the `message` event and returned by `collect()`. */
export interface HeraldMessage {
  /** Message id (UUID v7). */
  id: string;
  title: string;
  /** The sender's string; it may itself be JSON text. */
  content: string;
  /** The sender's `type`. */
  msgType: number;
  sender: string;
  /** RFC 3339. */
  createdAt: string;
  /** How it arrived. */
  source: "socket" | "collect";
  /** Arrived in the replay burst after a (re)connect (heuristic, see README). */
  replayed: boolean;
  /** The frame or inbox item as received. */
  raw: Record<string, unknown>;
}

/** The server's first frame on every connection. */
export interface Welcome {
  type: "welcome";
  sessionId: string;
  userId: string;
  serverTime: string;
  /** How many message frames the replay that follows sends (absent on older servers). */
  pending?: number;
}

export interface CloseInfo {
  /** WebSocket close code: 1001 server shutdown, 1006 connection failed/lost, 4000 heartbeat timeout, 4001 connect timeout, … */
  code: number;
  reason: string;
  /** Whether a new attempt is scheduled. */
  willReconnect: boolean;
  /** ms until that attempt, or null. */
  delay: number | null;
  /** Whether this connection had received its `welcome`. */
  wasOpen: boolean;
}

export type HeraldState = "idle" | "connecting" | "replaying" | "live" | "reconnecting" | "closed";

export type HeraldErrorKind = "unauthorized" | "server" | "protocol" | "http" | "network" | "token";

export declare class HeraldError extends Error {
  constructor(kind: HeraldErrorKind, message: string, details?: { status?: number; cause?: unknown });
  readonly name: "HeraldError";
  readonly kind: HeraldErrorKind;
  /** HTTP status, when there was one. */
  readonly status?: number;
}

export interface HeraldEvents {
  open: Welcome;
  message: HeraldMessage;
  close: CloseInfo;
  "replay-complete": { count: number };
  statechange: { state: HeraldState; previous: HeraldState };
  error: HeraldError;
}

/** Delay before reconnect attempt `attempt` (0 = first retry), within [0, maxDelay]. */
export declare function backoffDelay(attempt: number, options: Partial<ReconnectOptions>, random?: () => number): number;

/** A bounded map that forgets the least recently used id first (the de-duplication memory). */
export declare class RecentIds<V = unknown> {
  constructor(capacity?: number);
  readonly capacity: number;
  readonly size: number;
  has(id: string): boolean;
  get(id: string): V | undefined;
  set(id: string, value: V): this;
}

export declare class Herald {
  constructor(options: HeraldOptions);
  /** Base HTTP URL of the server (no trailing slash). */
  readonly httpUrl: string;
  /** Base WebSocket URL of the server (no trailing slash). */
  readonly wsUrl: string;
  /** Acknowledge new messages automatically (may be changed at any time). */
  autoAck: boolean;
  /** The latest `welcome`, or null before the first. */
  readonly session: Welcome | null;
  /** Counters since construction. */
  readonly stats: { attempts: number; messages: number; duplicates: number };
  /** Connection state. */
  readonly state: HeraldState;
  /** Start connecting; retries with backoff until `close()` or a rejected token. */
  connect(): this;
  /** Close for good: no reconnect after this (`connect()` starts again). */
  close(code?: number, reason?: string): void;
  /** Acknowledge (→ `delivered`); queued until connected. */
  ack(id: string): void;
  /** Mark read (→ `read`, implies acknowledged); queued until connected. */
  read(id: string): void;
  /** `POST /api/v1/inbox/collect`: the new undelivered messages, oldest first, now `delivered`; also emitted as `message`. */
  collect(): Promise<HeraldMessage[]>;
  on<K extends keyof HeraldEvents>(event: K, listener: (value: HeraldEvents[K]) => void): () => void;
  off<K extends keyof HeraldEvents>(event: K, listener: (value: HeraldEvents[K]) => void): void;
  once<K extends keyof HeraldEvents>(event: K, listener: (value: HeraldEvents[K]) => void): () => void;
}
