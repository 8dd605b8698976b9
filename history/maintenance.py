"""History upkeep off the request path, one thread per server process and database: moving queued
messages into the full-text index, and WAL checkpoints (requests only append rows)."""
import logging
import os
import sqlite3
import threading
import time

from history.transaction import write_transaction

INDEX_BATCH = 200  # messages indexed per transaction: ~3 ms of write lock for 200 messages of 120 words
# ... and at most this much text: FTS5 writes a transaction's new index segment (and the merges it sets off)
# into the WAL at commit, up to ~8x the text for words it has not seen (2-8 MB for 100 messages of 30 KB),
# and the WAL cannot be emptied in the middle of a transaction.
INDEX_BATCH_BYTES = 256 << 10
MAINTENANCE_INTERVAL_S = 1.0
IDLE_CHECKPOINT_BUSY_MS = 100  # an idle-time checkpoint gives way at once to a writer that turns up
# Under sustained writes readers always hold some snapshot, so a PASSIVE checkpoint never lets the WAL
# start over and it grows (91 MB after 30 s at 6 writers). So every WAL_CHECK_S, and after each index batch,
# a WAL past WAL_RESTART_BYTES is emptied: the checkpoint waits (up to RESTART_BUSY_MS, new writers waiting
# behind it) for the readers of old snapshots to finish. Indexing waits for it: it is what writes the most
# (when it did not, a 0.7 s wait for the lock let 60 index batches grow the WAL to 40 MB).
WAL_RESTART_BYTES = 4 << 20
WAL_CHECK_S = 0.1
RESTART_BUSY_MS = 2000
RESTART_BACKOFF_S = 0.5

log = logging.getLogger(__name__)


def index_pending(db, batch=INDEX_BATCH, max_bytes=INDEX_BATCH_BYTES, between=None) -> int:
    """Moves queued messages (fts_pending) into the full-text index, one short transaction per batch of at
    most `batch` messages and `max_bytes` of text (at least one message); returns how many. `between()`
    runs after each batch; indexing stops there when it returns False (the maintenance thread bounds the WAL)."""
    done = 0
    while True:
        with write_transaction(db):
            last = _batch_end(db, batch, max_bytes)
            if last is None:
                return done
            db.execute("INSERT INTO messages_fts (rowid, content) SELECT m.id, m.content FROM messages m "
                       "JOIN fts_pending p ON m.id = p.id WHERE p.id <= ?", (last,))
            done += db.execute("DELETE FROM fts_pending WHERE id <= ?", (last,)).rowcount
        if between is not None and not between():
            return done


def _batch_end(db, batch, max_bytes):
    """The last queued id of the next batch (see index_pending), or None when nothing is queued."""
    total, last = 0, None
    for pid, size in db.execute("SELECT p.id, coalesce(length(CAST(m.content AS BLOB)), 0) FROM fts_pending p "
                                "LEFT JOIN messages m ON m.id = p.id ORDER BY p.id LIMIT ?", (batch,)):
        if last is not None and total + size > max_bytes:
            break
        total, last = total + size, pid
    return last


_maintainers, _maintainers_lock = {}, threading.Lock()


def _maintain(path, connect):
    """Full-text indexing and WAL checkpoints for one database, so that requests only append rows (a
    checkpoint copies pages into the database file and fsyncs it): the WAL's size every WAL_CHECK_S, the
    rest every MAINTENANCE_INTERVAL_S. One thread does both, so that indexing waits for the checkpoint."""
    conn, state = connect(path), _RoundState()
    next_round = time.monotonic() + MAINTENANCE_INTERVAL_S
    while True:
        time.sleep(WAL_CHECK_S)
        try:
            if not _bound_wal(conn, path):
                time.sleep(RESTART_BACKOFF_S)  # a reader holds an old snapshot: writers are not held up again at once
            if time.monotonic() >= next_round:
                next_round = time.monotonic() + MAINTENANCE_INTERVAL_S
                _round(conn, path, state)
        except sqlite3.Error as e:  # busy or a full disk: the next round tries again
            log.warning("history maintenance of %s: %s", path, e)


class _RoundState:
    seen = None  # PRAGMA data_version at the last round (it changes when other connections commit)
    emptied = False  # the WAL was emptied since


def _round(conn, path, state):
    """Indexes what is queued (the WAL bounded between batches: one batch a round while it cannot be), then
    checkpoints: PASSIVE after writes, and once no one wrote for a whole round, a TRUNCATE that empties the WAL file."""
    if conn.execute("SELECT 1 FROM fts_pending LIMIT 1").fetchone():
        index_pending(conn, between=lambda: _bound_wal(conn, path))
    version = conn.execute("PRAGMA data_version").fetchone()[0]
    if version != state.seen:
        state.seen, state.emptied = version, False
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    elif not state.emptied:
        state.emptied = _truncate_wal(conn, IDLE_CHECKPOINT_BUSY_MS)


def _bound_wal(conn, path) -> bool:
    """Empties the WAL if it is over WAL_RESTART_BYTES (see there); False when that did not get through."""
    return _wal_size(path) <= WAL_RESTART_BYTES or _truncate_wal(conn, RESTART_BUSY_MS)


def _wal_size(path) -> int:
    try:
        return os.path.getsize(path + "-wal")
    except OSError:
        return 0


def _truncate_wal(conn, wait_ms) -> bool:
    """A TRUNCATE checkpoint (copies the WAL into the database and cuts the file to 0 bytes) that
    waits at most wait_ms for readers and writers; True when it got through."""
    busy_ms = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    return busy == 0


def start_maintenance(path, connect):
    """The maintenance thread of one process and database (started in the process that serves: a
    gunicorn worker, not a master that forks)."""
    key = (os.getpid(), path)
    if key not in _maintainers:
        with _maintainers_lock:
            if key not in _maintainers:
                _maintainers[key] = threading.Thread(target=_maintain, args=(path, connect), daemon=True,
                                                     name="history-maintenance")
                _maintainers[key].start()
