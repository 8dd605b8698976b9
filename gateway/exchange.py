"""One question -> one answer, with the conversation's context, saved to history.

The question is saved before the upstream call; exactly one answer row, naming its question, is
saved however the exchange ends: answered (`ok`, `blocked`), failed (`error`), or left by its
client (`cancelled`): before the first token, mid-stream, while waiting in a queue, or before a
streamed response was ever read. Only a conversation deleted meanwhile gets no answer row, and a
request the upstream refuses as invalid leaves nothing (its question is removed)."""
import contextlib
import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from flask import current_app

import db
from common.api_common import ApiError
from gateway import auth, limits
from gateway.cancel import Cancel
from gateway.saved_answer import merge_tool_call_deltas, saved_text
from providers import Provider, UpstreamRequest

ANSWER_RESERVE = 1024  # tokens kept free for the answer when max_tokens is not given
MAX_SAVED_CHARS = 1 << 20  # of one answer (its tool calls included) in history; the rest is cut, and the row says so
CANCELLED = "client disconnected"
INVALID_REQUEST = (400, 413, 422)  # an upstream's answer that the request was wrong: nothing of it is kept

log = logging.getLogger(__name__)


class ClientGone(ApiError):
    """The client hung up before its answer: the answer was saved as cancelled; nobody reads this."""

    def __init__(self):
        super().__init__(499, "The client closed the connection before the answer.", code="client_closed_request")


def session_deleted():
    return ApiError(409, "The conversation was deleted while this answer was being written, so the answer was not "
                         "saved; ask again to start a new conversation.", code="session_deleted")


