// Unit tests of herald.js's notification-center side (counts, the inbox REST calls, the
// SSE transport and the fallback to it) with fake WebSocket, EventSource and fetch: no
// server needed.
//   node --test clients/js/test/inbox.test.mjs

import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { Herald, HeraldError } from "../herald.js";

const URL_ = "http://herald.test";
const FAST = { minDelay: 5, maxDelay: 20, factor: 2, jitter: 0 };

/** Poll `check` until truthy, or fail after `timeout` ms (never a fixed sleep). */
async function waitFor(check, { timeout = 2000, message = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof message === "function" ? message() : message}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** A fake WebSocket class; the test drives it (open, frames in, failure). */
function fakeWebSockets({ failAtOnce = false } = {}) {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
      if (failAtOnce) setTimeout(() => this.fail(), 0);
    }
    send(data) {
      this.sent.push(JSON.parse(data));
    }
    close() {
      this.readyState = 3;
    }
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    frame(f) {
      this.onmessage?.({ data: JSON.stringify(f) });
    }
    fail() {
      this.readyState = 3;
      this.onerror?.({});
      this.onclose?.({ code: 1006, reason: "" });
    }
  }
  return { WebSocket: FakeWebSocket, sockets };
}

/** A fake EventSource class: `open()`, `event(frame, id?)`, `fail()`; records `close()`. */
function fakeEventSources() {
  const sources = [];
  class FakeEventSource {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.closed = false;
      this.lastEventId = "";
      sources.push(this);
    }
    close() {
      this.readyState = 2;
      this.closed = true;
    }
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    event(frame, id) {
      if (id !== undefined) this.lastEventId = id; // EventSource keeps the last id for id-less events
      this.onmessage?.({ data: JSON.stringify(frame), lastEventId: this.lastEventId });
    }
    fail() {
      this.readyState = 0; // a real one would now reconnect by itself
      this.onerror?.({});
    }
  }
  return { EventSource: FakeEventSource, sources };
}

/**
 * A fake fetch that records every call and answers with `route(call)` → {status, body} or
 * throws (a network error).
 */
