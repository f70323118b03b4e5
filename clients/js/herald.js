// herald.js — the browser (and Node ≥ 22) client for Herald. Dependency-free ES module.
// Served by Herald at /herald.js; documented in clients/js/README.md; types in herald.d.ts.
//
//   import { Herald } from "/herald.js";
//   const herald = new Herald({ token });
//   herald.on("message", (m) => console.log(m.title, m.content));
//   herald.on("counts", (c) => showBadge(c.unseen));
//   herald.connect();
//
// Live messages arrive over a WebSocket, or over Server-Sent Events (`GET /events`) where
// a WebSocket cannot get through (`transport`); the inbox (notification center) is REST.

/** Version of this client. */
export const VERSION = "0.1.0";

/**
 * Default reconnect policy: the n-th consecutive failed attempt waits
 * `min(maxDelay, minDelay * factor^n)` ± `jitter` (a fraction of that delay).
 * @type {Readonly<ReconnectOptions>}
 */
export const DEFAULT_RECONNECT = Object.freeze({
  minDelay: 500,
  maxDelay: 30_000,
  factor: 2,
  jitter: 0.3,
});

/** The most messages `POST /api/v1/inbox/collect` returns in one call. */
const COLLECT_PAGE = 1000;
/** Upper bound on collect round trips in one `collect()` call. */
const COLLECT_MAX_CALLS = 100;
/** WebSocket readyState OPEN. */
const OPEN = 1;
/** The most ids one `POST /api/v1/inbox/{op}` takes. */
const OP_MAX_IDS = 1000;
/** The inbox operations: method name → `POST /api/v1/inbox/{op}`. */
const INBOX_OPS = Object.freeze({
  markSeen: "seen",
  markRead: "read",
  markUnread: "unread",
  archive: "archive",
  unarchive: "unarchive",
  remove: "delete",
});

/**
 * @typedef {object} ReconnectOptions
 * @property {number} minDelay delay before the first retry, ms (default 500)
 * @property {number} maxDelay the delay never exceeds this, ms (default 30000)
 * @property {number} factor growth per consecutive failure (default 2)
 * @property {number} jitter (default 0.3) plus or minus this fraction of the delay, at random
 *   (0 = none, 1 = anywhere from 0 to twice the delay)
 */

/**
 * @typedef {object} HeraldOptions
 * @property {string | (() => string | Promise<string>)} token the user token (a JWT), or a
 *   function returning one; a function is called before every connection attempt and every
 *   `collect()`, so it can refresh an expiring token.
 * @property {string} [url] the server, e.g. `https://herald.example.com` (a `ws://`/`wss://`
 *   URL works too). Default: the page's origin (`location.origin`).
 * @property {boolean} [autoAck=true] acknowledge every new message right after the
 *   `message` listeners ran. With `false`, call `ack(id)` yourself.
 * @property {Partial<ReconnectOptions> | false} [reconnect] backoff policy, or `false` to never reconnect
 * @property {number} [heartbeat=25000] after this many ms without any frame from the server,
 *   send `{"type":"ping"}`; 0 disables the heartbeat
 * @property {number} [heartbeatTimeout=10000] if nothing arrives within this many ms after a
 *   ping, close the socket (code 4000) and reconnect
 * @property {number} [connectTimeout=15000] give up on a connection attempt that has not
 *   received its `welcome` after this many ms (code 4001) and retry
 * @property {number} [replayIdle=300] the replay is taken to be over after this many ms
 *   without a message frame (see `replay-complete`)
 * @property {number} [dedupSize=1000] how many recent message ids are remembered for de-duplication
 * @property {number} [authProbeFailures=1] after this many consecutive attempts that failed
 *   before the `welcome`, check the token over HTTP (`GET /api/v1/inbox/counts`); a `401`
 *   stops reconnecting
 * @property {"auto" | "websocket" | "sse"} [transport="auto"] how live frames arrive: a
 *   WebSocket, Server-Sent Events (`GET /events`, acks over REST), or `auto`: WebSocket, and
 *   SSE when there is no WebSocket or it cannot get through (see `sseAfter`)
 * @property {number} [sseAfter=2] `auto`: switch to SSE after this many consecutive
 *   WebSocket attempts failed before their `welcome` while the token check answered 200
 * @property {number} [ackDelay=50] SSE: acknowledgements are batched for this many ms into
 *   one `POST /api/v1/inbox/ack`
 * @property {typeof WebSocket} [WebSocket] WebSocket constructor (default `globalThis.WebSocket`)
 * @property {typeof EventSource} [EventSource] EventSource constructor (default `globalThis.EventSource`)
 * @property {typeof fetch} [fetch] fetch function (default `globalThis.fetch`)
 */

/**
 * @typedef {object} HeraldMessage
 * @property {string} id message id (UUID v7)
 * @property {string} title
 * @property {string} content the sender's string; it may itself be JSON text
 * @property {number} msgType the sender's `type`
 * @property {string} sender
 * @property {string} createdAt RFC 3339
 * @property {string | null} cursor its place in the inbox (pass as `before`/`after`), when
 *   the server sent it
 * @property {"socket" | "sse" | "collect"} source how it arrived (WebSocket, SSE, `collect()`)
 * @property {boolean} replayed arrived during the replay burst after a (re)connect (heuristic)
 * @property {object} raw the frame or inbox item as received
 */

/**
 * @typedef {object} InboxCounts
 * @property {number} unseen not yet seen in the feed (the badge)
 * @property {number} unread not yet read
 * @property {number} total entries in the inbox (archived ones not counted)
 */

