// Type definitions for herald-inbox.js (the <herald-inbox> web component). Kept in step with herald-inbox.js.

import type { Herald, InboxEntry } from "./herald.js";

/** The element's texts; English defaults. */
export interface HeraldInboxStrings {
  title: string;
  markAllRead: string;
  archive: string;
  empty: string;
  loadMore: string;
  /** The bell's accessible name while the badge shows; `{n}` is the count. */
  badge: string;
  unread: string;
  loading: string;
  /** `{error}` is the error's text. */
  error: string;
}

export declare const DEFAULT_STRINGS: Readonly<HeraldInboxStrings>;

/** An entry as the feed holds it (`detail.entry` of `herald-inbox:select`). */
export type HeraldInboxEntry = Pick<InboxEntry, "id" | "title" | "content" | "type" | "sender" | "createdAt" | "seen" | "read"> & {
  cursor: string | null;
};

/**
 * `<herald-inbox url token transport theme lang strings>`: a bell with an unseen badge and a
 * dropdown feed. Registered as `herald-inbox` when the module loads in a browser.
 */
export declare class HeraldInbox extends HTMLElement {
  static readonly observedAttributes: string[];
  /** The Herald client in use; assign one to share a page's client (the element then neither connects nor closes it). */
  client: Herald | null;
  /** A user token, or a function returning one. */
  token: string | (() => string | Promise<string>) | null;
  /** Texts: defaults, then the `strings` attribute (JSON), then this property. */
  get strings(): HeraldInboxStrings;
  set strings(value: Partial<HeraldInboxStrings> | null);
  /** Whether the feed is open. */
  readonly open: boolean;
  /** Open the feed (loads the latest entries, marks them seen). */
  show(focus?: boolean): void;
  /** Close the feed. */
  hide(focusBell?: boolean): void;
  toggle(): void;
  /** Load the latest entries again. */
  refresh(): Promise<void>;
}

declare global {
  interface HTMLElementTagNameMap {
    "herald-inbox": HeraldInbox;
  }
  interface HTMLElementEventMap {
    "herald-inbox:open": CustomEvent<{ open: true }>;
    "herald-inbox:close": CustomEvent<{ open: false }>;
    /** Cancelable: `preventDefault()` keeps the entry unread. */
    "herald-inbox:select": CustomEvent<{ entry: HeraldInboxEntry }>;
  }
}
