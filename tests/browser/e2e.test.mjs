// End-to-end tests in headless Chromium: the demo inbox (/demo), the admin dashboard
// (/admin), herald.js and the <herald-inbox> bell (/herald-inbox.js), against a real herald
// binary. Run by tests/browser/run.sh:
//   HERALD_BIN=target/debug/herald node --test tests/browser/e2e.test.mjs
// Writes docs/screenshots/demo.png, admin.png, admin-phone.png, landing.png, docs.png and
// inbox-phone.png.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";

import { chromium } from "playwright-core";

import { HeraldServer, REPO, waitFor } from "./lib/server.mjs";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = path.join(REPO, "docs/screenshots");
const VIEWPORT = { width: 1366, height: 768 };
const USER = "42";

/** @type {HeraldServer} */ let server;
/** @type {import("playwright-core").Browser} */ let browser;
/** @type {import("playwright-core").Page} */ let demo;
/** @type {import("playwright-core").Page} */ let admin;

// Everything a page reports: uncaught exceptions are always failures; console errors are
// failures unless the browser logged them for a request a test made fail on purpose.
const problems = [];
let expectNetworkErrors = false;
const NETWORK_NOISE = [/^Failed to load resource/, /^WebSocket connection to .* failed/];

async function newPage(name, viewport = VIEWPORT) {
  const context = await browser.newContext({ viewport, colorScheme: "light" });
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  page.on("pageerror", (err) => problems.push(`${name}: uncaught ${err.stack ?? err.message}`));
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const text = msg.text();
    if (expectNetworkErrors && NETWORK_NOISE.some((re) => re.test(text))) return;
    problems.push(`${name}: console.error ${text}`);
  });
  return page;
}

/** Run `fn` while requests that fail on purpose (401, 422, server down) may log errors. */
async function allowingNetworkErrors(fn) {
  expectNetworkErrors = true;
  try {
    return await fn();
  } finally {
    expectNetworkErrors = false;
  }
}

const demoItems = (id) => demo.locator(`#messages .msg[data-id="${id}"]`);

