"""The backend a target names (an SQLite file, or a postgresql:// URL), and connections to it: one
(scripts, tests, the journal) or a pool that counts what it hands out (a server)."""
import threading

from history import postgres, sqlite


def backend(target):
    """The module of the target's backend: history.postgres for a URL, else history.sqlite. Both have
    init_db(target), connect(target) and Pool(target); their connections have search_messages."""
    return postgres if postgres.is_url(target) else sqlite


def open_connection(target):
    """One connection outside the pool: SQLite file or PostgreSQL URL alike."""
    return backend(target).connect(target)


def open_pool(target, max_size=None):
    """The history at `target` brought to the current schema, and a counted pool of connections to it
    (PostgreSQL's: at most max_size connections, CHAT_DB_POOL_MAX)."""
    kind = backend(target)
    kind.init_db(target)
    return Counted(kind.Pool(target, max_size) if max_size and kind.__name__.endswith("postgres") else kind.Pool(target))


class Counted:
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
