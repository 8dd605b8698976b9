-- Dual AI Chat API history on SQLite, version 1 (PRAGMA user_version). history/sqlite.py gives a new
-- file this and every later migration in turn (000N_*.sql brings a file from N-1 to N, each in one
-- transaction); a file at an older version gets the ones it lacks. A migration, once released, is
-- never edited: tests/schema_v1.sql is a copy of this one as version 1 wrote it.
CREATE TABLE IF NOT EXISTS conversations (
    id            TEXT PRIMARY KEY,
    provider      TEXT NOT NULL CHECK (provider IN ('gigachat', 'qwen')),
    model         TEXT,
    system_prompt TEXT,
    title         TEXT,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS messages (
    id                      INTEGER PRIMARY KEY,
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
    created_at              REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, id);
CREATE INDEX IF NOT EXISTS messages_by_provider ON messages (provider, id);
CREATE INDEX IF NOT EXISTS conversations_by_update ON conversations (updated_at);

-- Full-text search over message text (external content: no second copy of the text).
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5 (
    content, content = 'messages', content_rowid = 'id', tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER IF NOT EXISTS messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER IF NOT EXISTS messages_au AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
