"""Dual AI Chat API gateway: GigaChat (cloud) and the local Qwen server behind one HTTP API,
every exchange saved to SQLite.

    python chat.py [--host 127.0.0.1] [--port 5000]      # local
    gunicorn chat:app                                      # deployment (see gunicorn.conf.py)
"""
import argparse
import hmac
import json
import os
import re
import sqlite3

from flask import Flask, Response, jsonify, make_response, render_template, request
from prometheus_client import Gauge

from common import client_watch
import db
from gateway import exchange
from common import openapi
from common.api_common import (ApiError, Metrics, allowed_host_names, endpoint_list, install_common, json_body, load_env,
                        setup_logging, sse, sse_response, warn_if_exposed)
from common.openai_format import (chunk, completion, new_id, parse_chat_request, parse_params)

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_QUESTION_CHARS = 100_000
PUBLIC_PATHS = ("/health", "/", "/config", "/favicon.ico")  # the page itself asks for the key; it holds no data
PROVIDERS = ("gigachat", "qwen")
# What the page can open (#c/<id>, GET /history/<id>): not "." or ".." (dot segments a URL drops).
SESSION_ID = re.compile(r"(?!\.+$)[A-Za-z0-9._-]{1,100}")
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'; form-action 'self'")


def settings_from_env() -> dict:
    env = os.environ.get
    return {
        "DATABASE": env("CHAT_DB", os.path.join(HERE, "chat_history.db")),
        "DEFAULT_SYSTEM_PROMPT": env("DEFAULT_SYSTEM_PROMPT", ""),
        "QWEN_URL": env("QWEN_URL", "http://127.0.0.1:5001"),
        "QWEN_TIMEOUT": float(env("QWEN_TIMEOUT", "300")),
        "QWEN_DEFAULTS": {"temperature": float(env("QWEN_TEMPERATURE", "0.4")),
                          "top_p": float(env("QWEN_TOP_P", "0.9")),
                          "top_k": int(env("QWEN_TOP_K", "60")),
                          "repetition_penalty": float(env("QWEN_REPETITION_PENALTY", "1.1")),
                          "max_tokens": int(env("QWEN_MAX_TOKENS")) if env("QWEN_MAX_TOKENS") else None},
        "GIGACHAT_MODEL": env("GIGACHAT_MODEL", "GigaChat"),
        "API_KEY": env("CHAT_API_KEY", ""),
        "CORS_ORIGINS": [o.strip() for o in env("CHAT_CORS_ORIGINS", "").split(",") if o.strip()],
        "ALLOWED_HOSTS": allowed_host_names("CHAT_ALLOWED_HOSTS", env("CHAT_HOST", "")),
    }