/**
 * @typedef {object} InboxEntry
 * @property {string} id
 * @property {string} title
 * @property {string} content
 * @property {number} type
 * @property {string} sender
 * @property {string} createdAt RFC 3339
 * @property {string} status the delivery status
 * @property {string} cursor
 * @property {boolean} seen
 * @property {boolean} read
 * @property {boolean} archived
 */

/**
 * @typedef {object} InboxQuery
 * @property {"undelivered" | "all" | "unseen" | "unread" | "read" | "seen"} [status="undelivered"]
 * @property {boolean | "any"} [archived=false]
 * @property {number} [type] only this msgType
 * @property {string} [before] entries older than this cursor
 * @property {string} [after] entries newer than this cursor
 * @property {number} [limit] 1..1000 (server default 50)
 * @property {number} [page] offset paging, without a cursor
 * @property {number} [size] offset paging, without a cursor
 */

/**
 * @typedef {object} InboxPage
 * @property {InboxEntry[]} items newest first
 * @property {number} page
 * @property {number} size
 * @property {number} total
 * @property {string | null} nextCursor pass as `before` for the next (older) page; null at the end
 */

/**
 * @typedef {string[] | {all: true, before?: string | null}} InboxSelection which entries an
 *   operation applies to: these message ids, or all of them (with `before`: those with a
 *   cursor ≤ it, i.e. what the user saw)
 */

/**
 * @typedef {object} InboxOpResult
 * @property {number} changed how many entries changed
 * @property {InboxCounts | null} counts the counts after the change
 */

/**
 * @typedef {object} Welcome
 * @property {"welcome"} type
 * @property {string} sessionId
 * @property {string} userId
 * @property {string} serverTime RFC 3339
 * @property {number} [pending] how many message frames the replay that follows sends
 *   (servers before this field: absent, and the client falls back to `replayIdle`)
 * @property {InboxCounts} [counts] the inbox counts at this moment
 * @property {string} [resumedFrom] SSE: the `Last-Event-ID` the stream resumed from
 */

/**
 * @typedef {object} CloseInfo
 * @property {number} code WebSocket close code (1006 when the connection failed; 4000
 *   heartbeat timeout and 4001 connect timeout are this client's own)
 * @property {string} reason
 * @property {boolean} willReconnect whether a new attempt is scheduled
 * @property {number | null} delay ms until that attempt, or null
 * @property {boolean} wasOpen whether this connection had received its `welcome`
 */

/**
 * @typedef {"idle" | "connecting" | "replaying" | "live" | "reconnecting" | "closed"} HeraldState
 */

/** An error reported through the `error` event or thrown by `collect()`. */
export class HeraldError extends Error {
  /**
   * @param {"unauthorized" | "server" | "protocol" | "http" | "network" | "token"} kind
   * @param {string} message
   * @param {{status?: number, field?: string, cause?: unknown}} [details]
   */
  constructor(kind, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "HeraldError";
    /** What went wrong: `unauthorized` (token rejected), `server` (an error frame), `protocol`
     * (an unreadable frame), `http` (collect: another status), `network`, `token` (the
     * token function failed). */
    this.kind = kind;
    /** HTTP status, when there was one. */
    this.status = details.status;
    /** The request field the server blamed (`field` of its error body), when it named one. */
    this.field = details.field;
  }
}

/**
 * Delay before reconnect attempt number `attempt` (0 = first retry).
 * @param {number} attempt consecutive failures so far (≥ 0)
 * @param {Partial<ReconnectOptions>} options
 * @param {() => number} [random=Math.random] a source of numbers in [0, 1)
 * @returns {number} milliseconds, within [0, maxDelay]
 */
export function backoffDelay(attempt, options, random = Math.random) {
  const { minDelay, maxDelay, factor, jitter } = { ...DEFAULT_RECONNECT, ...options };
  const base = Math.min(maxDelay, minDelay * Math.pow(factor, Math.max(0, attempt)));
  const spread = base * Math.min(1, Math.max(0, jitter));
  const delay = base - spread + random() * 2 * spread;
  return Math.round(Math.max(0, Math.min(maxDelay, delay)));
}

/**
 * A bounded map that forgets the least recently used key first: the de-duplication memory.
 * @template V
 */
export class RecentIds {
  /** @param {number} [capacity=1000] */
  constructor(capacity = 1000) {
    /** @type {number} */
    this.capacity = Math.max(1, capacity | 0);
    /** @type {Map<string, V>} */
    this._map = new Map();
  }
  /** @returns {number} */
  get size() {
    return this._map.size;
  }
  /** @param {string} id @returns {boolean} */
  has(id) {
    return this._map.has(id);
  }
  /** Look up `id` and mark it recently used. @param {string} id @returns {V | undefined} */
  get(id) {
    if (!this._map.has(id)) return undefined;
    const value = /** @type {V} */ (this._map.get(id));
    this._map.delete(id);
    this._map.set(id, value);
    return value;
  }
  /** Remember `id`, evicting the least recently used id when full. @param {string} id @param {V} value */
  set(id, value) {
    this._map.delete(id);
    this._map.set(id, value);
    while (this._map.size > this.capacity) {
      this._map.delete(/** @type {string} */ (this._map.keys().next().value));
    }
    return this;
  }
}

/**
 * A Herald connection for one user: receives pushed messages over a WebSocket (or SSE),
 * acknowledges them, reconnects with backoff, de-duplicates what the server sends again,
 * keeps the inbox counts current and reads and changes the inbox over REST.
 */
