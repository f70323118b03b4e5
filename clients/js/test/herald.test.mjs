// Unit tests of herald.js against a real herald server (node's test runner).
//   HERALD_BIN=target/debug/herald node --test clients/js/test/
// Node 20 needs --experimental-websocket (tests/browser/run.sh passes it); Node 22+ has
// WebSocket built in.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Herald, HeraldError, RecentIds, backoffDelay, DEFAULT_RECONNECT } from "../herald.js";
import { HeraldServer, waitFor } from "../../../tests/browser/lib/server.mjs";

if (typeof globalThis.WebSocket !== "function") {
  throw new Error("no global WebSocket: run node with --experimental-websocket (Node 20) or use Node 22+");
}

/** Fast policy for tests: retries within ~0.1–0.8 s. */
const FAST = { minDelay: 100, maxDelay: 800, factor: 2, jitter: 0.2 };

/**
 * A WebSocket class that records its instances and the frames the client sends, and can
 * drop chosen frames in either direction.
 * @param {{dropOut?: (f: any) => boolean, dropIn?: (f: any) => boolean}} [filters]
 */
function recordingSocket({ dropOut = () => false, dropIn = () => false } = {}) {
  const sockets = [];
  const sent = [];
  class RecordingSocket extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
    send(data) {
      const frame = JSON.parse(data);
      sent.push(frame);
      if (!dropOut(frame)) super.send(data);
    }
    set onmessage(fn) {
      super.onmessage = fn && ((event) => (dropIn(JSON.parse(event.data)) ? undefined : fn(event)));
    }
    get onmessage() {
      return super.onmessage;
    }
  }
  return { WebSocket: RecordingSocket, sockets, sent };
}

/** Collect a client's events into arrays. */
function record(herald) {
  const events = { open: [], message: [], close: [], "replay-complete": [], error: [], statechange: [] };
  for (const name of Object.keys(events)) herald.on(name, (v) => events[name].push(v));
  return events;
}

let server;
let nextUser = 1000;
const clients = [];

/** A new client for a fresh user id. */
function client(options = {}) {
  const user = String(nextUser++);
  const herald = new Herald({
    url: server.url,
    token: server.token({ user, name: `user${user}`, device: "node-test" }),
    reconnect: FAST,
    ...options,
  });
  clients.push(herald);
  return { herald, user, events: record(herald) };
}

before(async () => {
  server = await HeraldServer.start();
});

after(async () => {
  for (const c of clients) c.close();
  await server?.stop();
});

describe("pure logic", () => {
  test("backoffDelay grows by the factor, is capped at maxDelay and jittered within ±jitter", () => {
    const opts = { minDelay: 100, maxDelay: 1000, factor: 2, jitter: 0.5 };
    const mid = () => 0.5; // no jitter
    assert.deepEqual([0, 1, 2, 3, 4, 5].map((n) => backoffDelay(n, opts, mid)), [100, 200, 400, 800, 1000, 1000]);
    assert.equal(backoffDelay(1, opts, () => 0), 100); // 200 − 50 %
    assert.equal(backoffDelay(1, opts, () => 0.999999), 300); // 200 + 50 %
    assert.equal(backoffDelay(10, opts, () => 0.999999), 1000); // never above maxDelay
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(3, DEFAULT_RECONNECT);
      assert.ok(d >= 4000 * 0.7 - 1 && d <= 4000 * 1.3 + 1, `delay ${d}`);
    }
  });

  test("RecentIds forgets the least recently used id first", () => {
    const ids = new RecentIds(3);
    ids.set("a", 1).set("b", 2).set("c", 3);
    assert.equal(ids.get("a"), 1); // a is now the most recent
    ids.set("d", 4); // evicts b
    assert.equal(ids.has("b"), false);
    assert.deepEqual(["a", "c", "d"].map((k) => ids.has(k)), [true, true, true]);
    assert.equal(ids.size, 3);
  });

  test("constructor validates its options and derives ws/http URLs", () => {
    assert.throws(() => new Herald({ url: "http://x" }), TypeError);
    assert.throws(() => new Herald({ token: "t" }), /url/); // no location in Node
    const h = new Herald({ url: "https://h.example/base/", token: "t" });
    assert.equal(h.wsUrl, "wss://h.example/base");
    assert.equal(h.httpUrl, "https://h.example/base");
    assert.equal(new Herald({ url: "ws://h:1/websocket", token: "t" }).httpUrl, "http://h:1");
    assert.equal(h.state, "idle");
  });
});

