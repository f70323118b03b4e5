-- Webhooks (docs/webhooks.md): SQLite's 0008 (see there). Endpoints, and an outbox of
-- events written by triggers in the same transaction as the change that causes them.
-- No enabled endpoint that wants an event type: each trigger function stops at one lookup
-- in `webhooks` and writes nothing (a trigger's WHEN clause can not hold a subquery here).
--
-- Event bits (webhook::EventType): 1 message.accepted, 2 delivery.sent, 4 .delivered,
-- 8 .read, 16 .failed (so a status's bit is 1 << status), 32 route.succeeded,
-- 64 route.exhausted, 128 device.deactivated.
--
-- Locking (src/store/postgres/mod.rs, "Lock order"): an event's insert takes a key-share
-- lock on its endpoint's row (the foreign key). Only deleting the endpoint conflicts with
-- it, and a delete holds nothing a writer of messages, deliveries, routes or devices waits
-- for, so where the triggers below come in those writers' order does not matter. Writers
-- of existing events (outcomes, redelivery) lock their endpoints' rows first; claims skip
-- locked events and never wait.

CREATE TABLE webhooks (
    id              TEXT    PRIMARY KEY,          -- wh_… (API) or the [[webhooks]] id
    url             TEXT    NOT NULL,
    description     TEXT    NOT NULL DEFAULT '',
    events          BIGINT  NOT NULL,             -- bit per event type (see above)
    channels        TEXT,                         -- JSON array of channel instances; NULL: all
    types           TEXT,                         -- JSON array of message types; NULL: all
    senders         TEXT,                         -- JSON array of senders; NULL: all
    secret          TEXT    NOT NULL,             -- whsec_…
    old_secret      TEXT,                         -- during a rotation, also signs until old_until
    old_until       BIGINT,                       -- ms
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason TEXT,
    failing_since   BIGINT,                       -- ms: first failed attempt since the last success
    source          TEXT    NOT NULL DEFAULT 'api', -- api | config
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL
);
CREATE INDEX webhooks_enabled ON webhooks (enabled, events);

CREATE TABLE webhook_events (
    id          BIGSERIAL PRIMARY KEY,             -- webhook-id is evt_<id>
    endpoint_id TEXT   NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    type        TEXT   NOT NULL,                   -- e.g. delivery.failed
    okey        TEXT,                              -- ordering key (SQLite's 0008); NULL: none
    mkey        TEXT,                              -- the message's own key: wait for it too
    data        TEXT   NOT NULL,                   -- JSON object
    created_at  BIGINT NOT NULL,                   -- ms: when the change happened
    state       BIGINT NOT NULL DEFAULT 0,         -- 0 pending, 1 delivered, 2 failed
    attempts    BIGINT NOT NULL DEFAULT 0,
    due_at      BIGINT NOT NULL,                   -- ms; 0: now
    lease_until BIGINT,                            -- ms: a worker holds it until then
    unreached   BOOLEAN NOT NULL DEFAULT FALSE,    -- the last attempt got no answer at all
    updated_at  BIGINT NOT NULL
);
-- Claims walk an endpoint's pending events oldest first and stop after a batch: by id, so
-- a backlog of any size costs only the leased and held-back rows at its front.
CREATE INDEX webhook_events_pending ON webhook_events (endpoint_id, id) WHERE state = 0;
CREATE INDEX webhook_events_order ON webhook_events (endpoint_id, okey, id) WHERE state = 0;
CREATE INDEX webhook_events_endpoint ON webhook_events (endpoint_id, created_at);
CREATE INDEX webhook_events_done ON webhook_events (updated_at) WHERE state <> 0;

CREATE TABLE webhook_attempts (
    id          BIGSERIAL PRIMARY KEY,
    event_id    BIGINT NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    endpoint_id TEXT   NOT NULL,
    at          BIGINT NOT NULL,                   -- ms
    latency_ms  BIGINT NOT NULL,
    code        BIGINT,                            -- HTTP status; NULL: no response
    response    TEXT,                              -- first bytes of the body
    error       TEXT                               -- why it failed, when it did
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id);
CREATE INDEX webhook_attempts_event ON webhook_attempts (event_id);

-- Deliveries' status moves (rows by the trigger below, broadcast members by the store's
-- audience writer, many in one call): each fans out to every enabled endpoint that wants
-- it. The one place the `delivery.*` filter and payload are defined. Events are numbered
-- in the order of the arrays (a member moving twice in one transaction: in that order).
CREATE FUNCTION webhook_delivery_events(p_seqs BIGINT[], p_delivery_ids BIGINT[],
                                        p_receivers TEXT[], p_channels TEXT[],
                                        p_statuses BIGINT[], p_reasons TEXT[],
                                        p_attempts BIGINT[], p_at BIGINT)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (endpoint_id, type, okey, mkey, data, created_at, due_at,
                                updated_at)
    SELECT w.id, 'delivery.' || c.name, m.id || '/' || c.delivery_id, m.id,
           json_build_object('messageId', m.id, 'deliveryId', c.delivery_id,
                             'recipient', c.receiver, 'channel', c.channel,
                             'status', c.name,
                             'reason', CASE WHEN c.status = 4 THEN c.reason END,
                             'attempts', c.attempts, 'messageType', m.msg_type,
                             'sender', m.sender, 'template', m.template)::text,
           p_at, 0, p_at
      FROM (SELECT t.*, CASE t.status WHEN 1 THEN 'sent' WHEN 2 THEN 'delivered'
                                      WHEN 3 THEN 'read' ELSE 'failed' END AS name
              FROM unnest(p_seqs, p_delivery_ids, p_receivers, p_channels, p_statuses,
                          p_reasons, p_attempts) WITH ORDINALITY
                   AS t (seq, delivery_id, receiver, channel, status, reason, attempts, n)) c
      JOIN messages m ON m.seq = c.seq
      JOIN webhooks w
        ON w.enabled
       AND (w.events & (1::bigint << c.status::int)) <> 0
       AND (w.channels IS NULL OR w.channels::jsonb ? c.channel)
       AND (w.types IS NULL OR w.types::jsonb @> to_jsonb(m.msg_type))
       AND (w.senders IS NULL OR w.senders::jsonb ? m.sender)
     ORDER BY c.n, w.id;
END;
$$;

-- A delivery row whose status moved. Per row: a trigger on `UPDATE OF status` can not have
-- a transition table, and one without the column list would capture every update.
CREATE FUNCTION webhook_delivery_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks
                    WHERE enabled AND (events & (1::bigint << NEW.status::int)) <> 0) THEN
        RETURN NULL;
    END IF;
    PERFORM webhook_delivery_events(ARRAY[NEW.message_seq], ARRAY[NEW.id],
                                    ARRAY[NEW.receiver], ARRAY[NEW.channel],
                                    ARRAY[NEW.status], ARRAY[NEW.last_error],
                                    ARRAY[NEW.attempts], NEW.updated_at);
    RETURN NULL;
END;
$$;

-- A statement's delivery rows born failed (`no_address`, `opted_out` …): one call per
-- statement over its transition table, which PostgreSQL shares with the inbox counters'
-- insert trigger (0003), so capturing it costs nothing more.
CREATE FUNCTION webhook_deliveries_born_failed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled AND (events & 16) <> 0) THEN
        RETURN NULL;
    END IF;
    PERFORM webhook_delivery_events(array_agg(message_seq ORDER BY id), array_agg(id ORDER BY id),
                                    array_agg(receiver ORDER BY id), array_agg(channel ORDER BY id),
                                    array_agg(status ORDER BY id), array_agg(last_error ORDER BY id),
                                    array_agg(attempts ORDER BY id), max(updated_at))
       FROM born WHERE status = 4
     HAVING count(*) > 0;
    RETURN NULL;
