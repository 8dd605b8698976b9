"""The saved exchanges: GET /history (messages), /history/sessions, /history/export (JSON lines),
GET and DELETE /history/<session>. Each user sees only their own conversations (someone else's is a 404);
an admin sees everyone's, or one user's with ?user=NAME (gateway/auth.py)."""
import json
import sqlite3

from flask import Blueprint, Response, current_app, jsonify, request

import db
from common.api_common import ApiError
from gateway import auth, exchange

PROVIDERS = ("gigachat", "qwen")

bp = Blueprint("history", __name__)


@bp.app_errorhandler(sqlite3.OperationalError)  # app-wide: /gigachat and /qwen write the history too
def db_unavailable(e):
    if "locked" not in str(e) and "busy" not in str(e):
        raise e  # a real fault: the generic handler answers 500 and logs it
    return jsonify(ApiError(503, f"The history database ({current_app.config['DATABASE']}) is unavailable: {e}. "
                                 f"Another program may hold a write lock on it; retry shortly.",
                            type="server_error", code="database_unavailable").body()), 503


def postgres_unavailable(e):  # (the URL is not repeated: it may carry a password)
    return jsonify(ApiError(503, f"The history database (PostgreSQL) is unavailable: {e}. Check that it runs and "
                                 f"accepts connections; retry shortly.",
                            type="server_error", code="database_unavailable").body()), 503


for _error in db.POSTGRES_UNAVAILABLE:  # PostgreSQL down, or no pooled connection free in time
    bp.app_errorhandler(_error)(postgres_unavailable)


def int_arg(name, default, lo, hi):
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"'{name}' must be an integer.", code="invalid_parameter", param=name)
    if not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be between {lo} and {hi}.", code="invalid_parameter", param=name)
    return value


def provider_arg():
    model = request.args.get("model") or None
    if model is not None and model not in PROVIDERS:
        raise ApiError(400, "'model' must be gigachat or qwen.", code="invalid_parameter", param="model")
    return model


@bp.get("/history")
def history():
    limit = int_arg("limit", 50, 1, 500)
    rows = db.list_messages(db.get_db(), limit, int_arg("before", None, 1, 2**63 - 1),
                            request.args.get("session") or None, provider_arg(), request.args.get("q"),
                            auth.history_scope())
    msgs = [db.message_dict(r) for r in rows]
    return jsonify({"messages": msgs, "next_before": msgs[-1]["id"] if len(msgs) == limit else None})


@bp.get("/history/sessions")
def history_sessions():
    limit = int_arg("limit", 50, 1, 500)
    before = request.args.get("before")
    try:
        before = float(before) if before else None
    except ValueError:
        raise ApiError(400, "'before' must be a timestamp.", code="invalid_parameter", param="before")
    rows = [dict(r) for r in db.list_conversations(db.get_db(), limit, before, provider_arg(), auth.history_scope())]
    return jsonify({"sessions": rows, "next_before": rows[-1]["updated_at"] if len(rows) == limit else None})


@bp.get("/history/export")
def history_export():
    if request.args.get("format", "jsonl") != "jsonl":
        raise ApiError(400, "Only format=jsonl is supported.", code="invalid_parameter", param="format")
    session, user = request.args.get("session") or None, auth.history_scope()
    conn, give_back = db.borrow()  # the stream outlives the request and its connection

    lines = (json.dumps(db.message_dict(row), ensure_ascii=False) + "\n"
             for row in db.iter_messages(conn, session, user=user))
    return Response(exchange.closing_iter(lines, lambda: give_back(conn)), mimetype="application/x-ndjson",
                    headers={"Content-Disposition": "attachment; filename=chat-history.jsonl"})


def conversation_or_404(sid):
    conv = db.get_conversation(db.get_db(), sid)
    if conv is None or not auth.visible(conv):  # someone else's: as if it did not exist
        raise ApiError(404, f"Unknown session {sid[:100]!r}.", code="unknown_session", param="session")
    return conv


@bp.get("/history/<sid>")
def history_session(sid):
    conv = dict(conversation_or_404(sid))
    conv["messages"] = [db.message_dict(r) for r in db.conversation_messages(db.get_db(), sid)]
    return jsonify(conv)


@bp.delete("/history/<sid>")
def history_delete(sid):
    conversation_or_404(sid)
    db.delete_conversation(db.get_db(), sid)
    return jsonify({"deleted": sid})