export class Herald {
  /** @param {HeraldOptions} options */
  constructor(options) {
    if (!options || (typeof options.token !== "string" && typeof options.token !== "function")) {
      throw new TypeError("Herald: `token` (string or function) is required");
    }
    if (typeof options.token === "string" && options.token.trim() === "") {
      throw new TypeError("Herald: `token` is empty");
    }
    const base = options.url ?? globalThis.location?.origin;
    if (!base) throw new TypeError("Herald: `url` is required outside a browser page");
    const { http, ws } = endpoints(base);
    /** Base HTTP URL of the server (no trailing slash). @type {string} */
    this.httpUrl = http;
    /** Base WebSocket URL of the server (no trailing slash). @type {string} */
    this.wsUrl = ws;
    /** Acknowledge new messages automatically (may be changed at any time). @type {boolean} */
    this.autoAck = options.autoAck ?? true;
    /** @type {ReconnectOptions | null} */
    this._reconnect = options.reconnect === false ? null : { ...DEFAULT_RECONNECT, ...options.reconnect };
    this._heartbeat = options.heartbeat ?? 25_000;
    this._heartbeatTimeout = options.heartbeatTimeout ?? 10_000;
    this._connectTimeout = options.connectTimeout ?? 15_000;
    this._replayIdle = options.replayIdle ?? 300;
    this._authProbeFailures = Math.max(1, options.authProbeFailures ?? 1);
    this._token = options.token;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._EventSource = options.EventSource ?? globalThis.EventSource;
    this._fetch = options.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    const transport = options.transport ?? "auto";
    if (transport !== "auto" && transport !== "websocket" && transport !== "sse") {
      throw new TypeError('Herald: `transport` must be "auto", "websocket" or "sse"');
    }
    this._transportOption = transport;
    /** @type {"websocket" | "sse"} */
    this._transport = transport === "sse" || (transport === "auto" && typeof this._WebSocket !== "function") ? "sse" : "websocket";
    this._sseAfter = Math.max(1, options.sseAfter ?? 2);
    this._ackDelay = Math.max(0, options.ackDelay ?? 50);
    /** @type {EventSource | null} */
    this._es = null;
    /** The id of the last SSE event that had one (a message cursor), sent on a reopen. @type {string | null} */
    this._lastEventId = null;
    /** SSE receipts waiting for their batched REST call. */
    this._batch = { ack: /** @type {Set<string>} */ (new Set()), read: /** @type {Set<string>} */ (new Set()) };
    /** The inbox counts, kept current from the server's frames and live messages; null until known. @type {InboxCounts | null} */
    this.counts = null;
    /** @type {RecentIds<{acked: boolean, read: boolean}>} */
    this._seen = new RecentIds(options.dedupSize ?? 1000);
    /** Receipts waiting for a connection: id → "ack" | "read". @type {Map<string, "ack" | "read">} */
    this._outbox = new Map();
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    /** @type {HeraldState} */
    this._state = "idle";
    /** @type {WebSocket | null} */
    this._ws = null;
    this._generation = 0;
    this._stopped = true; // until connect()
    this._failures = 0; // consecutive attempts that ended before a welcome
    this._welcomed = false;
    this._replayCount = 0;
    this._replayLeft = null; // frames the replay still sends (welcome.pending)
    /** The latest `welcome` frame, or null before the first. @type {Welcome | null} */
    this.session = null;
    /** Counters since construction: connection attempts, messages emitted, duplicates dropped. */
    this.stats = { attempts: 0, messages: 0, duplicates: 0 };
    /** @type {Record<"retry" | "heartbeat" | "dead" | "connect" | "replay" | "batch", ReturnType<typeof setTimeout> | null>} */
    this._timers = { retry: null, heartbeat: null, dead: null, connect: null, replay: null, batch: null };
    this._onOnline = () => {
      if (this._state === "reconnecting") this._openNow();
    };
  }

  /** Connection state: `idle` (never connected), `connecting`, `replaying` (welcomed, replay
   * burst not over yet), `live`, `reconnecting` (waiting for the next attempt), `closed`
   * (after `close()` or a rejected token). @returns {HeraldState} */
  get state() {
    return this._state;
  }

  /** The transport in use (or tried next): `websocket` or `sse`. With `transport: "auto"`
   * it turns to `sse` when the WebSocket cannot get through, and stays so.
   * @returns {"websocket" | "sse"} */
  get transport() {
    return this._transport;
  }

  /**
   * Start connecting (no-op while already connecting or connected). Retries with backoff
   * until `close()` is called or the server rejects the token.
   * @returns {this}
   */
  connect() {
    if (this._state !== "idle" && this._state !== "closed") return this;
    if (this._transport === "websocket" && typeof this._WebSocket !== "function") {
      if (this._transportOption !== "auto") {
        throw new TypeError("Herald: no WebSocket implementation; pass `WebSocket` in the options");
      }
      this._transport = "sse";
    }
    if (this._transport === "sse" && typeof this._EventSource !== "function") {
      throw new TypeError("Herald: no EventSource implementation; pass `EventSource` (or `WebSocket`) in the options");
    }
    this._stopped = false;
    this._failures = 0;
    globalThis.addEventListener?.("online", this._onOnline);
    this._open();
    return this;
  }

  /**
   * Close the connection for good: no reconnect happens after this (call `connect()` to
   * start again). Emits `close` with `willReconnect: false` if a connection was active.
   * @param {number} [code=1000]
   * @param {string} [reason="client closed"]
   */
  close(code = 1000, reason = "client closed") {
    const previous = this._state;
    this._stopped = true;
    globalThis.removeEventListener?.("online", this._onOnline);
    const wasOpen = this._welcomed;
    this._welcomed = false;
    this._detach(code, reason);
    this._clearTimer("retry");
    if (this._timers.batch !== null) {
      // Acknowledgements over REST need no connection: send what is waiting now.
      this._clearTimer("batch");
      this._flushBatch();
    }
    this._setState("closed");
    if (previous !== "idle" && previous !== "closed") {
      this._emit("close", { code, reason, willReconnect: false, delay: null, wasOpen });
    }
  }

