"""History on PostgreSQL (psycopg 3 + psycopg_pool), used by db.py when CHAT_DB is a postgresql:// URL.
db.py's SQL runs here unchanged through PgConn: `?` placeholders become `%s`, rows read like
sqlite3.Row (by name or position, dict(row)). What differs between the backends lives in the numbered
schema files (pg/<n>_*.sql beside schema.sql) and in db.py's few backend branches (full-text search)."""
import glob
import os
import threading

import psycopg
import psycopg_pool

HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATIONS = sorted(glob.glob(os.path.join(HERE, "pg", "[0-9][0-9][0-9]_*.sql")))
SCHEMA_VERSION = len(MIGRATIONS)
MIGRATION_LOCK = 0x4441_4943  # pg_advisory_xact_lock key: one process migrates at a time
POOL_MAX = 32  # connections per process (a stream holds one); CHAT_DB_POOL_MAX, read in gateway/settings.py
WALK_FIRST = 1000  # rows a search tests newest first before it estimates the words' frequency (see search)
WALK_MAX = 40_000  # and at most this many in all (~30 ms), past which the GIN index is surely cheaper
GIN_ROW_COST = 3  # a match fetched through the GIN index costs about this many walked rows (1M: 1-6)
POOL_TIMEOUT_S = 10.0  # a request waits this long for a free connection, then gets a 503
UNAVAILABLE = (psycopg.OperationalError, psycopg_pool.PoolTimeout)
INTEGRITY_ERRORS = (psycopg.IntegrityError,)


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
    """A pooled psycopg connection (autocommit; explicit BEGIN ... COMMIT) that takes db.py's SQL."""

    def __init__(self, raw):
        self.raw = raw

    def execute(self, sql, args=()):
        if sql == "BEGIN IMMEDIATE":  # SQLite's "take the write lock now"; PostgreSQL locks rows
            sql = "BEGIN"
        return self.raw.execute(sql.replace("%", "%%").replace("?", "%s") if args else sql,
                                [clean(a) for a in args] if args else None)

    def close(self):
        self.raw.close()


def _walk(conn, q, below, provider, rows, limit):
    """Ids of the newest `limit` matches among the newest `rows` rows below id `below`, and if fewer: the
    lowest id those rows reached (None when they were all there is). Reads only ids and tsvectors, by the
    primary key index, newest first: about a microsecond a row (a few for long answers)."""
    used = [(c, v) for c, v in (("id < ?", below), ("provider = ?", provider)) if v is not None]
    where, args = " AND ".join(c for c, _ in used), [v for _, v in used]
    newest = f"SELECT id, search FROM messages {'WHERE ' + where if where else ''} ORDER BY id DESC LIMIT {rows}"
    hits = [r[0] for r in conn.execute(f"SELECT id FROM ({newest}) r WHERE search @@ plainto_tsquery('simple', ?) "
                                       f"ORDER BY id DESC LIMIT ?", args + [q, limit])]
    if len(hits) == limit:
        return hits, None
    floor, seen = conn.execute(f"SELECT min(id), count(*) FROM ({newest}) r", args).fetchone()
    return hits, floor if seen == rows else None


BY_PROVIDER = "AND m.provider || '' = ?"  # as a filter: no index matches it


def _gin(conn, q, below, provider, limit):
    """Ids of the newest `limit` matches below id `below`, through the GIN index alone (a bitmap scan of
    every match, then the top ids): its cost follows the number of matches, not the table's size.
    `id + 0` and `provider || ''` keep those two filters, not bitmaps of half the table."""
    with conn.raw.transaction():
        conn.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_seqscan = off")  # one round trip
        return [r[0] for r in conn.execute(
            f"SELECT m.id FROM messages m WHERE m.search @@ plainto_tsquery('simple', ?) AND m.id + 0 < ? "
            f"{BY_PROVIDER if provider else ''} ORDER BY m.id DESC LIMIT ?",
            [q, below] + ([provider] if provider else []) + [limit])]


def search(conn, cols, q, limit, before=None, provider=None):
    """The newest `limit` messages holding every word of q (below id `before`, of one provider).
    The planner alone guesses a word's frequency from ANALYZE's sample: a word the sample missed, or two
    common words that never meet, it guesses at thousands of rows and walks the newest rows testing each,
    all 1M of them for a rare word (0.9 s). So: walk the newest WALK_FIRST rows; from the matches seen so
    far estimate the frequency f, and go on walking (~twice the rows that f says the rest needs) while
    that costs less than the GIN index over all older rows would (~f x those rows, GIN_ROW_COST walked
    rows each), else finish with the GIN index. Either way gives the same page: only the speed differs."""
    hits, below, walked, step = [], before, 0, WALK_FIRST
    while True:
        found, below = _walk(conn, q, below, provider, step, limit - len(hits))
        hits, walked = hits + found, walked + step
        if below is None:  # the page is full, or no older rows are left
            break
        need, rate = limit - len(hits), len(hits) / walked
        step = int(need / rate * 2) if rate else 0
        if not rate or step > min(WALK_MAX - walked, GIN_ROW_COST * rate * below):
            hits += _gin(conn, q, below, provider, need)
            break
    return conn.execute(f"SELECT {cols} FROM messages m WHERE m.id = ANY(?) ORDER BY m.id DESC",
                        [hits]).fetchall() if hits else []


def connect(url) -> PgConn:
    raw = psycopg.connect(url, autocommit=True)
    raw.row_factory = _rows
    return PgConn(raw)


def init_db(url):
    """Applies pg/<n>_*.sql not applied yet, in one transaction under an advisory lock (gunicorn
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
    """db.py's pool interface (get/put) over psycopg_pool, opened lazily in the
    process that serves (a gunicorn worker, not a master that forks)."""

    def __init__(self, url, max_size=POOL_MAX):
        self.url, self.lock, self.pool, self.pid = url, threading.Lock(), None, None
        self.max_size = max_size

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
