"""Lists across the history, newest first, with keyset paging (fast at any depth): messages (by
session, provider, words), conversations, and every message in order for an export."""
from history.columns import MESSAGE_COLUMNS, MESSAGE_COLUMNS_AS_M, fts_query, where


def list_messages(db, limit=50, before=None, session=None, provider=None, q=None, user=None):
    """Newest first; `before` is a message id; `user`: one user's only. With words in q, the connection's
    own full-text search (search_messages: FTS5 on SQLite, the tsvector column on PostgreSQL)."""
    if q and fts_query(q):
        return db.search_messages(q, limit, before=before, session=session or None, provider=provider or None,
                                  user=user)
    cond, args = where(("m.id < ?", before), ("m.conversation_id = ?", session or None),
                       ("m.provider = ?", provider or None), ("m.user_id = ?", user))
    sql = f"SELECT {MESSAGE_COLUMNS_AS_M} FROM messages m {'WHERE ' + cond if cond else ''} ORDER BY m.id DESC LIMIT ?"
    return db.execute(sql, args + [limit]).fetchall()


def list_conversations(db, limit=50, before=None, provider=None, user=None):
    """Conversations, most recently active first (title: the first question); `user`: one user's only."""
    cond, args = where(("updated_at < ?", before), ("provider = ?", provider or None), ("user_id = ?", user))
    sql = f"SELECT * FROM conversations {'WHERE ' + cond if cond else ''} ORDER BY updated_at DESC LIMIT ?"
    return db.execute(sql, args + [limit]).fetchall()


def iter_messages(db, session=None, batch=1000, user=None):
    """All messages in order (of one session, of one user), a batch at a time (export without loading all)."""
    last = 0
    while True:
        cond, args = where(("conversation_id = ?", session or None), ("user_id = ?", user), ("id > ?", last))
        rows = db.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {cond} ORDER BY id LIMIT ?",
                          args + [batch]).fetchall()
        if not rows:
            return
        yield from rows
        last = rows[-1]["id"]
