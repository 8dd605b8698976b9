"""Dual AI Chat API gateway: GigaChat (cloud) and the local Qwen server behind one HTTP API,
every exchange saved to SQLite.

    python chat.py [--host 127.0.0.1] [--port 5000]      # one process (common/wsgi_server.py's embedded gunicorn)
    gunicorn -c gunicorn.conf.py chat:app                  # deployment: several workers
    python chat.py ask "…" / python chat.py chat          # a terminal chat with a running gateway (gateway/cli.py)
    python chat.py users add NAME / list / remove / rotate # users, their keys and limits (gateway/users_cli.py)
"""
import argparse
import sys

from flask import Flask
from prometheus_client import Gauge

import db
import providers as provider_registry
from common import openapi, wsgi_server
from common.api_common import (
    Metrics,
    host_names,
    install_access,
    install_common,
    load_env,
    setup_logging,
    warn_if_exposed,
)
from common.framing import strict_framing
from gateway import ask, auth, cross_site, history, openai_api, page, routing, text_completions
from gateway.openapi_spec import gateway_spec
from gateway.settings import GatewaySettings
from history import journal as history_journal, users


def create_app(config=None, providers=None, settings=None):
    """The gateway: config (`settings`, default: the environment's; then `config`'s keys), the shared hooks, the
    history database, the providers and the blueprints."""

    load_env()
    settings = settings or GatewaySettings.from_env("chat.py")
    app = Flask(__name__)
    app.config.update(settings.flask_config(), ALLOWED_HOSTS=host_names(settings.allowed_hosts, settings.host))
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
    settings = GatewaySettings.from_env("chat.py")
    if argv[:1] == ["users"]:
        from gateway import users_cli
        sys.exit(users_cli.main(argv[1:], settings.database))
    p = argparse.ArgumentParser(description="Dual AI Chat API gateway (GigaChat + local Qwen, SQLite history). "
                                            "`python chat.py ask \"…\"` / `python chat.py chat`: talk to a "
                                            "running one from the terminal; `python chat.py users --help`: "
                                            "users, their keys and limits.",
                                epilog="`gunicorn -c gunicorn.conf.py chat:app` for several processes.\n\n"
                                       + settings.env_only(), formatter_class=argparse.RawDescriptionHelpFormatter)
    settings.add_flags(p)
    settings = settings.with_flags(p.parse_args(argv), p)
    setup_logging(settings.log_level)
    if not users.exist_in(settings.database):  # (users, like CHAT_API_KEY, need keys)
        warn_if_exposed("chat", settings.host, "CHAT_API_KEY")
    # gunicorn, embedded: one worker process with GUNICORN_THREADS threads (streams included), each request
    # read whole before a thread takes it (slow clients: SLOW_CLIENT_TIMEOUT); the app is built in the worker
    sys.exit(wsgi_server.serve(lambda: create_app(settings=settings), settings.host, settings.port,
                               settings.gunicorn_threads, settings.log_level, graceful_timeout=10, name="chat",
                               timeout_s=settings.slow_client_timeout))


def __getattr__(name):
    # The module-level `app` (for `gunicorn chat:app`) is built on first access, so importing
    # chat.py for its factory does not open the database or read .env.
    if name == "app":
        load_env()
        settings = GatewaySettings.from_env("chat.py")
        setup_logging(settings.log_level)  # gunicorn configures only its own loggers: without this no access log
        globals()["app"] = create_app(settings=settings)
        return globals()["app"]
    raise AttributeError(name)


if __name__ == "__main__":
    main()
