-- Version 6: users, each with their own key (stored only as its SHA-256: keys are 32 random bytes), and
-- limits; a conversation and its messages belong to the user whose key created them (user_id). 0 is the
-- built-in admin (CHAT_API_KEY, or the keyless single user): the conversations that exist already are its.
-- user_usage holds the shared counters the limits read (every worker and host on one database sees
-- them): requests this minute, requests and tokens this UTC day. history.sqlite.init_db runs this in one transaction.
CREATE TABLE users (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    name                TEXT NOT NULL UNIQUE,
    key_hash            TEXT NOT NULL UNIQUE,
    is_admin            INTEGER NOT NULL DEFAULT 0,
    requests_per_minute INTEGER,
    tokens_per_day      INTEGER,
    created_at          REAL NOT NULL,
    last_used_at        REAL
);
CREATE TABLE user_usage (
    user_id      INTEGER NOT NULL,
    kind         TEXT NOT NULL,      -- requests_minute, requests_day, tokens_day
    window_start INTEGER NOT NULL,   -- the window's first second (epoch)
    used         INTEGER NOT NULL,
    PRIMARY KEY (user_id, kind, window_start)
);
ALTER TABLE conversations ADD COLUMN user_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN user_id INTEGER NOT NULL DEFAULT 0;
CREATE INDEX conversations_by_user ON conversations (user_id, updated_at);
CREATE INDEX messages_by_user ON messages (user_id, id);