END;
$$;

-- Named to sort after the other triggers of deliveries (those on one event fire by name).
CREATE TRIGGER deliveries_webhook_born_failed AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS born
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_deliveries_born_failed();

CREATE TRIGGER deliveries_webhook_moved AFTER UPDATE OF status ON deliveries
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION webhook_delivery_row();

CREATE FUNCTION webhook_message_accepted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled AND (events & 1) <> 0) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_events (endpoint_id, type, okey, mkey, data, created_at, due_at,
                                updated_at)
    SELECT w.id, 'message.accepted', NEW.id, NULL,
           json_build_object('messageId', NEW.id, 'messageType', NEW.msg_type,
                             'sender', NEW.sender, 'template', NEW.template,
                             'sendAt', to_char(to_timestamp(NEW.send_at / 1000.0) AT TIME ZONE 'UTC',
                                               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                             'expiresAt', to_char(to_timestamp(NEW.expires_at / 1000.0) AT TIME ZONE 'UTC',
                                                  'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text,
           NEW.created_at, 0, NEW.created_at
      FROM webhooks w
     WHERE w.enabled AND (w.events & 1) <> 0
       AND (w.types IS NULL OR w.types::jsonb @> to_jsonb(NEW.msg_type))
       AND (w.senders IS NULL OR w.senders::jsonb ? NEW.sender)
     ORDER BY w.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_webhook_accepted AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION webhook_message_accepted();

-- A failover chain ended: state 0 (running) → 1 (succeeded) or 2 (exhausted).
CREATE FUNCTION webhook_route_ended() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bit BIGINT := 16::bigint << NEW.state::int;
    now_ms BIGINT;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled AND (events & bit) <> 0) THEN
        RETURN NULL;
    END IF;
    now_ms := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    INSERT INTO webhook_events (endpoint_id, type, okey, mkey, data, created_at, due_at,
                                updated_at)
    SELECT w.id,
           CASE NEW.state WHEN 1 THEN 'route.succeeded' ELSE 'route.exhausted' END,
           m.id || '/route/' || NEW.receiver, m.id,
           json_build_object('messageId', m.id, 'recipient', NEW.receiver,
                             'state', CASE NEW.state WHEN 1 THEN 'succeeded'
                                                     ELSE 'exhausted' END,
                             'log', NEW.log, 'messageType', m.msg_type,
                             'sender', m.sender, 'template', m.template)::text,
           now_ms, 0, now_ms
      FROM webhooks w JOIN messages m ON m.seq = NEW.message_seq
     WHERE w.enabled AND (w.events & bit) <> 0
       AND (w.types IS NULL OR w.types::jsonb @> to_jsonb(m.msg_type))
       AND (w.senders IS NULL OR w.senders::jsonb ? m.sender)
     ORDER BY w.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER schedule_webhook_route_ended AFTER UPDATE OF state ON schedule
    FOR EACH ROW WHEN (NEW.kind = 2 AND OLD.state = 0 AND NEW.state IN (1, 2))
    EXECUTE FUNCTION webhook_route_ended();

CREATE FUNCTION webhook_device_deactivated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled AND (events & 128) <> 0) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_events (endpoint_id, type, okey, mkey, data, created_at, due_at,
                                updated_at)
    SELECT w.id, 'device.deactivated', NULL, NULL,
           json_build_object('deviceId', NEW.id, 'recipient', NEW.user_id,
                             'platform', NEW.platform, 'reason', NEW.deactivated_reason)::text,
           NEW.updated_at, 0, NEW.updated_at
      FROM webhooks w
     WHERE w.enabled AND (w.events & 128) <> 0
     ORDER BY w.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER devices_webhook_deactivated AFTER UPDATE OF active ON devices
    FOR EACH ROW WHEN (OLD.active AND NOT NEW.active)
    EXECUTE FUNCTION webhook_device_deactivated();
