-- Push devices: a user's registrations per platform. A token is unique per platform: a
-- token registered again (the same user, or a device that changed hands) is the same row.
CREATE TABLE devices (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            TEXT    NOT NULL,
    platform           TEXT    NOT NULL,   -- fcm | apns | webpush
    token              TEXT    NOT NULL,   -- FCM/APNs token, or the Web Push subscription JSON
    name               TEXT,
    active             INTEGER NOT NULL DEFAULT 1,
    deactivated_at     INTEGER,            -- ms; set when a provider said the token is gone
    deactivated_reason TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    UNIQUE (platform, token)
);
CREATE INDEX devices_user ON devices (user_id, platform);