def create_app(config=None, providers=None):
    load_env()
    app = Flask(__name__)
    app.config.update(settings_from_env())
    app.config.update(config or {})
    metrics = Metrics("chat")
    install_common(app, metrics, "chat", app.config["ALLOWED_HOSTS"], "CHAT_ALLOWED_HOSTS")
    openapi.register(app, "gateway")  # GET /openapi.json
    db.init_app(app)
    in_use = Gauge("chat_history_connections_in_use", "History DB connections handed out and not yet given back",
                   registry=metrics.registry, multiprocess_mode="livesum")
    app.extensions["db_pool"].on_change = in_use.set
    if providers is None:
        from providers.gigachat import GigaChatProvider
        from providers.qwen import QwenProvider
        providers = {"gigachat": GigaChatProvider(),
                     "qwen": QwenProvider(app.config["QWEN_URL"], app.config["QWEN_TIMEOUT"])}
    app.extensions["providers"] = providers
    providers["gigachat"].on_queue_change = metrics.queue_length.set

    def record_usage(name, usage):
        usage = usage or {}
        metrics.tokens.labels(name).inc(usage.get("completion_tokens") or 0)
        tps = (usage.get("timings") or {}).get("tokens_per_second")
        if tps:
            metrics.tok_per_s.labels(name).set(tps)

    def begin(ctx, stream):
        """The answer's event stream, or the whole answer. The session exists from here on, so an
        upstream failure tells the client its id. Until then nothing is written to the client, so a
        watcher notices one that hangs up, and the upstream call is aborted (its answer: cancelled)."""
        try:
            with client_watch.watching(request.environ, on_leave=ctx["cancel"].set):
                return exchange.open_stream(ctx) if stream else exchange.answer(ctx)
        except ApiError as e:
            e.headers["X-Session-ID"] = ctx["sid"]
            raise

    def tracked(frames):
        """Counts an SSE stream as active while it is being sent."""
        metrics.active_streams.inc()
        try:
            yield from frames
        finally:
            metrics.active_streams.dec()

    @app.errorhandler(sqlite3.OperationalError)
    def _db_error(e):
        if "locked" not in str(e) and "busy" not in str(e):
            raise e  # a real fault: the generic handler answers 500 and logs it
        return jsonify(ApiError(503, f"The history database ({app.config['DATABASE']}) is unavailable: {e}. "
                                     f"Another program may hold a write lock on it; retry shortly.",
                                type="server_error", code="database_unavailable").body()), 503

    @app.before_request
    def _guard():
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin:
            return Response(status=204)  # CORS preflight: headers are added in _cors
        key = app.config["API_KEY"]
        if key and request.path not in PUBLIC_PATHS and not request.path.startswith("/static/"):
            given = request.headers.get("X-API-Key") or ""
            auth = request.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode(), key.encode()):
                raise ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <CHAT_API_KEY>' or "
                                    "'X-API-Key: <CHAT_API_KEY>'.", type="authentication_error",
                               code="invalid_api_key")

    @app.after_request
    def _cors(resp):
        origin = request.headers.get("Origin")
        if origin and origin in app.config["CORS_ORIGINS"]:  # an explicit list only, never "*"
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
            resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-API-Key"
            resp.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        return resp

    # -- the seed's endpoints: /gigachat and /qwen -------------------------------------------------
    def ask(name):
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
        defaults = app.config["QWEN_DEFAULTS"] if name == "qwen" else {}
        params = parse_params(src, defaults, from_query=from_query)
        stream = str(src.get("stream", "")).lower() in ("1", "true", "yes")
        conn = db.get_db()
        sid = str(src["session"])[:100] if src.get("session") else None
        title, turns = None, []
        if sid is not None:
            conv = db.get_conversation(conn, sid)
            if conv is None:
                raise ApiError(404, f"Unknown session {sid!r}: omit 'session' to start a new "
                                    f"conversation (GET /history/sessions lists yours).", code="unknown_session",
                               param="session")
            system = system if system is not None else conv["system_prompt"]
            turns = exchange.past_turns(conn, sid)
        else:
            sid, title = db.new_session_id(), q.strip()
            system = system if system is not None else app.config["DEFAULT_SYSTEM_PROMPT"]
        provider = providers[name]
        head = [{"role": "system", "content": system}] if system else []
        messages = exchange.fit_context(provider, head, turns, [{"role": "user", "content": q}],
                                        params.get("max_tokens"))
        ctx = exchange.start(conn, provider, sid, q, messages, system, params, title=title)
        r = begin(ctx, stream)
        if stream:
            return sse_response(exchange.closing_iter(tracked(page_events(r, ctx, sid)), r.close))
        record_usage(name, r.get("usage"))
        return jsonify({"answer": r["answer"], "model": r.get("model"), "provider": name, "session": sid,
                        "message_id": r["message_id"], "finish_reason": r.get("finish_reason"),
                        "blocked": r["status"] == "blocked", "usage": r.get("usage"), "elapsed_ms": r["elapsed_ms"]})

    def page_events(events, ctx, sid):
        """SSE for browsers (EventSource) and curl -N: start, delta..., then done or error."""
        yield sse({"type": "start", "session": sid, "provider": ctx["provider"].name})
        for kind, value in events:  # (a client that hangs up: the response's close() settles `events`)
            if kind == "delta":
                yield sse({"type": "delta", "text": value})
            elif kind == "done":
                record_usage(ctx["provider"].name, value.get("usage"))
                yield sse({"type": "done", "session": sid, "message_id": value["message_id"],
                           "model": value.get("model"), "finish_reason": value.get("finish_reason"),
                           "blocked": value["status"] == "blocked", "usage": value.get("usage"),
                           "elapsed_ms": value["elapsed_ms"]})
            else:
                yield sse(dict(value.body(), type="error", status=value.status, session=sid,
                               message_id=getattr(value, "message_id", None)))

    app.add_url_rule("/gigachat", "gigachat", lambda: ask("gigachat"), methods=["GET", "POST"])
    app.add_url_rule("/qwen", "qwen", lambda: ask("qwen"), methods=["GET", "POST"])

    @app.get("/qwen/status")
    def qwen_status():
        return jsonify(providers["qwen"].status())

    # -- history --------------------------------------------------------------------------------
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

    @app.get("/history")
    def history():
        limit = int_arg("limit", 50, 1, 500)
        rows = db.list_messages(db.get_db(), limit, int_arg("before", None, 1, 2**63 - 1),
                                request.args.get("session") or None, provider_arg(), request.args.get("q"))
        msgs = [db.message_dict(r) for r in rows]
        return jsonify({"messages": msgs, "next_before": msgs[-1]["id"] if len(msgs) == limit else None})

    @app.get("/history/sessions")
    def history_sessions():
        limit = int_arg("limit", 50, 1, 500)
        before = request.args.get("before")
        try:
            before = float(before) if before else None
        except ValueError:
            raise ApiError(400, "'before' must be a timestamp.", code="invalid_parameter", param="before")
        rows = [dict(r) for r in db.list_conversations(db.get_db(), limit, before, provider_arg())]
        return jsonify({"sessions": rows, "next_before": rows[-1]["updated_at"] if len(rows) == limit else None})

    @app.get("/history/export")
    def history_export():
        if request.args.get("format", "jsonl") != "jsonl":
            raise ApiError(400, "Only format=jsonl is supported.", code="invalid_parameter", param="format")
        session = request.args.get("session") or None
        conn, give_back = db.borrow()  # the stream outlives the request and its connection

        lines = (json.dumps(db.message_dict(row), ensure_ascii=False) + "\n" for row in db.iter_messages(conn, session))
        return Response(exchange.closing_iter(lines, lambda: give_back(conn)), mimetype="application/x-ndjson",
                        headers={"Content-Disposition": "attachment; filename=chat-history.jsonl"})

    def conversation_or_404(sid):
        conv = db.get_conversation(db.get_db(), sid)
        if conv is None:
            raise ApiError(404, f"Unknown session {sid[:100]!r}.", code="unknown_session", param="session")
        return conv

    @app.get("/history/<sid>")
    def history_session(sid):
        conv = dict(conversation_or_404(sid))
        conv["messages"] = [db.message_dict(r) for r in db.conversation_messages(db.get_db(), sid)]
        return jsonify(conv)

    @app.delete("/history/<sid>")
    def history_delete(sid):
        conversation_or_404(sid)
        db.delete_conversation(db.get_db(), sid)
        return jsonify({"deleted": sid})

    # -- OpenAI-compatible ------------------------------------------------------------------------
    def route_model(model):
        m = model.lower() if isinstance(model, str) else ""  # a non-string model is a 404 too, not a crash
        if m.startswith("qwen"):
            return "qwen", None
        if m.startswith("gigachat"):
            return "gigachat", None if m == "gigachat" else model
        raise ApiError(404, f"Unknown model {str(model)[:60]!r}: use 'gigachat' (or a GigaChat-* name) or "
                            f"'qwen'. GET /v1/models lists them.", code="model_not_found", param="model")

    @app.post("/v1/chat/completions")
    def v1_chat():
        body = json_body()
        name, gc_model = route_model(body.get("model"))
        req = parse_chat_request(body, app.config["QWEN_DEFAULTS"] if name == "qwen" else {})
        params = req["params"]
        if gc_model:
            params["model"] = gc_model
        messages = req["messages"]
        if not any(m["role"] == "system" for m in messages) and app.config["DEFAULT_SYSTEM_PROMPT"]:
            messages = [{"role": "system", "content": app.config["DEFAULT_SYSTEM_PROMPT"]}] + messages
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        conn = db.get_db()
        sid = request.headers.get("X-Session-ID") or db.new_session_id()
        if not SESSION_ID.fullmatch(sid):
            raise ApiError(400, "X-Session-ID must be 1-100 letters, digits, '.', '_' or '-', and not only dots "
                                "('.' and '..' cannot be opened as /history/<id>).", code="invalid_session_id",
                           param="X-Session-ID")
        ctx = exchange.start(conn, providers[name], sid, question, messages, system, params, gc_model,
                             title=question.strip() or "(no question)")
        model_out = body.get("model")
        cid = new_id()
        try:
            r = begin(ctx, req["stream"])
        except ApiError as e:
            if gc_model and e.code == "gigachat_model_not_found":  # the client's choice, not the config's
                raise ApiError(404, f"GigaChat has no model {gc_model!r}: GET /v1/models lists the models.",
                               code="model_not_found", param="model", headers=e.headers)
            raise
        if not req["stream"]:
            record_usage(name, r.get("usage"))
            resp = jsonify(completion(cid, model_out, r["answer"], r.get("finish_reason"), r.get("usage")))
            resp.headers["X-Session-ID"] = sid
            return resp

        def frames(events):
            yield sse(chunk(cid, model_out, delta={"role": "assistant", "content": ""}))
            for kind, value in events:  # (a client that hangs up: the response's close() settles `events`)
                if kind == "delta":
                    yield sse(chunk(cid, model_out, delta={"content": value}))
                elif kind == "done":
                    record_usage(name, value.get("usage"))
                    yield sse(chunk(cid, model_out, finish_reason=value.get("finish_reason") or "stop"))
                    if req["include_usage"]:
                        yield sse(chunk(cid, model_out, usage=value.get("usage") or {}))
                else:
                    yield sse(value.body())
            yield sse("[DONE]")
        resp = sse_response(exchange.closing_iter(tracked(frames(r)), r.close))
        resp.headers["X-Session-ID"] = sid
        return resp

    @app.get("/v1/models")
    def v1_models():
        ids = ["gigachat", app.config["GIGACHAT_MODEL"], "qwen"] + \
              [m for m in providers["qwen"].models() if m.lower().startswith("qwen")]
        return jsonify({"object": "list", "data": [{"id": i, "object": "model", "owned_by": "dual-ai-chat"}
                                                   for i in dict.fromkeys(ids)]})

    @app.get("/config")
    def public_config():
        """What the web page needs to fill its settings panel (no secrets)."""
        return jsonify({"default_system_prompt": app.config["DEFAULT_SYSTEM_PROMPT"],
                        "qwen_defaults": app.config["QWEN_DEFAULTS"], "gigachat_model": app.config["GIGACHAT_MODEL"],
                        "auth_required": bool(app.config["API_KEY"])})

    @app.get("/health")
    def health():
        return jsonify({"status": "ok"})

    @app.get("/")
    def index():
        if request.accept_mimetypes.accept_html:
            resp = make_response(render_template("index.html"))
            resp.headers["Content-Security-Policy"] = PAGE_CSP  # the page never runs injected script
            resp.headers["X-Content-Type-Options"] = "nosniff"
            resp.headers["Referrer-Policy"] = "no-referrer"
            return resp
        return jsonify({"service": "Dual AI Chat API", "endpoints": endpoint_list(app)})

    return app


def main(argv=None):
    load_env()
    p = argparse.ArgumentParser(description="Dual AI Chat API gateway (GigaChat + local Qwen, SQLite history).")
    p.add_argument("--host", default=os.environ.get("CHAT_HOST", "127.0.0.1"), help="bind address (env CHAT_HOST)")
    p.add_argument("--port", type=int, default=int(os.environ.get("CHAT_PORT", "5000")),
                   help="port (env CHAT_PORT, default 5000)")
    args = p.parse_args(argv)
    setup_logging()
    warn_if_exposed("chat", args.host, "CHAT_API_KEY")
    create_app({"ALLOWED_HOSTS": allowed_host_names("CHAT_ALLOWED_HOSTS", args.host)}).run(args.host, args.port,
                                                                                          threaded=True)


def __getattr__(name):
    # The module-level `app` (for `gunicorn chat:app`) is built on first access, so importing
    # chat.py for its factory does not open the database or read .env.
    if name == "app":
        setup_logging()  # gunicorn configures only its own loggers: without this the access log is dropped
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)


if __name__ == "__main__":
    main()
