// Test helpers: run a real herald binary on a free 127.0.0.1 port, mint user tokens, call
// the API, and wait for conditions with a deadline (never a fixed sleep).
//
// Environment:
//   HERALD_BIN       the herald binary (default target/debug/herald of this repository)
//   TEST_TMP         a directory for data dirs and pid files (default: a new temp dir);
//                    tests/browser/run.sh sets it and kills what the pid files name on exit.

import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const HERALD_BIN = path.resolve(REPO, process.env.HERALD_BIN || "target/debug/herald");
const TMP = process.env.TEST_TMP || mkdtempSync(path.join(os.tmpdir(), "herald-test-"));

/** Every server this process started, killed on exit whatever happens. */
const running = new Set();
process.on("exit", () => {
  for (const child of running) {
    try {
      child.kill("SIGKILL");
    } catch {
      /* already gone */
    }
  }
});

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = /** @type {net.AddressInfo} */ (srv.address());
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Poll `check` until it returns a truthy value (returned) or `timeout` ms pass (throws).
 * @template T
 * @param {() => T | Promise<T>} check
 * @param {{timeout?: number, interval?: number, message?: string | (() => string)}} [opts]
 * @returns {Promise<T>}
 */
export async function waitFor(check, { timeout = 10_000, interval = 25, message = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
      last = value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const what = typeof message === "function" ? message() : message;
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

function b64url(value) {
  return Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
}

/** A herald process with its own data directory, API key and token secret. */
export class HeraldServer {
  /**
   * Start a server on a free port (or `port`) with a new data dir (or `dir`).
   * @param {{port?: number, dir?: string, env?: Record<string, string>}} [opts]
   */
  static async start(opts = {}) {
    const server = new HeraldServer(opts);
    server.port = opts.port ?? (await freePort());
    await server.start();
    return server;
  }

  constructor({ dir, env = {} } = {}) {
    this.dir = dir ?? mkdtempSync(path.join(TMP, "server-"));
    mkdirSync(this.dir, { recursive: true });
    this.apiKey = `test-key-${randomBytes(8).toString("hex")}`;
    this.jwtSecret = `test-secret-${randomBytes(16).toString("hex")}`;
    this.extraEnv = env;
    this.port = 0;
    /** @type {import("node:child_process").ChildProcess | null} */
    this.child = null;
    this.starts = 0;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  get logFile() {
    return path.join(this.dir, `herald-${this.starts}.log`);
  }

  /** Spawn the binary and wait until /readyz answers. */
  async start() {
    if (!existsSync(HERALD_BIN)) throw new Error(`herald binary not found at ${HERALD_BIN} (set HERALD_BIN)`);
    this.starts++;
    // Herald refuses unknown HERALD_* variables, so pass only the ones meant for it.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HERALD_")));
    Object.assign(env, {
      HERALD_API_KEY: this.apiKey,
      HERALD_JWT_SECRET: this.jwtSecret,
      HERALD_LOG__FILTER: "warn",
      HERALD_NODE_NAME: "test-node",
      ...this.extraEnv,
    });
    const log = openSync(this.logFile, "w");
    const child = spawn(
      HERALD_BIN,
      ["serve", "--bind", `127.0.0.1:${this.port}`, "--database-url", `sqlite://${path.join(this.dir, "herald.db")}`],
      { cwd: this.dir, env, stdio: ["ignore", log, log] },
    );
    closeSync(log);
    this.child = child;
    running.add(child);
    const pidFile = path.join(TMP, `herald-${child.pid}.pid`);
    writeFileSync(pidFile, String(child.pid));
    child.once("exit", () => {
      running.delete(child);
      rmSync(pidFile, { force: true });
    });
    let exited = null;
    child.once("exit", (code, signal) => (exited = { code, signal }));
    await waitFor(
      async () => {
        if (exited) throw new Error(`herald exited early (${JSON.stringify(exited)}):\n${this.log()}`);
        const res = await fetch(`${this.url}/readyz`).catch(() => null);
        return res?.ok;
      },
      { timeout: 20_000, interval: 30, message: () => `herald to be ready on ${this.url}\n${this.log()}` },
    );
  }

  /** The current log, for failure messages. */
  log() {
    try {
      return readFileSync(this.logFile, "utf8").slice(-4000);
    } catch {
      return "";
    }
  }

  /** SIGTERM and wait for a clean exit (SIGKILL after 20 s). */
  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    const result = await exited;
    clearTimeout(timer);
    this.child = null;
    if (result.code !== 0) throw new Error(`herald did not exit cleanly: ${JSON.stringify(result)}\n${this.log()}`);
  }

  /** Stop, then start again on the same port with the same data dir. */
  async restart() {
    await this.stop();
    await this.start();
  }

  /**
   * A user token (HS256 JWT with this server's secret).
   * @param {{user: string, name?: string, device?: string, ttl?: number, secret?: string}} claims
   */
  token({ user, name, device, ttl = 3600, secret = this.jwtSecret }) {
    const now = Math.floor(Date.now() / 1000);
    const payload = { sub: String(user), exp: now + ttl, iat: now };
    if (name) payload.name = name;
    if (device) payload.device = device;
    const head = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(payload)}`;
    const sig = createHmac("sha256", secret).update(head).digest("base64url");
    return `${head}.${sig}`;
  }

  /**
   * Call the management API. @returns {Promise<{status: number, body: any}>}
   * @param {string} method @param {string} route @param {unknown} [body]
   */
  async api(method, route, body) {
    const res = await fetch(`${this.url}${route}`, {
      method,
      headers: { Authorization: `Bearer ${this.apiKey}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      /* not JSON */
    }
    return { status: res.status, body: parsed };
  }

  /** Send a message; returns its id. @param {object} body */
  async send(body) {
    const { status, body: answer } = await this.api("POST", "/api/v1/messages", body);
    if (status !== 202) throw new Error(`send failed: ${status} ${JSON.stringify(answer)}`);
    return answer.id;
  }

  /** Status of `receiver`'s delivery of message `id` on `channel`. */
  async deliveryStatus(id, receiver, channel = "websocket") {
    const { status, body } = await this.api("GET", `/api/v1/messages/${id}`);
    if (status !== 200) return `http ${status}`;
    return body.deliveries.find((d) => d.receiver === String(receiver) && d.channel === channel)?.status;
  }

  /** Wait until that delivery has `want` status; returns the message. */
  async waitForStatus(id, receiver, want, timeout = 10_000) {
    let seen;
    await waitFor(async () => (seen = await this.deliveryStatus(id, receiver)) === want, {
      timeout,
      message: () => `delivery of ${id} to ${receiver} to be ${want} (is ${seen})`,
    });
  }
}
