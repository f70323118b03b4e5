// herald-inbox.js — <herald-inbox>: a notification bell with a dropdown feed, built on
// herald.js. Dependency-free custom element (shadow DOM). Served by Herald at
// /herald-inbox.js; documented in clients/js/README.md; types in herald-inbox.d.ts.
//
//   <script type="module" src="/herald-inbox.js"></script>
//   <herald-inbox token="<user token>"></herald-inbox>
//
// The badge shows the unseen count (`herald.counts.unseen`); opening the feed marks what it
// shows seen; clicking an entry (or Enter) marks it read; it follows the user's other
// sessions live through the client's `state`, `counts` and `message` events.

import { Herald } from "./herald.js";

/** The element's texts (English); override some or all with the `strings` property or attribute. */
export const DEFAULT_STRINGS = Object.freeze({
  title: "Notifications",
  markAllRead: "Mark all as read",
  archive: "Archive",
  empty: "No notifications",
  loadMore: "Load more",
  /** The bell's accessible name while the badge shows; `{n}` is the count. */
  badge: "{n} unread notifications",
  unread: "Unread",
  loading: "Loading…",
  /** `{error}` is the error's text. */
  error: "Something went wrong: {error}",
});

/** Entries fetched per page. */
const PAGE = 20;
/** Above this the badge shows "99+". */
const BADGE_MAX = 99;

const HTMLElementBase = /** @type {typeof HTMLElement} */ (globalThis.HTMLElement ?? class {});

const ICON_BELL =
  '<svg viewBox="0 0 24 24" width="22" height="22" aria-hidden="true" focusable="false"><path d="M18 16v-5a6 6 0 1 0-12 0v5l-2 2h16l-2-2zM10 20.5a2 2 0 0 0 4 0" fill="none" stroke="currentColor" stroke-width="1.9" stroke-linejoin="round" stroke-linecap="round"/></svg>';
const ICON_ARCHIVE =
  '<svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true" focusable="false"><path d="M3.5 4.5h17v4h-17zM5.5 8.5v11h13v-11M10 12.5h4" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linejoin="round" stroke-linecap="round"/></svg>';

const LIGHT = `
  --hi-bg: var(--herald-inbox-bg, #fff); --hi-text: var(--herald-inbox-text, #1c2330);
  --hi-muted: var(--herald-inbox-muted, #5b6475); --hi-line: var(--herald-inbox-line, #d9dde5);
  --hi-accent: var(--herald-inbox-accent, #2456c8); --hi-hover: var(--herald-inbox-hover, #eef2fa);
  --hi-unread-bg: var(--herald-inbox-unread-bg, #f3f6fe); --hi-badge: var(--herald-inbox-badge, #c42b1c);
  --hi-badge-text: #fff; --hi-focus: var(--herald-inbox-focus, #f5a623); --hi-shadow: 0 10px 30px rgba(16, 24, 40, .18);
  color-scheme: light;`;
const DARK = `
  --hi-bg: var(--herald-inbox-bg, #1b2029); --hi-text: var(--herald-inbox-text, #e6e9ef);
  --hi-muted: var(--herald-inbox-muted, #a3abba); --hi-line: var(--herald-inbox-line, #313846);
  --hi-accent: var(--herald-inbox-accent, #8fb2ff); --hi-hover: var(--herald-inbox-hover, #262d3a);
  --hi-unread-bg: var(--herald-inbox-unread-bg, #1f2838); --hi-badge: var(--herald-inbox-badge, #ff6b5e);
  --hi-badge-text: #1b0b09; --hi-focus: var(--herald-inbox-focus, #f5a623); --hi-shadow: 0 10px 30px rgba(0, 0, 0, .5);
  color-scheme: dark;`;