def past_turns(conn, session_id):
    """Earlier exchanges that were answered, as pairs in the order of their questions: failed
    exchanges are not replayed, and an exchange still in flight has no answer yet."""
    turns = []
    for row in db.answered_pairs(conn, session_id):
        if row["answer"] and row["status"] in ("ok", "cancelled"):
            turns += [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
    return turns


def _upper_bound_tokens(messages):
    # Byte-level BPE never makes more tokens than bytes; +8 a message covers the template's markers.
    return sum(len(m["content"].encode("utf-8")) + 8 for m in messages) + 8


def fit_context(provider, head, turns, tail, max_tokens):
    """head + turns + tail, dropping the oldest turns until it fits the model's context.
    Cheap upper bound first; exact counting (one upstream call) only when it might not fit."""
    limit = provider.max_seq_len()
    if not limit:
        return head + turns + tail
    budget = limit - (max_tokens or min(ANSWER_RESERVE, limit // 4))
    while turns:
        messages = head + turns + tail
        if _upper_bound_tokens(messages) <= budget:
            return messages
        exact = provider.count_tokens(messages)  # None: the provider can't count; drop a turn
        if exact is not None and exact <= budget:
            return messages
        turns = turns[2:]
    return head + tail  # the upstream says so if even the question alone is too long


@dataclass
class Exchange:
    """One question being answered: what the answer functions (answer, open_stream, AnswerStream) share."""
    conn: object  # the history connection; a stream's is borrowed from the pool and given back when settled
    provider: Provider  # who answers (a Routed one may switch to the other model before the first word)
    sid: str  # the conversation
    request: UpstreamRequest  # what the upstream is asked
    system: str | None  # the system prompt, as history keeps it
    model: str | None  # the model the client named, kept on both rows (None: the one the upstream says)
    question_id: int
    asked: tuple  # (provider, route) the question row was saved with
    journal: object  # db_journal.Journal: answers the database can't take now wait there
    caller: object  # gateway.auth's caller: whose conversation it is, whose limits it counts against
    cancel: Cancel = field(default_factory=Cancel)  # set when the client leaves
    t0: float = field(default_factory=time.perf_counter)
    give_back: Callable = lambda conn: None  # returns a borrowed conn to the pool

    def elapsed_ms(self):
        return round((time.perf_counter() - self.t0) * 1000, 2)


def _save_answer(ex, text, info, status, error=None):
    """The answer row's id, or None when the database could not take it now: then it is in the journal
    (history/journal.py), written to the history once the database is back. ApiError 409 when the
    conversation was deleted meanwhile. Its tokens count against the user's day (gateway/limits.py)."""
    content = saved_text(text, info.get("tool_calls"))
    if len(content) > MAX_SAVED_CHARS:
        error = (f"{error}; " if error else "") + (f"the answer was cut to its first {MAX_SAVED_CHARS} characters "
                                                   f"of {len(content)} for history")
        content = content[:MAX_SAVED_CHARS]
    answered = (ex.provider.name, ex.provider.route)
    record = {"conv_id": ex.sid, "role": "assistant", "content": content,
              "provider": answered[0], "model": ex.model or info.get("model"),
              "system_prompt": ex.system, "params": ex.request.saved_params(), "usage": info.get("usage"),
              "latency_ms": ex.elapsed_ms(), "finish_reason": info.get("finish_reason"), "status": status,
              "error": error, "question_id": ex.question_id, "route": answered[1], "user_id": ex.caller.id}
    if answered != ex.asked:  # model auto fell back after the question was saved: it says who answered too
        record["reroute_question"] = True
    try:
        mid = ex.journal.save(ex.conn, record)
    except db.ConversationGone:
        raise session_deleted() from None
    limits.count_answer(ex.conn, ex.caller, info.get("usage"), saved=mid is not None)
    return mid


def start(conn, provider, sid, question, request, system, model=None, title=None) -> Exchange:
    """Saves the question (creating the conversation when a title is given); returns the Exchange
    for the answer functions. A provider that can't be asked at all is refused first: nothing is saved.
    The conversation is the caller's (someone else's is a 404, as if it did not exist)."""
    provider.check_ready()
    caller = auth.caller()
    journal = current_app.extensions["history_journal"]
    if journal.pending:  # answers that ended while the database was away go in before this question
        journal.replay(wait=False)
    try:
        qid = db.add_message(conn, sid, "user", question, provider.name, model, system, request.saved_params(),
                             title=title, route=provider.route, user_id=caller.id)
    except db.ConversationGone:
        raise ApiError(404, f"Unknown session {sid!r} (deleted just now?): omit 'session' to start a new "
                            f"conversation.",
                       code="unknown_session", param="session") from None
    return Exchange(conn, provider, sid, request, system, model, qid, (provider.name, provider.route), journal,
                    caller)


def _save_failure(ex, e):
    """The answer row for an upstream call that raised; returns the exception to raise. An upstream
    that found the request itself invalid (before any answer) leaves nothing saved: the question goes."""
    if isinstance(e, ApiError) and e.status in INVALID_REQUEST and not ex.cancel.is_set():
        try:
            db.forget_question(ex.conn, ex.sid, ex.question_id)
        except db.UNAVAILABLE as gone:  # (the question stays, without an answer)
            log.warning("could not remove the refused question %s: %s", ex.question_id, gone)
        return e
    if ex.cancel.is_set():  # the failure is our own abort of the upstream, for a client that left
        _save_answer(ex, "", {}, "cancelled", CANCELLED)
        return ClientGone()
    if not isinstance(e, ApiError):
        _save_answer(ex, "", {}, "error", f"internal error: {type(e).__name__}")
        return e
    _save_answer(ex, "", {}, "error", e.message)
    return e


def answer(ex: Exchange) -> dict:
    try:
        result = ex.provider.complete(ex.request, ex.sid, cancel=ex.cancel)
    except Exception as e:
        raise _save_failure(ex, e)
    status = "blocked" if result.get("blocked") else "ok"
    mid = _save_answer(ex, result["answer"], result, status)
    return dict(result, message_id=mid, status=status, elapsed_ms=ex.elapsed_ms())


def open_stream(ex: Exchange):
    """Starts the upstream stream and waits for its first event, so that a failure before any
    text (bad key, server down) gets a real HTTP status instead of an error inside a 200 stream.
    Returns an AnswerStream, which saves through a connection borrowed from the pool (the stream
    outlives the request and its connection)."""
    upstream = ex.provider.stream(ex.request, ex.sid, cancel=ex.cancel)
    try:
        first = next(upstream)
    except StopIteration:
        first = None
    except Exception as e:
        upstream.close()
        raise _save_failure(ex, e)
    try:
        conn, give_back = db.borrow()
    except db.UNAVAILABLE:  # (PostgreSQL gone meanwhile: the answer goes to the journal)
        conn, give_back = None, lambda conn: None
    except BaseException:
        upstream.close()
        raise
    return AnswerStream(dataclasses.replace(ex, conn=conn, give_back=give_back), upstream, first)


class AnswerStream:
    """The events of one streamed answer: ("delta", text)..., then ("done", info) or ("error", ApiError).
    A piece with more than text (tool_calls deltas, logprobs) comes as ("chunk", {"delta"?, "tool_calls"?,
    "logprobs"?}); the calls are merged for the answer row.

    The exchange is settled exactly once (answer row saved, upstream closed, connection given back)
    when the events end, or by close() at whatever point the WSGI server calls it: mid-stream, or
    before the first event was ever pulled (a client gone before the first write; a generator's own
    try/finally never runs if it is closed before it starts). Iterate and close from one thread."""

    def __init__(self, ex: Exchange, upstream, first):
        self.ex, self.upstream, self.first = ex, upstream, first
        self.parts, self.info, self.settled, self.calls = [], {}, False, []
        self._events = self._run()

    def __iter__(self):
        return self._events

    def _run(self):
        try:
            for ev in itertools.chain([self.first] if self.first else [], self.upstream):
                if "tool_calls" in ev or "logprobs" in ev:
                    self.parts.append(ev.get("delta") or "")
                    self.info["tool_calls"] = merge_tool_call_deltas(self.calls, ev.get("tool_calls") or ())
                    yield "chunk", ev
                elif "delta" in ev:
                    self.parts.append(ev["delta"])
                    yield "delta", ev["delta"]
                else:
                    self.info.update(ev)
        except Exception as e:  # noqa: BLE001 - the headers are gone: the error goes in-band
            if self.ex.cancel.is_set():  # our own abort, for a client that left just as the text began
                with contextlib.suppress(ApiError):  # (deleted meanwhile: nothing to keep)
                    self._settle("cancelled", CANCELLED)
                return
            if not isinstance(e, ApiError):
                log.exception("stream of session %s failed", self.ex.sid)
                e = ApiError(500, f"Internal error while streaming ({type(e).__name__}); the partial answer "
                                  f"was saved.", type="server_error", code="internal_error")
            yield self._ending("error", e)
            return
        status = "blocked" if self.info.get("blocked") else "ok"
        yield self._ending("done", status)

    def _ending(self, kind, value):
        """The last event, after settling; a conversation deleted meanwhile ends in its 409 error."""
        try:
            if kind == "error":
                value.message_id = self._settle("error", value.message)
                return "error", value
            mid = self._settle(value)
        except ApiError as e:  # (session_deleted)
            e.message_id = None
            return "error", e
        text = "".join(self.parts)
        return "done", dict(self.info, message_id=mid, status=value, answer=text, elapsed_ms=self.ex.elapsed_ms())

    def _settle(self, status, error=None):
        if self.settled:
            return None
        self.settled = True
        try:
            self.upstream.close()  # stops the generation if it is still running
            return _save_answer(self.ex, "".join(self.parts), self.info, status, error)
        finally:
            self.ex.give_back(self.ex.conn)

    def close(self):
        self._events.close()
        if not self.settled:  # the client left: keep what was said
            with contextlib.suppress(ApiError):  # (deleted meanwhile: nothing to keep, and no one to tell)
                self._settle("cancelled", CANCELLED)


class closing_iter:
    """`frames` for a WSGI response whose close() also calls `finalize` (once), even when the
    server closes the response before the first frame was pulled."""

    def __init__(self, frames, finalize):
        self.frames, self.finalize = iter(frames), finalize

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.frames)

    def close(self):
        try:
            getattr(self.frames, "close", lambda: None)()
        finally:
            finalize, self.finalize = self.finalize, None
            if finalize is not None:
                finalize()