  /**
   * Acknowledge a message (its delivery becomes `delivered`). Sent now if connected, else
   * when the next connection is welcomed.
   * @param {string} id
   */
  ack(id) {
    const entry = this._entry(id);
    entry.acked = true;
    this._receipt(id, "ack");
  }

  /**
   * Mark a message read (its delivery becomes `read`; implies acknowledged). Sent now if
   * connected, else when the next connection is welcomed.
   * @param {string} id
   */
  read(id) {
    const entry = this._entry(id);
    entry.acked = true;
    entry.read = true;
    this._receipt(id, "read");
  }

  /**
   * Fetch this user's undelivered messages over HTTP (`POST /api/v1/inbox/collect`, which
   * marks them `delivered`) — for clients that cannot hold a socket, or to catch up.
   * New messages are emitted as `message` events (source `collect`) and returned; ids seen
   * before are dropped, as for the socket.
   * @returns {Promise<HeraldMessage[]>} the new messages, oldest first
   * @throws {HeraldError} kind `unauthorized` (401), `http` (other status), `network`
   */
  async collect() {
    if (!this._fetch) throw new HeraldError("network", "no fetch implementation; pass `fetch` in the options");
    /** @type {HeraldMessage[]} */
    const fresh = [];
    for (let call = 0; call < COLLECT_MAX_CALLS; call++) {
      const token = await this._resolveToken();
      let res;
      try {
        res = await this._fetch(`${this.httpUrl}/api/v1/inbox/collect`, {
          method: "POST",
          headers: { Authorization: `Bearer ${token}` },
        });
      } catch (err) {
        throw new HeraldError("network", `collect failed: ${errorText(err)}`, { cause: err });
      }
      const body = await res.json().catch(() => ({}));
      if (!res.ok) {
        const kind = res.status === 401 ? "unauthorized" : "http";
        const text = typeof body?.error === "string" ? body.error : res.statusText;
        throw new HeraldError(kind, `collect failed: ${res.status} ${text}`, { status: res.status });
      }
      const items = Array.isArray(body?.items) ? body.items : [];
      for (const item of items) {
        const message = this._incoming(item, "collect", false);
        if (message) fresh.push(message);
      }
      if (items.length < COLLECT_PAGE) break;
    }
    return fresh;
  }

  /**
   * Fetch the inbox counts (`GET /api/v1/inbox/counts`) and update `counts`.
   * @returns {Promise<InboxCounts>}
   * @throws {HeraldError} kind `unauthorized` (401), `http` (other status), `network`
   */
  async fetchCounts() {
    const body = await this._request("GET", "/api/v1/inbox/counts");
    const counts = readCounts(body);
    if (!counts) throw new HeraldError("protocol", "the server sent no counts");
    this._setCounts(counts);
    return { ...counts };
  }

  /**
   * One page of the inbox (`GET /api/v1/inbox`), newest first.
   * @param {InboxQuery} [query] e.g. `{status: "all", limit: 20}`; the next (older) page:
   *   `{...query, before: page.nextCursor}`
   * @returns {Promise<InboxPage>}
   * @throws {HeraldError} kind `unauthorized` (401), `http` (other status, e.g. 400 for a
   *   bad parameter, with the server's error text), `network`
   */
  async inbox(query = {}) {
    const params = new URLSearchParams();
    for (const key of ["status", "archived", "type", "before", "after", "limit", "page", "size"]) {
      const value = /** @type {Record<string, unknown>} */ (query)[key];
      if (value !== undefined && value !== null) params.set(key, String(value));
    }
    const qs = params.toString();
    const body = await this._request("GET", `/api/v1/inbox${qs ? `?${qs}` : ""}`);
    const items = Array.isArray(body?.items) ? body.items : [];
    return {
      items,
      page: Number(body?.page ?? 1),
      size: Number(body?.size ?? items.length),
      total: Number(body?.total ?? items.length),
      nextCursor: typeof body?.nextCursor === "string" ? body.nextCursor : null,
    };
  }

  /** Mark seen (the badge counts unseen entries). @param {InboxSelection} which @returns {Promise<InboxOpResult>} */
  markSeen(which) {
    return this._inboxOp("markSeen", which);
  }

  /** Mark read (implies seen; the delivery becomes `read`). @param {InboxSelection} which @returns {Promise<InboxOpResult>} */
  markRead(which) {
    return this._inboxOp("markRead", which);
  }

  /** Mark unread again (the delivery status stays). @param {InboxSelection} which @returns {Promise<InboxOpResult>} */
  markUnread(which) {
    return this._inboxOp("markUnread", which);
  }

  /** Archive: out of the default listing and the counts. @param {InboxSelection} which @returns {Promise<InboxOpResult>} */
  archive(which) {
    return this._inboxOp("archive", which);
  }

  /** Take out of the archive. @param {InboxSelection} which @returns {Promise<InboxOpResult>} */
  unarchive(which) {
    return this._inboxOp("unarchive", which);
  }

  /** Delete from this user's inbox for good (`POST /api/v1/inbox/delete`). @param {InboxSelection} which @returns {Promise<InboxOpResult>} */
  remove(which) {
    return this._inboxOp("remove", which);
  }

