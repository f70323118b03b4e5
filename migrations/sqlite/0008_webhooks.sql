-- Webhooks (docs/webhooks.md): endpoints, and an outbox of events written by triggers in
-- the same transaction as the change that causes them. No enabled endpoint that wants an
-- event type: the triggers' WHEN clauses stop at one indexed lookup and write nothing.

CREATE TABLE webhooks (
    id              TEXT    PRIMARY KEY,          -- wh_… (API) or the [[webhooks]] id
    url             TEXT    NOT NULL,
    description     TEXT    NOT NULL DEFAULT '',
    events          INTEGER NOT NULL,             -- bit per event type (src/model.rs webhook::EventType)
    channels        TEXT,                         -- JSON array of channel instances; NULL: all
    types           TEXT,                         -- JSON array of message types; NULL: all
    senders         TEXT,                         -- JSON array of senders; NULL: all
    secret          TEXT    NOT NULL,             -- whsec_…
    old_secret      TEXT,                         -- during a rotation, also signs until old_until
    old_until       INTEGER,                      -- ms
    enabled         INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    failing_since   INTEGER,                      -- ms: first failed attempt since the last success
    source          TEXT    NOT NULL DEFAULT 'api', -- api | config
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX webhooks_enabled ON webhooks (enabled, events);

CREATE TABLE webhook_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT, -- webhook-id is evt_<id>
    endpoint_id TEXT    NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    type        TEXT    NOT NULL,                  -- e.g. delivery.failed
    okey        TEXT,                              -- ordering key (below); NULL: none
    mkey        TEXT,                              -- the message's own key: wait for it too
    data        TEXT    NOT NULL,                  -- JSON object
    created_at  INTEGER NOT NULL,                  -- ms: when the change happened
    state       INTEGER NOT NULL DEFAULT 0,        -- 0 pending, 1 delivered, 2 failed
    attempts    INTEGER NOT NULL DEFAULT 0,
    due_at      INTEGER NOT NULL,                  -- ms; 0: now
    lease_until INTEGER,                           -- ms: a worker holds it until then
    unreached   INTEGER NOT NULL DEFAULT 0,        -- 1: the last attempt got no answer at all
    updated_at  INTEGER NOT NULL
);
-- Claims walk an endpoint's pending events oldest first and stop after a batch: by id, so
-- a backlog of any size costs only the leased and held-back rows at its front.
CREATE INDEX webhook_events_pending ON webhook_events (endpoint_id, id) WHERE state = 0;
-- Order where it matters: an event is not sent while an earlier pending event of the
-- endpoint has its `okey` or its `mkey`. okey is `<message id>` for message.accepted,
-- `<message id>/<delivery id>` for a delivery's events, `<message id>/route/<receiver>` for a
-- chain's; mkey is the message id. So each delivery's events arrive in order, all after
-- the message's message.accepted, and different deliveries go concurrently.
CREATE INDEX webhook_events_order ON webhook_events (endpoint_id, okey, id) WHERE state = 0;
CREATE INDEX webhook_events_endpoint ON webhook_events (endpoint_id, created_at);
CREATE INDEX webhook_events_done ON webhook_events (updated_at) WHERE state <> 0;

CREATE TABLE webhook_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    INTEGER NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    endpoint_id TEXT    NOT NULL,
    at          INTEGER NOT NULL,                  -- ms
    latency_ms  INTEGER NOT NULL,
    code        INTEGER,                           -- HTTP status; NULL: no response
    response    TEXT,                              -- first bytes of the body
    error       TEXT                               -- why it failed, when it did
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id);
CREATE INDEX webhook_attempts_event ON webhook_attempts (event_id);

-- A delivery's status moved (rows by the triggers below, broadcast members by the store):
-- one insert here fans out to every endpoint that wants it. Not a table: nothing is kept.
CREATE VIEW webhook_delivery_changes (message_seq, delivery_id, receiver, channel, status,
                                      reason, attempts, at) AS
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL WHERE 0;

CREATE TRIGGER webhook_delivery_fanout INSTEAD OF INSERT ON webhook_delivery_changes
BEGIN
    INSERT INTO webhook_events (endpoint_id, type, okey, mkey, data, created_at, due_at,
                                updated_at)
    SELECT w.id,
           'delivery.' || CASE NEW.status WHEN 1 THEN 'sent' WHEN 2 THEN 'delivered'
                                          WHEN 3 THEN 'read' ELSE 'failed' END,
           m.id || '/' || NEW.delivery_id, m.id,
           json_object('messageId', m.id, 'deliveryId', NEW.delivery_id,
                       'recipient', NEW.receiver, 'channel', NEW.channel,
                       'status', CASE NEW.status WHEN 1 THEN 'sent' WHEN 2 THEN 'delivered'
                                                 WHEN 3 THEN 'read' ELSE 'failed' END,
                       'reason', CASE WHEN NEW.status = 4 THEN NEW.reason END,
                       'attempts', NEW.attempts, 'messageType', m.msg_type,
                       'sender', m.sender, 'template', m.template),
           NEW.at, 0, NEW.at
      FROM webhooks w JOIN messages m ON m.seq = NEW.message_seq
     WHERE w.enabled = 1
       AND (w.events & (1 << NEW.status)) <> 0
       AND (w.channels IS NULL OR EXISTS (SELECT 1 FROM json_each(w.channels) c
                                           WHERE c.value = NEW.channel))
       AND (w.types IS NULL OR EXISTS (SELECT 1 FROM json_each(w.types) t
                                        WHERE t.value = m.msg_type))
       AND (w.senders IS NULL OR EXISTS (SELECT 1 FROM json_each(w.senders) s
                                          WHERE s.value = m.sender));
