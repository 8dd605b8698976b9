"""The history in a Flask app, in the manner of the Flask tutorial's db.py: get_db/close_db per request,
init_app to set it up; and the history package's functions, re-exported for the routes (history/ says
what lives where). `python db.py migrate-to-postgres SQLITE_FILE POSTGRES_URL` moves an SQLite history
into an empty PostgreSQL one (history/move.py)."""
import contextlib

from flask import current_app, g

from history.columns import fts_query
from history.connections import open_connection, open_pool
from history.errors import INTEGRITY_ERRORS, POSTGRES_UNAVAILABLE, UNAVAILABLE, ConversationGone
from history.listing import iter_messages, list_conversations, list_messages
from history.maintenance import MAINTENANCE_INTERVAL_S, index_pending
from history.sqlite import SCHEMA_VERSION, WAL_SIZE_LIMIT, connect, init_db
from history.store import (
    add_message,
    answered_pairs,
    conversation_messages,
    delete_conversation,
    forget_question,
    get_conversation,
    has_route,
    message_dict,
    new_session_id,
)
from history.transaction import write_transaction

__all__ = ["INTEGRITY_ERRORS", "MAINTENANCE_INTERVAL_S", "POSTGRES_UNAVAILABLE", "SCHEMA_VERSION", "UNAVAILABLE",
           "WAL_SIZE_LIMIT", "ConversationGone", "add_message", "answered_pairs", "borrow", "briefly", "close_db", "connect",
           "conversation_messages", "delete_conversation", "forget_question", "fts_query", "get_conversation", "get_db",
           "has_route", "index_pending", "init_app", "init_db", "iter_messages", "list_conversations",
           "list_messages", "message_dict", "new_session_id", "open_connection", "write_transaction"]


def get_db():
    """This request's connection (from the app's pool), given back when the request ends."""
    if "db" not in g:
        g.db = current_app.extensions["db_pool"].get()
    return g.db


def borrow():
    """A pooled connection for a response that outlives its request (a stream), and the function
    that gives it back when the stream ends (from whatever thread ends it)."""
    pool = current_app.extensions["db_pool"]
    return pool.get(), pool.put


@contextlib.contextmanager
def briefly():
    """A pooled connection for a few statements, given back at once (not held to the request's end):
    the key check every request makes, and what /metrics reads while it counts the connections in use."""
    pool = current_app.extensions["db_pool"]
    conn = pool.get()
    try:
        yield conn
    finally:
        pool.put(conn)


def close_db(e=None):
    conn = g.pop("db", None)
    if conn is not None:
        current_app.extensions["db_pool"].put(conn)


def init_app(app):
    """The history at app.config["DATABASE"] (an SQLite file or a postgresql:// URL), created or brought
    to the current schema, and its pool (app.extensions["db_pool"], which counts what it hands out)."""
    app.extensions["db_pool"] = open_pool(app.config["DATABASE"], app.config.get("DB_POOL_MAX"))
    app.teardown_appcontext(close_db)


if __name__ == "__main__":  # python db.py migrate-to-postgres SQLITE_FILE POSTGRES_URL
    from history import move
    move.main()