  /**
   * Listen to an event: `open` (Welcome), `message` (HeraldMessage), `close` (CloseInfo),
   * `replay-complete` ({count}), `statechange` ({state, previous}), `error` (HeraldError),
   * `counts` (InboxCounts), `state` (the server's state frame), `transport` ({transport, previous}).
   * @param {string} event
   * @param {Function} listener
   * @returns {() => void} a function that removes the listener
   */
  on(event, listener) {
    if (typeof listener !== "function") throw new TypeError("Herald.on: listener must be a function");
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  /**
   * Stop listening.
   * @param {string} event
   * @param {Function} listener
   */
  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  /**
   * Listen to the next occurrence of an event only.
   * @param {string} event
   * @param {Function} listener
   * @returns {() => void} a function that removes the listener
   */
  once(event, listener) {
    const off = this.on(event, (/** @type {unknown} */ value) => {
      off();
      listener(value);
    });
    return off;
  }

  // ---- internals -----------------------------------------------------------------------

  /** @param {string} id */
  _entry(id) {
    if (typeof id !== "string" || id === "") throw new TypeError("Herald: message id must be a non-empty string");
    let entry = this._seen.get(id);
    if (!entry) {
      entry = { acked: false, read: false };
      this._seen.set(id, entry);
    }
    return entry;
  }

  /**
   * An authenticated REST call with the user token; the parsed JSON answer (null if none).
   * @param {"GET" | "POST"} method @param {string} path @param {unknown} [body]
   */
  async _request(method, path, body) {
    if (!this._fetch) throw new HeraldError("network", "no fetch implementation; pass `fetch` in the options");
    const token = await this._resolveToken();
    /** @type {Record<string, string>} */
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await this._fetch(`${this.httpUrl}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new HeraldError("network", `${method} ${path.split("?")[0]} failed: ${errorText(err)}`, { cause: err });
    }
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      const kind = res.status === 401 ? "unauthorized" : "http";
      const text = typeof data?.error === "string" ? data.error : `${res.status} ${res.statusText}`.trim();
      const field = typeof data?.field === "string" ? data.field : undefined;
      throw new HeraldError(kind, text, { status: res.status, field });
    }
    return data;
  }

  /**
   * `POST /api/v1/inbox/{op}` for a selection (ids in chunks of 1000, or all).
   * @param {keyof typeof INBOX_OPS} name @param {InboxSelection | string} which
   * @returns {Promise<InboxOpResult>}
   */
  async _inboxOp(name, which) {
    const op = INBOX_OPS[name];
    if (typeof which === "string") which = [which];
    if (Array.isArray(which)) {
      if (!which.every((id) => typeof id === "string" && id !== "")) {
        throw new TypeError(`Herald.${name}: message ids must be non-empty strings`);
      }
      const ids = [...new Set(which)];
      let changed = 0;
      let counts = this.counts;
      for (let i = 0; i < ids.length; i += OP_MAX_IDS) {
        const result = await this._postOp(op, { ids: ids.slice(i, i + OP_MAX_IDS) });
        changed += result.changed;
        counts = result.counts ?? counts;
      }
      return { changed, counts: counts && { ...counts } };
    }
    if (which && typeof which === "object" && which.all === true) {
      /** @type {{all: true, before?: string}} */
      const body = { all: true };
      if (which.before !== undefined && which.before !== null) body.before = String(which.before);
      return this._postOp(op, body);
    }
    throw new TypeError(`Herald.${name}: pass an array of message ids or {all: true, before?}`);
  }

  /** @param {string} op @param {object} body @returns {Promise<InboxOpResult>} */
  async _postOp(op, body) {
    const answer = await this._request("POST", `/api/v1/inbox/${op}`, body);
    const counts = readCounts(answer?.counts);
    // While a session is welcomed, the `counts` frame that follows every change updates the
    // counts in order with live messages; this answer may be older than a message that
    // arrived meanwhile. Without a session, the answer is the best there is.
    if (counts && !this._welcomed) this._setCounts(counts);
    return { changed: Number(answer?.changed ?? 0), counts };
  }

  /** @param {InboxCounts} counts */
  _setCounts(counts) {
    const previous = this.counts;
    this.counts = { ...counts };
    if (previous && previous.unseen === counts.unseen && previous.unread === counts.unread && previous.total === counts.total) return;
    this._emit("counts", { ...counts });
  }

  /** @param {string} id @param {"ack" | "read"} type */
  _receipt(id, type) {
    if (this._transport === "sse") {
      // Over SSE receipts are REST calls, which need no session: batch them now.
      this._outbox.delete(id);
      this._queueReceipt(id, type);
      return;
    }
    if (this._welcomed && this._send({ type, id })) {
      this._outbox.delete(id);
      return;
    }
    if (this._outbox.get(id) !== "read") this._outbox.set(id, type);
    // Bounded like the de-dup memory: the server replays anything unacknowledged anyway.
    while (this._outbox.size > this._seen.capacity) {
      this._outbox.delete(/** @type {string} */ (this._outbox.keys().next().value));
    }
  }

  /** SSE: add a receipt to the batch sent after `ackDelay` ms. @param {string} id @param {"ack" | "read"} type */
  _queueReceipt(id, type) {
    if (type === "read") {
      this._batch.ack.delete(id);
      this._batch.read.add(id);
    } else if (!this._batch.read.has(id)) {
      this._batch.ack.add(id);
    }
    if (this._timers.batch === null) this._setTimer("batch", this._ackDelay, () => this._flushBatch());
  }

  /** Send the batched receipts: `POST /api/v1/inbox/read` and `/ack` with their ids. */
  _flushBatch() {
    for (const op of /** @type {const} */ (["read", "ack"])) {
      const ids = [...this._batch[op]];
      this._batch[op].clear();
      for (let i = 0; i < ids.length; i += OP_MAX_IDS) this._postReceipts(op, ids.slice(i, i + OP_MAX_IDS));
    }
  }

  /** @param {"ack" | "read"} op @param {string[]} ids */
  async _postReceipts(op, ids) {
    try {
      await this._postOp(op, { ids });
    } catch (err) {
      const status = err instanceof HeraldError ? err.status : undefined;
      if (status === 422 && ids.length > 1) {
        // One id the inbox no longer has (deleted meanwhile) refuses the whole batch: one by one.
        for (const id of ids) this._postReceipts(op, [id]);
      } else if (status === 422) {
        // Not in this inbox (any more): nothing to acknowledge.
      } else if (status === undefined || status >= 500 || status === 429 || status === 408) {
        // Not delivered: keep them for the next welcome (the server replays anything
        // unacknowledged too, and the duplicate repeats its receipt).
        for (const id of ids) if (this._outbox.get(id) !== "read") this._outbox.set(id, op);
      } else {
        this._emit("error", err);
      }
    }
  }

  async _resolveToken() {
    if (typeof this._token === "string") return this._token;
    let token;
    try {
      token = await this._token();
    } catch (err) {
      throw new HeraldError("token", `token function failed: ${errorText(err)}`, { cause: err });
    }
    if (typeof token !== "string" || token === "") throw new HeraldError("token", "token function returned no token");
    return token;
  }

  /** @param {HeraldState} state */
  _setState(state) {
    const previous = this._state;
    if (previous === state) return;
    this._state = state;
    this._emit("statechange", { state, previous });
  }

  /** @param {string} event @param {unknown} value */
  _emit(event, value) {
    const set = this._listeners.get(event);
    if (!set || set.size === 0) {
      if (event === "error") console.warn("herald:", value);
      return;
    }
    for (const listener of [...set]) {
      try {
        listener(value);
      } catch (err) {
        // Like EventTarget: report the listener's exception without stopping the client.
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }

  /** @param {keyof Herald["_timers"]} name */
  _clearTimer(name) {
    if (this._timers[name] !== null) {
      clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
  }

  /** @param {keyof Herald["_timers"]} name @param {number} ms @param {() => void} fn */
  _setTimer(name, ms, fn) {
    this._clearTimer(name);
    this._timers[name] = setTimeout(() => {
      this._timers[name] = null;
      fn();
    }, ms);
  }

  _openNow() {
    this._clearTimer("retry");
    this._open();
  }

  async _open() {
    const generation = ++this._generation;
    this._welcomed = false;
    this._setState("connecting");
    let token;
    try {
      token = await this._resolveToken();
    } catch (err) {
      if (generation !== this._generation || this._stopped) return;
      this._emit("error", err);
      this._ended(generation, 1006, "no token", false);
      return;
    }
    if (generation !== this._generation || this._stopped) return;
    if (this._transport === "sse") {
      this._openSse(generation, token);
      return;
    }
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new this._WebSocket(`${this.wsUrl}/websocket/${encodeURIComponent(token)}`);
    } catch (err) {
      this._emit("error", new HeraldError("network", `cannot open WebSocket: ${errorText(err)}`, { cause: err }));
      // A page that may not open WebSockets at all (a CSP, say) is what `auto` falls back for.
      this._ended(generation, 1006, "cannot open WebSocket", this._transportOption === "auto");
      return;
    }
    this._ws = ws;
    this.stats.attempts++;
    this._setTimer("connect", this._connectTimeout, () => this._drop(generation, 4001, "connect timeout"));
    let opened = false;
    ws.onopen = () => {
      if (generation !== this._generation) return;
      opened = true;
      this._armHeartbeat(generation);
    };
    ws.onmessage = (event) => {
      if (generation !== this._generation) return;
      this._armHeartbeat(generation);
      this._frame(event.data);
    };
    ws.onerror = () => {
      // Nothing useful is exposed here (not even the HTTP status of a failed upgrade). A
      // close event should follow, but some implementations (Node 20's) never send one for
      // a failed connection: treat an error before the open as the end of the attempt, and
      // give an open socket a moment for its close event.
      if (generation !== this._generation) return;
      if (!opened) {
        this._detach(1000, "connection failed");
        this._ended(this._generation, 1006, "connection failed", true);
      } else {
        this._setTimer("connect", 1000, () => this._drop(generation, 1006, "connection error"));
      }
    };
    ws.onclose = (event) => {
      if (generation !== this._generation) return;
      this._detach();
      this._ended(this._generation, event.code || 1006, event.reason || "", true);
    };
  }

  /**
   * Open the SSE stream `GET /events?token=…` (EventSource can send no header). EventSource
   * would reconnect by itself, but with the token it started with and without backoff, so
   * on any error this client closes it and reopens it itself: with backoff, a fresh token,
   * the token check, and the last event id as `lastEventId`.
   * @param {number} generation @param {string} token
   */
  _openSse(generation, token) {
    let url = `${this.httpUrl}/events?token=${encodeURIComponent(token)}`;
    if (this._lastEventId !== null) url += `&lastEventId=${encodeURIComponent(this._lastEventId)}`;
    /** @type {EventSource} */
    let es;
    try {
      es = new this._EventSource(url);
    } catch (err) {
      this._emit("error", new HeraldError("network", `cannot open EventSource: ${errorText(err)}`, { cause: err }));
      this._ended(generation, 1006, "cannot open EventSource", false);
      return;
    }
    this._es = es;
    this.stats.attempts++;
    this._setTimer("connect", this._connectTimeout, () => this._drop(generation, 4001, "connect timeout"));
    es.onmessage = (event) => {
      if (generation !== this._generation) return;
      // Only message events carry an id (their cursor); EventSource repeats the last one on
      // the others.
      const id = typeof event.lastEventId === "string" && event.lastEventId !== "" ? event.lastEventId : undefined;
      if (id !== undefined) this._lastEventId = id;
      this._frame(event.data, id);
    };
    es.onerror = () => {
      if (generation !== this._generation) return;
      this._detach(1000, "event stream failed");
      this._ended(this._generation, 1006, "event stream failed", true);
    };
  }

  /**
   * Forget the socket: its late events are ignored from now on. With a `code`, close it too.
   * @param {number} [code]
   * @param {string} [reason]
   */
  _detach(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._generation++;
    for (const t of /** @type {const} */ (["heartbeat", "dead", "connect", "replay"])) this._clearTimer(t);
    const es = this._es;
    this._es = null;
    if (es) {
      es.onopen = es.onmessage = es.onerror = null;
      es.close(); // always: an EventSource left open reconnects by itself
    }
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      if (code !== undefined && ws.readyState <= OPEN) {
        try {
          ws.close(code, reason);
        } catch {
          ws.close();
        }
      }
    }
  }

  /** Close a connection this client gave up on (heartbeat or connect timeout) and retry. */
  _drop(/** @type {number} */ generation, /** @type {number} */ code, /** @type {string} */ reason) {
    if (generation !== this._generation) return;
    this._detach(code, reason);
    this._ended(this._generation, code, reason, true);
  }

  /** @param {number} generation */
  _armHeartbeat(generation) {
    this._clearTimer("dead");
    if (!(this._heartbeat > 0)) return;
    this._setTimer("heartbeat", this._heartbeat, () => {
      if (generation !== this._generation) return;
      this._send({ type: "ping" });
      this._setTimer("dead", this._heartbeatTimeout, () => this._drop(generation, 4000, "heartbeat timeout"));
    });
  }

  /** @param {unknown} data @param {string} [eventId] SSE: the event's id, a message's cursor */
  _frame(data, eventId) {
    if (typeof data !== "string") return; // the server sends text frames only
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (err) {
      this._emit("error", new HeraldError("protocol", "unreadable frame from the server", { cause: err }));
      return;
    }
    switch (frame?.type) {
      case "welcome":
        this._welcome(frame);
        break;
      case "message":
        this._socketMessage(eventId !== undefined && !frame.cursor ? { ...frame, cursor: eventId } : frame);
        break;
      case "counts": {
        const counts = readCounts(frame);
        if (counts) this._setCounts(counts);
        break;
      }
      case "state":
        this._emit("state", frame);
        break;
      case "error":
        this._emit("error", new HeraldError("server", String(frame.error ?? "error frame")));
        break;
      default:
        break; // pong, and frame types this client does not know yet
    }
  }

  /** @param {Welcome} welcome */
  _welcome(welcome) {
    this._clearTimer("connect");
    this._welcomed = true;
    this._failures = 0;
    this._replayCount = 0;
    // The gap signal: exactly this many replayed frames follow (null: unknown, use the
    // idle timer). A message deleted during the replay is skipped, so the timer stays armed.
    this._replayLeft = typeof welcome.pending === "number" ? welcome.pending : null;
    this.session = welcome;
    this._setState("replaying");
    for (const [id, type] of [...this._outbox]) {
      if (this._transport === "sse") {
        this._queueReceipt(id, type);
      } else if (!this._send({ type, id })) {
        break;
      }
      this._outbox.delete(id);
    }
    const counts = readCounts(welcome.counts);
    if (counts) this._setCounts(counts);
    this._setTimer("replay", this._replayIdle, () => this._replayDone());
    this._emit("open", welcome);
    if (this._replayLeft === 0) this._replayDone();
  }

  _replayDone() {
    if (this._state !== "replaying") return;
    this._clearTimer("replay");
    this._setState("live");
    this._emit("replay-complete", { count: this._replayCount });
  }

  /** @param {any} frame */
  _socketMessage(frame) {
    let replayed = false;
    if (this._state === "replaying") {
      if (this._replayLeft !== null) {
        // The server said how many frames the replay sends.
        replayed = true;
        this._replayLeft--;
      } else {
        // Older servers: the replay is everything created before this session began; a
        // newer message is live.
        const created = Date.parse(frame.createdAt);
        const began = Date.parse(this.session?.serverTime ?? "");
        if (created > began) {
          this._replayDone();
        } else {
          replayed = true;
        }
      }
    }
    const message = this._incoming(frame, this._transport === "sse" ? "sse" : "socket", replayed);
    if (replayed) {
      if (message) this._replayCount++;
      if (this._replayLeft === 0) {
        this._replayDone();
      } else {
        this._setTimer("replay", this._replayIdle, () => this._replayDone());
      }
    }
  }

  /**
   * De-duplicate, emit and (when pushed) acknowledge one message; count a live one.
   * @param {any} raw @param {"socket" | "sse" | "collect"} source @param {boolean} replayed
   * @returns {HeraldMessage | null} the message, or null for a duplicate or a malformed one
   */
  _incoming(raw, source, replayed) {
    const id = raw?.id;
    if (typeof id !== "string" || id === "") {
      this._emit("error", new HeraldError("protocol", "message without an id"));
      return null;
    }
    const pushed = source !== "collect";
    const known = this._seen.get(id);
    if (known) {
      this.stats.duplicates++;
      // Sent again because our receipt was lost (or not sent yet): repeat it.
      if (pushed) {
        if (known.read) this._receipt(id, "read");
        else if (known.acked || this.autoAck) {
          known.acked = true;
          this._receipt(id, "ack");
        }
      }
      return null;
    }
    const entry = { acked: source === "collect", read: false };
    this._seen.set(id, entry);
    /** @type {HeraldMessage} */
    const message = {
      id,
      title: String(raw.title ?? ""),
      content: String(raw.content ?? ""),
      msgType: Number(raw.msgType ?? raw.type ?? 0),
      sender: String(raw.sender ?? ""),
      createdAt: String(raw.createdAt ?? ""),
      cursor: typeof raw.cursor === "string" && raw.cursor !== "" ? raw.cursor : null,
      source,
      replayed,
      raw,
    };
    this.stats.messages++;
    // A live message is new in the inbox; a replayed one is in the welcome's counts already.
    if (pushed && !replayed && this.counts) {
      const { unseen, unread, total } = this.counts;
      this._setCounts({ unseen: unseen + 1, unread: unread + 1, total: total + 1 });
    }
    this._emit("message", message);
    if (pushed && this.autoAck && !entry.acked) this.ack(id);
    return message;
  }

  /** @param {object} frame @returns {boolean} whether it was handed to an open socket */
  _send(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== OPEN) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * A connection attempt ended; decide whether and when to try again.
   * @param {number} generation @param {number} code @param {string} reason @param {boolean} mayProbe
   */
  async _ended(generation, code, reason, mayProbe) {
    const wasOpen = this._welcomed;
    this._welcomed = false;
    if (this._stopped) return;
    if (!wasOpen) this._failures++;
    // `auto`: a WebSocket that keeps failing before its welcome while the HTTP API takes
    // the token is blocked on the way (a proxy, a firewall): switch to SSE.
    const mayFallBack =
      this._transportOption === "auto" &&
      this._transport === "websocket" &&
      typeof this._EventSource === "function" &&
      !wasOpen &&
      this._failures >= this._sseAfter;
    // Browsers hide the status of a failed upgrade (and EventSource that of a failed
    // stream), so a rejected token looks like a server that is down. Ask the HTTP API with
    // the same token to tell them apart.
    if (mayProbe && !wasOpen && (this._failures >= this._authProbeFailures || mayFallBack)) {
      const verdict = await this._probeToken();
      if (this._stopped || generation !== this._generation) return;
      if (verdict === "rejected") {
        this._stopped = true;
        globalThis.removeEventListener?.("online", this._onOnline);
        this._setState("closed");
        this._emit("error", new HeraldError("unauthorized", "the server rejected the token (401)", { status: 401 }));
        this._emit("close", { code, reason: reason || "unauthorized", willReconnect: false, delay: null, wasOpen });
        return;
      }
      if (verdict === "ok" && mayFallBack) {
        this._transport = "sse";
        this._failures = 0;
        this._setState("reconnecting");
        this._setTimer("retry", 0, () => this._open());
        this._emit("close", { code, reason, willReconnect: true, delay: 0, wasOpen });
        this._emit("transport", { transport: "sse", previous: "websocket" });
        return;
      }
    }
    if (this._stopped || generation !== this._generation) return;
    if (!this._reconnect) {
      this._stopped = true;
      globalThis.removeEventListener?.("online", this._onOnline);
      this._setState("closed");
      this._emit("close", { code, reason, willReconnect: false, delay: null, wasOpen });
      return;
    }
    const delay = backoffDelay(wasOpen ? 0 : this._failures - 1, this._reconnect);
    this._setState("reconnecting");
    this._setTimer("retry", delay, () => this._open());
    this._emit("close", { code, reason, willReconnect: true, delay, wasOpen });
  }

  /**
   * Ask the HTTP API whether it takes the token (`GET /api/v1/inbox/counts`).
   * @returns {Promise<"rejected" | "ok" | "unknown">} `rejected` only for a 401; `ok` for a
   *   2xx (whose counts are kept); `unknown` for anything else or no answer
   */
  async _probeToken() {
    if (!this._fetch) return "unknown";
    try {
      const token = await this._resolveToken();
      const headers = { Authorization: `Bearer ${token}` };
      const res = await this._fetch(`${this.httpUrl}/api/v1/inbox/counts`, { headers });
      if (res.status === 401) return "rejected";
      if (res.status === 404) {
        // A server from before the notification center: its inbox still checks the token.
        const old = await this._fetch(`${this.httpUrl}/api/v1/inbox?size=1`, { headers });
        return old.status === 401 ? "rejected" : "unknown";
      }
      if (!res.ok) return "unknown";
      const counts = readCounts(await res.json().catch(() => null));
      if (counts) this._setCounts(counts);
      return "ok";
    } catch {
      return "unknown"; // server unreachable (or cross-origin without CORS): keep backing off
    }
  }
}

/**
 * `{unseen, unread, total}` from a counts object or frame, or null if it is not one.
 * @param {any} value @returns {InboxCounts | null}
 */
function readCounts(value) {
  if (!value || typeof value !== "object") return null;
  const { unseen, unread, total } = value;
  if (![unseen, unread, total].every((n) => typeof n === "number" && Number.isFinite(n) && n >= 0)) return null;
  return { unseen, unread, total };
}

/**
 * Base HTTP and WebSocket URLs for a server URL given as http(s) or ws(s).
 * @param {string} base
 * @returns {{http: string, ws: string}}
 */
function endpoints(base) {
  const url = new URL(base, globalThis.location?.href);
  let path = url.pathname.replace(/\/+$/, "");
  if (path.endsWith("/websocket")) path = path.slice(0, -"/websocket".length);
  const secure = url.protocol === "https:" || url.protocol === "wss:";
  const host = url.host;
  return {
    http: `${secure ? "https" : "http"}://${host}${path}`,
    ws: `${secure ? "wss" : "ws"}://${host}${path}`,
  };
}

/** @param {unknown} err @returns {string} */
function errorText(err) {
  return err instanceof Error ? err.message : String(err);
}
