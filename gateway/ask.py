"""The spec's endpoints: GET/POST /gigachat and /qwen (one question, optionally in a session, answered
whole or as SSE), GET/POST /ask (the same, model "auto": gateway/routing.py picks the model) and
GET /qwen/status."""
from flask import Blueprint, current_app, jsonify, request

import db
from common.api_common import ApiError, json_body, sse
from common.openai_format import parse_params
from gateway import exchange, routing
from gateway.delivery import begin, deliver, providers
from providers import UpstreamRequest

MAX_QUESTION_CHARS = 100_000

bp = Blueprint("ask", __name__)


def question_args():
    """The request's arguments (query, or query + JSON body for a POST), the question and the system prompt."""
    from_query = request.method in ("GET", "HEAD")
    src = request.args.to_dict() if from_query else {**request.args.to_dict(), **json_body()}
    q = src.get("q")
    if not isinstance(q, str) or not q.strip():
        raise ApiError(400, "Ask something: add ?q=your+question (or {\"q\": ...} in a POST body).",
                       code="missing_q", param="q")
    if len(q) > MAX_QUESTION_CHARS:
        raise ApiError(413, f"The question is over {MAX_QUESTION_CHARS} characters; shorten it.",
                       code="question_too_long", param="q")
    system = src.get("system")
    if system is not None and not isinstance(system, str):
        raise ApiError(400, "'system' must be a string.", code="invalid_parameter", param="system")
    return src, from_query, q, system


def session_of(conn, src, system):
    """(session id, title for a new one, earlier turns, system prompt) for the question's session."""
    if not src.get("session"):
        system = system if system is not None else current_app.config["DEFAULT_SYSTEM_PROMPT"]
        return db.new_session_id(), src["q"].strip(), [], system
    sid = str(src["session"])[:100]
    conv = db.get_conversation(conn, sid)
    if conv is None:
        raise ApiError(404, f"Unknown session {sid!r}: omit 'session' to start a new "
                            f"conversation (GET /history/sessions lists yours).", code="unknown_session",
                       param="session")
    system = system if system is not None else conv["system_prompt"]
    return sid, None, exchange.past_turns(conn, sid), system


def ask(name):
    src, from_query, q, system = question_args()
    defaults = current_app.config["QWEN_DEFAULTS"] if name == "qwen" else {}  # (auto: Routed adds Qwen's)
    params = parse_params(src, defaults, from_query=from_query)
    stream = str(src.get("stream", "")).lower() in ("1", "true", "yes")
    conn = db.get_db()
    sid, title, turns, system = session_of(conn, src, system)
    head = [{"role": "system", "content": system}] if system else []
    tail = [{"role": "user", "content": q}]
    provider = routing.auto(conn, sid, q, head + turns + tail) if name == routing.AUTO \
        else routing.explicit(name, providers(), head + turns + tail, conn, sid)
    messages = exchange.fit_context(provider, head, turns, tail, params.get("max_tokens"))
    ex = exchange.start(conn, provider, sid, q, UpstreamRequest(messages, params), system, title=title)
    r = begin(ex, stream)  # (from here on, provider.name is the model that answers)
    return routing.mark(deliver(provider.name, r, stream, lambda events: page_events(events, provider, sid),
                                lambda r: {"answer": r["answer"], "model": r.get("model"), "provider": provider.name,
                                           "route": provider.route, "session": sid, "message_id": r["message_id"],
                                           "finish_reason": r.get("finish_reason"),
                                           "blocked": r["status"] == "blocked", "usage": r.get("usage"),
                                           "elapsed_ms": r["elapsed_ms"]}), provider)


def page_events(events, provider, sid):
    """SSE for browsers (EventSource) and curl -N: start, delta..., then done or error."""
    yield sse({"type": "start", "session": sid, "provider": provider.name, "route": provider.route})
    for kind, value in events:
        if kind == "delta" or kind == "chunk" and value.get("delta"):
            yield sse({"type": "delta", "text": value if kind == "delta" else value["delta"]})
        elif kind == "chunk":
            continue  # (tool calls and logprobs are asked for on /v1 only)
        elif kind == "done":
            yield sse({"type": "done", "session": sid, "message_id": value["message_id"],
                       "provider": provider.name, "route": provider.route,
                       "model": value.get("model"), "finish_reason": value.get("finish_reason"),
                       "blocked": value["status"] == "blocked", "usage": value.get("usage"),
                       "elapsed_ms": value["elapsed_ms"]})
        else:
            yield sse(dict(value.body(), type="error", status=value.status, session=sid,
                           message_id=getattr(value, "message_id", None)))


bp.add_url_rule("/gigachat", "gigachat", lambda: ask("gigachat"), methods=["GET", "POST"])
bp.add_url_rule("/qwen", "qwen", lambda: ask("qwen"), methods=["GET", "POST"])
bp.add_url_rule("/ask", "ask", lambda: ask(routing.AUTO), methods=["GET", "POST"])


@bp.get("/qwen/status")
def qwen_status():
    return jsonify(providers()["qwen"].status())
