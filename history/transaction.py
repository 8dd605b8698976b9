"""One write transaction on either backend."""
import contextlib


@contextlib.contextmanager
def write_transaction(conn):
    """BEGIN IMMEDIATE (the write lock now; PostgreSQL: BEGIN) ... COMMIT; ROLLBACK and re-raise on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
