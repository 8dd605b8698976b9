# gunicorn -c gunicorn.conf.py chat:app
# Threaded workers: a streaming answer holds a thread, not a whole worker.
import glob
import multiprocessing
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # common.wsgi_server, whichever way gunicorn is started

bind = f"{os.environ.get('CHAT_HOST', '127.0.0.1')}:{os.environ.get('CHAT_PORT', '5000')}"
# gthread whose threads never wait on a slow client's headers or body (they are read in the worker's poller,
# common.wsgi_server.HEADER_TIMEOUT_S at most): 50 clients sending headers a byte at a time leave /health answering.
worker_class = "common.wsgi_server.HeadersFirstWorker"
workers = int(os.environ.get("GUNICORN_WORKERS", min(4, multiprocessing.cpu_count() * 2)))
threads = int(os.environ.get("GUNICORN_THREADS", 16))
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
    from common.api_common import load_env, warn_if_exposed
    load_env()  # CHAT_API_KEY may come from .env, as the app reads it
    for address in server.cfg.address:
        if isinstance(address, tuple):  # (host, port); a unix socket is local
            warn_if_exposed("chat", address[0], "CHAT_API_KEY")
