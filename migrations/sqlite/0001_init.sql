-- Herald schema, SQLite. Never edit a migration that has landed; add a new one.

-- One row per accepted message. `seq` orders messages (replay oldest first, listings newest
-- first); `id` is the public id (UUID v7).
CREATE TABLE messages (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    title      TEXT    NOT NULL,
    content    TEXT    NOT NULL,
    msg_type   INTEGER NOT NULL DEFAULT 0,
    sender     TEXT    NOT NULL,
    created_at INTEGER NOT NULL -- ms since epoch
);
CREATE INDEX messages_sender ON messages (sender, seq);
CREATE INDEX messages_type ON messages (msg_type, seq);

-- One row per (message, receiver, channel instance). status: 0 pending, 1 sent,
-- 2 delivered, 3 read, 4 failed.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_seq     INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
    receiver        TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    status          INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at INTEGER,          -- ms; when a retry is due (provider channels)
    lease_until     INTEGER,          -- ms; a worker holds the row until then (provider channels)
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (message_seq, receiver, channel)
);
CREATE INDEX deliveries_receiver ON deliveries (receiver, channel, message_seq);
-- Replay and collect read only undelivered rows: keep that index small.
CREATE INDEX deliveries_undelivered ON deliveries (receiver, channel, message_seq) WHERE status < 2;
-- Deliberately no index on status or channel alone: listings filter deliveries through
-- the (message_seq, …) unique index, and every index costs each of a broadcast's rows.

-- Idempotency-Key → the message it created (kept 24 h).
CREATE TABLE idempotency_keys (
    key          TEXT    PRIMARY KEY,
    request_hash TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    deliveries   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Addresses and preferences used by non-WebSocket channels.
CREATE TABLE recipients (
    user_id        TEXT PRIMARY KEY,
    name           TEXT,
    email          TEXT,
    phone          TEXT,
    wechat_open_id TEXT,
    devices        TEXT    NOT NULL DEFAULT '[]',
    preferences    TEXT    NOT NULL DEFAULT '{}',
    updated_at     INTEGER NOT NULL
);
