-- Provider outbox and templates.

-- A message sent with a template keeps its name, data and what was rendered per channel
-- family ({"email": {"subject": …, "html": …, "txt": …}, …}) so retries send exactly what
-- was validated at acceptance, even if the template files change later.
ALTER TABLE messages ADD COLUMN template TEXT;
ALTER TABLE messages ADD COLUMN data TEXT;      -- JSON object
ALTER TABLE messages ADD COLUMN rendered TEXT;  -- JSON object: family → part → text

-- The outbox: provider-channel deliveries that are pending carry `next_attempt_at` (due
-- time; while a worker holds the row it is the end of that worker's lease). Presence
-- channels (WebSocket) leave it NULL, so they never enter this index.
CREATE INDEX deliveries_due ON deliveries (channel, next_attempt_at)
    WHERE status = 0 AND next_attempt_at IS NOT NULL;