END;

-- Event bits (webhook::EventType): 1 message.accepted, 2 delivery.sent, 4 .delivered,
-- 8 .read, 16 .failed (so a status's bit is 1 << status), 32 route.succeeded,
-- 64 route.exhausted, 128 device.deactivated.

CREATE TRIGGER webhook_delivery_born_failed AFTER INSERT ON deliveries
WHEN NEW.status = 4 AND EXISTS (SELECT 1 FROM webhooks WHERE enabled = 1 AND (events & 16) <> 0)
BEGIN
    INSERT INTO webhook_delivery_changes
    VALUES (NEW.message_seq, NEW.id, NEW.receiver, NEW.channel, 4, NEW.last_error,
            NEW.attempts, NEW.updated_at);
END;

CREATE TRIGGER webhook_delivery_moved AFTER UPDATE OF status ON deliveries
WHEN NEW.status <> OLD.status
     AND EXISTS (SELECT 1 FROM webhooks WHERE enabled = 1 AND (events & (1 << NEW.status)) <> 0)
BEGIN
    INSERT INTO webhook_delivery_changes
    VALUES (NEW.message_seq, NEW.id, NEW.receiver, NEW.channel, NEW.status, NEW.last_error,
            NEW.attempts, NEW.updated_at);
END;

CREATE TRIGGER webhook_message_accepted AFTER INSERT ON messages
WHEN EXISTS (SELECT 1 FROM webhooks WHERE enabled = 1 AND (events & 1) <> 0)
BEGIN
    INSERT INTO webhook_events (endpoint_id, type, okey, mkey, data, created_at, due_at,
                                updated_at)
    SELECT w.id, 'message.accepted', NEW.id, NULL,
           json_object('messageId', NEW.id, 'messageType', NEW.msg_type,
                       'sender', NEW.sender, 'template', NEW.template,
                       'sendAt', strftime('%Y-%m-%dT%H:%M:%fZ', NEW.send_at / 1000.0, 'unixepoch'),
                       'expiresAt', strftime('%Y-%m-%dT%H:%M:%fZ', NEW.expires_at / 1000.0, 'unixepoch')),
           NEW.created_at, 0, NEW.created_at
      FROM webhooks w
     WHERE w.enabled = 1 AND (w.events & 1) <> 0
       AND (w.types IS NULL OR EXISTS (SELECT 1 FROM json_each(w.types) t
                                        WHERE t.value = NEW.msg_type))
       AND (w.senders IS NULL OR EXISTS (SELECT 1 FROM json_each(w.senders) s
                                          WHERE s.value = NEW.sender));
END;

-- A failover chain ended: state 0 (running) → 1 (succeeded) or 2 (exhausted).
CREATE TRIGGER webhook_route_ended AFTER UPDATE OF state ON schedule
WHEN NEW.kind = 2 AND OLD.state = 0 AND NEW.state IN (1, 2)
     AND EXISTS (SELECT 1 FROM webhooks WHERE enabled = 1 AND (events & (16 << NEW.state)) <> 0)
BEGIN
    INSERT INTO webhook_events (endpoint_id, type, okey, mkey, data, created_at, due_at,
                                updated_at)
    SELECT w.id,
           CASE NEW.state WHEN 1 THEN 'route.succeeded' ELSE 'route.exhausted' END,
           m.id || '/route/' || NEW.receiver, m.id,
           json_object('messageId', m.id, 'recipient', NEW.receiver,
                       'state', CASE NEW.state WHEN 1 THEN 'succeeded' ELSE 'exhausted' END,
                       'log', json(NEW.log), 'messageType', m.msg_type,
                       'sender', m.sender, 'template', m.template),
           CAST(unixepoch('subsec') * 1000 AS INTEGER), 0,
           CAST(unixepoch('subsec') * 1000 AS INTEGER)
      FROM webhooks w JOIN messages m ON m.seq = NEW.message_seq
     WHERE w.enabled = 1 AND (w.events & (16 << NEW.state)) <> 0
       AND (w.types IS NULL OR EXISTS (SELECT 1 FROM json_each(w.types) t
                                        WHERE t.value = m.msg_type))
       AND (w.senders IS NULL OR EXISTS (SELECT 1 FROM json_each(w.senders) s
                                          WHERE s.value = m.sender));
END;

CREATE TRIGGER webhook_device_deactivated AFTER UPDATE OF active ON devices
WHEN OLD.active = 1 AND NEW.active = 0
     AND EXISTS (SELECT 1 FROM webhooks WHERE enabled = 1 AND (events & 128) <> 0)
BEGIN
    INSERT INTO webhook_events (endpoint_id, type, okey, mkey, data, created_at, due_at,
                                updated_at)
    SELECT w.id, 'device.deactivated', NULL, NULL,
           json_object('deviceId', NEW.id, 'recipient', NEW.user_id,
                       'platform', NEW.platform, 'reason', NEW.deactivated_reason),
           NEW.updated_at, 0, NEW.updated_at
      FROM webhooks w
     WHERE w.enabled = 1 AND (w.events & 128) <> 0;
END;