before(async () => {
  server = await HeraldServer.start();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("demo: opens with a token, shows a message sent through the REST API, acks it (delivered)", async () => {
  demo = await newPage("demo");
  const token = server.token({ user: USER, name: "alice", device: "laptop" });
  await demo.goto(`${server.url}/demo?token=${encodeURIComponent(token)}`);
  await demo.locator('#state[data-state="live"]').waitFor({ timeout: 10_000 });
  assert.equal(new URL(demo.url()).search, "", "the token is removed from the address bar");
  assert.match(await demo.locator("#who-user").textContent(), /alice \(42\)/);

  const id = await server.send({ receivers: [USER], title: "Report ready", content: '{"reportId":7,"patient":"Li Lei"}', type: 1 });
  const item = demoItems(id);
  await item.waitFor({ timeout: 10_000 });
  assert.equal(await item.locator("h3").textContent(), "Report ready");
  assert.match(await item.locator("pre.body").textContent(), /"reportId": 7/);
  await server.waitForStatus(id, USER, "delivered");
  assert.equal(await item.getAttribute("data-status"), "delivered");
  await demo.waitForFunction(() => document.getElementById("announcer").textContent.includes("Report ready"), null, { timeout: 5000 });
});

test("demo: Mark read marks the delivery read", async () => {
  const id = await server.send({ receivers: [USER], title: "Please read me", content: "Plain text content." });
  const item = demoItems(id);
  await item.waitFor({ timeout: 10_000 });
  await item.getByRole("button", { name: /Mark .* read/ }).click();
  await server.waitForStatus(id, USER, "read");
  assert.equal(await item.getAttribute("data-status"), "read");
});

test("admin: a wrong API key is refused; the right one logs in and is kept in session storage", async () => {
  admin = await newPage("admin");
  await admin.goto(`${server.url}/admin`);
  await allowingNetworkErrors(async () => {
    await admin.getByLabel("API key").fill("not-the-key");
    await admin.getByLabel("API key").press("Enter");
    await admin.locator("#login-error").filter({ hasText: "rejected" }).waitFor({ timeout: 5000 });
  });
  assert.equal(await admin.locator("#app").isHidden(), true);
  await admin.getByLabel("API key").fill(server.apiKey);
  await admin.getByRole("button", { name: "Log in" }).click();
  await admin.locator("#app").waitFor({ state: "visible", timeout: 5000 });
  assert.equal(await admin.evaluate(() => sessionStorage.getItem("herald.admin.apiKey")), server.apiKey);
});

test("admin: lists the demo session as online, with device and login time", async () => {
  const row = admin.locator(`#clients-body tr[data-user="${USER}"]`);
  await row.waitFor({ timeout: 10_000 });
  const text = await row.textContent();
  assert.match(text, /alice/);
  assert.match(text, /laptop/);
  assert.ok(await row.locator("time[datetime]").count(), "login time shown");
  const session = await demo.locator("#who-session").textContent();
  assert.equal(await row.getAttribute("data-session"), session);
});

test("admin: the message log shows the message with its per-channel delivery status", async () => {
  const { body } = await server.api("GET", "/api/v1/messages?size=1&status=read");
  const id = body.items[0].id;
  const row = admin.locator(`tr.msg-row[data-id="${id}"]`);
  await row.waitFor({ timeout: 10_000 });
  await row.locator('.badge[data-status="read"]').waitFor({ timeout: 10_000 });
  // Expand with the keyboard.
  await row.getByRole("button", { name: /Show deliveries/ }).focus();
  await admin.keyboard.press("Enter");
  const delivery = admin.locator(`#d-${id} tr[data-receiver="${USER}"][data-channel="websocket"]`);
  await delivery.waitFor({ timeout: 5000 });
  assert.equal(await delivery.getAttribute("data-status"), "read");
  assert.match(await delivery.textContent(), /websocket/);
  assert.equal(await row.getByRole("button", { name: /Hide deliveries/ }).evaluate((b) => b === document.activeElement), true, "focus stays on the toggle");

  // Filters: a status that doesn't match hides it; reset shows it again.
  await admin.getByLabel("Status", { exact: true }).selectOption("failed");
  await admin.getByRole("button", { name: "Apply" }).click();
  await row.waitFor({ state: "detached", timeout: 5000 });
  await admin.getByLabel("Status", { exact: true }).selectOption("read");
  await admin.getByLabel("Receiver", { exact: true }).fill(USER);
  await admin.getByLabel("Receiver", { exact: true }).press("Enter");
  await row.waitFor({ timeout: 5000 });
  await admin.getByRole("button", { name: "Reset" }).click();
});

test("admin: a broadcast sent from the form (keyboard only) reaches the demo page", async () => {
  await admin.getByLabel("Broadcast to every user online now").focus();
  await admin.keyboard.press("Space");
  assert.equal(await admin.getByLabel("Receivers").isDisabled(), true);
  await admin.getByLabel(/^Title/).focus();
  await admin.keyboard.type("Maintenance tonight");
  await admin.keyboard.press("Tab");
  await admin.keyboard.type("The service restarts at 22:00 UTC.");
  await admin.locator("#send-submit").focus();
  await admin.keyboard.press("Enter");
  const idEl = admin.locator("#send-result-id");
  await idEl.waitFor({ timeout: 5000 });
  const id = await idEl.textContent();
  assert.match(await admin.locator("#send-result").textContent(), /Accepted \(202\).*1 delivery/);
  await demoItems(id).waitFor({ timeout: 10_000 });
  await server.waitForStatus(id, USER, "delivered");
  await admin.getByLabel("Broadcast to every user online now").uncheck();
});

test("admin: the send form validates JSON data and shows the server's 4xx error text", async () => {
  await admin.getByLabel("Template and data").check();
  await admin.getByLabel("Template", { exact: true }).fill("no_such_template");
  await admin.getByLabel("Receivers").fill("42");
  await admin.getByLabel("Data (JSON object)").fill("{not json");
  await admin.locator("#send-data-error").filter({ hasText: "Not valid JSON" }).waitFor({ timeout: 2000 });
  assert.equal(await admin.getByLabel("Data (JSON object)").getAttribute("aria-invalid"), "true");
  await admin.getByLabel("Data (JSON object)").fill('{"name": "Li Lei"}');
  await allowingNetworkErrors(async () => {
    await admin.locator("#send-submit").click();
    await admin.locator("#send-result.fail").filter({ hasText: /Rejected \(422\)/ }).waitFor({ timeout: 5000 });
  });
  assert.match(await admin.locator("#send-result").textContent(), /template/i);
  await admin.getByLabel("Title and content").check();
  await admin.getByLabel("Receivers").fill("");
});

test("admin: channels show health and counters; the chart renders the server's per-minute data", async () => {
  const card = admin.locator('#channel-list [data-channel="websocket"]');
  await card.waitFor({ timeout: 10_000 });
  await card.locator('.badge[data-health="ok"]').waitFor({ timeout: 5000 });
  await card.getByText("No daily quota").waitFor({ timeout: 5000 });
  // The chart refreshes every 10 s; wait for bars with counts from /api/v1/stats/deliveries.
  await admin.waitForFunction(
    () => [...document.querySelectorAll('#chart rect.bar[data-channel="websocket"][data-status="delivered"]')].some((r) => Number(r.dataset.count) > 0),
    null,
    { timeout: 15_000 },
  );
  const legend = await admin.locator("#legend").textContent();
  assert.match(legend, /websocket · delivered/);
  assert.match(legend, /websocket · read/);
  const { body: stats } = await server.api("GET", "/api/v1/stats/deliveries");
  const delivered = stats.channels.find((c) => c.channel === "websocket").series.delivered.reduce((a, b) => a + b, 0);
  const drawn = await admin.$$eval('#chart rect.bar[data-channel="websocket"][data-status="delivered"]', (rs) => rs.reduce((a, r) => a + Number(r.dataset.count), 0));
  assert.ok(drawn > 0 && drawn <= delivered, `bars show ${drawn} of ${delivered} delivered`);
  assert.ok(await admin.locator("#chart svg text").filter({ hasText: "per minute" }).count(), "y axis title");
  assert.ok(await admin.locator("#chart svg text").filter({ hasText: "now" }).count(), "x axis labels");
});

test("accessibility: every form control has a label; focus is visible", async () => {
  for (const page of [demo, admin]) {
    const unlabeled = await page.$$eval("input, select, textarea", (els) =>
      els.filter((el) => el.type !== "hidden" && !(el.labels && el.labels.length) && !el.getAttribute("aria-label") && !el.getAttribute("aria-labelledby")).map((el) => el.id || el.outerHTML));
    assert.deepEqual(unlabeled, [], `unlabeled controls on ${page.url()}`);
  }
  await admin.getByLabel("Status", { exact: true }).focus();
  await admin.keyboard.press("Tab");
  const outline = await admin.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, "none", "focused control has an outline");
});

test("screenshots of the demo inbox and the dashboard (docs/screenshots)", async () => {
  mkdirSync(SHOTS, { recursive: true });
  // A little variety: an offline user (pending), an opted-out one (failed), JSON and text.
  await server.api("PUT", "/api/v1/recipients/44", { preferences: { optOutTypes: [9] } });
  await server.send({ receivers: ["43", "44"], title: "Weekly digest", content: "3 new reports this week.", type: 9 });
  const last = await server.send({ receivers: [USER], title: "Lab result available", content: '{"reportId":8,"type":"blood panel"}', type: 2, sender: "lab-service" });
  await demoItems(last).waitFor({ timeout: 10_000 });
  await server.waitForStatus(last, USER, "delivered");
  await demo.screenshot({ path: path.join(SHOTS, "demo.png") });

  // The form's last answer on the picture should be a success.
  await admin.getByLabel("Receivers").fill("43");
  await admin.getByLabel(/^Title/).fill("Your appointment is confirmed");
  await admin.getByLabel(/^Content/).fill('{"clinic":"Radiology","at":"2026-12-01T09:30"}');
  await admin.locator("#send-submit").click();
  await admin.locator("#send-result.ok").waitFor();
  await admin.locator("#messages-body").getByText("Weekly digest").waitFor({ timeout: 10_000 });
  const digest = admin.locator("tr.msg-row").filter({ hasText: "Weekly digest" });
  await digest.getByRole("button", { name: /Show deliveries/ }).click();
  await admin.locator('tr.detail-row tr[data-receiver="44"][data-status="failed"]').waitFor({ timeout: 5000 });
  // Let the chart's 10 s refresh catch up with everything above before the picture.
  const { body: stats } = await server.api("GET", "/api/v1/stats/deliveries");
  const total = stats.channels.flatMap((c) => Object.values(c.series)).flat().reduce((a, b) => a + b, 0);
  await admin.waitForFunction(
    (want) => [...document.querySelectorAll("#chart rect.bar")].reduce((a, r) => a + Number(r.dataset.count), 0) >= want,
    total,
    { timeout: 15_000 },
  );
  await admin.evaluate(() => window.scrollTo(0, 0));
  await admin.screenshot({ path: path.join(SHOTS, "admin.png"), fullPage: true });
});

test("front door: shows the version and live health, links lead to the pages (screenshot)", async () => {
  const page = await newPage("index");
  await page.goto(`${server.url}/`);
  await page.locator("#health.ok").waitFor();
  assert.equal(await page.locator("#health").textContent(), "ready");
  assert.match(await page.locator("#version").textContent(), /^v\d+\.\d+\.\d+/);
  const icon = await page.evaluate(async () => (await fetch("/favicon.ico")).headers.get("content-type"));
  assert.equal(icon, "image/svg+xml");
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, "landing.png"), fullPage: true });
  for (const [id, title] of [["#link-demo", /demo/i], ["#link-admin", /dashboard|admin/i], ["#link-docs", /API|docs/i]]) {
    await page.goto(`${server.url}/`);
    await page.locator(id).click();
    await page.waitForLoadState("domcontentloaded");
    assert.match(await page.title(), title, `${id} led to ${page.url()}`);
  }
  // Phone width: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${server.url}/`);
  await page.locator("#health.ok").waitFor();
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `the page is ${width}px wide at 390px`);
  await page.context().close();
});

