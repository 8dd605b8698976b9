"""History upkeep off the request path, one thread per server process and database: moving queued
messages into the full-text index, and WAL checkpoints (requests only append rows)."""
import logging
import os
import sqlite3
import threading
import time

from history.transaction import write_transaction

INDEX_BATCH = 200  # messages indexed per transaction: ~3 ms of write lock for 200 messages of 120 words
MAINTENANCE_INTERVAL_S = 1.0
IDLE_CHECKPOINT_BUSY_MS = 100  # an idle-time checkpoint gives way at once to a writer that turns up
# Under sustained writes readers always hold some snapshot, so a PASSIVE checkpoint never lets the WAL
# start over and it grows (91 MB after 30 s at 6 writers). A second thread looks at its size every
# WAL_CHECK_S (indexing may hold the first for seconds) and past WAL_RESTART_BYTES waits (up to
# RESTART_BUSY_MS, new writers waiting behind it) for the readers of old snapshots to finish, and empties it.
WAL_RESTART_BYTES = 4 << 20
WAL_CHECK_S = 0.1
RESTART_BUSY_MS = 2000
RESTART_BACKOFF_S = 0.5

log = logging.getLogger(__name__)


def index_pending(db, batch=INDEX_BATCH) -> int:
    """Moves queued messages (fts_pending) into the full-text index, one short transaction per batch;
    returns how many."""
    done = 0
    while True:
        with write_transaction(db):
            db.execute("INSERT INTO messages_fts (rowid, content) SELECT m.id, m.content FROM messages m "
                       "JOIN (SELECT id FROM fts_pending ORDER BY id LIMIT ?) p ON m.id = p.id", (batch,))
            n = db.execute("DELETE FROM fts_pending WHERE id IN (SELECT id FROM fts_pending ORDER BY id LIMIT ?)",
                           (batch,)).rowcount
        done += n
        if n < batch:
            return done


_maintainers, _maintainers_lock = {}, threading.Lock()


def _maintain(path, connect):
    """Full-text indexing and WAL checkpoints for one database, every MAINTENANCE_INTERVAL_S, so that
    requests only append rows (a checkpoint copies pages into the database file and fsyncs it)."""
    conn = connect(path)
    seen, emptied = None, False
    while True:
        time.sleep(MAINTENANCE_INTERVAL_S)
        try:
            if conn.execute("SELECT 1 FROM fts_pending LIMIT 1").fetchone():
                index_pending(conn)
            version = conn.execute("PRAGMA data_version").fetchone()[0]  # changes when others commit
            if version != seen:
                seen, emptied = version, False
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            elif not emptied:  # no one wrote for a whole round: empty the WAL file
                emptied = _truncate_wal(conn, IDLE_CHECKPOINT_BUSY_MS)
        except sqlite3.Error as e:  # busy or a full disk: the next round tries again
            log.warning("history maintenance of %s: %s", path, e)


def _bound_wal(path, connect):
    """Empties the WAL whenever it is over WAL_RESTART_BYTES (see there)."""
    conn, pause = connect(path), WAL_CHECK_S
    while True:
        time.sleep(pause)
        pause = WAL_CHECK_S
        try:
            if _wal_size(path) > WAL_RESTART_BYTES and not _truncate_wal(conn, RESTART_BUSY_MS):
                pause = RESTART_BACKOFF_S  # a reader holds an old snapshot for long: writers are not held up again at once
        except sqlite3.Error as e:
            log.warning("WAL checkpoint of %s: %s", path, e)


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
    """The maintenance threads of one process and database (started in the process that serves: a
    gunicorn worker, not a master that forks)."""
    key = (os.getpid(), path)
    if key not in _maintainers:
        with _maintainers_lock:
            if key not in _maintainers:
                _maintainers[key] = [threading.Thread(target=target, args=(path, connect), daemon=True, name=name)
                                     for target, name in ((_maintain, "history-maintenance"),
                                                          (_bound_wal, "history-wal-bound"))]
                for thread in _maintainers[key]:
                    thread.start()
