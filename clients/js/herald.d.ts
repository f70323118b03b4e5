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

/** The minimal EventSource surface herald.js uses (the browser's `EventSource` fits). */
export interface EventSourceLike {
  readonly readyState: number;
  close(): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: unknown; lastEventId?: string }) => void) | null;
  onerror: ((event: any) => void) | null;
}

/** How live frames arrive. */
export type Transport = "websocket" | "sse";

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
  /** Check the token over HTTP (`GET /api/v1/inbox/counts`) after this many consecutive failed attempts; a 401 stops reconnecting. Default 1. */
  authProbeFailures?: number;
  /** `websocket`, `sse` (`GET /events`, receipts over REST), or `auto` (default): WebSocket, and SSE when there is no WebSocket or it cannot get through. */
  transport?: "auto" | Transport;
  /** `auto`: switch to SSE after this many consecutive WebSocket attempts failed before their `welcome` while the token check answered 200. Default 2. */
  sseAfter?: number;
  /** SSE: receipts are batched for this many ms into one `POST /api/v1/inbox/ack` (or `read`). Default 50. */
  ackDelay?: number;
  /** WebSocket constructor. Default `globalThis.WebSocket`. */
  WebSocket?: new (url: string) => WebSocketLike;
  /** EventSource constructor. Default `globalThis.EventSource`. */
  EventSource?: new (url: string) => EventSourceLike;
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
  /** Its place in the inbox (for `before`/`after`), when the server sent it. */
  cursor: string | null;
  /** How it arrived: WebSocket, SSE or `collect()`. */
  source: "socket" | "sse" | "collect";
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
  /** The inbox counts at this moment (absent on older servers). */
  counts?: InboxCounts;
  /** SSE: the `Last-Event-ID` the stream resumed from. */
  resumedFrom?: string;
}

/** The inbox counts (archived entries are not counted). */
export interface InboxCounts {
  /** Not yet seen in the feed: the badge. */
  unseen: number;
  /** Not yet read. */
  unread: number;
  total: number;
}

/** One entry of the inbox (`GET /api/v1/inbox`). */
export interface InboxEntry {
  id: string;
  title: string;
  content: string;
  /** The sender's msgType. */
  type: number;
  sender: string;
  createdAt: string;
  /** The delivery status (`sent`, `delivered`, `read`, …). */
  status: string;
  /** Opaque; pass as `before`/`after`. */
  cursor: string;
  seen: boolean;
  read: boolean;
  archived: boolean;
}

export interface InboxQuery {
  /** Default `undelivered`. */
  status?: "undelivered" | "all" | "unseen" | "unread" | "read" | "seen";
  /** Default false. */
  archived?: boolean | "any";
  /** Only this msgType. */
  type?: number;
  /** Entries older than this cursor. */
  before?: string;
  /** Entries newer than this cursor. */
  after?: string;
  /** 1..1000 (server default 50). */
  limit?: number;
  /** Offset paging, without a cursor. */
  page?: number;
  size?: number;
}

export interface InboxPage {
  /** Newest first. */
  items: InboxEntry[];
  page: number;
  size: number;
  total: number;
  /** Pass as `before` for the next (older) page; null at the end. */
  nextCursor: string | null;
}

/** These message ids, or all entries (with `before`: those whose cursor is ≤ it). */
export type InboxSelection = string[] | { all: true; before?: string | null };

export interface InboxOpResult {
  /** How many entries changed. */
  changed: number;
  counts: InboxCounts | null;
}

/** The server's state frame: flags changed in one of this user's sessions (`ids`, or `all` up to `before`). */
export interface StateFrame {
  type: "state";
  ids?: string[];
  all?: true;
  before?: string | null;
  seen?: boolean;
  read?: boolean;
  archived?: boolean;
  deleted?: boolean;
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
  constructor(kind: HeraldErrorKind, message: string, details?: { status?: number; field?: string; cause?: unknown });
  readonly name: "HeraldError";
  readonly kind: HeraldErrorKind;
  /** HTTP status, when there was one. */
  readonly status?: number;
  /** The request field the server blamed, when it named one (e.g. `ids`). */
  readonly field?: string;
}

export interface HeraldEvents {
  open: Welcome;
  message: HeraldMessage;
  close: CloseInfo;
  "replay-complete": { count: number };
  statechange: { state: HeraldState; previous: HeraldState };
  error: HeraldError;
  /** `herald.counts` changed (welcome, a counts frame, a live message, an op without a session). */
  counts: InboxCounts;
  /** A state frame from the server, as received. */
  state: StateFrame;
  /** `auto` switched transports. */
  transport: { transport: Transport; previous: Transport };
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
  /** The transport in use (or tried next). */
  readonly transport: Transport;
  /** The inbox counts, kept current; null until the server sent them. */
  readonly counts: InboxCounts | null;
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
  /** `GET /api/v1/inbox/counts`; also updates `counts`. */
  fetchCounts(): Promise<InboxCounts>;
  /** `GET /api/v1/inbox`: one page, newest first. */
  inbox(query?: InboxQuery): Promise<InboxPage>;
  /** `POST /api/v1/inbox/seen`. */
  markSeen(which: InboxSelection): Promise<InboxOpResult>;
  /** `POST /api/v1/inbox/read` (implies seen; the delivery becomes `read`). */
  markRead(which: InboxSelection): Promise<InboxOpResult>;
  /** `POST /api/v1/inbox/unread`. */
  markUnread(which: InboxSelection): Promise<InboxOpResult>;
  /** `POST /api/v1/inbox/archive`. */
  archive(which: InboxSelection): Promise<InboxOpResult>;
  /** `POST /api/v1/inbox/unarchive`. */
  unarchive(which: InboxSelection): Promise<InboxOpResult>;
  /** `POST /api/v1/inbox/delete`: out of this user's inbox for good. */
  remove(which: InboxSelection): Promise<InboxOpResult>;
  on<K extends keyof HeraldEvents>(event: K, listener: (value: HeraldEvents[K]) => void): () => void;
  off<K extends keyof HeraldEvents>(event: K, listener: (value: HeraldEvents[K]) => void): void;
  once<K extends keyof HeraldEvents>(event: K, listener: (value: HeraldEvents[K]) => void): () => void;
}
