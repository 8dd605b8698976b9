"""The chat history: conversations and their messages, on SQLite (a file) or PostgreSQL (a URL).

    connections.py  which backend a target names; one connection, or a counted pool, for it
    sqlite.py       SQLite: connections (PRAGMAs, full-text search), the migrations, the pool
    postgres.py     PostgreSQL: connections that take the same SQL, the migrations, the pool
    pg_search.py    PostgreSQL full-text search, newest first (walk the newest rows, or the GIN index)
    store.py        writing messages, and reading one conversation
    listing.py      lists of messages and conversations across the history (paging, search, export)
    columns.py      the column lists and WHERE builder the queries share
    errors.py       the errors either backend raises, by meaning (unavailable, integrity, gone)
    transaction.py  BEGIN IMMEDIATE ... COMMIT on either backend
    maintenance.py  SQLite upkeep off the request path: full-text indexing, WAL checkpoints
    journal.py      answers the database could not take, kept on disk and replayed when it is back
    users.py        users, their keys (kept as SHA-256) and who calls (Caller)
    usage.py        the counters behind per-user limits (gateway/limits.py decides)
    move.py         `python db.py migrate-to-postgres SQLITE_FILE POSTGRES_URL`
    migrations/     sqlite/000N_*.sql and postgres/000N_*.sql, applied in order

db.py (at the top) is the Flask face: get_db/close_db/init_app, and re-exports of the above."""