test("admin at phone width (390 px): nothing wider than the screen, header tools reachable, axis labels apart (screenshot)", async () => {
  const phone = await newPage("admin-phone");
  await phone.setViewportSize({ width: 390, height: 844 });
  await phone.goto(`${server.url}/admin`);
  await phone.getByLabel("API key").fill(server.apiKey);
  await phone.getByRole("button", { name: "Log in" }).click();
  await phone.locator("#app").waitFor({ state: "visible", timeout: 5000 });
  await phone.locator("#chart svg").waitFor();
  await phone.locator("#messages-body tr.msg-row").first().waitFor({ timeout: 10_000 });
  const wide = await phone.evaluate(() => {
    const vw = document.documentElement.clientWidth;
    const out = [...document.querySelectorAll("body *")]
      .filter((e) => e.getClientRects().length && e.getBoundingClientRect().right > vw + 0.5)
      // Inside a box that scrolls sideways (a wide table in its scroll area) is fine.
      .filter((e) => {
        for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
          if (["auto", "scroll"].includes(getComputedStyle(a).overflowX)) return false;
        }
        return true;
      })
      .map((e) => `${e.tagName.toLowerCase()}#${e.id}.${[...e.classList].join(".")} right=${Math.round(e.getBoundingClientRect().right)}`);
    return { scrollWidth: document.documentElement.scrollWidth, vw, out: out.slice(0, 10) };
  });
  assert.ok(wide.scrollWidth <= 390, `the page is ${wide.scrollWidth}px wide: ${wide.out.join(", ")}`);
  assert.deepEqual(wide.out, [], "elements past the right edge");
  for (const sel of ["#auto-refresh", "#logout"]) {
    const box = await phone.locator(sel).boundingBox();
    assert.ok(box && box.x >= 0 && box.x + box.width <= 390, `${sel} is off-screen: ${JSON.stringify(box)}`);
  }
  const labels = await phone.evaluate(() =>
    [...document.querySelectorAll("#chart .axis text:not(.axis-title)")]
      .map((t) => t.getBoundingClientRect())
      .filter((r) => r.width > 0)
      .map((r) => ({ left: r.left, right: r.right, top: Math.round(r.top) })));
  const byRow = new Map();
  for (const l of labels) byRow.set(l.top, [...(byRow.get(l.top) ?? []), l]);
  for (const row of byRow.values()) {
    row.sort((a, b) => a.left - b.left);
    for (let i = 1; i < row.length; i++) {
      assert.ok(row[i].left >= row[i - 1].right, `chart labels overlap: ${JSON.stringify(row)}`);
    }
  }
  mkdirSync(SHOTS, { recursive: true });
  await phone.screenshot({ path: path.join(SHOTS, "admin-phone.png"), fullPage: false });
  await phone.context().close();
});

