-- The notification center (docs/api.md §6): inbox state per receiver and message, beside
-- the delivery status, and counters maintained by triggers so counts are not a scan.

-- Bits, on `websocket` deliveries: 1 seen, 2 read (implies seen), 4 archived, 8 deleted by
-- the receiver. A `read` receipt sets 1|2; "mark unread" clears 2 while the status stays.
ALTER TABLE deliveries ADD COLUMN inbox INTEGER NOT NULL DEFAULT 0;

-- Per receiver, over its *visible* websocket delivery rows: released (next_attempt_at
-- NULL), not failed, not archived, not deleted. Broadcast members without a row of their
-- own are counted on read (src/store/sqlite/inbox.rs).
CREATE TABLE inbox_counts (
    receiver TEXT    PRIMARY KEY,
    total    INTEGER NOT NULL DEFAULT 0,
    unseen   INTEGER NOT NULL DEFAULT 0,
    unread   INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Old `read` receipts become the inbox's read state; then the counters of what exists.
UPDATE deliveries SET inbox = 3 WHERE channel = 'websocket' AND status = 3;
INSERT INTO inbox_counts (receiver, total, unseen, unread)
SELECT receiver, count(*), sum((inbox & 1) = 0), sum((inbox & 2) = 0) FROM deliveries
 WHERE channel = 'websocket' AND next_attempt_at IS NULL AND status <> 4
 GROUP BY receiver;

CREATE TRIGGER inbox_counts_insert AFTER INSERT ON deliveries
WHEN NEW.channel = 'websocket' AND NEW.next_attempt_at IS NULL AND NEW.status <> 4
     AND (NEW.inbox & 12) = 0
BEGIN
    INSERT INTO inbox_counts (receiver, total, unseen, unread)
    VALUES (NEW.receiver, 1, (NEW.inbox & 1) = 0, (NEW.inbox & 2) = 0)
    ON CONFLICT (receiver) DO UPDATE SET total = total + excluded.total,
        unseen = unseen + excluded.unseen, unread = unread + excluded.unread;
END;

CREATE TRIGGER inbox_counts_delete AFTER DELETE ON deliveries
WHEN OLD.channel = 'websocket' AND OLD.next_attempt_at IS NULL AND OLD.status <> 4
     AND (OLD.inbox & 12) = 0
BEGIN
    UPDATE inbox_counts SET total = total - 1, unseen = unseen - ((OLD.inbox & 1) = 0),
        unread = unread - ((OLD.inbox & 2) = 0)
     WHERE receiver = OLD.receiver;
END;

-- Fires only when the entry's contribution can change: a release, a failure, new flags.
-- pending → sent → delivered → read alone changes nothing here.
CREATE TRIGGER inbox_counts_update AFTER UPDATE OF status, next_attempt_at, inbox ON deliveries
WHEN NEW.channel = 'websocket' AND (NEW.inbox <> OLD.inbox
     OR (NEW.next_attempt_at IS NULL) <> (OLD.next_attempt_at IS NULL)
     OR (NEW.status = 4) <> (OLD.status = 4))
BEGIN
    INSERT INTO inbox_counts (receiver, total, unseen, unread)
    VALUES (NEW.receiver,
        (NEW.next_attempt_at IS NULL AND NEW.status <> 4 AND (NEW.inbox & 12) = 0)
      - (OLD.next_attempt_at IS NULL AND OLD.status <> 4 AND (OLD.inbox & 12) = 0),
        (NEW.next_attempt_at IS NULL AND NEW.status <> 4 AND (NEW.inbox & 13) = 0)
      - (OLD.next_attempt_at IS NULL AND OLD.status <> 4 AND (OLD.inbox & 13) = 0),
        (NEW.next_attempt_at IS NULL AND NEW.status <> 4 AND (NEW.inbox & 14) = 0)
      - (OLD.next_attempt_at IS NULL AND OLD.status <> 4 AND (OLD.inbox & 14) = 0))
    ON CONFLICT (receiver) DO UPDATE SET total = total + excluded.total,
        unseen = unseen + excluded.unseen, unread = unread + excluded.unread;
END;

-- Retention (`inbox.retention`) finds old messages by time.
CREATE INDEX messages_created ON messages (created_at);
