"""History on SQLite (stdlib sqlite3): connections, the migrations in migrations/sqlite/, the pool.
A connection is a SqliteConn, which knows how this backend searches (search_messages)."""
import glob
import logging
import os
import sqlite3
import threading

from history.columns import MESSAGE_COLUMNS_AS_M, fts_query, where
from history.maintenance import index_pending, start_maintenance
from history.transaction import write_transaction

MIGRATIONS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations", "sqlite",
                                           "[0-9][0-9][0-9][0-9]_*.sql")))
SCHEMA_VERSION = len(MIGRATIONS)  # PRAGMA user_version: migration N brings a file from N-1 to N
BUSY_TIMEOUT_MS = 5000
WAL_AUTOCHECKPOINT_PAGES = 10000  # a safety net: the maintenance thread checkpoints every second
# The -wal file is cut back to this size whenever it starts over (journal_size_limit); and when no one
# has written for a maintenance round, a TRUNCATE checkpoint empties it. (Without both, a burst left
# a 58 MB WAL beside a 1.6 MB database for good.)
WAL_SIZE_LIMIT = 4 << 20
POOL_SIZE = 32  # idle connections kept per app: at least the server's threads per process

log = logging.getLogger(__name__)


class SqliteConn(sqlite3.Connection):
    """An sqlite3 connection that also knows this backend's full-text search."""
    backend = "sqlite"

    def search_messages(self, q, limit, before=None, session=None, provider=None, user=None):
        """The newest `limit` messages holding every word of q, through FTS5 (what is still queued for
        the index is indexed first). Id bounds go on f.rowid, not m.id: FTS5 then seeks to them instead of
        walking every newer match of a common word first (114 ms for `before` half-way down 1M messages,
        250 ms for a session). A session's messages lie between its first and last id."""
        self._index_for_search()
        lo = hi = None
        if session:
            lo, hi = self.execute("SELECT min(id), max(id) FROM messages WHERE conversation_id = ?",
                                  (session,)).fetchone()
            if lo is None:
                return []
        if before is not None:
            hi = before - 1 if hi is None else min(hi, before - 1)
        cond, args = where(("f.rowid >= ?", lo), ("f.rowid <= ?", hi),
                           ("m.conversation_id = ?", session), ("m.provider = ?", provider), ("m.user_id = ?", user))
        sql = (f"SELECT {MESSAGE_COLUMNS_AS_M} FROM messages_fts f JOIN messages m ON m.id = f.rowid "
               f"WHERE messages_fts MATCH ? {'AND ' + cond if cond else ''} ORDER BY f.rowid DESC LIMIT ?")
        return self.execute(sql, [fts_query(q)] + args + [limit]).fetchall()

    def _index_for_search(self):
        """A search sees every saved message: index what is still queued first (usually nothing)."""
        if self.execute("SELECT 1 FROM fts_pending LIMIT 1").fetchone():
            try:
                index_pending(self)
            except sqlite3.OperationalError as e:  # locked for 5 s: search what is indexed so far
                log.warning("search without indexing the newest messages: %s", e)


def connect(path) -> SqliteConn:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,  # autocommit; explicit tx
                           check_same_thread=False, factory=SqliteConn)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    # WAL + NORMAL: a committed row survives a killed process; readers never block the writer.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    return conn


def init_db(path, upto=SCHEMA_VERSION):
    """Brings the file to version `upto` (a new one from 0): each migration it lacks in turn, each one
    transaction that re-reads the version first (gunicorn workers may start together)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _create_private(path)
    conn = connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} was written by a newer version (schema {version}); upgrade the app")
        conn.execute("PRAGMA foreign_keys = OFF")  # a step may rebuild a table (0004): checked below
        for becomes in range(version + 1, upto + 1):
            _migrate(conn, path, becomes)
    finally:
        conn.close()


def _migrate(conn, path, becomes):
    migration = MIGRATIONS[becomes - 1]
    with open(migration, encoding="utf-8") as f:
        script = f.read()
    with write_transaction(conn):
        if conn.execute("PRAGMA user_version").fetchone()[0] == becomes - 1:  # not done by another process
            for statement in _statements(script):
                conn.execute(statement)
            broken = conn.execute("PRAGMA foreign_key_check").fetchone()
            if broken:
                raise RuntimeError(f"{os.path.basename(migration)} would leave {path} with a broken reference "
                                   f"{tuple(broken)}; the file is unchanged")
            conn.execute(f"PRAGMA user_version = {becomes}")


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


class Pool:
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
