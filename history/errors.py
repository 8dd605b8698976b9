"""The errors of either backend, by what they mean to the caller."""
import sqlite3

import psycopg
import psycopg_pool


class ConversationGone(Exception):
    """The conversation (or the question an answer names) was deleted before this row was saved."""


INTEGRITY_ERRORS = (sqlite3.IntegrityError, psycopg.IntegrityError)
POSTGRES_UNAVAILABLE = (psycopg.OperationalError, psycopg_pool.PoolTimeout)  # down, or no pooled connection in time
# "The database can't be written now", on either backend (SQLite: locked past its busy timeout).
UNAVAILABLE = (sqlite3.OperationalError, psycopg.InterfaceError) + POSTGRES_UNAVAILABLE


def is_duplicate_answer(e) -> bool:
    """An integrity error saying that the question already has its answer (messages_by_question)."""
    text = str(e).lower()
    return isinstance(e, INTEGRITY_ERRORS) and ("question_id" in text or "messages_by_question" in text)
