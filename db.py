"""SQLite history (stdlib sqlite3), in the manner of the Flask tutorial's db.py:
get_db/close_db per request; init_db creates the schema (schema.sql) and migrates it (migrate_<n>.sql)."""
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid

from flask import current_app, g

import db_postgres
from db_maintenance import MAINTENANCE_INTERVAL_S, index_pending, start_maintenance, write_transaction  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_VERSION = 6  # schema.sql is this version; migrate_<n>.sql brings a file from n-1 to n
BUSY_TIMEOUT_MS = 5000
WAL_AUTOCHECKPOINT_PAGES = 10000  # a safety net: the maintenance thread checkpoints every second
# The -wal file is cut back to this size whenever it starts over (journal_size_limit); and when no one
# has written for a maintenance round, a TRUNCATE checkpoint empties it. (Without both, a burst left
# a 58 MB WAL beside a 1.6 MB database for good.)
WAL_SIZE_LIMIT = 4 << 20
MESSAGE_COLUMNS = ("id, conversation_id, role, content, provider, model, system_prompt, params, prompt_tokens, "
                   "completion_tokens, precached_prompt_tokens, latency_ms, finish_reason, status, error, created_at, "
                   "question_id, route")

log = logging.getLogger(__name__)


def connect(path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,  # autocommit; explicit tx
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    # WAL + NORMAL: a committed row survives a killed process; readers never block the writer.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    return conn


def init_db(path):
    """Creates the schema on first use (schema.sql) and migrates older files forward (migrate_<n>.sql),
    each step one transaction that re-reads the version first: gunicorn workers may start together."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _create_private(path)
    conn = connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} was written by a newer version (schema {version}); upgrade the app")
        steps = [(0, "schema.sql", SCHEMA_VERSION)] if version == 0 else \
            [(v - 1, f"migrate_{v}.sql", v) for v in range(version + 1, SCHEMA_VERSION + 1)]
        conn.execute("PRAGMA foreign_keys = OFF")  # a step may rebuild a table (migrate_4.sql): checked below
        for was, name, becomes in steps:
            with open(os.path.join(HERE, name), encoding="utf-8") as f:
                script = f.read()
            with write_transaction(conn):
                if conn.execute("PRAGMA user_version").fetchone()[0] == was:  # not done by another process
                    for statement in _statements(script):
                        conn.execute(statement)
                    broken = conn.execute("PRAGMA foreign_key_check").fetchone()
                    if broken:
                        raise RuntimeError(f"{name} would leave {path} with a broken reference {tuple(broken)}; "
                                           f"the file is unchanged")
                    conn.execute(f"PRAGMA user_version = {becomes}")
    finally:
        conn.close()


def _statements(script):
    """An SQL script's statements one by one (executescript() would commit the caller's transaction)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""


