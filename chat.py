"""Dual AI Chat API gateway: GigaChat (cloud) and the local Qwen server behind one HTTP API,
every exchange saved to SQLite.

    python chat.py [--host 127.0.0.1] [--port 5000]      # one process (common/wsgi_server.py's embedded gunicorn)
    gunicorn -c gunicorn.conf.py chat:app                  # deployment: several workers
    python chat.py ask "…" / python chat.py chat          # a terminal chat with a running gateway (gateway/cli.py)
    python chat.py users add NAME / list / remove / rotate # users, their keys and limits (gateway/users_cli.py)
"""
import argparse
import os
import sys

from flask import Flask
from prometheus_client import Gauge

import db
import providers as provider_registry
from common import openapi, request_reader, wsgi_server
from common.framing import strict_framing
from common.api_common import (Metrics, allowed_host_names, install_access, install_common, load_env, setup_logging,
                               warn_if_exposed)
from gateway import ask, auth, cross_site, history, openai_api, page, routing, text_completions
from gateway.openapi_spec import gateway_spec
from history import journal as history_journal, users

HERE = os.path.dirname(os.path.abspath(__file__))


def settings_from_env() -> dict:
    env = os.environ.get
    return {
        "DATABASE": env("CHAT_DB", os.path.join(HERE, "chat_history.db")),
        "JOURNAL_DIR": env("CHAT_JOURNAL_DIR", ""),  # empty: history.journal.default_dir
        "DEFAULT_SYSTEM_PROMPT": env("DEFAULT_SYSTEM_PROMPT", ""),
        "QWEN_URL": env("QWEN_URL", "http://127.0.0.1:5001"),
        "QWEN_TIMEOUT": float(env("QWEN_TIMEOUT", "300")),
        "QWEN_BREAKER_COOLDOWN": float(env("QWEN_BREAKER_COOLDOWN", "5")),  # several QWEN_URLs: docs/operations.md
        "QWEN_STATUS_POLL": float(env("QWEN_STATUS_POLL", "1")),
        "QWEN_AFFINITY_SLACK": int(env("QWEN_AFFINITY_SLACK", "0")),
        "QWEN_DEFAULTS": {"temperature": float(env("QWEN_TEMPERATURE", "0.4")),
                          "top_p": float(env("QWEN_TOP_P", "0.9")),
                          "top_k": int(env("QWEN_TOP_K", "60")),
                          "repetition_penalty": float(env("QWEN_REPETITION_PENALTY", "1.1")),
                          "max_tokens": int(env("QWEN_MAX_TOKENS")) if env("QWEN_MAX_TOKENS") else None},
        "GIGACHAT_MODEL": env("GIGACHAT_MODEL", "GigaChat"),
        "API_KEY": env("CHAT_API_KEY", ""),
        "SECRETS_TO_GIGACHAT": env("CHAT_SECRETS_TO_GIGACHAT", "refuse").strip().lower(),  # or redact, allow
        "CORS_ORIGINS": [o.strip() for o in env("CHAT_CORS_ORIGINS", "").split(",") if o.strip()],
        "ALLOWED_HOSTS": allowed_host_names("CHAT_ALLOWED_HOSTS", env("CHAT_HOST", "")),
    }


def create_app(config=None, providers=None):
    """The gateway: config, the shared hooks, the history database, the providers and the blueprints."""
    load_env()
    app = Flask(__name__)
    app.config.update(settings_from_env())
    app.config.update(config or {})
    metrics = app.extensions["metrics"] = Metrics("chat")
    install_common(app, metrics, "chat", app.config["ALLOWED_HOSTS"], "CHAT_ALLOWED_HOSTS")
    install_access(app, page.PUBLIC_PATHS, auth.authenticate)  # API keys (CHAT_API_KEY, users) and CORS
    cross_site.install(app)  # no spending or saving for another site's page
    app.wsgi_app = strict_framing(app.wsgi_app)  # a 400 for broken HTTP framing, before anything else
    openapi.register(app, gateway_spec)  # GET /openapi.json
    db.init_app(app)
    in_use = Gauge("chat_history_connections_in_use", "History DB connections handed out and not yet given back",
                   registry=metrics.registry, multiprocess_mode="livesum")
    app.extensions["db_pool"].on_change = in_use.set
    start_journal(app, Gauge("chat_history_journal_pending", "Answers kept in the journal until the history "
                                                               "database takes them", registry=metrics.registry,
                             multiprocess_mode="livesum"))
    app.extensions["routes_total"] = routing.routes_counter(metrics.registry)
    auth.install(app)  # users: whose conversation a question continues, their limits, /whoami
    providers = provider_registry.build(app.config) if providers is None else providers
    for provider in providers.values():
        provider.on_queue_change = metrics.queue_length.set
        if hasattr(provider, "collect"):  # per-upstream figures (several QWEN_URLs)
            metrics.add_collector(provider)
    app.extensions["providers"] = providers
    for blueprint in (ask.bp, history.bp, openai_api.bp, page.bp, text_completions.bp):
        app.register_blueprint(blueprint)
    return app


def start_journal(app, pending_gauge):
    """The journal of answers the database could not take (history/journal.py); replayed from now on."""
    target = app.config["DATABASE"]
    base = app.config["JOURNAL_DIR"] or history_journal.default_dir(target)
    directory = history_journal.directory_for(base, target)
    journal = app.extensions["history_journal"] = history_journal.Journal(directory, target, pending_gauge.set)
    journal.start()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["ask"], ["chat"]):
        from gateway import cli
        sys.exit(cli.main(argv))
    load_env()
    if argv[:1] == ["users"]:
        from gateway import users_cli
        sys.exit(users_cli.main(argv[1:], settings_from_env()["DATABASE"]))
    p = argparse.ArgumentParser(description="Dual AI Chat API gateway (GigaChat + local Qwen, SQLite history). "
                                            "`python chat.py ask \"…\"` / `python chat.py chat`: talk to a "
                                            "running one from the terminal; `python chat.py users --help`: "
                                            "users, their keys and limits.",
                                epilog="env GUNICORN_THREADS (default 16): requests served at once, streams included "
                                       "(`gunicorn -c gunicorn.conf.py chat:app` for several processes). "
                                       + request_reader.HELP)
    p.add_argument("--host", default=os.environ.get("CHAT_HOST", "127.0.0.1"), help="bind address (env CHAT_HOST)")
    p.add_argument("--port", type=int, default=int(os.environ.get("CHAT_PORT", "5000")),
                   help="port (env CHAT_PORT, default 5000)")
    args = p.parse_args(argv)
    threads = os.environ.get("GUNICORN_THREADS") or "16"
    if not threads.isdigit() or int(threads) < 1:
        p.error(f"GUNICORN_THREADS={threads!r}: give the number of requests served at once (default 16)")
    try:
        request_reader.timeout_from_env()
    except ValueError as e:
        p.error(str(e))
    setup_logging()
    if not users.exist_in(settings_from_env()["DATABASE"]):  # (users, like CHAT_API_KEY, need keys)
        warn_if_exposed("chat", args.host, "CHAT_API_KEY")
    # gunicorn, embedded: one worker process with GUNICORN_THREADS threads (streams included), each request
    # read whole before a thread takes it (slow clients: SLOW_CLIENT_TIMEOUT); the app is built in the worker
    config = {"ALLOWED_HOSTS": allowed_host_names("CHAT_ALLOWED_HOSTS", args.host)}
    sys.exit(wsgi_server.serve(lambda: create_app(config), args.host, args.port, int(threads),
                               os.environ.get("LOG_LEVEL", "INFO"), graceful_timeout=10, name="chat"))


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