test("docs: the API reference renders /openapi.json with resolved schemas, loads nothing from elsewhere, and try-it works with the API key (screenshot)", async () => {
  const page = await newPage("docs");
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(server.url)) foreign.push(r.url()); });
  await page.goto(`${server.url}/docs`);
  await page.locator('[id="link-post-/api/v1/messages"]').click();
  // The request body as a table of its fields, not a `$ref`.
  for (const field of ["receivers", "channels", "template", "sendAt"]) {
    await page.locator("rapi-doc").getByText(field, { exact: true }).first().waitFor();
  }
  const text = await page.locator("rapi-doc").evaluate((el) => el.shadowRoot.textContent);
  assert.ok(!text.includes("$ref"), "a schema is shown as a $ref");
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, "docs.png") });
  // Authenticate with the API key, then try an operation.
  await page.locator('[id="link-auth"]').click();
  await page.locator("rapi-doc input.api_key").fill(server.apiKey);
  await page.locator("rapi-doc button", { hasText: "SET" }).first().click();
  await page.locator('[id="link-get-/api/v1/channels"]').click();
  await page.locator("rapi-doc button", { hasText: "TRY" }).first().click();
  await page.waitForFunction(() => {
    const doc = document.querySelector("rapi-doc");
    return [...doc.shadowRoot.querySelectorAll("api-request")].some((a) =>
      a.shadowRoot?.querySelector(".response-message.success")?.textContent.includes("200"));
  }, null, { timeout: 10_000 });
  assert.deepEqual(foreign, [], "requests to other origins");
  await page.context().close();
});

