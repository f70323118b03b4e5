// herald.js — the browser (and Node ≥ 22) client for Herald. Dependency-free ES module.
// Served by Herald at /herald.js; documented in clients/js/README.md; types in herald.d.ts.
//
//   import { Herald } from "/herald.js";
//   const herald = new Herald({ token });
//   herald.on("message", (m) => console.log(m.title, m.content));
//   herald.connect();

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
 *   before the `welcome`, check the token over HTTP (`GET /api/v1/inbox?size=1`); a `401`
 *   stops reconnecting
 * @property {typeof WebSocket} [WebSocket] WebSocket constructor (default `globalThis.WebSocket`)
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
 * @property {"socket" | "collect"} source how it arrived
 * @property {boolean} replayed arrived during the replay burst after a (re)connect (heuristic)
 * @property {object} raw the frame or inbox item as received
 */

/**
 * @typedef {object} Welcome
 * @property {"welcome"} type
 * @property {string} sessionId
 * @property {string} userId
 * @property {string} serverTime RFC 3339
 * @property {number} [pending] how many message frames the replay that follows sends
 *   (servers before this field: absent, and the client falls back to `replayIdle`)
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
   * @param {{status?: number, cause?: unknown}} [details]
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
 * A Herald connection for one user: receives pushed messages over a WebSocket, acknowledges
 * them, reconnects with backoff, and de-duplicates what the server sends again.
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
    this._fetch = options.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
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
    /** @type {Record<"retry" | "heartbeat" | "dead" | "connect" | "replay", ReturnType<typeof setTimeout> | null>} */
    this._timers = { retry: null, heartbeat: null, dead: null, connect: null, replay: null };
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

  /**
   * Start connecting (no-op while already connecting or connected). Retries with backoff
   * until `close()` is called or the server rejects the token.
   * @returns {this}
   */
  connect() {
    if (this._state !== "idle" && this._state !== "closed") return this;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("Herald: no WebSocket implementation; pass `WebSocket` in the options");
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
    this._detach(code, reason);
    this._clearTimer("retry");
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
   * Listen to an event: `open` (Welcome), `message` (HeraldMessage), `close` (CloseInfo),
   * `replay-complete` ({count}), `statechange` ({state, previous}), `error` (HeraldError).
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

  /** @param {string} id @param {"ack" | "read"} type */
  _receipt(id, type) {
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
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new this._WebSocket(`${this.wsUrl}/websocket/${encodeURIComponent(token)}`);
    } catch (err) {
      this._emit("error", new HeraldError("network", `cannot open WebSocket: ${errorText(err)}`, { cause: err }));
      this._ended(generation, 1006, "cannot open WebSocket", false);
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
   * Forget the socket: its late events are ignored from now on. With a `code`, close it too.
   * @param {number} [code]
   * @param {string} [reason]
   */
  _detach(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._generation++;
    for (const t of /** @type {const} */ (["heartbeat", "dead", "connect", "replay"])) this._clearTimer(t);
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

  /** @param {unknown} data */
  _frame(data) {
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
        this._socketMessage(frame);
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
      if (!this._send({ type, id })) break;
      this._outbox.delete(id);
    }
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
    const message = this._incoming(frame, "socket", replayed);
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
   * De-duplicate, emit and (for the socket) acknowledge one message.
   * @param {any} raw @param {"socket" | "collect"} source @param {boolean} replayed
   * @returns {HeraldMessage | null} the message, or null for a duplicate or a malformed one
   */
  _incoming(raw, source, replayed) {
    const id = raw?.id;
    if (typeof id !== "string" || id === "") {
      this._emit("error", new HeraldError("protocol", "message without an id"));
      return null;
    }
    const known = this._seen.get(id);
    if (known) {
      this.stats.duplicates++;
      // Sent again because our receipt was lost (or not sent yet): repeat it.
      if (source === "socket") {
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
      source,
      replayed,
      raw,
    };
    this.stats.messages++;
    this._emit("message", message);
    if (source === "socket" && this.autoAck && !entry.acked) this.ack(id);
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
    // Browsers hide the status of a failed upgrade, so a rejected token looks like a server
    // that is down. Ask the HTTP API with the same token to tell them apart.
    if (mayProbe && !wasOpen && this._failures >= this._authProbeFailures && (await this._tokenRejected())) {
      if (this._stopped || generation !== this._generation) return;
      this._stopped = true;
      globalThis.removeEventListener?.("online", this._onOnline);
      this._setState("closed");
      this._emit("error", new HeraldError("unauthorized", "the server rejected the token (401)", { status: 401 }));
      this._emit("close", { code, reason: reason || "unauthorized", willReconnect: false, delay: null, wasOpen });
      return;
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

  /** @returns {Promise<boolean>} true only when the server answered 401 to this token */
  async _tokenRejected() {
    if (!this._fetch) return false;
    try {
      const token = await this._resolveToken();
      const res = await this._fetch(`${this.httpUrl}/api/v1/inbox?size=1`, {
        headers: { Authorization: `Bearer ${token}` },
      });
      return res.status === 401;
    } catch {
      return false; // server unreachable (or cross-origin without CORS): keep backing off
    }
  }
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
