"""`python db.py migrate-to-postgres SQLITE_FILE POSTGRES_URL`: copies an SQLite history into an empty
PostgreSQL one in a single transaction (COPY, ids kept so answers still name their questions), and
commits only when both sides count the same conversations, messages, answered pairs and users (their
keys' hashes, limits' counters and conversations' owners go along)."""
import sys

from history import postgres, sqlite
from history.columns import CONVERSATION_COLUMNS, MESSAGE_COLUMNS

TABLES = [("users", "id, name, key_hash, is_admin, requests_per_minute, tokens_per_day, created_at, last_used_at",
           "id"),
          ("user_usage", "user_id, kind, window_start, used", "rowid"),
          ("conversations", CONVERSATION_COLUMNS + ", user_id", "rowid"),
          ("messages", MESSAGE_COLUMNS + ", user_id", "id")]  # (table, columns, order), in the order of their references
COUNTS = {"conversations": "SELECT count(*) FROM conversations",
          "messages": "SELECT count(*) FROM messages",
          "pairs": "SELECT count(*) FROM messages WHERE question_id IS NOT NULL",
          "users": "SELECT count(*) FROM users",
          "id sum": "SELECT coalesce(sum(id), 0) FROM messages",
          "owners": "SELECT coalesce(sum(user_id), 0) FROM messages"}


def counts(conn) -> dict:
    return {name: conn.execute(sql).fetchone()[0] for name, sql in COUNTS.items()}


def _copy(src, dst, table, columns, order):
    with dst.raw.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in src.execute(f"SELECT {columns} FROM {table} ORDER BY {order}"):
            copy.write_row([postgres.clean(v) for v in row])


def migrate_to_postgres(sqlite_file, url) -> dict:
    """Returns the counts moved; raises (and leaves PostgreSQL as it was) when they differ."""
    sqlite.init_db(sqlite_file)  # an older file is brought to the current schema first
    postgres.init_db(url)
    src, dst = sqlite.connect(sqlite_file), postgres.connect(url)
    try:
        if any(counts(dst).values()):
            raise SystemExit("the PostgreSQL history is not empty: migrate into a new database")
        with dst.raw.transaction():
            src.execute("BEGIN")  # one snapshot of the file, whoever writes to it meanwhile
            for table, columns, order in TABLES:
                _copy(src, dst, table, columns, order)
            for table in ("messages", "users"):  # ids go on after the moved ones
                dst.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                            f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)")
            want, got = counts(src), counts(dst)
            src.execute("COMMIT")
            if want != got:
                raise RuntimeError(f"counts differ after the copy, nothing was committed: SQLite {want}, "
                                   f"PostgreSQL {got}")
        return got
    finally:
        src.close()
        dst.close()


def main():
    if len(sys.argv) != 4 or sys.argv[1] != "migrate-to-postgres":
        sys.exit("usage: python db.py migrate-to-postgres SQLITE_FILE POSTGRES_URL")
    moved = migrate_to_postgres(sys.argv[2], sys.argv[3])
    print("moved, counts verified: " + ", ".join(f"{v} {k}" for k, v in moved.items() if k not in ("id sum", "owners")))
