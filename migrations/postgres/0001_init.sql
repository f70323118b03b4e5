-- Herald schema, PostgreSQL: the equivalent of migrations/sqlite/0001–0005 in one file.
-- Never edit a migration that has landed; add a new one (in both folders when the change
-- applies to both backends).
--
-- Timestamps are BIGINT milliseconds since the epoch, as on SQLite. JSON documents that are
-- only ever read whole (message data and renderings, the routing policy, recipient devices
-- and preferences) are TEXT, stored exactly as serialized; a route's log is JSONB because
-- entries are appended to it in place.

-- One row per accepted message. `seq` orders messages (replay oldest first, listings newest
-- first); `id` is the public id (UUID v7).
CREATE TABLE messages (
    seq        BIGSERIAL PRIMARY KEY,
    id         TEXT   NOT NULL UNIQUE,
    title      TEXT   NOT NULL,
    content    TEXT   NOT NULL,
    msg_type   BIGINT NOT NULL DEFAULT 0,
    sender     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    -- A message sent with a template keeps its name, data and what was rendered per
    -- channel family, so retries send exactly what was validated at acceptance.
    template   TEXT,
    data       TEXT,    -- JSON object
    rendered   TEXT,    -- JSON object: family → part → text
    send_at    BIGINT,  -- NULL = sent at acceptance
    expires_at BIGINT,  -- undelivered deliveries fail `expired` then
    routing    TEXT     -- JSON: the failover policy, if any
);
CREATE INDEX messages_sender ON messages (sender, seq);
CREATE INDEX messages_type ON messages (msg_type, seq);

-- One row per (message, receiver, channel instance). status: 0 pending, 1 sent,
-- 2 delivered, 3 read, 4 failed.
CREATE TABLE deliveries (
    id              BIGSERIAL PRIMARY KEY,
    message_seq     BIGINT NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
    receiver        TEXT   NOT NULL,
    channel         TEXT   NOT NULL,
    status          BIGINT NOT NULL DEFAULT 0,
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    -- Provider channels: the due time; while a worker holds the row, the end of its lease.
    -- Presence rows of a scheduled message: sendAt while they are held. Otherwise NULL.
    next_attempt_at BIGINT,
    lease_until     BIGINT, -- the lease that fences an attempt's outcome
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    -- The provider's id for an accepted hand-over (vendor receipts map back through it).
    provider_id     TEXT,
    UNIQUE (message_seq, receiver, channel)
);
CREATE INDEX deliveries_receiver ON deliveries (receiver, channel, message_seq);
-- Replay and collect read only undelivered rows: keep that index small.
CREATE INDEX deliveries_undelivered ON deliveries (receiver, channel, message_seq) WHERE status < 2;
-- The outbox: pending provider rows. Presence rows leave next_attempt_at NULL (or are
-- held briefly), so they rarely enter this index.
CREATE INDEX deliveries_due ON deliveries (channel, next_attempt_at)
    WHERE status = 0 AND next_attempt_at IS NOT NULL;
CREATE INDEX deliveries_provider ON deliveries (channel, provider_id) WHERE provider_id IS NOT NULL;
-- Deliberately no index on status or channel alone: listings filter deliveries through
-- the (message_seq, …) unique index, and every index costs each of a broadcast's rows.

-- Idempotency-Key → the message it created (kept 24 h). Inserted with ON CONFLICT in the
-- message's transaction, so two nodes racing on one key create one message.
CREATE TABLE idempotency_keys (
    key          TEXT   PRIMARY KEY,
    request_hash TEXT   NOT NULL,
    message_id   TEXT   NOT NULL,
    deliveries   BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Addresses and preferences used by non-WebSocket channels.
CREATE TABLE recipients (
    user_id        TEXT PRIMARY KEY,
    name           TEXT,
    email          TEXT,
    phone          TEXT,
    wechat_open_id TEXT,
    devices        TEXT   NOT NULL DEFAULT '[]',
    preferences    TEXT   NOT NULL DEFAULT '{}',
    updated_at     BIGINT NOT NULL
);

-- Sends claimed per channel instance and quota window (window_start: ms since epoch).
-- Claims lock this row and count here in the same transaction, so a quota holds across
-- restarts and across nodes.
CREATE TABLE quota_usage (
    channel      TEXT   NOT NULL,
    window_start BIGINT NOT NULL,
    used         BIGINT NOT NULL,
    PRIMARY KEY (channel, window_start)
);

-- Push devices: a user's registrations per platform. A token is unique per platform.
CREATE TABLE devices (
    id                 BIGSERIAL PRIMARY KEY,
    user_id            TEXT    NOT NULL,
    platform           TEXT    NOT NULL,   -- fcm | apns | webpush
    token              TEXT    NOT NULL,   -- FCM/APNs token, or the Web Push subscription JSON
    name               TEXT,
    active             BOOLEAN NOT NULL DEFAULT TRUE,
    deactivated_at     BIGINT,             -- set when a provider said the token is gone
    deactivated_reason TEXT,
    created_at         BIGINT  NOT NULL,
    updated_at         BIGINT  NOT NULL,
    UNIQUE (platform, token)
);
CREATE INDEX devices_user ON devices (user_id, platform);

-- Timers, one table for every "do something at this time" the dispatcher owes:
--   kind 0 release: at sendAt, push the held presence deliveries of the message;
--   kind 1 expire:  at expiresAt, fail what is still undelivered (`expired`);
--   kind 2 route:   one failover chain per (message, receiver); `step`, `step_started_at`,
--                   `state` and `log` are its progress, so a restart resumes where it stood.
-- `due_at` NULL = not due. A worker claims due rows (FOR UPDATE SKIP LOCKED) by moving
-- `due_at` to the end of its lease, so a row whose worker died comes due again; its writes
-- are fenced by that value.
CREATE TABLE schedule (
    id              BIGSERIAL PRIMARY KEY,
    message_seq     BIGINT NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
    kind            BIGINT NOT NULL,
    receiver        TEXT   NOT NULL DEFAULT '',   -- route: whose chain; '' for message timers
    due_at          BIGINT,
    state           BIGINT NOT NULL DEFAULT 0,    -- route: 0 running, 1 succeeded, 2 exhausted, 3 cancelled
    step            BIGINT NOT NULL DEFAULT -1,   -- route: the current step (-1: not started)
    step_started_at BIGINT,
    log             JSONB  NOT NULL DEFAULT '[]', -- route: what happened and why
    UNIQUE (message_seq, kind, receiver)
);
CREATE INDEX schedule_due ON schedule (due_at) WHERE due_at IS NOT NULL;

-- A delivery whose status moves makes its receiver's running route due at once (0 sorts
-- first), in the same transaction: an ack, a failure or a hand-over is never missed, even
-- across a restart. A route whose worker holds it loses its lease this way and is
-- evaluated again.
CREATE FUNCTION deliveries_route_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE schedule SET due_at = 0
     WHERE message_seq = NEW.message_seq AND kind = 2 AND receiver = NEW.receiver AND state = 0;
    RETURN NULL;
END;
$$;

CREATE TRIGGER deliveries_route_event AFTER UPDATE OF status ON deliveries
    FOR EACH ROW WHEN (NEW.status <> OLD.status)
    EXECUTE FUNCTION deliveries_route_event();
