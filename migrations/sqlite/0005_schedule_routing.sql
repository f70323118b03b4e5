-- Scheduling (sendAt / expiresAt) and failover routing.

ALTER TABLE messages ADD COLUMN send_at INTEGER;     -- ms; NULL = sent at acceptance
ALTER TABLE messages ADD COLUMN expires_at INTEGER;  -- ms; undelivered deliveries fail `expired`
ALTER TABLE messages ADD COLUMN routing TEXT;        -- JSON: the failover policy, if any

-- Presence deliveries of a scheduled message are born *held*: `next_attempt_at` = sendAt.
-- Replay, the inbox and collect read only rows with `next_attempt_at IS NULL`; the release
-- timer clears it at sendAt and pushes them.

-- Timers, one table for every "do something at this time" the dispatcher owes:
--   kind 0 release: at sendAt, push the held presence deliveries of the message;
--   kind 1 expire:  at expiresAt, fail what is still undelivered (`expired`);
--   kind 2 route:   one failover chain per (message, receiver); `step`, `step_started_at`,
--                   `state` and `log` are its progress, so a restart resumes where it stood.
-- `due_at` NULL = not due (a finished route, or one waiting for an event). A worker claims
-- due rows by moving `due_at` to the end of its lease (as the provider outbox does), so a
-- row whose worker died comes due again; its writes are fenced by that value.
CREATE TABLE schedule (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_seq     INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
    kind            INTEGER NOT NULL,
    receiver        TEXT    NOT NULL DEFAULT '',   -- route: whose chain; '' for message timers
    due_at          INTEGER,
    state           INTEGER NOT NULL DEFAULT 0,    -- route: 0 running, 1 succeeded, 2 exhausted, 3 cancelled
    step            INTEGER NOT NULL DEFAULT -1,   -- route: the current step (-1: not started)
    step_started_at INTEGER,
    log             TEXT    NOT NULL DEFAULT '[]', -- route: JSON array of what happened and why
    UNIQUE (message_seq, kind, receiver)
);
CREATE INDEX schedule_due ON schedule (due_at) WHERE due_at IS NOT NULL;

-- A delivery whose status moves makes its receiver's running route due at once (0 sorts
-- first), in the same transaction: an ack, a failure or a hand-over is never missed, even
-- across a restart. A route whose worker holds it loses its lease this way and is
-- evaluated again.
CREATE TRIGGER deliveries_route_event AFTER UPDATE OF status ON deliveries
WHEN NEW.status <> OLD.status
BEGIN
    UPDATE schedule SET due_at = 0
     WHERE message_seq = NEW.message_seq AND kind = 2 AND receiver = NEW.receiver AND state = 0;
END;