describe("against a real server", () => {
  test("connects, receives a live message, auto-acks it: the API shows delivered", async () => {
    const { herald, user, events } = client();
    herald.connect();
    await waitFor(() => events["replay-complete"].length === 1, { message: "replay-complete" });
    assert.equal(events.open[0].userId, user);
    assert.equal(events["replay-complete"][0].count, 0);
    assert.equal(herald.state, "live");
    const id = await server.send({ title: "hello", content: '{"n":1}', type: 3, receivers: [user] });
    await waitFor(() => events.message.length === 1, { message: "the message" });
    const m = events.message[0];
    assert.deepEqual([m.id, m.title, m.content, m.msgType, m.source, m.replayed], [id, "hello", '{"n":1}', 3, "socket", false]);
    await server.waitForStatus(id, user, "delivered");
    herald.read(id);
    await server.waitForStatus(id, user, "read");
  });

  test("replays undelivered messages oldest first, then emits replay-complete", async () => {
    const { herald, user, events } = client();
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push(await server.send({ title: `offline ${i}`, content: "x", receivers: [user] }));
    herald.connect();
    await waitFor(() => events["replay-complete"].length === 1, { message: "replay-complete" });
    assert.deepEqual(events.message.map((m) => m.id), ids);
    assert.ok(events.message.every((m) => m.replayed));
    assert.equal(events["replay-complete"][0].count, 3);
    for (const id of ids) await server.waitForStatus(id, user, "delivered");
  });

  test("replay-complete comes right after the replay the welcome announced (no idle wait)", async () => {
    // An idle timer far beyond the test's deadline: only the welcome's count can end the replay.
    const { herald, user, events } = client({ replayIdle: 600_000 });
    const ids = [];
    for (let i = 0; i < 2; i++) ids.push(await server.send({ title: `gap ${i}`, content: "x", receivers: [user] }));
    herald.connect();
    await waitFor(() => events["replay-complete"].length === 1, { message: "replay-complete from the count" });
    assert.equal(events.open[0].pending, 2);
    assert.equal(events["replay-complete"][0].count, 2);
    assert.deepEqual(events.message.map((m) => m.id), ids);
    const live = await server.send({ title: "live", content: "x", receivers: [user] });
    await waitFor(() => events.message.length === 3, { message: "the live message" });
    assert.deepEqual([events.message[2].id, events.message[2].replayed], [live, false]);
  });

  test("de-duplicates a message replayed after a reconnect (manual ack)", async () => {
    const rec = recordingSocket();
    const { herald, user, events } = client({ autoAck: false, WebSocket: rec.WebSocket });
    herald.connect();
    await waitFor(() => herald.state === "live", { message: "live" });
    const id = await server.send({ title: "once", content: "x", receivers: [user] });
    await waitFor(() => events.message.length === 1, { message: "the message" });
    await server.waitForStatus(id, user, "sent"); // not acknowledged
    // Drop the connection from the client side: the client reconnects by itself and the
    // server replays the unacknowledged message.
    rec.sockets[0].close();
    await waitFor(() => events.open.length === 2 && herald.stats.duplicates === 1, {
      message: () => `reconnect + duplicate (opens ${events.open.length}, dups ${herald.stats.duplicates})`,
    });
    assert.equal(events.close[0].willReconnect, true);
    assert.equal(events.close[0].wasOpen, true);
    assert.equal(events.message.length, 1, "the replayed copy is not emitted again");
    assert.ok(!rec.sent.some((f) => f.type === "ack"), "manual mode sends no ack by itself");
    herald.ack(id);
    await server.waitForStatus(id, user, "delivered");
  });

  test("a lost ack: the replayed duplicate is not emitted but acknowledged again", async () => {
    let dropAcks = true;
    const rec = recordingSocket({ dropOut: (f) => f.type === "ack" && dropAcks });
    const { herald, user, events } = client({ WebSocket: rec.WebSocket });
    herald.connect();
    await waitFor(() => herald.state === "live", { message: "live" });
    const id = await server.send({ title: "ack lost", content: "x", receivers: [user] });
    await waitFor(() => rec.sent.some((f) => f.type === "ack" && f.id === id), { message: "the (dropped) ack" });
    await server.waitForStatus(id, user, "sent");
    dropAcks = false;
    rec.sockets[0].close();
    await server.waitForStatus(id, user, "delivered");
    assert.equal(events.message.length, 1);
    assert.equal(herald.stats.duplicates, 1);
  });

  test("reconnects by itself after a server restart and receives a message sent meanwhile, once", async () => {
    const { herald, user, events } = client();
    herald.connect();
    await waitFor(() => herald.state === "live", { message: "live" });
    const first = await server.send({ title: "before", content: "x", receivers: [user] });
    await server.waitForStatus(first, user, "delivered");
    await server.stop();
    await waitFor(() => events.close.length >= 1, { message: "close on shutdown" });
    assert.equal(events.close[0].code, 1001);
    assert.equal(events.close[0].willReconnect, true);
    await server.start();
    const second = await server.send({ title: "meanwhile", content: "x", receivers: [user] });
    await server.waitForStatus(second, user, "delivered", 15_000);
    await waitFor(() => herald.state === "live", { message: "live again" });
    assert.deepEqual(events.message.map((m) => m.id), [first, second]);
    assert.ok(events.open.length >= 2);
    assert.ok(events.error.every((e) => e.kind !== "unauthorized"));
  });

  test("receipts given while disconnected are sent on the next connection", async () => {
    const { herald, user, events } = client({ autoAck: false });
    herald.connect();
    await waitFor(() => herald.state === "live", { message: "live" });
    const id = await server.send({ title: "read me later", content: "x", receivers: [user] });
    await waitFor(() => events.message.length === 1, { message: "the message" });
    await server.stop();
    await waitFor(() => herald.state === "reconnecting" || herald.state === "connecting", { message: "disconnected" });
    herald.read(id); // queued
    await server.start();
    await server.waitForStatus(id, user, "read", 15_000);
    assert.equal(events.message.length, 1);
  });

  test("heartbeat: pings when the server is silent and reconnects when nothing answers", async () => {
    let swallowPongs = false;
    const rec = recordingSocket({ dropIn: (f) => f.type === "pong" && swallowPongs });
    const { herald, events } = client({ WebSocket: rec.WebSocket, heartbeat: 100, heartbeatTimeout: 150 });
    herald.connect();
    // Answered pings keep the connection.
    await waitFor(() => rec.sent.filter((f) => f.type === "ping").length >= 3, { message: "3 pings" });
    assert.equal(events.close.length, 0);
    swallowPongs = true;
    await waitFor(() => events.close.length === 1, { message: "heartbeat close" });
    assert.deepEqual([events.close[0].code, events.close[0].reason, events.close[0].willReconnect], [4000, "heartbeat timeout", true]);
    swallowPongs = false;
    await waitFor(() => events.open.length === 2, { message: "reconnected" });
    assert.equal(rec.sockets.length, 2);
  });

  test("close() ends the session for good: no reconnect is scheduled", async () => {
    const { herald, user, events } = client();
    herald.connect();
    await waitFor(() => herald.state === "live", { message: "live" });
    const online = async () => (await server.api("GET", "/api/v1/clients")).body.some((c) => c.userId === user);
    await waitFor(online, { message: "session listed online" });
    herald.close();
    assert.equal(herald.state, "closed");
    assert.deepEqual(events.close.map((c) => c.willReconnect), [false]);
    assert.equal(herald._timers.retry, null);
    await waitFor(async () => !(await online()), { message: "session gone from the clients list" });
    assert.equal(herald.state, "closed");
    assert.equal(herald.stats.attempts, 1);
  });

  test("close() while waiting to reconnect cancels the retry", async () => {
    const { herald, events } = client({ url: "http://127.0.0.1:9", reconnect: { minDelay: 5000 } });
    herald.connect();
    await waitFor(() => herald.state === "reconnecting", { message: "reconnecting" });
    assert.equal(events.close[0].willReconnect, true);
    herald.close();
    assert.equal(herald.state, "closed");
    assert.equal(herald._timers.retry, null);
    assert.equal(herald.stats.attempts, 1);
  });

  test("a rejected token (401) stops reconnecting", async () => {
    const token = server.token({ user: "x", secret: "not-the-server-secret" });
    const herald = new Herald({ url: server.url, token, reconnect: FAST });
    clients.push(herald);
    const events = record(herald);
    herald.connect();
    await waitFor(() => herald.state === "closed", { message: "closed" });
    assert.equal(events.error[0].kind, "unauthorized");
    assert.ok(events.error[0] instanceof HeraldError);
    assert.deepEqual(events.close.map((c) => c.willReconnect), [false]);
    assert.equal(herald.stats.attempts, 1);
    assert.equal(events.open.length, 0);
  });

  test("collect() fetches undelivered messages over HTTP, marks them delivered, and de-duplicates", async () => {
    const { herald, user, events } = client({ autoAck: false });
    const a = await server.send({ title: "a", content: "1", type: 2, receivers: [user] });
    const b = await server.send({ title: "b", content: "2", receivers: [user] });
    // The socket receives both (unacknowledged), so collect() returns them again: dropped.
    herald.connect();
    await waitFor(() => events.message.length === 2, { message: "2 messages over the socket" });
    const c = await server.send({ title: "c", content: "3", receivers: [user] });
    await waitFor(() => events.message.length === 3, { message: "the third" });
    herald.close();
    const d = await server.send({ title: "d", content: "4", receivers: [user] });
    const got = await herald.collect();
    assert.deepEqual(got.map((m) => [m.id, m.source]), [[d, "collect"]]);
    assert.deepEqual(events.message.map((m) => m.id), [a, b, c, d]);
    assert.equal(events.message[0].msgType, 2);
    for (const id of [a, b, c, d]) await server.waitForStatus(id, user, "delivered");
    assert.deepEqual(await herald.collect(), []);
  });

  test("collect() with a rejected token throws an unauthorized HeraldError", async () => {
    const herald = new Herald({ url: server.url, token: server.token({ user: "y", secret: "wrong" }) });
    await assert.rejects(herald.collect(), (err) => err instanceof HeraldError && err.kind === "unauthorized" && err.status === 401);
  });

  test("a token function is called for every attempt", async () => {
    const user = String(nextUser++);
    let calls = 0;
    const herald = new Herald({
      url: server.url,
      reconnect: FAST,
      token: async () => {
        calls++;
        return server.token({ user });
      },
    });
    clients.push(herald);
    const events = record(herald);
    herald.connect();
    await waitFor(() => herald.state === "live", { message: "live" });
    const rec = herald._ws;
    rec.close();
    await waitFor(() => events.open.length === 2, { message: "second open" });
    assert.ok(calls >= 2, `token function called ${calls} times`);
  });
});
