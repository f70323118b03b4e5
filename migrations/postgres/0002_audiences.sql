-- Compact audiences and the presence history: SQLite's 0006 (see there and
-- ARCHITECTURE.md, "Compact audiences"). The blobs are BYTEA stored uncompressed
-- (EXTERNAL): writers read and rewrite them whole (compression would cost every write),
-- and readers fetch one member's state byte with `substring`, which reads only the
-- TOAST chunk that holds it.
CREATE TABLE audiences (
    message_seq BIGINT  PRIMARY KEY REFERENCES messages (seq) ON DELETE CASCADE,
    channel     TEXT    NOT NULL,
    taken_at    BIGINT  NOT NULL,
    members     BYTEA   NOT NULL,
    state       BYTEA   NOT NULL,
    times       BYTEA   NOT NULL,
    pending     BIGINT  NOT NULL,
    sent        BIGINT  NOT NULL,
    delivered   BIGINT  NOT NULL,
    read        BIGINT  NOT NULL,
    failed      BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
ALTER TABLE audiences ALTER COLUMN members SET STORAGE EXTERNAL;
ALTER TABLE audiences ALTER COLUMN state SET STORAGE EXTERNAL;
ALTER TABLE audiences ALTER COLUMN times SET STORAGE EXTERNAL;
CREATE INDEX audiences_open ON audiences (channel, message_seq) WHERE pending + sent > 0;
CREATE INDEX audiences_taken ON audiences (taken_at);

CREATE TABLE presence (
    session  TEXT    PRIMARY KEY,
    receiver TEXT    NOT NULL,
    node     TEXT    NOT NULL,
    since    BIGINT  NOT NULL,
    until    BIGINT
);
CREATE INDEX presence_receiver ON presence (receiver, since);
CREATE INDEX presence_open ON presence (node) WHERE until IS NULL;

-- The probe while writes fail (disk full, lost connections …): `TRUNCATE` (new, empty files)
-- and a 16 KiB insert in one committed transaction tell when writing works again; the
-- column is stored uncompressed so that the insert must allocate TOAST pages too. Holds at
-- most one row.
CREATE TABLE herald_probe (data BYTEA NOT NULL);
ALTER TABLE herald_probe ALTER COLUMN data SET STORAGE EXTERNAL;
