-- Compact audiences and the presence history (ARCHITECTURE.md, "Compact audiences").

-- The presence deliveries of a message with many receivers (a broadcast) in one row:
-- `members` (sorted ids), `state` (one byte per member) and `times` (u32 per member); the
-- layout is in src/store/audience.rs. The counts are those of the members that are not
-- spilled; `pending + sent > 0` makes the audience *open*: replay and the welcome frame's
-- `pending` look at open audiences, and the spill timer (schedule kind 3) gives the members
-- still undelivered when its window ends delivery rows of their own.
CREATE TABLE audiences (
    message_seq INTEGER PRIMARY KEY REFERENCES messages (seq) ON DELETE CASCADE,
    channel     TEXT    NOT NULL,
    taken_at    INTEGER NOT NULL,  -- ms, wall clock of the node that took it
    members     BLOB    NOT NULL,
    state       BLOB    NOT NULL,
    times       BLOB    NOT NULL,
    pending     INTEGER NOT NULL,
    sent        INTEGER NOT NULL,
    delivered   INTEGER NOT NULL,
    read        INTEGER NOT NULL,
    failed      INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX audiences_open ON audiences (channel, message_seq) WHERE pending + sent > 0;
CREATE INDEX audiences_taken ON audiences (taken_at);

-- One row per WebSocket session: when it was open (ms, wall clock of its node). The
-- history of a receiver's broadcasts (inbox, `?receiver=` filters) looks for audiences
-- taken while one of its sessions was open. `until` NULL: still open, or its node died
-- (closed when the node starts again).
CREATE TABLE presence (
    session  TEXT    PRIMARY KEY,
    receiver TEXT    NOT NULL,
    node     TEXT    NOT NULL,
    since    INTEGER NOT NULL,
    until    INTEGER
);
CREATE INDEX presence_receiver ON presence (receiver, since);
CREATE INDEX presence_open ON presence (node) WHERE until IS NULL;

-- The writer's probe while writes fail (disk full …): a small insert and delete in one
-- committed transaction tells when writing works again. Always empty.
CREATE TABLE herald_probe (data BLOB);
