// Headless-Chromium tests of the dashboard's Webhooks panel (/admin) against a real herald
// binary, a local receiver (answers 200) and a port nobody listens on. Its own server (not
// e2e.test.mjs's): fast retries, a 2 s `disable_after` and a `[[webhooks]]` endpoint in its
// herald.toml. Run by tests/browser/run.sh:
//   HERALD_BIN=target/debug/herald node --test tests/browser/webhooks.test.mjs
// Writes docs/screenshots/admin-webhooks.png.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { after, before, test } from "node:test";

import { chromium } from "playwright-core";

import { HeraldServer, REPO, freePort, waitFor } from "./lib/server.mjs";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = path.join(REPO, "docs/screenshots");
const VIEWPORT = { width: 1366, height: 900 };
const CONFIG_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/** @type {HeraldServer} */ let server;
/** @type {import("playwright-core").Browser} */ let browser;
/** @type {import("playwright-core").Page} */ let admin;
/** @type {http.Server} */ let receiver;
let receiverUrl = "";
let closedUrl = "";
/** The secret `orders` was created with. */
let ordersSecret = "";

/** Every request the receiver got: path, the Standard Webhooks headers, the raw and parsed body. */
const hits = [];

// Uncaught exceptions, console errors and requests to other origins fail the last test.
const problems = [];

