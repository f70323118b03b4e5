-- Provider ids (vendor receipts map back to deliveries) and daily quotas.

-- The provider's id for an accepted delivery (SMS BizId / SerialNo / Twilio sid, WeChat
-- msgid …): shown to operators and used to apply vendor receipts.
ALTER TABLE deliveries ADD COLUMN provider_id TEXT;
CREATE INDEX deliveries_provider ON deliveries (channel, provider_id) WHERE provider_id IS NOT NULL;

-- Sends claimed per channel instance and quota window (window_start: ms since epoch).
-- Claims count here in the same transaction, so a quota holds across restarts.
CREATE TABLE quota_usage (
    channel      TEXT    NOT NULL,
    window_start INTEGER NOT NULL,
    used         INTEGER NOT NULL,
    PRIMARY KEY (channel, window_start)
);
