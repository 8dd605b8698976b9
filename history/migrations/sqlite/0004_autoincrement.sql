-- Version 4: message ids are never given again (AUTOINCREMENT). Without it SQLite gives a deleted
-- conversation's last ids to the next messages, and an answer still in flight for a deleted question
-- could name a newer question of a session recreated under the same id. SQLite cannot add AUTOINCREMENT
-- to a table, so the table is rebuilt with the same ids (the full-text index, keyed by id, stays valid).
-- history.sqlite.init_db runs this in one transaction with foreign keys off, then checks them (PRAGMA foreign_key_check).
DROP TRIGGER IF EXISTS messages_ai;
DROP TRIGGER IF EXISTS messages_ad;
DROP TRIGGER IF EXISTS messages_au;
CREATE TABLE messages_v4 (
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
    question_id             INTEGER REFERENCES messages (id) ON DELETE CASCADE
);
INSERT INTO messages_v4 (id, conversation_id, role, content, provider, model, system_prompt, params, prompt_tokens,
    completion_tokens, precached_prompt_tokens, latency_ms, finish_reason, status, error, created_at, question_id)
SELECT id, conversation_id, role, content, provider, model, system_prompt, params, prompt_tokens,
    completion_tokens, precached_prompt_tokens, latency_ms, finish_reason, status, error, created_at, question_id
FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v4 RENAME TO messages;
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, id);
CREATE INDEX IF NOT EXISTS messages_by_provider ON messages (provider, id);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_question ON messages (question_id);
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
