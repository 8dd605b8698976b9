-- Dual AI Chat API history: the current schema (version 6, PRAGMA user_version), which db.init_db
-- gives a new file in one go. Older files are brought up to it by migrate_<n>.sql in turn.
CREATE TABLE IF NOT EXISTS conversations (
    id            TEXT PRIMARY KEY,
    provider      TEXT NOT NULL CHECK (provider IN ('gigachat', 'qwen')),
    model         TEXT,
    system_prompt TEXT,
    title         TEXT,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    user_id       INTEGER NOT NULL DEFAULT 0  -- its owner (version 6): users.id; 0 is the built-in admin
);

CREATE TABLE IF NOT EXISTS messages (
    -- AUTOINCREMENT (version 4): an id is never given again, even after its conversation was deleted,
    -- so an answer still in flight for a deleted question can never name someone else's question.
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id         TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role                    TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content                 TEXT NOT NULL,
    provider                TEXT NOT NULL,
    model                   TEXT,
    system_prompt           TEXT,
    params                  TEXT,     -- JSON: the sampling parameters sent upstream
    prompt_tokens           INTEGER,
    completion_tokens       INTEGER,
    precached_prompt_tokens INTEGER,
    latency_ms              REAL,
    finish_reason           TEXT,
    status                  TEXT NOT NULL DEFAULT 'ok'
                            CHECK (status IN ('ok', 'error', 'cancelled', 'blocked')),
    error                   TEXT,
    created_at              REAL NOT NULL,
    -- An answer names the question it answers (version 3); NULL for questions.
    question_id             INTEGER REFERENCES messages (id) ON DELETE CASCADE,
    -- How model "auto" chose the provider (version 5): code, general, private or "fallback: <why>";
    -- NULL when the client named the provider.
    route                   TEXT,
    user_id                 INTEGER NOT NULL DEFAULT 0  -- its conversation's owner (version 6)
);

CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, id);
CREATE INDEX IF NOT EXISTS messages_by_provider ON messages (provider, id);
CREATE INDEX IF NOT EXISTS conversations_by_update ON conversations (updated_at);
CREATE INDEX IF NOT EXISTS conversations_by_user ON conversations (user_id, updated_at);
CREATE INDEX IF NOT EXISTS messages_by_user ON messages (user_id, id);
-- At most one answer a question; also the index the ON DELETE CASCADE above looks up.
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_question ON messages (question_id);

-- Full-text search over message text (external content: no second copy of the text). Saving a
-- message only queues its id in fts_pending; db.index_pending() moves queued messages into
-- messages_fts in batches, off the request path (see migrate_2.sql).
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5 (
    content, content = 'messages', content_rowid = 'id', tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS fts_pending (id INTEGER PRIMARY KEY);
CREATE TRIGGER IF NOT EXISTS messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO fts_pending (id) VALUES (new.id);
END;
-- Only an indexed message gets an FTS 'delete' (deleting what was never indexed corrupts FTS5).
CREATE TRIGGER IF NOT EXISTS messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content)
        SELECT 'delete', old.id, old.content WHERE NOT EXISTS (SELECT 1 FROM fts_pending WHERE id = old.id);
    DELETE FROM fts_pending WHERE id = old.id;
END;
CREATE TRIGGER IF NOT EXISTS messages_au AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content)
        SELECT 'delete', old.id, old.content WHERE NOT EXISTS (SELECT 1 FROM fts_pending WHERE id = old.id);
    INSERT OR IGNORE INTO fts_pending (id) VALUES (new.id);
END;

-- Users and their limits' shared counters (version 6; see migrate_6.sql).
CREATE TABLE IF NOT EXISTS users (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    name                TEXT NOT NULL UNIQUE,
    key_hash            TEXT NOT NULL UNIQUE,  -- SHA-256 of the key; the key itself is never stored
    is_admin            INTEGER NOT NULL DEFAULT 0,
    requests_per_minute INTEGER,
    tokens_per_day      INTEGER,
    created_at          REAL NOT NULL,
    last_used_at        REAL
);
CREATE TABLE IF NOT EXISTS user_usage (
    user_id      INTEGER NOT NULL,
    kind         TEXT NOT NULL,      -- requests_minute, requests_day, tokens_day
    window_start INTEGER NOT NULL,   -- the window's first second (epoch)
    used         INTEGER NOT NULL,
    PRIMARY KEY (user_id, kind, window_start)
);
