# gunicorn -c gunicorn.conf.py chat:app
# Threaded workers: a streaming answer holds a thread, not a whole worker.
import glob
import multiprocessing
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # common.wsgi_server, whichever way gunicorn is started
from common import request_reader  # the standard library only
from common.env import load_env  # noqa: E402 - light: prometheus_client must not be imported yet

load_env()  # .env first: CHAT_HOST, CHAT_PORT and GUNICORN_* set there apply here, as they do to chat.py
_env = os.environ.get

bind = f"{_env('CHAT_HOST') or '127.0.0.1'}:{_env('CHAT_PORT') or '5000'}"
# gthread whose threads never wait on a slow client's headers or body: they are read in the worker's poller,
# SLOW_CLIENT_TIMEOUT seconds at most each (then a 408): clients sending a byte at a time leave /health answering.
worker_class = "common.wsgi_server.HeadersFirstWorker"
try:
    request_reader.timeout_from_env()
except ValueError as _e:
    sys.exit(f"gunicorn.conf.py: error: {_e}")
workers = int(_env("GUNICORN_WORKERS") or min(4, multiprocessing.cpu_count() * 2))
threads = int(_env("GUNICORN_THREADS") or 16)
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
    for address in server.cfg.address:
        if isinstance(address, tuple):  # (host, port); a unix socket is local
            warn_if_exposed("chat", address[0], "CHAT_API_KEY")