// ---- <herald-inbox> ----------------------------------------------------------------------

/** The bell element, as an expression evaluated in the page. */
const BELL = `document.querySelector("herald-inbox")`;

/**
 * A page at the server's origin holding only a header with `<herald-inbox token=…>`, loaded
 * the one-tag way. The document comes from a real navigation (the front door, whose one
 * script is done by then) and is then replaced: Chromium's local-network-access checks
 * refuse loopback WebSockets to a document that `page.route` made up.
 * @param {string} name @param {string} token
 * @param {{viewport?: object, init?: () => void}} [opts] `init` runs before the page's scripts
 */
async function bellPage(name, token, { viewport, init } = {}) {
  const page = await newPage(name, viewport);
  if (init) await page.addInitScript(init);
  const html = `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>${name}</title><link rel="icon" href="data:,"></head>
<body style="margin:0;font-family:system-ui,sans-serif">
<header style="display:flex;align-items:center;gap:12px;padding:8px 16px;border-bottom:1px solid #ddd"><b style="flex:1">App</b>
<script type="module" src="/herald-inbox.js"></script><herald-inbox token="${token}"></herald-inbox></header>
<main style="padding:16px"><p>Page content</p><button type="button">After</button></main></body></html>`;
  await page.goto(`${server.url}/`);
  await page.locator("#health.ok").waitFor();
  await page.setContent(html);
  await page.waitForFunction(`${BELL}.client?.state === "live"`, null, { timeout: 15_000 });
  return page;
}

/** Wait until the badge shows `text` (null: hidden). */
async function badgeIs(page, text, timeout = 10_000) {
  await page.waitForFunction(
    (want) => {
      const b = document.querySelector("herald-inbox").shadowRoot.querySelector(".badge");
      return want === null ? b.hidden : !b.hidden && b.textContent === want;
    },
    text,
    { timeout },
  );
}

/** The feed's entries as [id, read] pairs, in order. */
const feed = (page) => page.evaluate(() => [...document.querySelector("herald-inbox").shadowRoot.querySelectorAll("li")].map((li) => [li.dataset.id, li.dataset.read]));

/** The element focused inside the bell's shadow root: "bell", an entry id, or null. */
const bellFocus = (page) =>
  page.evaluate(() => {
    const el = document.querySelector("herald-inbox");
    if (document.activeElement !== el) return null;
    const a = el.shadowRoot.activeElement;
    return a?.classList.contains("bell") ? "bell" : a?.dataset.id ?? a?.className ?? null;
  });

/** Wait until the page's client has these counts (the counts frame follows the state frame). */
async function countsAre(page, want, timeout = 10_000) {
  await page.waitForFunction((w) => JSON.stringify(document.querySelector("herald-inbox").client?.counts) === w, JSON.stringify(want), { timeout });
}

