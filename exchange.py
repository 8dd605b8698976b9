"""One question -> one answer, with the conversation's context, saved to history.

The user's message is saved before the upstream call and the answer after it; an
upstream failure or a stream that ends early is saved too, with its status."""
import itertools
import time

import db
from api_common import ApiError

ANSWER_RESERVE = 1024  # tokens kept free for the answer when max_tokens is not given


def past_turns(conn, session_id):
    """Earlier (question, answer) pairs that were answered: failed exchanges are not replayed."""
    rows = db.conversation_messages(conn, session_id)
    turns = []
    for q, a in zip(rows, rows[1:]):
        if q["role"] == "user" and a["role"] == "assistant" and a["content"] and \
                a["status"] in ("ok", "cancelled"):
            turns += [{"role": "user", "content": q["content"]}, {"role": "assistant", "content": a["content"]}]
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
    exact = getattr(provider, "count_tokens", None)
    while turns:
        messages = head + turns + tail
        if _upper_bound_tokens(messages) <= budget or (exact and exact(messages) <= budget):
            return messages
        turns = turns[2:]
    return head + tail  # the upstream says so if even the question alone is too long


def _elapsed_ms(ctx):
    return round((time.perf_counter() - ctx["t0"]) * 1000, 2)


def _save_answer(ctx, text, info, status, error=None):
    return db.add_message(ctx["conn"], ctx["sid"], "assistant", text, ctx["provider"].name,
                          ctx["model"] or info.get("model"), ctx["system"], ctx["params"], usage=info.get("usage"),
                          latency_ms=_elapsed_ms(ctx), finish_reason=info.get("finish_reason"), status=status,
                          error=error)


def start(conn, provider, sid, question, messages, system, params, model=None, title=None):
    """Saves the question (creating the conversation when a title is given); returns the context
    for the answer functions."""
    db.add_message(conn, sid, "user", question, provider.name, model, system, params, title=title)
    return {"conn": conn, "provider": provider, "sid": sid, "messages": messages, "system": system,
            "params": params, "model": model, "t0": time.perf_counter()}


def answer(ctx) -> dict:
    try:
        result = ctx["provider"].complete(ctx["messages"], ctx["params"], ctx["sid"])
    except ApiError as e:
        _save_answer(ctx, "", {}, "error", e.message)
        raise
    status = "blocked" if result.get("blocked") else "ok"
    mid = _save_answer(ctx, result["answer"], result, status)
    return dict(result, message_id=mid, status=status, elapsed_ms=_elapsed_ms(ctx))


def open_stream(ctx):
    """Starts the upstream stream and waits for its first event, so that a failure before any
    text (bad key, server down) gets a real HTTP status instead of an error inside a 200 stream.
    Returns the event iterator for answer_stream(), which saves through a connection borrowed
    from the pool (the stream outlives the request and its connection)."""
    upstream = ctx["provider"].stream(ctx["messages"], ctx["params"], ctx["sid"])
    try:
        first = next(upstream)
    except StopIteration:
        first = None
    except ApiError as e:
        _save_answer(ctx, "", {}, "error", e.message)
        raise
    conn, give_back = db.borrow()
    return answer_stream(dict(ctx, conn=conn, give_back=give_back), upstream, first)


def answer_stream(ctx, upstream, first):
    """Yields ("delta", text) events, then ("done", info) or ("error", ApiError). The answer is saved
    however the stream ends: completed, failed upstream, or cancelled by the client hanging up."""
    parts, info, result = [], {}, None
    try:
        try:
            for ev in itertools.chain([first] if first else [], upstream):
                if "delta" in ev:
                    parts.append(ev["delta"])
                    yield "delta", ev["delta"]
                else:
                    info.update(ev)
        except ApiError as e:
            e.message_id = _save_answer(ctx, "".join(parts), info, "error", e.message)
            result = ("error", e)
        except GeneratorExit:  # the client hung up: stop the upstream, keep what was said
            upstream.close()
            _save_answer(ctx, "".join(parts), info, "cancelled", "client disconnected")
            raise
        if result is None:
            status = "blocked" if info.get("blocked") else "ok"
            mid = _save_answer(ctx, "".join(parts), info, status)
            result = ("done", dict(info, message_id=mid, status=status, answer="".join(parts),
                                   elapsed_ms=_elapsed_ms(ctx)))
        yield result
    finally:
        upstream.close()
        ctx["give_back"](ctx["conn"])
