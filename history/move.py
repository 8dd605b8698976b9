"""`python db.py migrate-to-postgres SQLITE_FILE POSTGRES_URL`: copies an SQLite history into an empty
PostgreSQL one in a single transaction (COPY, ids kept so answers still name their questions), and
commits only when both sides count the same conversations, messages and answered pairs."""
import sys

from history import postgres, sqlite
from history.columns import CONVERSATION_COLUMNS, MESSAGE_COLUMNS

COUNTS = {"conversations": "SELECT count(*) FROM conversations",
          "messages": "SELECT count(*) FROM messages",
          "pairs": "SELECT count(*) FROM messages WHERE question_id IS NOT NULL",
          "id sum": "SELECT coalesce(sum(id), 0) FROM messages"}


def counts(conn) -> dict:
    return {name: conn.execute(sql).fetchone()[0] for name, sql in COUNTS.items()}


def _copy(src, dst, table, columns):
    with dst.raw.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in src.execute(f"SELECT {columns} FROM {table} ORDER BY {'id' if table == 'messages' else 'rowid'}"):
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
            _copy(src, dst, "conversations", CONVERSATION_COLUMNS)
            _copy(src, dst, "messages", MESSAGE_COLUMNS)
            dst.execute("SELECT setval(pg_get_serial_sequence('messages', 'id'), "
                        "coalesce((SELECT max(id) FROM messages), 0) + 1, false)")
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
    print("moved, counts verified: " + ", ".join(f"{v} {k}" for k, v in moved.items() if k != "id sum"))