/** A call to the user's REST API with a user token (another "session" of that user). */
async function asUser(token, method, route, body) {
  const res = await fetch(`${server.url}${route}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

test("herald-inbox: the badge follows another session of the same user live (REST read, a second tab's feed and click)", async () => {
  const user = "70";
  const token = server.token({ user, name: "bob", device: "tab-a" });
  const a = await bellPage("bell-a", token);
  await badgeIs(a, null);
  const ids = [];
  for (const title of ["First", "Second", "Third"]) ids.push(await server.send({ receivers: [user], title, content: `${title} message` }));
  await badgeIs(a, "3");
  await a.getByRole("button", { name: "Notifications, 3 unread notifications", exact: true }).waitFor({ timeout: 2000 });

  // Another session reads one over REST: the badge (unseen) drops at once, no reload.
  const read = await asUser(token, "POST", "/api/v1/inbox/read", { ids: [ids[0]] });
  assert.equal(read.status, 200, JSON.stringify(read.body));
  assert.equal(read.body.changed, 1);
  assert.deepEqual(read.body.counts, { unseen: 2, unread: 2, total: 3 });
  await badgeIs(a, "2");
  await server.waitForStatus(ids[0], user, "read");
  assert.deepEqual(await a.evaluate(`${BELL}.client.counts`), { unseen: 2, unread: 2, total: 3 });

  // A second tab opens its feed: that marks what it shows seen, and the first tab's badge goes.
  const b = await bellPage("bell-b", server.token({ user, name: "bob", device: "tab-b" }));
  await b.locator("herald-inbox .bell").click();
  await b.waitForFunction(`${BELL}.shadowRoot.querySelectorAll("li").length === 3`);
  await badgeIs(b, null);
  await badgeIs(a, null);

  // The first tab's feed: newest first, the REST read without its dot.
  await a.locator("herald-inbox .bell").click();
  await a.waitForFunction(`${BELL}.shadowRoot.querySelectorAll("li").length === 3`);
  assert.deepEqual(await feed(a), [[ids[2], "false"], [ids[1], "false"], [ids[0], "true"]]);
  // A click in the second tab reads "Second": its dot goes in the first tab, live.
  await b.locator(`herald-inbox li[data-id="${ids[1]}"] .title`).click();
  await a.waitForFunction((id) => document.querySelector("herald-inbox").shadowRoot.querySelector(`li[data-id="${id}"]`).dataset.read === "true", ids[1], { timeout: 10_000 });
  await server.waitForStatus(ids[1], user, "read");
  await countsAre(a, { unseen: 0, unread: 1, total: 3 });
  // A message arriving while the feed is open appears at the top.
  const live = await server.send({ receivers: [user], title: "Fourth", content: "live" });
  await a.waitForFunction((id) => document.querySelector("herald-inbox").shadowRoot.querySelector("li")?.dataset.id === id, live, { timeout: 10_000 });
  assert.equal(await a.locator(`herald-inbox li[data-id="${live}"] .title`).textContent(), "Fourth");
  await a.context().close();
  await b.context().close();
});

test("herald-inbox: keyboard only — Tab to the bell, Enter opens, arrows move, Enter reads, Delete archives, Escape closes back to the bell", async () => {
  const user = "71";
  const token = server.token({ user, name: "carol", device: "keyboard" });
  const ids = [];
  for (const title of ["Oldest", "Middle", "Newest"]) ids.push(await server.send({ receivers: [user], title, content: "k" }));
  const page = await bellPage("bell-keys", token);
  await badgeIs(page, "3");
  await page.keyboard.press("Tab");
  assert.equal(await bellFocus(page), "bell");
  assert.equal(await page.locator("herald-inbox .bell").getAttribute("aria-haspopup"), "menu");
  assert.equal(await page.locator("herald-inbox .bell").getAttribute("aria-expanded"), "false");

  await page.keyboard.press("Enter");
  await page.waitForFunction(`${BELL}.shadowRoot.activeElement?.dataset.id === ${JSON.stringify(ids[2])}`, null, { timeout: 10_000 });
  assert.equal(await page.locator("herald-inbox .bell").getAttribute("aria-expanded"), "true");
  assert.equal(await page.locator("herald-inbox ul").getAttribute("role"), "menu");
  await badgeIs(page, null); // opening marked them seen
  // Roving tabindex: only the focused entry is in the tab order.
  const tabbable = () => page.evaluate(() => [...document.querySelector("herald-inbox").shadowRoot.querySelectorAll("li")].filter((li) => li.tabIndex === 0).map((li) => li.dataset.id));
  assert.deepEqual(await tabbable(), [ids[2]]);

  await page.keyboard.press("ArrowDown");
  assert.equal(await bellFocus(page), ids[1]);
  assert.deepEqual(await tabbable(), [ids[1]]);
  await page.keyboard.press("Enter");
  await server.waitForStatus(ids[1], user, "read");
  assert.deepEqual(await feed(page), [[ids[2], "false"], [ids[1], "true"], [ids[0], "false"]]);
  await page.keyboard.press("End");
  assert.equal(await bellFocus(page), ids[0]);
  await page.keyboard.press("Home");
  assert.equal(await bellFocus(page), ids[2]);
  await page.keyboard.press("ArrowUp"); // stays at the top
  assert.equal(await bellFocus(page), ids[2]);

  // Delete archives the focused entry; the focus moves to the next one.
  await page.keyboard.press("Delete");
  await page.waitForFunction(`${BELL}.shadowRoot.querySelectorAll("li").length === 2`);
  assert.equal(await bellFocus(page), ids[1]);
  await waitFor(async () => {
    const { body } = await asUser(token, "GET", "/api/v1/inbox?status=all&archived=true");
    return body?.items?.some((e) => e.id === ids[2] && e.archived === true);
  }, { message: "the entry archived on the server" });
  const { body: counts } = await asUser(token, "GET", "/api/v1/inbox/counts");
  assert.deepEqual(counts, { unseen: 0, unread: 1, total: 2 });

  await page.keyboard.press("Escape");
  await page.waitForFunction(`${BELL}.shadowRoot.querySelector(".panel").hidden`);
  assert.equal(await bellFocus(page), "bell");
  assert.equal(await page.locator("herald-inbox .bell").getAttribute("aria-expanded"), "false");
  // ArrowDown on the bell opens the feed again at the first entry.
  await page.keyboard.press("ArrowDown");
  await page.waitForFunction(`${BELL}.shadowRoot.activeElement?.tagName === "LI"`);
  await page.keyboard.press("Escape");
  assert.equal(await bellFocus(page), "bell");
  await page.context().close();
});

test("herald-inbox at phone width (390 px) in the demo header: the dropdown spans the screen, nothing wider (screenshot)", async () => {
  const user = "72";
  const token = server.token({ user, name: "dana", device: "phone" });
  const sent = [
    { title: "Your appointment is confirmed", content: "Radiology, 1 December at 09:30. Please arrive 15 minutes early." },
    { title: "Lab result available", content: "Your blood panel from Tuesday is ready to view." },
    { title: "Prescription renewed", content: "Pick it up at any pharmacy from tomorrow." },
    { title: "Maintenance tonight", content: "The service restarts at 22:00 UTC." },
  ];
  const ids = [];
  for (const m of sent) ids.push(await server.send({ receivers: [user], ...m }));
  await asUser(token, "POST", "/api/v1/inbox/read", { ids: [ids[0]] });
  const phone = await newPage("bell-phone", { width: 390, height: 844 });
  await phone.goto(`${server.url}/demo?token=${encodeURIComponent(token)}`);
  await phone.locator('#state[data-state="live"]').waitFor({ timeout: 10_000 });
  await badgeIs(phone, "3");
  await phone.locator("herald-inbox .bell").click();
  await phone.waitForFunction(`${BELL}.shadowRoot.querySelectorAll("li").length === 4`, null, { timeout: 10_000 });
  await badgeIs(phone, null);
  const box = await phone.locator("herald-inbox .panel").boundingBox();
  assert.ok(box && box.x >= 0 && box.x + box.width <= 390, `panel off-screen: ${JSON.stringify(box)}`);
  assert.ok(box.width >= 390 - 2 * 12, `the dropdown spans the screen (${box.width}px)`);
  const bell = await phone.locator("herald-inbox .bell").boundingBox();
  assert.ok(bell && bell.x + bell.width <= 390, `bell off-screen: ${JSON.stringify(bell)}`);
  const width = await phone.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `the page is ${width}px wide at 390px`);
  // The demo's list and the bell share one session.
  assert.equal((await server.api("GET", "/api/v1/clients")).body.filter((c) => c.userId === user).length, 1);
  mkdirSync(SHOTS, { recursive: true });
  await phone.screenshot({ path: path.join(SHOTS, "inbox-phone.png") });
  await phone.context().close();
});

test("herald-inbox over SSE: a page whose WebSocket never opens falls back to /events, gets messages live and acks them", async () => {
  const user = "73";
  const token = server.token({ user, name: "erin", device: "proxy" });
  // Every WebSocket fails before it opens, as behind a proxy that drops upgrades.
  const blockWebSocket = () => {
    window.__wsAttempts = 0;
    window.WebSocket = class BlockedWebSocket {
      constructor() {
        window.__wsAttempts++;
        this.readyState = 0;
        setTimeout(() => {
          this.readyState = 3;
          this.onerror?.(new Event("error"));
          this.onclose?.({ code: 1006, reason: "" });
        }, 5);
      }
      send() {
        throw new Error("not open");
      }
      close() {}
    };
  };
  const page = await bellPage("bell-sse", token, { init: blockWebSocket });
  assert.equal(await page.evaluate(`${BELL}.client.transport`), "sse");
  assert.equal(await page.evaluate("window.__wsAttempts"), 2);
  await waitFor(async () => (await server.api("GET", "/api/v1/clients")).body.some((c) => c.userId === user), { message: "the SSE session listed in /api/v1/clients" });

  const id = await server.send({ receivers: [user], title: "Over SSE", content: "no WebSocket needed" });
  await badgeIs(page, "1");
  await server.waitForStatus(id, user, "delivered"); // acknowledged with POST /api/v1/inbox/ack
  const message = await page.evaluate(`${BELL}.client.stats.messages`);
  assert.equal(message, 1);

  await page.locator("herald-inbox .bell").click();
  await page.waitForFunction((id) => document.querySelector("herald-inbox").shadowRoot.querySelector(`li[data-id="${id}"]`), id, { timeout: 10_000 });
  await badgeIs(page, null);
  await page.locator(`herald-inbox li[data-id="${id}"] .title`).click();
  await server.waitForStatus(id, user, "read");
  // Another session's read reaches the SSE page as state and counts events.
  const second = await server.send({ receivers: [user], title: "Second over SSE", content: "x" });
  await page.waitForFunction((id) => document.querySelector("herald-inbox").shadowRoot.querySelector("li")?.dataset.id === id, second, { timeout: 10_000 });
  await asUser(token, "POST", "/api/v1/inbox/read", { ids: [second] });
  await page.waitForFunction((id) => document.querySelector("herald-inbox").shadowRoot.querySelector(`li[data-id="${id}"]`)?.dataset.read === "true", second, { timeout: 10_000 });
  await countsAre(page, { unseen: 0, unread: 0, total: 2 });
  assert.equal(await page.evaluate("window.__wsAttempts"), 2, "no WebSocket attempt after the switch");
  await page.context().close();
});

test("no JavaScript errors in the pages so far", () => {
  assert.deepEqual(problems, []);
});

test("demo: after a server restart the page reconnects by itself and receives a message sent meanwhile, once", async () => {
  await allowingNetworkErrors(async () => {
    await server.stop();
    await demo.locator('#state:not([data-state="live"])').waitFor({ timeout: 10_000 });
    await server.start(); // same port, same data dir
    const id = await server.send({ receivers: [USER], title: "Sent after the restart", content: "once" });
    await demoItems(id).first().waitFor({ timeout: 20_000 });
    await server.waitForStatus(id, USER, "delivered", 10_000);
    await demo.locator('#state[data-state="live"]').waitFor({ timeout: 10_000 });
    assert.equal(await demoItems(id).count(), 1, "shown exactly once");
    // Nothing shown earlier came again with the replay either.
    const ids = await demo.$$eval("#messages .msg", (els) => els.map((e) => e.dataset.id));
    assert.equal(new Set(ids).size, ids.length, "no message is shown twice");
    // The dashboard sees the new session too.
    await admin.locator(`#clients-body tr[data-user="${USER}"]`).waitFor({ timeout: 10_000 });
    await waitFor(async () => (await server.api("GET", "/api/v1/clients")).body.some((c) => c.userId === USER), { message: "session listed" });
  });
  assert.deepEqual(problems, []);
});

