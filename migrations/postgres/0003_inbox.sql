-- The notification center (docs/api.md §6): SQLite's 0007 (see there). Inbox state per
-- receiver and message beside the delivery status, and counters kept by triggers so counts
-- are a lookup, not a scan.

-- Bits, on `websocket` deliveries: 1 seen, 2 read (implies seen), 4 archived, 8 deleted by
-- the receiver. A `read` receipt sets 1|2; "mark unread" clears 2 while the status stays.
-- (A constant default: no table rewrite.)
ALTER TABLE deliveries ADD COLUMN inbox BIGINT NOT NULL DEFAULT 0;

-- Per receiver, over its *visible* websocket delivery rows: released (next_attempt_at
-- NULL), not failed, not archived, not deleted. Broadcast members without a row of their
-- own are counted on read (src/store/postgres/inbox.rs).
CREATE TABLE inbox_counts (
    receiver TEXT   PRIMARY KEY,
    total    BIGINT NOT NULL DEFAULT 0,
    unseen   BIGINT NOT NULL DEFAULT 0,
    unread   BIGINT NOT NULL DEFAULT 0
);

-- Old `read` receipts become the inbox's read state; then the counters of what exists.
UPDATE deliveries SET inbox = 3 WHERE channel = 'websocket' AND status = 3;
INSERT INTO inbox_counts (receiver, total, unseen, unread)
SELECT receiver, count(*), count(*) FILTER (WHERE (inbox & 1) = 0),
       count(*) FILTER (WHERE (inbox & 2) = 0)
  FROM deliveries
 WHERE channel = 'websocket' AND next_attempt_at IS NULL AND status <> 4
 GROUP BY receiver;

-- Locking (src/store/postgres/mod.rs, "Lock order"): a counter row is locked by the
-- transaction that changes it until it commits. Inserts and deletes add or take their
-- counters once per statement and receiver, in receiver order (`COLLATE "C"`, byte order,
-- as the store sorts), whatever the order of the rows: a message to many receivers, a
-- spill, a cascade or a prune locks its counters in one order. Writers that change rows of
-- several receivers in other ways lock the counters first, in the same order
-- (`inbox::lock_counts`), so the per-row update trigger only re-takes locks they hold.

CREATE FUNCTION inbox_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inbox_counts AS c (receiver, total, unseen, unread)
    SELECT receiver, count(*), count(*) FILTER (WHERE (inbox & 1) = 0),
           count(*) FILTER (WHERE (inbox & 2) = 0)
      FROM inserted
     WHERE channel = 'websocket' AND next_attempt_at IS NULL AND status <> 4
       AND (inbox & 12) = 0
     GROUP BY receiver
     ORDER BY receiver COLLATE "C"
    ON CONFLICT (receiver) DO UPDATE SET total = c.total + EXCLUDED.total,
        unseen = c.unseen + EXCLUDED.unseen, unread = c.unread + EXCLUDED.unread;
    RETURN NULL;
END;
$$;

CREATE TRIGGER deliveries_inbox_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION inbox_counts_insert();

-- Fires for a message's cascade too (the cascade is such a statement).
CREATE FUNCTION inbox_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    o RECORD;
BEGIN
    FOR o IN
        SELECT receiver, count(*) AS total, count(*) FILTER (WHERE (inbox & 1) = 0) AS unseen,
               count(*) FILTER (WHERE (inbox & 2) = 0) AS unread
          FROM deleted
         WHERE channel = 'websocket' AND next_attempt_at IS NULL AND status <> 4
           AND (inbox & 12) = 0
         GROUP BY receiver
         ORDER BY receiver COLLATE "C"
    LOOP
        UPDATE inbox_counts SET total = total - o.total, unseen = unseen - o.unseen,
            unread = unread - o.unread
         WHERE receiver = o.receiver;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER deliveries_inbox_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION inbox_counts_delete();

-- Per row, and only when the entry's contribution can change: a release, a failure, new
-- flags. pending → sent → delivered → read alone changes nothing here, and a change that
-- nets to zero (an archived entry failing) takes no lock.
CREATE FUNCTION inbox_counts_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was_in BOOLEAN := OLD.next_attempt_at IS NULL AND OLD.status <> 4 AND (OLD.inbox & 12) = 0;
    now_in BOOLEAN := NEW.next_attempt_at IS NULL AND NEW.status <> 4 AND (NEW.inbox & 12) = 0;
    d_total  BIGINT := now_in::int - was_in::int;
    d_unseen BIGINT := (now_in AND (NEW.inbox & 1) = 0)::int - (was_in AND (OLD.inbox & 1) = 0)::int;
    d_unread BIGINT := (now_in AND (NEW.inbox & 2) = 0)::int - (was_in AND (OLD.inbox & 2) = 0)::int;
BEGIN
    IF d_total = 0 AND d_unseen = 0 AND d_unread = 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO inbox_counts AS c (receiver, total, unseen, unread)
    VALUES (NEW.receiver, d_total, d_unseen, d_unread)
    ON CONFLICT (receiver) DO UPDATE SET total = c.total + EXCLUDED.total,
        unseen = c.unseen + EXCLUDED.unseen, unread = c.unread + EXCLUDED.unread;
    RETURN NULL;
END;
$$;

-- Named to sort before `deliveries_route_event` (triggers on one event fire by name): a
-- row's counter is taken before its route timer, the lock order.
--
-- Not while the transaction has set `herald.inbox_bulk` (`set_config(…, true)`): an inbox
-- change of one receiver's many rows (mark-all) counts its own delta and applies it once.
-- Updating one counter row per changed row would leave a chain of 10,000 row versions in
-- one transaction, each update walking it (mark-all on 10,000 took 32 s that way).
CREATE TRIGGER deliveries_inbox_update AFTER UPDATE OF status, next_attempt_at, inbox
    ON deliveries FOR EACH ROW
    WHEN (NEW.channel = 'websocket' AND (NEW.inbox <> OLD.inbox
          OR (NEW.next_attempt_at IS NULL) <> (OLD.next_attempt_at IS NULL)
          OR (NEW.status = 4) <> (OLD.status = 4))
          AND current_setting('herald.inbox_bulk', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION inbox_counts_update();

-- Retention (`inbox.retention`) finds old messages by time.
CREATE INDEX messages_created ON messages (created_at);
