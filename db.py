"""SQLite history (stdlib sqlite3), in the manner of the Flask tutorial's db.py:
get_db/close_db per request, init_db creates and migrates the schema in schema.sql."""
import json
import os
import sqlite3
import threading
import time
import uuid

from flask import current_app, g

SCHEMA_VERSION = 1
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.sql")
BUSY_TIMEOUT_MS = 5000
MESSAGE_COLUMNS = ("id, conversation_id, role, content, provider, model, system_prompt, params, prompt_tokens, "
                   "completion_tokens, precached_prompt_tokens, latency_ms, finish_reason, status, error, created_at")


def connect(path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,  # autocommit; explicit tx
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    # WAL + NORMAL: a committed row survives a killed process; readers never block the writer.
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def init_db(path):
    """Creates the schema on first use and migrates older files forward."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    conn = connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} was written by a newer version (schema {version}); upgrade the app")
        if version < 1:
            with open(SCHEMA_PATH, encoding="utf-8") as f:
                conn.executescript(f.read())
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        # Later migrations go here: `if version < 2: ...`, each bumping user_version.
    finally:
        conn.close()


POOL_SIZE = 32  # idle connections kept per app: at least the server's threads per process


class _Pool:
    """Idle connections, reused across requests. Opening one costs a file open and three PRAGMAs,
    and closing the last one to a WAL database checkpoints it and deletes the -wal file (two
    fsyncs): together ~2 ms a request, seven times the SQL itself."""

    def __init__(self, path):
        self.path, self.idle, self.lock = path, [], threading.Lock()

    def get(self):
        with self.lock:
            if self.idle:
                return self.idle.pop()
        return connect(self.path)

    def put(self, conn):
        if conn.in_transaction:  # a request that failed inside BEGIN ... COMMIT
            conn.rollback()
        with self.lock:
            if len(self.idle) < POOL_SIZE:
                self.idle.append(conn)
                return
        conn.close()


def get_db() -> sqlite3.Connection:
    if "db" not in g:
        g.db = current_app.extensions["db_pool"].get()
    return g.db


def close_db(e=None):
    conn = g.pop("db", None)
    if conn is not None:
        current_app.extensions["db_pool"].put(conn)


def init_app(app):
    init_db(app.config["DATABASE"])
    app.extensions["db_pool"] = _Pool(app.config["DATABASE"])
    app.teardown_appcontext(close_db)


# -- conversations and messages ------------------------------------------------------------------

def new_session_id() -> str:
    return uuid.uuid4().hex


def get_conversation(db, conv_id):
    return db.execute("SELECT * FROM conversations WHERE id = ?", (conv_id,)).fetchone()


def ensure_conversation(db, conv_id, provider, model, system_prompt, title):
    now = time.time()
    db.execute("INSERT INTO conversations (id, provider, model, system_prompt, title, created_at, updated_at) "
               "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
               (conv_id, provider, model, system_prompt, title[:200], now, now))


def add_message(db, conv_id, role, content, provider, model=None, system_prompt=None, params=None,
                usage=None, latency_ms=None, finish_reason=None, status="ok", error=None) -> int:
    """Inserts one message and bumps its conversation; returns the message id."""
    usage = usage or {}
    now = time.time()
    db.execute("BEGIN IMMEDIATE")
    try:
        cur = db.execute(
            "INSERT INTO messages (conversation_id, role, content, provider, model, system_prompt, params, "
            "prompt_tokens, completion_tokens, precached_prompt_tokens, latency_ms, finish_reason, status, error, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (conv_id, role, content, provider, model, system_prompt,
             json.dumps(params, ensure_ascii=False) if params is not None else None,
             usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("precached_prompt_tokens"),
             latency_ms, finish_reason, status, error, now))
        db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conv_id))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return cur.lastrowid


def conversation_messages(db, conv_id):
    return db.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY id",
                      (conv_id,)).fetchall()


def delete_conversation(db, conv_id) -> bool:
    return db.execute("DELETE FROM conversations WHERE id = ?", (conv_id,)).rowcount > 0


def fts_query(text):
    """User text -> an FTS5 query of quoted terms (all must match), so no FTS syntax leaks through."""
    terms = [t for t in text.replace("\x00", " ").split() if t]  # FTS5 reads NUL as the end of the query
    return " ".join('"' + t.replace('"', '""') + '"' for t in terms)


def _where(*conditions):
    """(sql, value) pairs -> (" AND "-joined SQL, values), skipping the pairs whose value is None."""
    used = [(sql, value) for sql, value in conditions if value is not None]
    return " AND ".join(sql for sql, _ in used), [value for _, value in used]


def list_messages(db, limit=50, before=None, session=None, provider=None, q=None):
    """Newest first; `before` is a message id (keyset paging, fast at any depth)."""
    cols = ", ".join("m." + c.strip() for c in MESSAGE_COLUMNS.split(","))
    match = fts_query(q) if q else ""
    if match:
        # Id bounds go on f.rowid, not m.id: FTS5 then seeks to them instead of walking every newer
        # match of a common word first (114 ms for `before` half-way down 1M messages, 250 ms for a
        # session). A session's messages lie between its first and last id.
        lo = hi = None
        if session:
            lo, hi = db.execute("SELECT min(id), max(id) FROM messages WHERE conversation_id = ?",
                                (session,)).fetchone()
            if lo is None:
                return []
        if before is not None:
            hi = before - 1 if hi is None else min(hi, before - 1)
        where, args = _where(("f.rowid >= ?", lo), ("f.rowid <= ?", hi),
                             ("m.conversation_id = ?", session or None), ("m.provider = ?", provider or None))
        sql = (f"SELECT {cols} FROM messages_fts f JOIN messages m ON m.id = f.rowid "
               f"WHERE messages_fts MATCH ? {'AND ' + where if where else ''} ORDER BY f.rowid DESC LIMIT ?")
        args = [match] + args
    else:
        where, args = _where(("m.id < ?", before), ("m.conversation_id = ?", session or None),
                             ("m.provider = ?", provider or None))
        sql = f"SELECT {cols} FROM messages m {'WHERE ' + where if where else ''} ORDER BY m.id DESC LIMIT ?"
    return db.execute(sql, args + [limit]).fetchall()


def list_conversations(db, limit=50, before=None, provider=None):
    """Conversations, most recently active first (title: the first question)."""
    where, args = _where(("updated_at < ?", before), ("provider = ?", provider or None))
    sql = f"SELECT * FROM conversations {'WHERE ' + where if where else ''} ORDER BY updated_at DESC LIMIT ?"
    return db.execute(sql, args + [limit]).fetchall()


def iter_messages(db, session=None, batch=1000):
    """All messages in order, a batch at a time (for export without loading everything)."""
    last = 0
    while True:
        if session:
            rows = db.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND id > ? "
                              f"ORDER BY id LIMIT ?", (session, last, batch)).fetchall()
        else:
            rows = db.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                              (last, batch)).fetchall()
        if not rows:
            return
        yield from rows
        last = rows[-1]["id"]


def message_dict(row) -> dict:
    d = dict(row)
    d["session"] = d.pop("conversation_id")
    d["params"] = json.loads(d["params"]) if d["params"] else None
    return d