function fakeFetch(route = () => ({ status: 404, body: { error: "no route" } })) {
  const calls = [];
  async function fetch(url, init = {}) {
    const call = {
      url: String(url),
      path: new URL(url).pathname,
      query: Object.fromEntries(new URL(url).searchParams),
      method: init.method ?? "GET",
      headers: init.headers ?? {},
      body: init.body === undefined ? undefined : JSON.parse(init.body),
    };
    calls.push(call);
    const { status = 200, body = null } = await route(call);
    return new Response(body === null ? null : JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
  }
  return { fetch, calls };
}

function record(herald) {
  const events = { open: [], message: [], close: [], counts: [], state: [], error: [], transport: [], "replay-complete": [] };
  for (const name of Object.keys(events)) herald.on(name, (v) => events[name].push(v));
  return events;
}

const clients = [];
function client(options) {
  const herald = new Herald({ url: URL_, token: "tok", reconnect: FAST, ...options });
  clients.push(herald);
  return { herald, events: record(herald) };
}

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

let seq = 0;
function msg(id, extra = {}) {
  return { type: "message", id, title: `t ${id}`, content: "c", msgType: 1, sender: "s", createdAt: new Date(Date.now() - 60_000).toISOString(), ...extra, seq: ++seq };
}
function welcome(extra = {}) {
  return { type: "welcome", sessionId: "sess", userId: "u1", serverTime: new Date().toISOString(), pending: 0, ...extra };
}
const COUNTS = (unseen, unread, total) => ({ unseen, unread, total });

describe("counts", () => {
  test("from the welcome, counts frames and live messages; replayed and duplicate messages are not counted", async () => {
    const ws = fakeWebSockets();
    const { herald, events } = client({ WebSocket: ws.WebSocket, replayIdle: 60_000 });
    assert.equal(herald.counts, null);
    herald.connect();
    const socket = await waitFor(() => ws.sockets[0]);
    socket.open();
    socket.frame(welcome({ pending: 1, counts: COUNTS(3, 4, 5) }));
    assert.deepEqual(herald.counts, COUNTS(3, 4, 5));
    assert.deepEqual(events.counts, [COUNTS(3, 4, 5)]);
    assert.equal(herald.state, "replaying");

    socket.frame(msg("m1")); // the replay the welcome announced: already counted
    assert.equal(herald.state, "live");
    assert.deepEqual(herald.counts, COUNTS(3, 4, 5));

    let countsSeenByListener = null;
    herald.once("message", () => (countsSeenByListener = { ...herald.counts }));
    socket.frame(msg("m2", { cursor: "12" })); // live: +1 each
    assert.deepEqual(herald.counts, COUNTS(4, 5, 6));
    assert.deepEqual(countsSeenByListener, COUNTS(4, 5, 6), "message listeners see the new counts");
    assert.equal(events.message[1].cursor, "12");
    socket.frame(msg("m2")); // a duplicate: neither emitted nor counted
    assert.equal(events.message.length, 2);
    assert.deepEqual(herald.counts, COUNTS(4, 5, 6));

    const state = { type: "state", ids: ["m2"], seen: true, read: true };
    socket.frame(state);
    assert.deepEqual(events.state, [state]);
    socket.frame({ type: "counts", unseen: 3, unread: 4, total: 6 });
    assert.deepEqual(herald.counts, COUNTS(3, 4, 6));
    assert.deepEqual(events.counts.at(-1), COUNTS(3, 4, 6));
    socket.frame({ type: "counts", unseen: 3, unread: 4, total: 6 }); // unchanged: no event
    assert.equal(events.counts.length, 3);
    assert.deepEqual(socket.sent.filter((f) => f.type === "ack").map((f) => f.id), ["m1", "m2", "m2"]);
  });

  test("without counts from the server (an older one) live messages leave counts null", async () => {
    const ws = fakeWebSockets();
    const { herald, events } = client({ WebSocket: ws.WebSocket });
    herald.connect();
    const socket = await waitFor(() => ws.sockets[0]);
    socket.open();
    socket.frame(welcome());
    socket.frame(msg("x1", { createdAt: new Date(Date.now() + 1000).toISOString() }));
    assert.equal(events.message.length, 1);
    assert.equal(herald.counts, null);
    assert.deepEqual(events.counts, []);
  });
});

describe("inbox REST", () => {
  const answer = { changed: 2, counts: COUNTS(1, 2, 9) };

  test("each op POSTs /api/v1/inbox/{op} with the token and ids or {all, before}, and resolves {changed, counts}", async () => {
    const f = fakeFetch(() => ({ body: answer }));
    const { herald, events } = client({ fetch: f.fetch });
    assert.deepEqual(await herald.markRead(["a", "b"]), answer);
    const call = f.calls[0];
    assert.deepEqual([call.method, call.url, call.headers.Authorization, call.headers["Content-Type"]], ["POST", `${URL_}/api/v1/inbox/read`, "Bearer tok", "application/json"]);
    assert.deepEqual(call.body, { ids: ["a", "b"] });
    // Not connected: the answer's counts are the ones to show.
    assert.deepEqual(herald.counts, COUNTS(1, 2, 9));
    assert.deepEqual(events.counts, [COUNTS(1, 2, 9)]);

    await herald.markRead({ all: true, before: "17" });
    await herald.markSeen({ all: true });
    await herald.markSeen({ all: true, before: null });
    await herald.markUnread(["a"]);
    await herald.archive(["a"]);
    await herald.unarchive(["a"]);
    await herald.remove({ all: true, before: "3" });
    assert.deepEqual(
      f.calls.slice(1).map((c) => [c.path, c.body]),
      [
        ["/api/v1/inbox/read", { all: true, before: "17" }],
        ["/api/v1/inbox/seen", { all: true }],
        ["/api/v1/inbox/seen", { all: true }],
        ["/api/v1/inbox/unread", { ids: ["a"] }],
        ["/api/v1/inbox/archive", { ids: ["a"] }],
        ["/api/v1/inbox/unarchive", { ids: ["a"] }],
        ["/api/v1/inbox/delete", { all: true, before: "3" }],
      ],
    );
    assert.ok(f.calls.every((c) => c.method === "POST"));
  });

  test("more than 1000 ids go in chunks; changed adds up", async () => {
    const f = fakeFetch((call) => ({ body: { changed: call.body.ids.length, counts: COUNTS(0, 0, 0) } }));
    const { herald } = client({ fetch: f.fetch });
    const ids = Array.from({ length: 2500 }, (_, i) => `id${i}`);
    const result = await herald.markSeen(ids);
    assert.equal(result.changed, 2500);
    assert.deepEqual(f.calls.map((c) => c.body.ids.length), [1000, 1000, 500]);
    assert.deepEqual(await herald.markSeen([]), { changed: 0, counts: COUNTS(0, 0, 0) }, "nothing to do: no request");
    assert.equal(f.calls.length, 3);
    await assert.rejects(herald.markRead({ all: false }), TypeError);
    await assert.rejects(herald.markRead([""]), TypeError);
  });

  test("errors are HeraldErrors with the server's error text, status and field", async () => {
    let reply = { status: 422, body: { error: "ids: not in this inbox: zz", field: "ids" } };
    const f = fakeFetch(() => {
      if (reply === "throw") throw new TypeError("fetch failed");
      return reply;
    });
    const { herald } = client({ fetch: f.fetch });
    await assert.rejects(herald.markRead(["zz"]), (err) => {
      assert.ok(err instanceof HeraldError);
      assert.deepEqual([err.kind, err.status, err.field, err.message], ["http", 422, "ids", "ids: not in this inbox: zz"]);
      return true;
    });
    reply = { status: 401, body: { error: "invalid token" } };
    await assert.rejects(herald.archive(["a"]), (err) => err.kind === "unauthorized" && err.status === 401 && err.message === "invalid token");
    reply = { status: 500, body: null };
    await assert.rejects(herald.inbox(), (err) => err.kind === "http" && err.status === 500);
    reply = "throw";
    await assert.rejects(herald.fetchCounts(), (err) => err.kind === "network" && /fetch failed/.test(err.message));
  });

  test("inbox() sends the query and returns the page; fetchCounts() updates counts; a token function is asked each time", async () => {
    const f = fakeFetch((call) =>
      call.path === "/api/v1/inbox/counts"
        ? { body: COUNTS(5, 6, 7) }
        : { body: { items: [{ id: "a", cursor: "9" }], page: 1, size: 20, total: 30, nextCursor: "9" } },
    );
    let n = 0;
    const { herald, events } = client({ fetch: f.fetch, token: () => `tok${++n}` });
    const page = await herald.inbox({ status: "all", limit: 20, before: "12", archived: false, type: 3, after: undefined });
    assert.deepEqual(page, { items: [{ id: "a", cursor: "9" }], page: 1, size: 20, total: 30, nextCursor: "9" });
    assert.equal(f.calls[0].method, "GET");
    assert.deepEqual(f.calls[0].query, { status: "all", archived: "false", type: "3", before: "12", limit: "20" });
    assert.deepEqual(await herald.fetchCounts(), COUNTS(5, 6, 7));
    assert.deepEqual(herald.counts, COUNTS(5, 6, 7));
    assert.deepEqual(events.counts, [COUNTS(5, 6, 7)]);
    assert.deepEqual(f.calls.map((c) => c.headers.Authorization), ["Bearer tok1", "Bearer tok2"]);
  });

  test("while connected, an op's answer does not overwrite the counts: the counts frame does, in order with messages", async () => {
    const ws = fakeWebSockets();
    const f = fakeFetch(() => ({ body: { changed: 1, counts: COUNTS(0, 0, 1) } }));
    const { herald } = client({ WebSocket: ws.WebSocket, fetch: f.fetch });
    herald.connect();
    const socket = await waitFor(() => ws.sockets[0]);
    socket.open();
    socket.frame(welcome({ counts: COUNTS(1, 1, 1) }));
    const pending = herald.markRead(["a"]);
    socket.frame({ type: "state", ids: ["a"], seen: true, read: true });
    socket.frame({ type: "counts", ...COUNTS(0, 0, 1) });
    socket.frame(msg("new", { createdAt: new Date(Date.now() + 1000).toISOString() })); // live, after the op
    assert.deepEqual(herald.counts, COUNTS(1, 1, 2));
    assert.deepEqual((await pending).counts, COUNTS(0, 0, 1), "the answer is returned as is");
    assert.deepEqual(herald.counts, COUNTS(1, 1, 2), "and does not undo the live message");
  });
});

describe("transport", () => {
  test('auto: a WebSocket that fails before its welcome twice while the token check is 200 → SSE, acks batched over REST', async () => {
    const ws = fakeWebSockets({ failAtOnce: true });
    const es = fakeEventSources();
    const f = fakeFetch((call) => (call.path === "/api/v1/inbox/counts" ? { body: COUNTS(2, 2, 2) } : { body: { changed: 2, counts: COUNTS(2, 2, 4) } }));
    const { herald, events } = client({ WebSocket: ws.WebSocket, EventSource: es.EventSource, fetch: f.fetch, token: "t/k+n" });
    assert.equal(herald.transport, "websocket");
    herald.connect();
    const source = await waitFor(() => es.sources[0], { message: "an EventSource" });
    assert.equal(ws.sockets.length, 2, "two WebSocket attempts first");
    assert.equal(herald.transport, "sse");
    assert.deepEqual(events.transport, [{ transport: "sse", previous: "websocket" }]);
    assert.equal(source.url, `${URL_}/events?token=${encodeURIComponent("t/k+n")}`);
    assert.ok(f.calls.filter((c) => c.path === "/api/v1/inbox/counts").length >= 1, "the token was checked");
    assert.ok(events.error.every((e) => e.kind !== "unauthorized"));

    source.open();
    source.event(welcome({ counts: COUNTS(2, 2, 2) }));
    assert.equal(events.open.length, 1);
    assert.equal(herald.state, "live");
    source.event(msg("a", { createdAt: new Date(Date.now() + 1000).toISOString() }), "31");
    source.event(msg("b", { createdAt: new Date(Date.now() + 1000).toISOString() }), "32");
    source.event(msg("a"), "31"); // a duplicate
    assert.deepEqual(events.message.map((m) => [m.id, m.source, m.cursor, m.replayed]), [["a", "sse", "31", false], ["b", "sse", "32", false]]);
    assert.deepEqual(herald.counts, COUNTS(4, 4, 4));
    const acks = await waitFor(() => {
      const posts = f.calls.filter((c) => c.path === "/api/v1/inbox/ack");
      return posts.length ? posts : null;
    }, { message: "the ack POST" });
    assert.equal(acks.length, 1, "one batched call");
    assert.deepEqual(acks[0].body, { ids: ["a", "b"] });
    assert.equal(acks[0].method, "POST");
    assert.equal(acks[0].headers.Authorization, "Bearer t/k+n");
    source.event({ type: "counts", ...COUNTS(0, 1, 4) });
    assert.deepEqual(herald.counts, COUNTS(0, 1, 4));
    assert.equal(ws.sockets.length, 2, "no more WebSocket attempts");
  });

  test("auto: no fallback while the token check gets no answer (server down); a 401 stops", async () => {
    const ws = fakeWebSockets({ failAtOnce: true });
    const es = fakeEventSources();
    let mode = "down";
    const f = fakeFetch(() => {
      if (mode === "down") throw new TypeError("fetch failed");
      return { status: 401, body: { error: "invalid token" } };
    });
    const { herald, events } = client({ WebSocket: ws.WebSocket, EventSource: es.EventSource, fetch: f.fetch });
    herald.connect();
    await waitFor(() => ws.sockets.length >= 4, { message: "4 WebSocket attempts" });
    assert.equal(es.sources.length, 0);
    assert.equal(herald.transport, "websocket");
    mode = "401";
    await waitFor(() => herald.state === "closed", { message: "closed on 401" });
    assert.equal(events.error.at(-1).kind, "unauthorized");
    assert.equal(es.sources.length, 0);
    assert.equal(herald._timers.retry, null);
  });

  test('transport "sse": an error closes the stream and reopens it with a fresh token and lastEventId; read() and acks go over REST; close() ends it', async () => {
    const es = fakeEventSources();
    const f = fakeFetch(() => ({ body: { changed: 1, counts: COUNTS(0, 0, 1) } }));
    let n = 0;
    const { herald, events } = client({ transport: "sse", EventSource: es.EventSource, fetch: f.fetch, token: async () => `tok${++n}` });
    assert.equal(herald.transport, "sse");
    herald.connect();
    const first = await waitFor(() => es.sources[0]);
    assert.equal(first.url, `${URL_}/events?token=tok1`);
    first.open();
    first.event(welcome({ pending: 1, counts: COUNTS(1, 1, 1) }));
    first.event(msg("r1"), "41"); // the replay
    assert.equal(herald.state, "live");
    assert.deepEqual(herald.counts, COUNTS(1, 1, 1));
    herald.read("r1");
    await waitFor(() => f.calls.some((c) => c.path === "/api/v1/inbox/read"), { message: "the read POST" });
    assert.deepEqual(f.calls.find((c) => c.path === "/api/v1/inbox/read").body, { ids: ["r1"] });
    assert.ok(!f.calls.some((c) => c.path === "/api/v1/inbox/ack" && c.body.ids.includes("r1")), "read supersedes the ack in the same batch");

    first.event({ type: "counts", ...COUNTS(0, 0, 1) }); // no id: lastEventId stays 41
    first.fail();
    assert.equal(first.closed, true, "closed, so it does not reconnect by itself with the old token");
    assert.equal(events.close[0].willReconnect, true);
    const second = await waitFor(() => es.sources[1], { message: "a new EventSource" });
    assert.equal(second.url, `${URL_}/events?token=tok3&lastEventId=41`); // tok2 went to the read
    second.open();
    second.event(welcome({ resumedFrom: "41" }));
    assert.equal(events.open.length, 2);
    herald.close();
    assert.equal(second.closed, true);
    assert.equal(herald.state, "closed");
    assert.equal(herald._timers.retry, null);
    assert.deepEqual(events.close.map((c) => c.willReconnect), [true, false]);
  });

  test("SSE: a batch refused with 422 (an id deleted meanwhile) is sent again id by id; unreachable → kept for the next welcome", async () => {
    const es = fakeEventSources();
    let down = false;
    const f = fakeFetch((call) => {
      if (down) throw new TypeError("fetch failed");
      if (call.body.ids.includes("gone")) return { status: 422, body: { error: "not in this inbox: gone", field: "ids" } };
      return { body: { changed: call.body.ids.length, counts: COUNTS(0, 0, 0) } };
    });
    const { herald, events } = client({ transport: "sse", EventSource: es.EventSource, fetch: f.fetch, autoAck: false });
    herald.connect();
    const source = await waitFor(() => es.sources[0]);
    source.open();
    source.event(welcome());
    herald.ack("ok1");
    herald.ack("gone");
    herald.ack("ok2");
    await waitFor(() => f.calls.length === 4, { message: "1 batch + 3 single acks" });
    assert.deepEqual(f.calls.map((c) => c.body.ids), [["ok1", "gone", "ok2"], ["ok1"], ["gone"], ["ok2"]]);
    assert.deepEqual(events.error, [], "a 422 for one id is no error to report");

    down = true;
    herald.ack("later");
    await waitFor(() => herald._outbox.get("later") === "ack", { message: "kept in the outbox" });
    down = false;
    source.fail();
    const next = await waitFor(() => es.sources[1]);
    next.open();
    next.event(welcome());
    const laterCalls = () => f.calls.filter((c) => c.path === "/api/v1/inbox/ack" && c.body.ids.join() === "later");
    await waitFor(() => laterCalls().length === 2, { message: "the kept ack sent again after the welcome" });
    assert.equal(herald._outbox.size, 0);
  });

  test("auto without any WebSocket uses SSE at once; a bad transport is refused", async () => {
    const es = fakeEventSources();
    const saved = globalThis.WebSocket;
    delete globalThis.WebSocket;
    try {
      const { herald } = client({ EventSource: es.EventSource, fetch: fakeFetch().fetch });
      assert.equal(herald.transport, "sse");
      herald.connect();
      await waitFor(() => es.sources.length === 1);
    } finally {
      if (saved) globalThis.WebSocket = saved;
    }
    assert.throws(() => new Herald({ url: URL_, token: "t", transport: "carrier-pigeon" }), TypeError);
    const noEs = new Herald({ url: URL_, token: "t", transport: "sse", EventSource: undefined });
    if (typeof globalThis.EventSource !== "function") assert.throws(() => noEs.connect(), /EventSource/);
  });
});