const STYLE = `
:host { ${LIGHT} position: relative; display: inline-block; vertical-align: middle; font: inherit; line-height: 1.4; }
:host([theme=dark]) { ${DARK} }
@media (prefers-color-scheme: dark) { :host(:not([theme=light])) { ${DARK} } }
:host([hidden]) { display: none; }
* { box-sizing: border-box; }
button { font: inherit; color: inherit; cursor: pointer; }
:focus-visible { outline: 3px solid var(--hi-focus); outline-offset: 2px; }
.vh { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
.bell { position: relative; display: inline-grid; place-items: center; width: 44px; height: 44px; padding: 0;
  border: 1px solid transparent; border-radius: 50%; background: transparent; color: var(--herald-inbox-bell, currentColor); }
.bell:hover, .bell[aria-expanded=true] { background: var(--hi-hover); border-color: var(--hi-line); color: var(--hi-text); }
.badge { position: absolute; top: 3px; right: 1px; min-width: 19px; height: 19px; padding: 0 5px; border-radius: 10px;
  background: var(--hi-badge); color: var(--hi-badge-text); font-size: 11.5px; font-weight: 700; line-height: 19px;
  text-align: center; box-shadow: 0 0 0 2px var(--hi-bg); font-variant-numeric: tabular-nums; }
.badge[hidden] { display: none; }
.panel { position: absolute; z-index: 1000; top: calc(100% + 6px); right: 0; width: min(380px, calc(100vw - 16px));
  max-height: min(560px, calc(100vh - 90px)); display: flex; flex-direction: column; overflow: hidden;
  background: var(--hi-bg); color: var(--hi-text); border: 1px solid var(--hi-line); border-radius: 12px;
  box-shadow: var(--hi-shadow); text-align: start; font-size: 14px; }
.panel[data-align=start] { right: auto; left: 0; }
.panel[hidden] { display: none; }
.head { display: flex; align-items: center; gap: 8px; padding: 10px 10px 10px 16px; border-bottom: 1px solid var(--hi-line); }
.head h2 { flex: 1; margin: 0; font-size: 15px; font-weight: 650; }
.link { border: 0; background: none; color: var(--hi-accent); padding: 6px 8px; border-radius: 6px; font-size: 13px; font-weight: 600; }
.link:hover:not(:disabled) { background: var(--hi-hover); }
.link:disabled { color: var(--hi-muted); cursor: default; opacity: .7; }
.status { margin: 0; padding: 8px 16px; font-size: 13px; color: var(--hi-muted); border-bottom: 1px solid var(--hi-line); }
.status[data-kind=error] { color: var(--hi-badge); }
.status:empty { display: none; }
.scroll { overflow-y: auto; overscroll-behavior: contain; flex: 1; }
ul { list-style: none; margin: 0; padding: 0; }
li { position: relative; display: grid; grid-template-columns: 10px 1fr auto; gap: 2px 10px; align-items: start;
  padding: 11px 8px 11px 12px; border-bottom: 1px solid var(--hi-line); cursor: pointer; }
li:last-child { border-bottom: 0; }
li:focus-visible { outline: none; box-shadow: inset 0 0 0 3px var(--hi-focus); }
li:hover { background: var(--hi-hover); }
li[data-read=false] { background: var(--hi-unread-bg); }
li[data-read=false]:hover { background: var(--hi-hover); }
.dot { width: 8px; height: 8px; margin-top: 6px; border-radius: 50%; background: var(--hi-accent); }
li[data-read=true] .dot { visibility: hidden; }
.text { min-width: 0; }
.title { display: block; font-weight: 500; overflow-wrap: anywhere; }
li[data-read=false] .title { font-weight: 700; }
.content { display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden; margin-top: 1px;
  color: var(--hi-muted); overflow-wrap: anywhere; font-size: 13.5px; }
time { display: block; margin-top: 3px; font-size: 12px; color: var(--hi-muted); }
.archive { display: grid; place-items: center; width: 34px; height: 34px; margin: -4px 0; padding: 0; border: 0;
  border-radius: 8px; background: transparent; color: var(--hi-muted); opacity: .75; }
.archive:hover { background: var(--hi-line); color: var(--hi-text); opacity: 1; }
.empty { margin: 0; padding: 32px 16px; text-align: center; color: var(--hi-muted); }
.empty[hidden], .more[hidden] { display: none; }
.more { display: block; width: 100%; padding: 10px; border: 0; border-top: 1px solid var(--hi-line); background: none;
  color: var(--hi-accent); font-weight: 600; font-size: 13px; }
.more:hover { background: var(--hi-hover); }
@media (max-width: 480px) {
  .panel, .panel[data-align=start] { position: fixed; left: 8px; right: 8px; width: auto; top: var(--hi-top, 64px);
    max-height: calc(100vh - var(--hi-top, 64px) - 8px); max-height: calc(100dvh - var(--hi-top, 64px) - 8px); }
  li { padding-block: 13px; }
}
@media (prefers-reduced-motion: no-preference) { .panel { animation: hi-in .12s ease-out; } }
@keyframes hi-in { from { opacity: 0; transform: translateY(-4px); } }
`;

/**
 * Compare two cursors (decimal sequence numbers today; otherwise compared as strings).
 * @param {string} a @param {string} b @returns {number}
 */