async function newPage(name, viewport = VIEWPORT) {
  const context = await browser.newContext({ viewport, colorScheme: "light" });
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  page.on("pageerror", (err) => problems.push(`${name}: uncaught ${err.stack ?? err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`${name}: console.error ${msg.text()}`);
  });
  page.on("request", (r) => {
    if (!r.url().startsWith(`${server.url}/`)) problems.push(`${name}: a request to ${r.url()}`);
  });
  return page;
}

async function logIn(page) {
  await page.goto(`${server.url}/admin`);
  await page.getByLabel("API key").fill(server.apiKey);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.locator("#app").waitFor({ state: "visible", timeout: 5000 });
}

const row = (id) => admin.locator(`#webhooks-body tr.wh-row[data-id="${id}"]`);
const attemptRows = (id) => admin.locator(`#wha-${id} tr[data-event]`);

async function endpoint(id) {
  const { status, body } = await server.api("GET", `/api/v1/webhooks/${id}`);
  assert.equal(status, 200, JSON.stringify(body));
  return body;
}

async function attempts(id) {
  const { status, body } = await server.api("GET", `/api/v1/webhooks/${id}/attempts?limit=100`);
  assert.equal(status, 200, JSON.stringify(body));
  return body.items;
}

async function create(body) {
  const { status, body: created } = await server.api("POST", "/api/v1/webhooks", body);
  assert.equal(status, 201, JSON.stringify(created));
  return created;
}

/** Does one of the `v1,<base64>` signatures in the header verify with `secret`? */
function signedWith(hit, secret) {
  const key = Buffer.from(secret.slice("whsec_".length), "base64");
  const want = createHmac("sha256", key).update(`${hit.id}.${hit.timestamp}.${hit.raw}`).digest("base64");
  return hit.signature.split(" ").some((s) => s === `v1,${want}`);
}

before(async () => {
  receiver = http.createServer((req, res) => {
    let raw = "";
    req.setEncoding("utf8");
    req.on("data", (chunk) => (raw += chunk));
    req.on("end", () => {
      let body = null;
      try {
        body = JSON.parse(raw);
      } catch {
        /* recorded as sent */
      }
      hits.push({
        path: req.url,
        id: req.headers["webhook-id"],
        timestamp: req.headers["webhook-timestamp"],
        signature: String(req.headers["webhook-signature"] ?? ""),
        raw,
        body,
      });
      res.writeHead(200, { "content-type": "text/plain" }).end("thanks");
    });
  });
  await new Promise((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  receiverUrl = `http://127.0.0.1:${receiver.address().port}`;
  closedUrl = `http://127.0.0.1:${await freePort()}/hook`; // nobody listens there

  // Fast retries, and an endpoint whose every attempt failed for 2 s is disabled.
  server = new HeraldServer();
  writeFileSync(
    path.join(server.dir, "herald.toml"),
    `[dispatch.webhooks]
retry_base = "100ms"
retry_max = "400ms"
poll_interval = "100ms"
timeout = "5s"
disable_after = "2s"

[[webhooks]]
id = "ops-audit"
url = "${receiverUrl}/config"
events = ["message.accepted"]
secret = "${CONFIG_SECRET}"
description = "kept in herald.toml"
`,
  );
  server.port = await freePort();
  await server.start();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  await server?.stop();
  receiver?.closeAllConnections();
  await new Promise((resolve) => (receiver ? receiver.close(resolve) : resolve()));
});

test("webhooks: endpoints that answer and one nobody listens on get the events of a message", async () => {
  ({ secret: ordersSecret } = await create({ id: "orders", url: `${receiverUrl}/orders`, events: ["*"], description: "order service <b>&amp;</b>" }));
  await create({ id: "broken", url: closedUrl, events: ["message.accepted", "delivery.failed"], description: "nobody listens here" });
  const id = await server.send({ receivers: ["7"], title: "Invoice ready", content: "x" });
  await waitFor(() => hits.some((h) => h.path === "/orders" && h.body?.data?.messageId === id), { message: "the event at /orders" });
  await waitFor(() => hits.some((h) => h.path === "/config" && h.body?.data?.messageId === id), { message: "the event at /config" });
  // The closed port: attempts fail to connect until the endpoint is disabled for it.
  await waitFor(async () => (await attempts("broken")).filter((a) => /connection failed/.test(a.error ?? "")).length >= 2, {
    timeout: 15_000,
    message: "failed attempts at the closed port",
  });
  let broken;
  await waitFor(async () => (broken = await endpoint("broken")).enabled === false, {
    timeout: 20_000,
    message: () => `broken disabled for failing (is ${JSON.stringify(broken)})`,
  });
  assert.match(broken.disabledReason, /every attempt failed/);
  assert.ok(broken.failingSince, "failingSince kept");
});

test("admin: the Webhooks panel lists each endpoint with URL, events, state, backlog; the disabled one in red with its reason", async () => {
  admin = await newPage("admin");
  await logIn(admin);
  await admin.locator("#webhooks-count").filter({ hasText: "(3)" }).waitFor({ timeout: 10_000 });

  const orders = row("orders");
  assert.equal(await orders.getAttribute("data-state"), "enabled");
  assert.match(await orders.textContent(), new RegExp(`${receiverUrl}/orders`));
  assert.equal(await orders.locator(".wh-events").textContent(), "all events");
  // Text from the API stays text.
  assert.equal(await orders.locator(".wh-desc").textContent(), "order service <b>&amp;</b>");
  assert.equal(await orders.locator(".wh-desc b").count(), 0);
  await orders.locator('.badge[data-state="enabled"]').waitFor();
  assert.ok(await orders.getByRole("button", { name: "Rotate the secret of orders", exact: true }).isVisible());
  assert.ok(await orders.getByRole("button", { name: "Delete orders", exact: true }).isVisible());

  const broken = row("broken");
  const api = await endpoint("broken");
  assert.equal(await broken.getAttribute("data-state"), "disabled");
  const badge = broken.locator('.badge[data-state="disabled"]');
  assert.equal(await badge.textContent(), "disabled");
  const colors = await badge.evaluate((el) => [getComputedStyle(el).color, getComputedStyle(el).backgroundColor]);
  assert.deepEqual(colors, ["rgb(180, 35, 24)", "rgb(253, 231, 229)"], "a red badge");
  assert.equal(await broken.locator(".wh-reason").textContent(), api.disabledReason);
  assert.match(api.disabledReason, /connection failed/);
  assert.match(await broken.locator(".wh-state").textContent(), /failing since/);
  assert.deepEqual(await broken.locator(".wh-events li").allTextContents(), ["message.accepted", "delivery.failed"]);
  const [pending, failed] = await broken.locator("td.num").allTextContents();
  assert.deepEqual([pending, failed], [String(api.pending), String(api.failed)]);
  assert.ok(api.pending + api.failed >= 1, JSON.stringify(api));
  assert.ok(await broken.getByRole("button", { name: "Enable broken", exact: true }).isVisible());

  // From herald.toml: enabling and disabling only.
  const config = row("ops-audit");
  assert.equal(await config.getAttribute("data-source"), "config");
  await config.locator(".badge").filter({ hasText: "herald.toml" }).waitFor();
  assert.ok(await config.getByRole("button", { name: "Disable ops-audit", exact: true }).isVisible());
  assert.equal(await config.getByRole("button", { name: /Delete|Rotate/ }).count(), 0);
});

test("admin: attempts show the closed port's connection failures and the receiver's 200s; Redeliver sends an event again", async () => {
  await row("broken").getByRole("button", { name: "Show attempts of broken" }).click();
  await attemptRows("broken").first().waitFor({ timeout: 5000 });
  const fromApi = await attempts("broken");
  const shown = await attemptRows("broken").count();
  assert.equal(shown, Math.min(20, fromApi.length));
  for (const text of await attemptRows("broken").locator(".err-text").allTextContents()) assert.match(text, /^connection failed/);
  assert.equal(await attemptRows("broken").locator(".err-text").count(), shown, "every attempt shows its error");
  const first = attemptRows("broken").first();
  assert.equal(await first.getAttribute("data-event"), fromApi[0].event);
  assert.equal(await first.getAttribute("data-state"), fromApi[0].eventState);
  assert.match(await first.textContent(), /message\.accepted/);
  assert.match(await first.textContent(), /\d+ ms/);
  await first.locator(`.badge[data-status="${fromApi[0].eventState}"]`).waitFor();

  await row("orders").getByRole("button", { name: "Show attempts of orders" }).click();
  const ok = attemptRows("orders").first();
  await ok.waitFor({ timeout: 5000 });
  assert.equal(await ok.getAttribute("data-state"), "delivered");
  assert.equal(await ok.locator(".wh-result .badge").textContent(), "HTTP 200");
  assert.equal(await ok.locator(".wh-response").textContent(), "thanks");

  const event = await ok.getAttribute("data-event");
  const before = hits.filter((h) => h.id === event).length;
  assert.equal(before, 1);
  await ok.getByRole("button", { name: `Redeliver ${event}` }).click();
  await admin.locator("#webhooks-notice").filter({ hasText: `${event} queued again for orders` }).waitFor({ timeout: 5000 });
  await waitFor(() => hits.filter((h) => h.id === event).length === 2, { message: `${event} delivered again` });
  // The new attempt shows up (the panel refreshes every 5 s).
  await admin.waitForFunction(
    (ev) => document.querySelectorAll(`#wha-orders tr[data-event="${ev}"]`).length >= 2,
    event,
    { timeout: 10_000 },
  );
  await row("orders").getByRole("button", { name: "Hide attempts of orders" }).click();
  await attemptRows("orders").first().waitFor({ state: "detached" });
});

test("admin: disabling through the panel asks for a reason and shows it; the API agrees; Enable turns it back on", async () => {
  const orders = row("orders");
  await orders.getByRole("button", { name: "Disable orders", exact: true }).click();
  const reason = orders.getByLabel("Reason");
  await reason.waitFor();
  assert.equal(await reason.evaluate((el) => el === document.activeElement), true, "the reason field has the focus");
  await reason.fill("receiver moving to the new cluster");
  await orders.getByRole("button", { name: "Disable orders now" }).click();
  await orders.locator('.badge[data-state="disabled"]').waitFor({ timeout: 5000 });
  assert.equal(await orders.locator(".wh-reason").textContent(), "receiver moving to the new cluster");
  assert.equal(await orders.getAttribute("data-state"), "disabled");
  let api = await endpoint("orders");
  assert.equal(api.enabled, false);
  assert.equal(api.disabledReason, "receiver moving to the new cluster");
  // It stays so after the panel's next refresh (rendered once the round after it starts).
  const listed = (r) => new URL(r.url()).pathname === "/api/v1/webhooks" && r.method() === "GET";
  await admin.waitForRequest(listed, { timeout: 10_000 });
  await admin.waitForRequest(listed, { timeout: 10_000 });
  assert.equal(await row("orders").getAttribute("data-state"), "disabled");

  // The keyboard: Enter on the focused Enable button.
  await orders.getByRole("button", { name: "Enable orders", exact: true }).focus();
  await admin.keyboard.press("Enter");
  await orders.locator('.badge[data-state="enabled"]').waitFor({ timeout: 5000 });
  assert.equal(await orders.locator(".wh-reason").count(), 0);
  api = await endpoint("orders");
  assert.equal(api.enabled, true);
  assert.equal(api.disabledReason, undefined);
  assert.equal(await orders.getByRole("button", { name: "Disable orders", exact: true }).evaluate((b) => b === document.activeElement), true, "focus stays on the toggle");

  // Escape in the reason field cancels.
  await orders.getByRole("button", { name: "Disable orders", exact: true }).click();
  await orders.getByLabel("Reason").press("Escape");
  await orders.getByLabel("Reason").waitFor({ state: "detached" });
  assert.equal((await endpoint("orders")).enabled, true);

  // A herald.toml endpoint can be disabled too (an empty reason gets a default one).
  const config = row("ops-audit");
  await config.getByRole("button", { name: "Disable ops-audit", exact: true }).click();
  await config.getByRole("button", { name: "Disable ops-audit now" }).click();
  await config.locator('.badge[data-state="disabled"]').waitFor({ timeout: 5000 });
  assert.equal((await endpoint("ops-audit")).disabledReason, "disabled from the dashboard");
  await config.getByRole("button", { name: "Enable ops-audit", exact: true }).click();
  await config.locator('.badge[data-state="enabled"]').waitFor({ timeout: 5000 });
});

test("admin: Rotate secret (confirmed) shows the new secret once; the next event is signed with it", async () => {
  const orders = row("orders");
  await orders.getByRole("button", { name: "Rotate the secret of orders", exact: true }).click();
  const confirm = orders.getByRole("button", { name: "Confirm: rotate the secret of orders" });
  await confirm.waitFor();
  assert.equal(await admin.locator("#webhooks-secret .secret-value").count(), 0, "nothing rotated on the first click");
  await confirm.click();
  const shown = admin.locator("#webhooks-secret .secret-value");
  await shown.waitFor({ timeout: 5000 });
  const secret = await shown.textContent();
  assert.match(secret, /^whsec_[A-Za-z0-9+/=]{32,}$/);
  assert.match(await admin.locator("#webhooks-secret").textContent(), /New signing secret of orders.*previous secret also signs until/);
  assert.ok((await endpoint("orders")).previousSecretUntil, "a rotation overlap");
  await orders.locator(".wh-state").filter({ hasText: "previous secret signs until" }).waitFor({ timeout: 10_000 });

  // The worker's copy of the endpoints may be up to 250 ms old (RELOAD_AFTER in
  // src/dispatch/webhooks.rs): send until an event comes signed with the secret shown, and
  // with the previous one (the overlap).
  let hit;
  await waitFor(
    async () => {
      const id = await server.send({ receivers: ["7"], title: "After the rotation", content: "x" });
      hit = await waitFor(() => hits.find((h) => h.path === "/orders" && h.body?.data?.messageId === id), { message: "the event after the rotation" });
      return signedWith(hit, secret);
    },
    { timeout: 10_000, interval: 300, message: () => `an event signed with the secret shown (last: ${hit?.signature})` },
  );
  assert.equal(hit.signature.split(" ").length, 2, "signed with the new and the previous secret");
  assert.ok(signedWith(hit, ordersSecret), "and with the secret from before the rotation");

  // Hide removes it from the page.
  await admin.locator("#webhooks-secret").getByRole("button", { name: "Hide" }).click();
  assert.equal(await admin.locator("#webhooks-secret").textContent(), "");
});

test("admin: adding an endpoint through the form (chosen events) shows its secret once; Delete (confirmed) removes it", async () => {
  // Checked before sending.
  await admin.getByLabel("URL", { exact: true }).fill("ftp://example.com/x");
  await admin.getByRole("button", { name: "Add endpoint" }).click();
  await admin.locator("#wh-result.fail").filter({ hasText: "http:// or https://" }).waitFor({ timeout: 2000 });
  assert.equal(await admin.getByLabel("URL", { exact: true }).getAttribute("aria-invalid"), "true");

  await admin.getByLabel("URL", { exact: true }).fill(`${receiverUrl}/added`);
  await admin.getByLabel("Description").fill("failures only");
  await admin.getByLabel("All events").uncheck();
  await admin.getByRole("button", { name: "Add endpoint" }).click();
  await admin.locator("#wh-result.fail").filter({ hasText: "at least one event" }).waitFor({ timeout: 2000 });
  await admin.getByLabel("delivery.failed").check();
  await admin.getByLabel("route.exhausted").check();
  await admin.getByRole("button", { name: "Add endpoint" }).click();

  const shown = admin.locator("#wh-result .secret-value");
  await shown.waitFor({ timeout: 5000 });
  const secret = await shown.textContent();
  assert.match(secret, /^whsec_/);
  const added = (await server.api("GET", "/api/v1/webhooks")).body.find((w) => w.url === `${receiverUrl}/added`);
  assert.ok(added, "created");
  assert.deepEqual(added.events, ["delivery.failed", "route.exhausted"]);
  assert.equal(added.description, "failures only");
  assert.equal(added.secret, undefined, "the listing never shows a secret");
  assert.match(await admin.locator("#wh-result").textContent(), new RegExp(`Added ${added.id}\\..*shown this once`));
  assert.equal(await admin.getByLabel("URL", { exact: true }).inputValue(), "", "the form is cleared");
  const newRow = row(added.id);
  await newRow.waitFor({ timeout: 5000 });
  assert.deepEqual(await newRow.locator(".wh-events li").allTextContents(), ["delivery.failed", "route.exhausted"]);
  assert.equal(await newRow.getAttribute("data-state"), "enabled");

  mkdirSync(SHOTS, { recursive: true });
  await row("broken").getByRole("button", { name: "Hide attempts of broken" }).click();
  await row("broken").getByRole("button", { name: "Show attempts of broken" }).click();
  await attemptRows("broken").first().waitFor({ timeout: 5000 });
  // The whole page's picture cut to the panel (an element shot would have the sticky header on
  // it; so would a full-page shot taken scrolled down, so scroll to the top first).
  await admin.evaluate(() => window.scrollTo(0, 0));
  const clip = await admin.locator("#webhooks").evaluate((el) => {
    const r = el.getBoundingClientRect();
    return { x: r.left + window.scrollX - 8, y: r.top + window.scrollY - 8, width: r.width + 16, height: r.height + 16 };
  });
  await admin.screenshot({ path: path.join(SHOTS, "admin-webhooks.png"), fullPage: true, clip });

  // Shown once: after a reload (still logged in) it is nowhere on the page.
  await admin.reload();
  await admin.locator("#app").waitFor({ state: "visible", timeout: 5000 });
  await row(added.id).waitFor({ timeout: 10_000 });
  assert.ok(!(await admin.content()).includes(secret), "the secret is still on the page");

  await row(added.id).getByRole("button", { name: `Delete ${added.id}`, exact: true }).click();
  await row(added.id).getByRole("button", { name: `Confirm: delete ${added.id}` }).click();
  await row(added.id).waitFor({ state: "detached", timeout: 5000 });
  await admin.locator("#webhooks-notice").filter({ hasText: `${added.id} deleted` }).waitFor();
  assert.equal((await server.api("GET", `/api/v1/webhooks/${added.id}`)).status, 404);
});

test("admin: the panel at phone width (390 px) fits, and every control in it has a label", async () => {
  const phone = await newPage("admin-phone-webhooks", { width: 390, height: 844 });
  await logIn(phone);
  await phone.locator('#webhooks-body tr.wh-row[data-id="broken"]').waitFor({ timeout: 10_000 });
  await phone.locator('#webhooks-body tr.wh-row[data-id="orders"]').getByRole("button", { name: "Disable orders", exact: true }).click();
  await phone.locator('#webhooks-body tr.wh-row[data-id="broken"]').getByRole("button", { name: "Show attempts of broken" }).click();
  await phone.locator("#wha-broken tr[data-event]").first().waitFor({ timeout: 5000 });
  const wide = await phone.evaluate(() => {
    const vw = document.documentElement.clientWidth;
    return [...document.querySelectorAll("#webhooks *")]
      .filter((e) => e.getClientRects().length && e.getBoundingClientRect().right > vw + 0.5)
      .filter((e) => {
        for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
          if (["auto", "scroll"].includes(getComputedStyle(a).overflowX)) return false;
        }
        return true;
      })
      .map((e) => `${e.tagName.toLowerCase()}#${e.id}.${[...e.classList].join(".")}`);
  });
  assert.deepEqual(wide, [], "elements past the right edge");
  assert.ok(await phone.evaluate(() => document.documentElement.scrollWidth) <= 390);
  const unlabeled = await phone.$$eval("#webhooks input, #webhooks select, #webhooks textarea", (els) =>
    els.filter((el) => el.type !== "hidden" && !(el.labels && el.labels.length) && !el.getAttribute("aria-label")).map((el) => el.id || el.outerHTML));
  assert.deepEqual(unlabeled, []);
  await phone.locator('#webhooks-body tr.wh-row[data-id="orders"]').getByRole("button", { name: "Cancel" }).click();
  await phone.context().close();
});

test("no JavaScript errors in the pages, nothing loaded from elsewhere", () => {
  assert.deepEqual(problems, []);
});
