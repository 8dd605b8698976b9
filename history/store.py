"""Writing messages, and reading one conversation: SQL that runs unchanged on either backend."""
import json
import time
import uuid

from history.columns import MESSAGE_COLUMNS
from history.errors import INTEGRITY_ERRORS, ConversationGone
from history.transaction import write_transaction


def new_session_id() -> str:
    return uuid.uuid4().hex


def get_conversation(db, conv_id):
    return db.execute("SELECT * FROM conversations WHERE id = ?", (conv_id,)).fetchone()


def add_message(db, conv_id, role, content, provider, model=None, system_prompt=None, params=None,
                usage=None, latency_ms=None, finish_reason=None, status="ok", error=None, title=None,
                question_id=None, route=None, created_at=None, user_id=0, reroute_question=False) -> int:
    """Inserts one message and bumps its conversation; returns the message id. With a title, the
    conversation is created first if it does not exist yet, in the same transaction (one commit).
    An answer names its question (question_id); `route` is how model "auto" chose the provider (None when
    the client chose it). The conversation belongs to `user_id` (0: the built-in admin): one of someone else's is
    never written to. Raises ConversationGone when either was deleted, or is someone else's.
    created_at: when it was said, if earlier than now (an answer replayed from the journal).
    reroute_question: the answer came from another provider than its question was saved with (model auto's
    fallback): the question row is given the answer's provider and route, in the same transaction."""
    usage = usage or {}
    now = time.time()
    try:
        with write_transaction(db):
            created = title is not None and db.execute(
                "INSERT INTO conversations (id, provider, model, system_prompt, title, created_at, updated_at, "
                "user_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (conv_id, provider, model, system_prompt, title[:200], now, now, user_id)).rowcount == 1
            # The conversation row is locked (updated) before the message names it: on PostgreSQL a
            # DELETE of the conversation then waits for this transaction instead of deadlocking with it.
            # Gone: answered here, before the insert, since SQLite reuses a deleted question's id, and a
            # UNIQUE question_id clash with a newer question's answer would be reported before the foreign key.
            if not created and not db.execute("UPDATE conversations SET updated_at = ? WHERE id = ? AND user_id = ?",
                                              (now, conv_id, user_id)).rowcount:
                raise ConversationGone(conv_id)
            message_id = db.execute(
                "INSERT INTO messages (conversation_id, role, content, provider, model, system_prompt, params, "
                "prompt_tokens, completion_tokens, precached_prompt_tokens, latency_ms, finish_reason, status, error, "
                "created_at, question_id, route, user_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (conv_id, role, content, provider, model, system_prompt,
                 json.dumps(params, ensure_ascii=False) if params is not None else None,
                 usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("precached_prompt_tokens"),
                 latency_ms, finish_reason, status, error, created_at or now, question_id, route,
                 user_id)).fetchone()[0]
            if reroute_question and question_id is not None:
                db.execute("UPDATE messages SET provider = ?, route = ? WHERE id = ?", (provider, route, question_id))
    except INTEGRITY_ERRORS as e:
        if "foreign key" in str(e).lower():
            raise ConversationGone(conv_id) from e
        raise
    return message_id


def forget_question(db, conv_id, question_id):
    """Removes a question the upstream refused as invalid (and its conversation, if nothing else is in it)."""
    with write_transaction(db):
        db.execute("DELETE FROM messages WHERE id = ?", (question_id,))
        db.execute("DELETE FROM conversations WHERE id = ? AND NOT EXISTS (SELECT 1 FROM messages "
                   "WHERE conversation_id = ?)", (conv_id, conv_id))


def answered_pairs(db, conv_id):
    """(question, answer) rows of a conversation's answered exchanges, in the order of the questions'
    ids: the order the questions were saved in, whatever order their answers finished in."""
    return db.execute(
        "SELECT q.content AS question, a.content AS answer, a.status AS status FROM messages a "
        "JOIN messages q ON q.id = a.question_id WHERE a.conversation_id = ? AND a.role = 'assistant' "
        "ORDER BY q.id", (conv_id,)).fetchall()


def has_route(db, conv_id, route) -> bool:
    """Whether any message of the conversation was routed so (a conversation once kept local stays local)."""
    return db.execute("SELECT 1 FROM messages WHERE conversation_id = ? AND route = ? LIMIT 1",
                      (conv_id, route)).fetchone() is not None


def conversation_messages(db, conv_id):
    return db.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY id",
                      (conv_id,)).fetchall()


def delete_conversation(db, conv_id) -> bool:
    return db.execute("DELETE FROM conversations WHERE id = ?", (conv_id,)).rowcount > 0


def message_dict(row) -> dict:
    d = dict(row)
    d["session"] = d.pop("conversation_id")
    d["params"] = json.loads(d["params"]) if d["params"] else None
    return d