function compareCursors(a, b) {
  if (/^\d+$/.test(a) && /^\d+$/.test(b)) {
    const x = BigInt(a);
    const y = BigInt(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * @typedef {object} FeedEntry
 * @property {string} id
 * @property {string} title
 * @property {string} content
 * @property {number} type
 * @property {string} sender
 * @property {string} createdAt
 * @property {string | null} cursor
 * @property {boolean} seen
 * @property {boolean} read
 */

/**
 * `<herald-inbox>`: a bell with an unseen badge and a dropdown feed of the user's inbox.
 *
 * Attributes: `url`, `token`, `transport`, `theme` (`light` | `dark` | `auto`), `lang`,
 * `strings` (JSON). Properties: `token` (string or function), `strings` (object), `client`
 * (the Herald instance; assign one to share a page's client), `open` (read only).
 * Methods: `show()`, `hide()`, `toggle()`, `refresh()`.
 * Events: `herald-inbox:open`, `herald-inbox:close`, `herald-inbox:select` (detail `{entry}`;
 * cancelable: `preventDefault()` keeps the entry unread).
 */
export class HeraldInbox extends HTMLElementBase {
  static get observedAttributes() {
    return ["url", "token", "transport", "theme", "lang", "strings"];
  }

  constructor() {
    super();
    /** @type {Herald | null} */
    this._client = null;
    this._owned = false;
    /** @type {(() => void)[]} */
    this._offs = [];
    /** @type {string | (() => string | Promise<string>) | undefined} */
    this._tokenProp = undefined;
    /** @type {Partial<typeof DEFAULT_STRINGS> | undefined} */
    this._stringsProp = undefined;
    /** @type {FeedEntry[]} */
    this._items = [];
    /** @type {Map<string, HTMLLIElement>} */
    this._els = new Map();
    this._loaded = false;
    this._fetching = false; // a first-page load is on its way
    this._loading = 0; // generation of the latest first-page load
    /** @type {string | null} */
    this._nextCursor = null;
    this._open = false;
    /** @type {ReturnType<typeof setInterval> | null} */
    this._clock = null;
    this._built = false;
    this._onOutside = (/** @type {Event} */ event) => {
      if (!event.composedPath().includes(this)) this.hide(false);
    };
    this._onResize = () => this._place();
  }

  // ---- public API ------------------------------------------------------------------------

  /** The Herald client in use (created from `url`/`token`, or assigned). @returns {Herald | null} */
  get client() {
    return this._client;
  }

  /** Use this client (shared with the page: the element neither connects nor closes it). @param {Herald | null} herald */
  set client(herald) {
    this._detachClient();
    if (herald) this._attachClient(herald, false);
    else this._ensureClient();
  }

  /** @returns {string | (() => string | Promise<string>) | null} */
  get token() {
    return this._tokenProp ?? this.getAttribute("token");
  }

  /** A user token, or a function returning one (called for every connection and request). */
  set token(value) {
    this._tokenProp = value ?? undefined;
    if (this._owned || !this._client) this._recreate();
  }

  /** The texts in use (defaults, then the `strings` attribute, then the property). */
  get strings() {
    let fromAttr = {};
    const json = this.getAttribute("strings");
    if (json) {
      try {
        fromAttr = JSON.parse(json) ?? {};
      } catch {
        console.warn("herald-inbox: the strings attribute is not valid JSON");
      }
    }
    return { ...DEFAULT_STRINGS, ...fromAttr, ...(this._stringsProp ?? {}) };
  }

  /** @param {Partial<typeof DEFAULT_STRINGS> | null} value */
  set strings(value) {
    this._stringsProp = value ?? undefined;
    this._texts();
  }

  /** Whether the feed is open. */
  get open() {
    return this._open;
  }

  /** Open the feed (loads the latest entries and marks them seen). @param {boolean} [focus=true] focus the first entry */
  show(focus = true) {
    if (this._open || !this._built) return;
    this._open = true;
    const $ = this._$;
    $.panel.hidden = false;
    $.bell.setAttribute("aria-expanded", "true");
    this._place();
    document.addEventListener("pointerdown", this._onOutside, true);
    globalThis.addEventListener("resize", this._onResize);
    this._clock = setInterval(() => this._times(), 30_000);
    this._times();
    if (focus) this._focusItem(0);
    this.dispatchEvent(new CustomEvent("herald-inbox:open", { bubbles: true, composed: true, detail: { open: true } }));
    this._load(focus);
  }

  /** Close the feed. @param {boolean} [focusBell=true] move the focus back to the bell */
  hide(focusBell = true) {
    if (!this._open) return;
    this._open = false;
    const $ = this._$;
    $.panel.hidden = true;
    $.bell.setAttribute("aria-expanded", "false");
    document.removeEventListener("pointerdown", this._onOutside, true);
    globalThis.removeEventListener("resize", this._onResize);
    if (this._clock !== null) clearInterval(this._clock);
    this._clock = null;
    if (focusBell) $.bell.focus();
    this.dispatchEvent(new CustomEvent("herald-inbox:close", { bubbles: true, composed: true, detail: { open: false } }));
  }

  /** Open or close the feed. */
  toggle() {
    if (this._open) this.hide();
    else this.show();
  }

  /** Load the latest entries again. @returns {Promise<void>} */
  refresh() {
    return this._load(false);
  }

  // ---- lifecycle ---------------------------------------------------------------------------

  connectedCallback() {
    // Properties set before this element was upgraded shadow the accessors: re-apply them.
    for (const key of /** @type {const} */ (["client", "token", "strings"])) {
      if (Object.prototype.hasOwnProperty.call(this, key)) {
        const value = /** @type {any} */ (this)[key];
        delete (/** @type {any} */ (this)[key]);
        /** @type {any} */ (this)[key] = value;
      }
    }
    this._build();
    if (this._client) this._listen();
    else this._ensureClient();
    this._badge();
  }

  disconnectedCallback() {
    this.hide(false);
    // Moved within the page: disconnected and connected again at once; keep the client then.
    queueMicrotask(() => {
      if (this.isConnected) return;
      if (this._owned) this._detachClient();
      else this._unlisten();
    });
  }

  /** @param {string} name @param {string | null} previous @param {string | null} value */
  attributeChangedCallback(name, previous, value) {
    if (previous === value || !this._built) return;
    if (name === "url" || name === "transport" || (name === "token" && this._tokenProp === undefined)) {
      if (this._owned || !this._client) this._recreate();
    } else if (name === "lang" || name === "strings") {
      this._texts();
      this._times();
    }
  }

  // ---- the client ----------------------------------------------------------------------

  _recreate() {
    if (!this.isConnected) return;
    if (this._owned) this._detachClient();
    this._ensureClient();
  }

  /** Create and connect an own client when there is a token and none was assigned. */
  _ensureClient() {
    if (this._client || !this.isConnected) return;
    const token = this.token;
    if (!token) return;
    const transport = /** @type {"auto" | "websocket" | "sse"} */ (this.getAttribute("transport") || "auto");
    let herald;
    try {
      herald = new Herald({ token, url: this.getAttribute("url") || undefined, transport });
    } catch (err) {
      this._status(err, true);
      return;
    }
    this._attachClient(herald, true);
    herald.connect();
  }

  /** @param {Herald} herald @param {boolean} owned */
  _attachClient(herald, owned) {
    this._client = herald;
    this._owned = owned;
    this._reset();
    if (this.isConnected) this._listen();
    this._badge();
  }

  _detachClient() {
    this._unlisten();
    if (this._owned) this._client?.close();
    this._client = null;
    this._owned = false;
    this._reset();
    this._badge();
  }

  _listen() {
    const herald = this._client;
    if (!herald || this._offs.length) return;
    this._offs = [
      herald.on("counts", () => this._badge()),
      herald.on("state", (/** @type {any} */ frame) => this._onState(frame)),
      herald.on("message", (/** @type {any} */ m) => this._onMessage(m)),
      herald.on("open", () => {
        // A new session: whatever was missed while away is in the server's list (a closed
        // feed loads it when opened).
        if (this._open) this._load(false);
        this._badge();
      }),
    ];
  }

  _unlisten() {
    for (const off of this._offs) off();
    this._offs = [];
  }

  _reset() {
    this._items = [];
    this._loaded = false;
    this._fetching = false;
    this._nextCursor = null;
    this._loading++;
    if (this._built) this._render();
  }

  // ---- the server's news -----------------------------------------------------------------

  /** A `state` frame: flags changed in some session of this user (this one included). @param {any} frame */
  _onState(frame) {
    if (!frame || !this._loaded) return;
    /** @type {FeedEntry[]} */
    let hit;
    if (Array.isArray(frame.ids)) {
      const ids = new Set(frame.ids);
      hit = this._items.filter((e) => ids.has(e.id));
    } else if (frame.all === true) {
      const before = typeof frame.before === "string" ? frame.before : null;
      hit = this._items.filter((e) => before === null || (e.cursor !== null && compareCursors(e.cursor, before) <= 0));
    } else {
      return;
    }
    for (const e of hit) {
      if (typeof frame.seen === "boolean") e.seen = frame.seen;
      if (typeof frame.read === "boolean") {
        e.read = frame.read;
        if (frame.read) e.seen = true;
      }
    }
    if (frame.archived === true || frame.deleted === true) {
      const gone = new Set(hit.map((e) => e.id));
      this._items = this._items.filter((e) => !gone.has(e.id));
    } else if (frame.archived === false) {
      // Unarchived elsewhere: it belongs in the list again, where the server knows its place
      // (a closed feed loads it when opened).
      if (this._open) this._load(false);
    }
    this._render();
  }

  /** A new message from the client (live or replayed). @param {any} m */
  _onMessage(m) {
    if ((!this._loaded && !this._fetching) || this._items.some((e) => e.id === m.id)) return;
    /** @type {FeedEntry} */
    const entry = {
      id: m.id,
      title: m.title,
      content: m.content,
      type: m.msgType,
      sender: m.sender,
      createdAt: m.createdAt,
      cursor: m.cursor ?? null,
      seen: false,
      read: false,
    };
    if (m.replayed) {
      const at = this._items.findIndex((e) => e.createdAt < entry.createdAt);
      if (at === -1) {
        if (this._nextCursor !== null) return; // older than the loaded pages: "load more" brings it
        this._items.push(entry);
      } else {
        this._items.splice(at, 0, entry);
      }
    } else {
      this._items.unshift(entry);
    }
    if (this._open) {
      // The user is looking at it.
      entry.seen = true;
      this._client?.markSeen([entry.id]).catch((err) => this._status(err, true));
    }
    this._render();
  }

  // ---- loading -------------------------------------------------------------------------------

  /** Fetch the first page (replacing the list), then mark what it shows seen. @param {boolean} focus */
  async _load(focus) {
    const herald = this._client;
    if (!herald) return;
    const generation = ++this._loading;
    if (!this._loaded) this._status(this.strings.loading);
    const before = new Set(this._items.map((e) => e.id));
    this._fetching = true;
    let page;
    try {
      page = await herald.inbox({ status: "all", limit: PAGE });
    } catch (err) {
      if (generation === this._loading) {
        this._fetching = false;
        this._status(err, true);
      }
      return;
    }
    if (generation !== this._loading || herald !== this._client) return;
    this._fetching = false;
    this._status("");
    const fresh = page.items.map(toEntry);
    const ids = new Set(fresh.map((e) => e.id));
    // Live messages that arrived while the page was on its way stay on top.
    const arrived = this._items.filter((e) => !before.has(e.id) && !ids.has(e.id));
    this._items = [...arrived, ...fresh];
    this._nextCursor = page.nextCursor;
    this._loaded = true;
    this._render();
    if (focus && this._open && !this._focusedEntry()) this._focusItem(0);
    if (this._open) this._markSeen();
  }

  async _loadMore() {
    const herald = this._client;
    if (!herald || this._nextCursor === null) return;
    const before = this._nextCursor;
    const generation = this._loading;
    const $ = this._$;
    $.more.disabled = true;
    try {
      const page = await herald.inbox({ status: "all", limit: PAGE, before });
      if (generation !== this._loading || herald !== this._client) return;
      const have = new Set(this._items.map((e) => e.id));
      const added = page.items.map(toEntry).filter((e) => !have.has(e.id));
      const first = this._items.length;
      this._items.push(...added);
      this._nextCursor = page.nextCursor;
      this._status("");
      this._render();
      if (added.length) this._focusItem(first);
      this._markSeen();
    } catch (err) {
      this._status(err, true);
    } finally {
      $.more.disabled = false;
    }
  }

  /** The newest cursor in the list (entries up to it are what the user has seen). */
  _newestCursor() {
    let newest = null;
    for (const e of this._items) {
      if (e.cursor !== null && (newest === null || compareCursors(e.cursor, newest) > 0)) newest = e.cursor;
    }
    return newest;
  }

  /** Mark the shown entries seen on the server (if any is not). */
  _markSeen() {
    const herald = this._client;
    const unseen = this._items.filter((e) => !e.seen);
    if (!herald || (unseen.length === 0 && !(herald.counts?.unseen))) return;
    const before = this._newestCursor();
    const loose = unseen.filter((e) => e.cursor === null).map((e) => e.id);
    for (const e of this._items) e.seen = true;
    if (before !== null) herald.markSeen({ all: true, before }).catch((err) => this._status(err, true));
    if (loose.length) herald.markSeen(loose).catch((err) => this._status(err, true));
  }

  // ---- actions -----------------------------------------------------------------------------

  /** Click or Enter on an entry. @param {FeedEntry} entry */
  _activate(entry) {
    const event = new CustomEvent("herald-inbox:select", {
      bubbles: true,
      composed: true,
      cancelable: true,
      detail: { entry: { ...entry } },
    });
    this.dispatchEvent(event);
    if (event.defaultPrevented || entry.read) return;
    entry.read = entry.seen = true;
    this._render();
    this._client?.markRead([entry.id]).catch((err) => {
      entry.read = false;
      this._render();
      this._status(err, true);
    });
  }

  /** @param {FeedEntry} entry */
  _archive(entry) {
    const index = this._items.indexOf(entry);
    if (index === -1) return;
    const hadFocus = this._focusedEntry() === entry;
    this._items.splice(index, 1);
    this._render();
    if (hadFocus) {
      if (this._items.length) this._focusItem(Math.min(index, this._items.length - 1));
      else this._$.bell.focus();
    }
    this._client?.archive([entry.id]).catch((err) => {
      if (!this._items.includes(entry)) this._items.splice(Math.min(index, this._items.length), 0, entry);
      this._render();
      this._status(err, true);
    });
  }

  _markAllRead() {
    const herald = this._client;
    if (!herald) return;
    const before = this._newestCursor();
    const loose = this._items.filter((e) => e.cursor === null && !e.read).map((e) => e.id);
    const undo = this._items.filter((e) => !e.read);
    for (const e of this._items) e.read = e.seen = true;
    this._render();
    const fail = (/** @type {unknown} */ err) => {
      for (const e of undo) e.read = false;
      this._render();
      this._status(err, true);
    };
    if (before !== null || loose.length === 0) {
      herald.markRead(before !== null ? { all: true, before } : { all: true }).catch(fail);
    }
    if (loose.length) herald.markRead(loose).catch(fail);
  }

  // ---- rendering ------------------------------------------------------------------------

  get _$() {
    const root = /** @type {ShadowRoot} */ (this.shadowRoot);
    const q = (/** @type {string} */ s) => /** @type {any} */ (root.querySelector(s));
    return {
      bell: /** @type {HTMLButtonElement} */ (q(".bell")),
      bellLabel: /** @type {HTMLElement} */ (q(".bell .vh")),
      badge: /** @type {HTMLElement} */ (q(".badge")),
      panel: /** @type {HTMLElement} */ (q(".panel")),
      title: /** @type {HTMLElement} */ (q(".head h2")),
      markAll: /** @type {HTMLButtonElement} */ (q(".mark-all")),
      status: /** @type {HTMLElement} */ (q(".status")),
      feed: /** @type {HTMLUListElement} */ (q("ul")),
      empty: /** @type {HTMLElement} */ (q(".empty")),
      more: /** @type {HTMLButtonElement} */ (q(".more")),
    };
  }

  _build() {
    if (this._built) return;
    const root = this.shadowRoot ?? this.attachShadow({ mode: "open" });
    root.innerHTML = `<style>${STYLE}</style>
<button class="bell" part="bell" type="button" aria-haspopup="menu" aria-expanded="false" aria-controls="feed">${ICON_BELL}<span class="vh"></span><span class="badge" part="badge" aria-hidden="true" hidden></span></button>
<div class="panel" part="panel" hidden>
  <div class="head"><h2 id="heading"></h2><button class="link mark-all" type="button"></button></div>
  <p class="status" role="status"></p>
  <div class="scroll">
    <ul id="feed" role="menu" aria-labelledby="heading"></ul>
    <p class="empty" hidden></p>
  </div>
  <button class="more" type="button" hidden></button>
</div>`;
    this._built = true;
    const $ = this._$;
    $.bell.addEventListener("click", (event) => {
      // A keyboard activation (Enter, Space) has no pointer position: focus the first entry.
      if (this._open) this.hide();
      else this.show(event.detail === 0);
    });
    $.bell.addEventListener("keydown", (event) => {
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        if (!this._open) this.show(false);
        this._focusItem(event.key === "ArrowDown" ? 0 : this._items.length - 1);
      }
    });
    $.panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        this.hide();
      }
    });
    $.markAll.addEventListener("click", () => this._markAllRead());
    $.more.addEventListener("click", () => this._loadMore());
    $.feed.addEventListener("click", (event) => {
      const target = /** @type {Element} */ (event.target);
      const li = /** @type {HTMLLIElement | null} */ (target.closest("li"));
      const entry = li && this._entryOf(li);
      if (!entry) return;
      if (target.closest(".archive")) this._archive(entry);
      else this._activate(entry);
    });
    $.feed.addEventListener("keydown", (event) => this._onFeedKey(event));
    $.feed.addEventListener("focusin", (event) => {
      const li = /** @type {Element} */ (event.target).closest("li");
      if (li) this._rove(li);
    });
    root.addEventListener("focusout", (event) => {
      const next = /** @type {FocusEvent} */ (event).relatedTarget;
      if (this._open && next instanceof Node && next !== this && !root.contains(next)) this.hide(false);
    });
    this._texts();
    this._render();
  }

  /** @param {KeyboardEvent} event */
  _onFeedKey(event) {
    const li = /** @type {Element} */ (event.target).closest("li");
    const entry = li && this._entryOf(li);
    if (!li || !entry || event.altKey || event.ctrlKey || event.metaKey) return;
    const index = this._items.indexOf(entry);
    let handled = true;
    switch (event.key) {
      case "ArrowDown":
        this._focusItem(Math.min(index + 1, this._items.length - 1));
        break;
      case "ArrowUp":
        this._focusItem(Math.max(index - 1, 0));
        break;
      case "Home":
        this._focusItem(0);
        break;
      case "End":
        this._focusItem(this._items.length - 1);
        break;
      case "Enter":
      case " ":
        this._activate(entry);
        break;
      case "Delete":
      case "a":
      case "A":
        this._archive(entry);
        break;
      default:
        handled = false;
    }
    if (handled) event.preventDefault();
  }

  /** @param {Element} li */
  _entryOf(li) {
    const id = /** @type {HTMLElement} */ (li).dataset.id;
    return this._items.find((e) => e.id === id) ?? null;
  }

  _focusedEntry() {
    const active = this.shadowRoot?.activeElement;
    const li = active?.closest?.("li");
    return li ? this._entryOf(li) : null;
  }

  /** Focus entry number `index` (roving tabindex). @param {number} index */
  _focusItem(index) {
    const entry = this._items[index];
    const li = entry && this._els.get(entry.id);
    if (!li) return;
    this._rove(li);
    li.focus();
    li.scrollIntoView?.({ block: "nearest" });
  }

  /** Make `li` the one entry reachable with Tab. @param {Element} li */
  _rove(li) {
    for (const el of this._els.values()) el.tabIndex = el === li ? 0 : -1;
  }

  /** The static texts (after `strings` or `lang` changed). */
  _texts() {
    if (!this._built) return;
    const s = this.strings;
    const $ = this._$;
    $.title.textContent = s.title;
    $.markAll.textContent = s.markAllRead;
    $.empty.textContent = s.empty;
    $.more.textContent = s.loadMore;
    for (const li of this._els.values()) {
      const button = /** @type {HTMLElement} */ (li.querySelector(".archive"));
      button.setAttribute("aria-label", s.archive);
      button.title = s.archive;
      /** @type {HTMLElement} */ (li.querySelector(".vh")).textContent = `${s.unread}: `;
    }
    const lang = this._lang();
    /** @type {HTMLElement} */ ($.panel).lang = lang;
    this._badge();
  }

  /** The badge and the bell's name. */
  _badge() {
    if (!this._built) return;
    const $ = this._$;
    const s = this.strings;
    const unseen = this._client?.counts?.unseen ?? 0;
    $.badge.hidden = unseen <= 0;
    $.badge.textContent = unseen > BADGE_MAX ? `${BADGE_MAX}+` : String(unseen);
    const label = unseen > 0 ? s.badge.replace("{n}", unseen > BADGE_MAX ? `${BADGE_MAX}+` : String(unseen)) : "";
    $.bellLabel.textContent = label ? `${s.title}, ${label}` : s.title;
    $.badge.setAttribute("aria-label", label);
    this._markAllState();
  }

  _markAllState() {
    const unread = this._items.some((e) => !e.read) || (this._client?.counts?.unread ?? 0) > 0;
    this._$.markAll.disabled = !this._loaded || this._items.length === 0 || !unread;
  }

  /** Reconcile the list with `_items`, keeping the elements (and the focus) of kept entries. */
  _render() {
    if (!this._built) return;
    const $ = this._$;
    const focused = this._focusedEntry();
    const keep = new Set(this._items.map((e) => e.id));
    for (const [id, li] of this._els) {
      if (!keep.has(id)) {
        li.remove();
        this._els.delete(id);
      }
    }
    /** @type {ChildNode | null} */
    let at = $.feed.firstChild;
    for (const entry of this._items) {
      let li = this._els.get(entry.id);
      if (!li) {
        li = this._item(entry);
        this._els.set(entry.id, li);
      }
      li.dataset.read = String(entry.read);
      li.dataset.seen = String(entry.seen);
      /** @type {HTMLElement} */ (li.querySelector(".vh")).hidden = entry.read;
      if (li === at) at = li.nextSibling;
      else $.feed.insertBefore(li, at);
    }
    if (![...this._els.values()].some((li) => li.tabIndex === 0)) {
      const first = this._items[0] && this._els.get(this._items[0].id);
      if (first) first.tabIndex = 0;
    }
    if (focused && this._els.has(focused.id) && this.shadowRoot?.activeElement !== this._els.get(focused.id)) {
      this._els.get(focused.id)?.focus();
    }
    $.empty.hidden = !this._loaded || this._items.length > 0;
    $.more.hidden = this._nextCursor === null || !this._loaded;
    this._markAllState();
  }

  /** @param {FeedEntry} entry @returns {HTMLLIElement} */
  _item(entry) {
    const s = this.strings;
    const li = document.createElement("li");
    li.setAttribute("role", "menuitem");
    li.tabIndex = -1;
    li.dataset.id = entry.id;
    li.setAttribute("aria-keyshortcuts", "Enter Delete A");
    const dot = document.createElement("span");
    dot.className = "dot";
    const text = document.createElement("div");
    text.className = "text";
    const unread = document.createElement("span");
    unread.className = "vh";
    unread.textContent = `${s.unread}: `;
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = entry.title || entry.content;
    const content = document.createElement("span");
    content.className = "content";
    content.textContent = entry.title ? entry.content : "";
    content.hidden = !entry.title || !entry.content;
    const time = document.createElement("time");
    time.dateTime = entry.createdAt;
    text.append(unread, title, content, time);
    const archive = document.createElement("button");
    archive.type = "button";
    archive.className = "archive";
    archive.tabIndex = -1;
    archive.setAttribute("aria-label", s.archive);
    archive.title = s.archive;
    archive.innerHTML = ICON_ARCHIVE;
    li.append(dot, text, archive);
    this._time(time);
    return li;
  }

  _times() {
    if (!this._built) return;
    for (const time of this.shadowRoot?.querySelectorAll("time") ?? []) this._time(/** @type {HTMLTimeElement} */ (time));
  }

  /** "5 minutes ago" in the element's language; the full date as its title. @param {HTMLTimeElement} time */
  _time(time) {
    const date = new Date(time.dateTime);
    if (Number.isNaN(date.getTime())) {
      time.textContent = "";
      return;
    }
    const lang = this._lang();
    const seconds = (date.getTime() - Date.now()) / 1000;
    const abs = Math.abs(seconds);
    let text;
    try {
      const rtf = new Intl.RelativeTimeFormat(lang, { numeric: "auto" });
      if (abs < 45) text = rtf.format(0, "second");
      else if (abs < 3600) text = rtf.format(Math.round(seconds / 60), "minute");
      else if (abs < 86_400) text = rtf.format(Math.round(seconds / 3600), "hour");
      else if (abs < 7 * 86_400) text = rtf.format(Math.round(seconds / 86_400), "day");
      else text = date.toLocaleDateString(lang, { day: "numeric", month: "short", year: abs > 300 * 86_400 ? "numeric" : undefined });
      time.title = date.toLocaleString(lang);
    } catch {
      text = date.toLocaleString();
    }
    time.textContent = text;
  }

  _lang() {
    return this.getAttribute("lang") || this.closest?.("[lang]")?.getAttribute("lang") || globalThis.navigator?.language || "en";
  }

  /** @param {unknown} what a text, or an error to show @param {boolean} [isError] */
  _status(what, isError = false) {
    if (!this._built) return;
    const $ = this._$;
    const text = isError ? this.strings.error.replace("{error}", what instanceof Error ? what.message : String(what)) : String(what);
    $.status.textContent = text;
    $.status.dataset.kind = isError ? "error" : "info";
    $.status.setAttribute("role", isError ? "alert" : "status");
  }

  /** Where the panel goes: under the bell; on a narrow screen across it, below the bell. */
  _place() {
    if (!this._open) return;
    const $ = this._$;
    const rect = $.bell.getBoundingClientRect();
    $.panel.style.setProperty("--hi-top", `${Math.round(rect.bottom + 6)}px`);
    const width = Math.min(380, globalThis.innerWidth - 16);
    $.panel.dataset.align = rect.right - width < 8 ? "start" : "end";
  }
}

/** @param {any} item an inbox entry from the server @returns {FeedEntry} */
function toEntry(item) {
  return {
    id: String(item.id),
    title: String(item.title ?? ""),
    content: String(item.content ?? ""),
    type: Number(item.type ?? 0),
    sender: String(item.sender ?? ""),
    createdAt: String(item.createdAt ?? ""),
    cursor: typeof item.cursor === "string" && item.cursor !== "" ? item.cursor : item.cursor != null ? String(item.cursor) : null,
    seen: item.seen === true || item.read === true,
    read: item.read === true,
  };
}

if (globalThis.customElements && !globalThis.customElements.get("herald-inbox")) {
  globalThis.customElements.define("herald-inbox", HeraldInbox);
}