def _create_private(path):
    """The history file, new or not, is readable by its owner only (0600), and so are its -wal and
    -shm files: SQLite creates those with the database file's permissions, and keeps existing ones."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for name in (path, path + "-wal", path + "-shm"):
        try:
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)
        except FileNotFoundError:
            pass
        except PermissionError:  # (another user's file: SQLite will say whether it can be used)
            log.warning("cannot make %s private (0600): it belongs to another user", name)


POOL_SIZE = 32  # idle connections kept per app: at least the server's threads per process


class _Pool:
    """Idle connections, reused across requests. Opening one costs a file open and three PRAGMAs,
    and closing the last one to a WAL database checkpoints it and deletes the -wal file (two
    fsyncs): together ~2 ms a request, seven times the SQL itself."""

    def __init__(self, path):
        self.path, self.idle, self.lock = path, [], threading.Lock()

    def get(self):
        with self.lock:
            conn = self.idle.pop() if self.idle else None
        if conn is None:
            start_maintenance(self.path, connect)  # once per process; checked when a connection is opened
            conn = connect(self.path)
        return conn

    def put(self, conn):
        if conn.in_transaction:  # a request that failed inside BEGIN ... COMMIT
            conn.rollback()
        with self.lock:
            keep = len(self.idle) < POOL_SIZE
            if keep:
                self.idle.append(conn)
        if not keep:
            conn.close()


class _Counted:
    """Either backend's pool, counting the connections handed out and not yet given back (`in_use`:
    0 when idle, so none leaked), and telling `on_change` (a metrics gauge) each new count."""

    def __init__(self, pool):
        self.pool, self.lock, self.in_use = pool, threading.Lock(), 0
        self.on_change = lambda in_use: None

    def get(self):
        conn = self.pool.get()  # (a connection that could not be opened is not counted)
        self._count(+1)
        return conn

    def put(self, conn):
        try:
            self.pool.put(conn)
        finally:
            self._count(-1)

    def _count(self, delta):
        with self.lock:  # (the gauge is set under the lock: its last value is the true count)
            self.in_use += delta
            self.on_change(self.in_use)


INTEGRITY_ERRORS = (sqlite3.IntegrityError,) + db_postgres.INTEGRITY_ERRORS


def open_connection(target):
    """One connection outside the pool (scripts, tests): SQLite file or PostgreSQL URL alike."""
    return db_postgres.connect(target) if db_postgres.is_url(target) else connect(target)


def get_db() -> sqlite3.Connection:
    if "db" not in g:
        g.db = current_app.extensions["db_pool"].get()
    return g.db


def borrow():
    """A pooled connection for a response that outlives its request (a stream), and the function
    that gives it back when the stream ends (from whatever thread ends it)."""
    pool = current_app.extensions["db_pool"]
    return pool.get(), pool.put


@contextlib.contextmanager
def briefly():
    """A pooled connection for a few statements, given back at once (not held to the request's end):
    the key check every request makes, and what /metrics reads while it counts the connections in use."""
    pool = current_app.extensions["db_pool"]
    conn = pool.get()
    try:
        yield conn
    finally:
        pool.put(conn)


def close_db(e=None):
    conn = g.pop("db", None)
    if conn is not None:
        current_app.extensions["db_pool"].put(conn)


def init_app(app):
    target = app.config["DATABASE"]
    if db_postgres.is_url(target):
        db_postgres.init_db(target)
        app.extensions["db_pool"] = _Counted(db_postgres.Pool(target))
    else:
        init_db(target)
        app.extensions["db_pool"] = _Counted(_Pool(target))
    app.teardown_appcontext(close_db)


def _index_for_search(db):
    """A search sees every saved message: index what is still queued first (usually nothing)."""
    if db.execute("SELECT 1 FROM fts_pending LIMIT 1").fetchone():
        try:
            index_pending(db)
        except sqlite3.OperationalError as e:  # locked for 5 s: search what is indexed so far
            log.warning("search without indexing the newest messages: %s", e)


# -- conversations and messages ------------------------------------------------------------------

def new_session_id() -> str:
    return uuid.uuid4().hex


def get_conversation(db, conv_id):
    return db.execute("SELECT * FROM conversations WHERE id = ?", (conv_id,)).fetchone()


class ConversationGone(Exception):
    """The conversation (or the question an answer names) was deleted before this row was saved."""


def add_message(db, conv_id, role, content, provider, model=None, system_prompt=None, params=None,
                usage=None, latency_ms=None, finish_reason=None, status="ok", error=None, title=None,
                question_id=None, route=None, created_at=None, user_id=0) -> int:
    """Inserts one message and bumps its conversation; returns the message id. With a title, the
    conversation is created first if it does not exist yet, in the same transaction (one commit).
    An answer names its question (question_id); `route` is how model "auto" chose the provider (None when
    the client chose it). The conversation belongs to `user_id` (0: the built-in admin): one of someone else's is
    never written to. Raises ConversationGone when either was deleted, or is someone else's.
    created_at: when it was said, if earlier than now (an answer replayed from the journal)."""
    usage = usage or {}
    now = time.time()
    try:
        with write_transaction(db):
            created = title is not None and db.execute(
                "INSERT INTO conversations (id, provider, model, system_prompt, title, created_at, updated_at, "
                "user_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (conv_id, provider, model, system_prompt, title[:200], now, now, user_id)).rowcount == 1
            # The conversation row is locked (updated) before the message names it: on PostgreSQL a
            # DELETE of the conversation then waits for this transaction instead of deadlocking with it.
            # Gone: answered here, before the insert, since SQLite reuses a deleted question's id, and a
            # UNIQUE question_id clash with a newer question's answer would be reported before the foreign key.
            if not created and not db.execute("UPDATE conversations SET updated_at = ? WHERE id = ? AND user_id = ?",
                                              (now, conv_id, user_id)).rowcount:
                raise ConversationGone(conv_id)
            message_id = db.execute(
                "INSERT INTO messages (conversation_id, role, content, provider, model, system_prompt, params, "
                "prompt_tokens, completion_tokens, precached_prompt_tokens, latency_ms, finish_reason, status, error, "
                "created_at, question_id, route, user_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (conv_id, role, content, provider, model, system_prompt,
                 json.dumps(params, ensure_ascii=False) if params is not None else None,
                 usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("precached_prompt_tokens"),
                 latency_ms, finish_reason, status, error, created_at or now, question_id, route,
                 user_id)).fetchone()[0]
    except INTEGRITY_ERRORS as e:
        if "foreign key" in str(e).lower():
            raise ConversationGone(conv_id) from e
        raise
    return message_id


def forget_question(db, conv_id, question_id):
    """Removes a question the upstream refused as invalid (and its conversation, if nothing else is in it)."""
    with write_transaction(db):
        db.execute("DELETE FROM messages WHERE id = ?", (question_id,))
        db.execute("DELETE FROM conversations WHERE id = ? AND NOT EXISTS (SELECT 1 FROM messages "
                   "WHERE conversation_id = ?)", (conv_id, conv_id))


def answered_pairs(db, conv_id):
    """(question, answer) rows of a conversation's answered exchanges, in the order of the questions'
    ids: the order the questions were saved in, whatever order their answers finished in."""
    return db.execute(
        "SELECT q.content AS question, a.content AS answer, a.status AS status FROM messages a "
        "JOIN messages q ON q.id = a.question_id WHERE a.conversation_id = ? AND a.role = 'assistant' "
        "ORDER BY q.id", (conv_id,)).fetchall()


def has_route(db, conv_id, route) -> bool:
    """Whether any message of the conversation was routed so (a conversation once kept local stays local)."""
    return db.execute("SELECT 1 FROM messages WHERE conversation_id = ? AND route = ? LIMIT 1",
                      (conv_id, route)).fetchone() is not None


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


def list_messages(db, limit=50, before=None, session=None, provider=None, q=None, user=None):
    """Newest first; `before` is a message id (keyset paging, fast at any depth); `user`: one user's only."""
    cols = ", ".join("m." + c.strip() for c in MESSAGE_COLUMNS.split(","))
    match = fts_query(q) if q else ""
    if match and not isinstance(db, db_postgres.PgConn):
        _index_for_search(db)
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
                             ("m.conversation_id = ?", session or None), ("m.provider = ?", provider or None),
                             ("m.user_id = ?", user))
        sql = (f"SELECT {cols} FROM messages_fts f JOIN messages m ON m.id = f.rowid "
               f"WHERE messages_fts MATCH ? {'AND ' + where if where else ''} ORDER BY f.rowid DESC LIMIT ?")
        args = [match] + args
    elif match and not session and user is None:  # PostgreSQL: tsvector column, newest rows first, then GIN index
        return db_postgres.search(db, cols, q, limit, before, provider or None)
    else:  # PostgreSQL, or no search (plainto_tsquery ANDs plain words; a session has few rows to test)
        where, args = _where(("m.search @@ plainto_tsquery('simple', ?)", q if match else None),
                             ("m.id < ?", before), ("m.conversation_id = ?", session or None),
                             ("m.provider = ?", provider or None), ("m.user_id = ?", user))
        sql = f"SELECT {cols} FROM messages m {'WHERE ' + where if where else ''} ORDER BY m.id DESC LIMIT ?"
    return db.execute(sql, args + [limit]).fetchall()


def list_conversations(db, limit=50, before=None, provider=None, user=None):
    """Conversations, most recently active first (title: the first question); `user`: one user's only."""
    where, args = _where(("updated_at < ?", before), ("provider = ?", provider or None), ("user_id = ?", user))
    sql = f"SELECT * FROM conversations {'WHERE ' + where if where else ''} ORDER BY updated_at DESC LIMIT ?"
    return db.execute(sql, args + [limit]).fetchall()


def iter_messages(db, session=None, batch=1000, user=None):
    """All messages in order (of one session, of one user), a batch at a time (export without loading all)."""
    last = 0
    while True:
        where, args = _where(("conversation_id = ?", session or None), ("user_id = ?", user), ("id > ?", last))
        rows = db.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {where} ORDER BY id LIMIT ?",
                          args + [batch]).fetchall()
        if not rows:
            return
        yield from rows
        last = rows[-1]["id"]


def message_dict(row) -> dict:
    d = dict(row)
    d["session"] = d.pop("conversation_id")
    d["params"] = json.loads(d["params"]) if d["params"] else None
    return d


if __name__ == "__main__":  # python db.py migrate-to-postgres SQLITE_FILE POSTGRES_URL
    import db_move
    db_move.main()
