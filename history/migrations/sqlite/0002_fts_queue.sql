-- Version 2: the full-text index is filled off the request path. Saving a message only queues its
-- id in fts_pending; history.maintenance.index_pending() moves queued messages into messages_fts in batches, from a
-- background thread and before every search. (In version 1 a trigger indexed each message inside
-- the request's own transaction: +0.06 ms a message at the median, and every few dozen commits
-- an FTS segment merge of several ms.) history.sqlite.init_db runs it in one transaction and sets user_version.
CREATE TABLE IF NOT EXISTS fts_pending (id INTEGER PRIMARY KEY);
DROP TRIGGER IF EXISTS messages_ai;
DROP TRIGGER IF EXISTS messages_ad;
DROP TRIGGER IF EXISTS messages_au;
CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO fts_pending (id) VALUES (new.id);
END;
-- Only an indexed message gets an FTS 'delete' (deleting what was never indexed corrupts FTS5).
CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content)
        SELECT 'delete', old.id, old.content WHERE NOT EXISTS (SELECT 1 FROM fts_pending WHERE id = old.id);
    DELETE FROM fts_pending WHERE id = old.id;
END;
CREATE TRIGGER messages_au AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content)
        SELECT 'delete', old.id, old.content WHERE NOT EXISTS (SELECT 1 FROM fts_pending WHERE id = old.id);
    INSERT OR IGNORE INTO fts_pending (id) VALUES (new.id);
END;
