"""What the answering routes (/gigachat, /qwen, /v1/chat/completions, /v1/completions) share: waiting for
the first piece of an answer while watching the client, the response (SSE or JSON), and the token and
stream metrics."""
from flask import current_app, jsonify, request

from common import client_watch
from common.api_common import ApiError, sse_response
from gateway import exchange


def providers() -> dict:
    return current_app.extensions["providers"]


def metrics():
    """The app's Metrics; take it during the request: a streamed body is sent after the app context ends."""
    return current_app.extensions["metrics"]


def record_usage(metrics, name, usage):
    usage = usage or {}
    metrics.tokens.labels(name).inc(usage.get("completion_tokens") or 0)
    tps = (usage.get("timings") or {}).get("tokens_per_second")
    if tps:
        metrics.tok_per_s.labels(name).set(tps)


def begin(ex: exchange.Exchange, stream):
    """The answer's event stream, or the whole answer. The session exists from here on, so an
    upstream failure tells the client its id. Until then nothing is written to the client, so a
    watcher notices one that hangs up, and the upstream call is aborted (its answer: cancelled)."""
    try:
        with client_watch.watching(request.environ, on_leave=ex.cancel.set):
            return exchange.open_stream(ex) if stream else exchange.answer(ex)
    except ApiError as e:
        e.headers["X-Session-ID"] = ex.sid
        raise


def deliver(name, r, stream, frames, whole):
    """The response for begin()'s `r`: SSE of `frames(events)` (events: r's, the usage counted when the
    answer is done), settled when the server closes it; or the JSON of `whole(r)`, counted now."""
    m = metrics()
    if stream:
        return sse_response(exchange.closing_iter(tracked(m, frames(_counted(m, name, r))), r.close))
    record_usage(m, name, r.get("usage"))
    return jsonify(whole(r))


def _counted(metrics, name, events):
    for kind, value in events:  # (a client that hangs up: the response's close() settles `events`)
        if kind == "done":
            record_usage(metrics, name, value.get("usage"))
        yield kind, value


def tracked(metrics, frames):
    """Counts an SSE stream as active while it is being sent."""
    metrics.active_streams.inc()
    try:
        yield from frames
    finally:
        metrics.active_streams.dec()
