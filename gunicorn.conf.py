# gunicorn -c gunicorn.conf.py chat:app
# Threaded workers: a streaming answer holds a thread, not a whole worker.
import glob
import multiprocessing
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # common.wsgi_server, whichever way gunicorn is started
from common.env import load_env  # noqa: E402 - light: prometheus_client must not be imported yet
from gateway.settings import GatewaySettings  # noqa: E402 - pydantic only

load_env()  # .env first: CHAT_HOST, CHAT_PORT and GUNICORN_* set there apply here, as they do to chat.py
settings = GatewaySettings.from_env("gunicorn.conf.py")  # a bad value: one line naming it, exit status 2

bind = f"[{settings.host}]:{settings.port}" if ":" in settings.host else f"{settings.host}:{settings.port}"
# gthread whose threads never wait on a slow client's headers or body: they are read in the worker's poller,
# SLOW_CLIENT_TIMEOUT seconds at most each (then a 408): clients sending a byte at a time leave /health answering.
worker_class = "common.wsgi_server.HeadersFirstWorker"
workers = settings.gunicorn_workers or min(4, multiprocessing.cpu_count() * 2)
threads = settings.gunicorn_threads
timeout = 120           # a worker is restarted only if its main loop hangs, not for long streams
graceful_timeout = 30   # let streams finish on reload/stop
keepalive = 5
accesslog = None        # chat.py writes its own structured access log (no query text, no secrets)
limit_request_line = 8190  # long GET ?q= questions; longer ones belong in a POST body

# One /metrics for all workers: prometheus_client's multiprocess mode. Each worker writes its values
# to this directory (inherited through the environment), and a scrape adds them up.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="chat-metrics-")
    os.environ["CHAT_METRICS_DIR_IS_TEMP"] = "1"  # removed on exit (survives a config reload)


def on_starting(server):
    """Counters start at zero with the server: drop files a previous run left in a given directory."""
    for name in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.unlink(name)


def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)  # its live gauges (active streams, queue) stop counting


def on_exit(server):
    if os.environ.get("CHAT_METRICS_DIR_IS_TEMP"):
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def when_ready(server):
    from common.api_common import warn_if_exposed
    from history import users
    if users.exist_in(settings.database):  # (users, like CHAT_API_KEY, need keys: as chat.py says it)
        return
    for address in server.cfg.address:
        if isinstance(address, tuple):  # (host, port); a unix socket is local
            warn_if_exposed("chat", address[0], "CHAT_API_KEY")
