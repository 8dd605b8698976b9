"""History on PostgreSQL (psycopg 3 + psycopg_pool), when CHAT_DB is a postgresql:// URL.
The store's SQL runs here unchanged through PgConn: `?` placeholders become `%s`, rows read like
sqlite3.Row (by name or position, dict(row)). What differs between the backends lives in the
migrations (migrations/postgres/) and in the connections' search_messages (full-text search)."""
import glob
import os
import threading

import psycopg
import psycopg_pool

from history import pg_search
from history.columns import MESSAGE_COLUMNS_AS_M, where

MIGRATIONS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations", "postgres",
                                           "[0-9][0-9][0-9][0-9]_*.sql")))
SCHEMA_VERSION = len(MIGRATIONS)
MIGRATION_LOCK = 0x4441_4943  # pg_advisory_xact_lock key: one process migrates at a time
POOL_MAX = 32  # connections per process (a stream holds one); CHAT_DB_POOL_MAX, read in gateway/settings.py
POOL_TIMEOUT_S = 10.0  # a request waits this long for a free connection, then gets a 503


def is_url(target) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


class Row:
    """A result row that reads like sqlite3.Row: row["name"], row[0], dict(row), unpacking."""
    __slots__ = ("_names", "_values")

    def __init__(self, names, values):
        self._names, self._values = names, values

    def keys(self):
        return list(self._names)

    def __getitem__(self, key):
        return self._values[key if isinstance(key, int) else self._names.index(key)]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)


def _rows(cursor):
    names = [c.name for c in cursor.description] if cursor.description else []
    return lambda values: Row(names, values)


def clean(value):
    # PostgreSQL text cannot hold NUL (SQLite's can): saved as U+FFFD rather than failing the save.
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


class PgConn:
    """A pooled psycopg connection (autocommit; explicit BEGIN ... COMMIT) that takes the store's SQL."""
    backend = "postgres"

    def __init__(self, raw):
        self.raw = raw

    def execute(self, sql, args=()):
        if sql == "BEGIN IMMEDIATE":  # SQLite's "take the write lock now"; PostgreSQL locks rows
            sql = "BEGIN"
        return self.raw.execute(sql.replace("%", "%%").replace("?", "%s") if args else sql,
                                [clean(a) for a in args] if args else None)

    def close(self):
        self.raw.close()

    def search_messages(self, q, limit, before=None, session=None, provider=None, user=None):
        """The newest `limit` messages holding every word of q (plainto_tsquery ANDs plain words): through
        pg_search (newest rows first, then the GIN index), or for a session or a user, by the plain filter."""
        if not session and user is None:
            return pg_search.search(self, MESSAGE_COLUMNS_AS_M, q, limit, before, provider)
        cond, args = where(("m.search @@ plainto_tsquery('simple', ?)", q), ("m.id < ?", before),
                           ("m.conversation_id = ?", session), ("m.provider = ?", provider), ("m.user_id = ?", user))
        return self.execute(f"SELECT {MESSAGE_COLUMNS_AS_M} FROM messages m WHERE {cond} ORDER BY m.id DESC LIMIT ?",
                            args + [limit]).fetchall()


def connect(url) -> PgConn:
    raw = psycopg.connect(url, autocommit=True)
    raw.row_factory = _rows
    return PgConn(raw)


def init_db(url):
    """Applies migrations/postgres/000N_*.sql not applied yet, in one transaction under an advisory lock (gunicorn
    workers and other hosts may start together)."""
    conn = connect(url)
    try:
        with conn.raw.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            version = row[0] or 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"the history database was written by a newer version (schema {version}); "
                                   "upgrade the app")
            for path in MIGRATIONS[version:]:
                with open(path, encoding="utf-8") as f:
                    conn.execute(f.read())
            if version < SCHEMA_VERSION:
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    finally:
        conn.close()


class Pool:
    """The pool interface of sqlite.Pool (get/put) (get/put) over psycopg_pool, opened lazily in the
    process that serves (a gunicorn worker, not a master that forks)."""

    def __init__(self, url, max_size=POOL_MAX):
        self.max_size = max_size
        self.url, self.lock, self.pool, self.pid = url, threading.Lock(), None, None

    def _pool(self):
        with self.lock:
            if self.pid != os.getpid():
                self.pool = psycopg_pool.ConnectionPool(
                    self.url, min_size=1, max_size=self.max_size, timeout=POOL_TIMEOUT_S, open=True,
                    check=psycopg_pool.ConnectionPool.check_connection,  # (after a restart: none broken handed out)
                    kwargs={"autocommit": True}, configure=lambda c: setattr(c, "row_factory", _rows))
                self.pid = os.getpid()
            return self.pool

    def get(self) -> PgConn:
        return PgConn(self._pool().getconn())

    def put(self, conn):
        if conn.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:  # a request that failed inside BEGIN ... COMMIT (or a broken connection)
                conn.raw.rollback()
            except psycopg.Error:
                pass
        self._pool().putconn(conn.raw)