test("herald-inbox over SSE: after a server restart the stream is reopened with lastEventId and brings what was sent meanwhile", async () => {
  const user = "74";
  const token = server.token({ user, name: "frank", device: "proxy" });
  const blockWebSocket = () => {
    window.WebSocket = class BlockedWebSocket {
      constructor() {
        this.readyState = 0;
        setTimeout(() => {
          this.readyState = 3;
          this.onerror?.(new Event("error"));
          this.onclose?.({ code: 1006, reason: "" });
        }, 5);
      }
      send() {
        throw new Error("not open");
      }
      close() {}
    };
  };
  await allowingNetworkErrors(async () => {
    // Sent before the page connects: it comes in the replay, whose events carry their cursor as id.
    const first = await server.send({ receivers: [user], title: "Before the restart", content: "1" });
    const page = await bellPage("bell-sse-restart", token, { init: blockWebSocket });
    assert.equal(await page.evaluate(`${BELL}.client.transport`), "sse");
    await badgeIs(page, "1");
    await server.waitForStatus(first, user, "delivered");
    const { body } = await asUser(token, "GET", "/api/v1/inbox?status=all");
    const cursor = body.items.find((e) => e.id === first).cursor;
    assert.equal(await page.evaluate(`${BELL}.client._lastEventId`), cursor, "the replayed message event's id is its cursor");

    await server.stop();
    await page.waitForFunction(`${BELL}.client.state !== "live"`, null, { timeout: 10_000 });
    await server.start();
    const second = await server.send({ receivers: [user], title: "Sent during the restart", content: "2" });
    await server.waitForStatus(second, user, "delivered", 20_000);
    await page.waitForFunction(`${BELL}.client.state === "live"`, null, { timeout: 20_000 });
    assert.equal(await page.evaluate(`${BELL}.client.session.resumedFrom`), cursor, "the welcome names where the stream resumed");
    assert.equal(await page.evaluate(`${BELL}.client.transport`), "sse");
    assert.equal(await page.evaluate(`${BELL}.client.stats.messages`), 2, "each message once");
    await badgeIs(page, "2");
    await page.context().close();
  });
  assert.deepEqual(problems, []);
});
