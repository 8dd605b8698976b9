"""The users store: a person, their key (kept only as its SHA-256) and their limits, on either history backend
(the `users` table, schema version 6). Who calls is a Caller; id 0 is the built-in admin (CHAT_API_KEY, or
the keyless single user), who owns every conversation saved before users existed."""
import hashlib
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import Optional

from history import postgres
from history.connections import open_connection
from history.errors import UNAVAILABLE
from history.transaction import write_transaction

KEY_PREFIX = "dac_"
KEY_BYTES = 32  # random bytes a key carries: a fast hash of it cannot be searched backwards
ADMIN_NAME = "admin"  # the built-in admin's name (reserved): ?user=admin filters its conversations
NAME = re.compile(r"[\w.@-]{1,64}")
LAST_USE_STEP_S = 60  # last_used_at is written at most once a minute a user (a write per request costs)
COLUMNS = "id, name, is_admin, requests_per_minute, tokens_per_day, created_at, last_used_at"


@dataclass(frozen=True)
class Caller:
    """Who a request comes from. `keyless`: no CHAT_API_KEY and no users, the single-user tool."""
    id: int
    name: str
    admin: bool
    requests_per_minute: Optional[int] = None
    tokens_per_day: Optional[int] = None
    keyless: bool = False


ADMIN = Caller(0, ADMIN_NAME, True)
KEYLESS = Caller(0, ADMIN_NAME, True, keyless=True)


class UserError(ValueError):
    """A users command that cannot be done; its message says why."""


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def _caller(row) -> Caller:
    return Caller(row["id"], row["name"], bool(row["is_admin"]), row["requests_per_minute"], row["tokens_per_day"])


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise UserError(f"A user name is 1-64 letters, digits, '.', '_', '@' or '-' (got {name!r}).")
    if name == ADMIN_NAME:
        raise UserError(f"'{ADMIN_NAME}' is the built-in admin (CHAT_API_KEY); choose another name.")
    return name


def check_limit(value, what):
    if value is not None and value < 1:
        raise UserError(f"{what} must be a positive number (leave it out for no limit).")
    return value


def add(conn, name, admin=False, requests_per_minute=None, tokens_per_day=None) -> str:
    """Creates the user; returns their key (shown once: only its hash is kept)."""
    check_name(name)
    check_limit(requests_per_minute, "--requests-per-minute")
    check_limit(tokens_per_day, "--tokens-per-day")
    key = new_key()
    with write_transaction(conn):
        if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
            raise UserError(f"User {name!r} exists already: `users rotate {name}` gives them a new key.")
        conn.execute("INSERT INTO users (name, key_hash, is_admin, requests_per_minute, tokens_per_day, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (name, key_hash(key), int(admin), requests_per_minute, tokens_per_day, time.time()))
    return key


def rotate(conn, name) -> str:
    """A new key for the user; the old one is refused from this moment on."""
    key = new_key()
    if not conn.execute("UPDATE users SET key_hash = ? WHERE name = ?", (key_hash(key), name)).rowcount:
        raise UserError(f"No user {name!r}; `users list` shows them.")
    return key


def remove(conn, name):
    """Deletes the user (their key is refused from now on); their conversations stay, visible to admins."""
    with write_transaction(conn):
        row = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UserError(f"No user {name!r}; `users list` shows them.")
        conn.execute("DELETE FROM users WHERE id = ?", (row["id"],))
        conn.execute("DELETE FROM user_usage WHERE user_id = ?", (row["id"],))


def all_users(conn):
    return conn.execute(f"SELECT {COLUMNS} FROM users ORDER BY name").fetchall()


def any_user(conn) -> bool:
    return conn.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None


def exist_in(target) -> bool:
    """Whether the history at `target` has users (False when it cannot be read yet: no file, an older schema)."""
    if not postgres.is_url(target) and not os.path.exists(target):
        return False
    try:
        conn = open_connection(target)
    except Exception:  # noqa: BLE001 - only a start-up warning depends on it
        return False
    try:
        return any_user(conn)
    except Exception:  # noqa: BLE001 - (no users table yet)
        return False
    finally:
        conn.close()


def by_key(conn, key: str) -> Optional[Caller]:
    """The user holding this key, or None; notes the use (at most once a minute)."""
    row = conn.execute(f"SELECT {COLUMNS} FROM users WHERE key_hash = ?", (key_hash(key),)).fetchone()
    if row is None:
        return None
    now = time.time()
    if row["last_used_at"] is None or row["last_used_at"] < now - LAST_USE_STEP_S:
        try:  # (best effort: a busy database does not refuse the request for this)
            conn.execute("UPDATE users SET last_used_at = ? WHERE id = ?", (now, row["id"]))
        except UNAVAILABLE as e:
            logging.getLogger(__name__).warning("last use of user %s not noted: %s", row["name"], e)
    return _caller(row)


def id_of(conn, name) -> Optional[int]:
    """A user's id by name (the built-in admin's is 0), or None."""
    if name == ADMIN_NAME:
        return 0
    row = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
    return row["id"] if row else None


def names(conn) -> dict:
    """{id: name} of every user, the built-in admin included."""
    return {0: ADMIN_NAME, **{row["id"]: row["name"] for row in conn.execute("SELECT id, name FROM users")}}
