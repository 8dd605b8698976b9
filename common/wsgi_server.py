"""The production WSGI server both services run on: gunicorn's threaded worker, made proof against slow
clients, and an embedded one-worker gunicorn for qwen_server (which owns one model in one process).

Why gunicorn for qwen_server too (over cheroot and waitress): it is already the gateway's server, a
pure-Python wheel with no compiled parts (the offline GPU box installs it from .whl/), its gthread worker
writes every chunk an app yields straight to the socket (SSE tokens are never held back; waitress buffers
output up to `send_bytes`), and it puts the client socket in the environ (`gunicorn.socket`), which
client_watch needs to notice a client that left. cheroot gives every connection a thread while it reads
headers; gunicorn did too, which HeadersFirstWorker below fixes."""
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

from gunicorn.app.base import BaseApplication
from gunicorn.errors import AppImportError
from gunicorn.workers.gthread import _DEFER, ThreadWorker

HEADER_TIMEOUT_S = 10.0  # a request's headers must all be in this long after their first byte (nginx: 60 s)
BODY_TIMEOUT_S = 30.0  # and its body (when read ahead, below) this long after its headers
BODY_AHEAD_MAX = 1 << 20  # bodies up to this (both servers' MAX_BODY_BYTES) are read before a thread is given
_CONTENT_LENGTH = re.compile(rb"\ncontent-length:[ \t]*(\d{1,12})[ \t]*\r?\n", re.IGNORECASE)
_EXPECT = re.compile(rb"\nexpect:", re.IGNORECASE)


class HeadersFirstWorker(ThreadWorker):
    """gthread, except a connection costs a thread only once its request headers (and body) are all in.

    gunicorn's gthread hands a connection to a pool thread as soon as a first byte arrives, and that thread
    then blocks reading the rest of the headers with no deadline: 16 clients sending a header a byte at a
    time take all 16 threads, and /health waits behind them. Here the pool thread reads only what has
    already arrived, without blocking, and gives the connection back to the worker's poller until more
    comes (gunicorn's own `_DEFER`); a client whose headers are not in HEADER_TIMEOUT_S after they began
    is dropped. A body with a Content-Length up to BODY_AHEAD_MAX is read the same way (BODY_TIMEOUT_S);
    a chunked, larger or `Expect: 100-continue` body is left to gunicorn and the app."""

    def handle(self, conn):
        if not self.cfg.is_ssl:  # TLS: leave the handshake and reads to gunicorn
            ready = self._headers_in(conn)
            if ready is not True:
                return ready
        return super().handle(conn)

    def _headers_in(self, conn):
        """True once a whole request head (and body) is buffered for the parser; _DEFER to wait; False to close."""
        if getattr(conn, "head", None) is None:  # a new request on this connection
            conn.head = bytearray(conn.parser.unreader.take_buffered() if conn.parser else b"")
            conn.head_deadline, conn.head_size = time.monotonic() + HEADER_TIMEOUT_S, None
        cfg, head = self.cfg, conn.head
        most = cfg.limit_request_line + cfg.limit_request_fields * (cfg.limit_request_field_size + 2) + 4
        while True:
            if conn.head_size is None:
                conn.head_size = request_size(head, most)
                if conn.head_size is not None:  # headers are in: the body gets a deadline of its own
                    conn.head_deadline = time.monotonic() + BODY_TIMEOUT_S
            if conn.head_size is not None and len(head) >= conn.head_size:
                break
            try:
                data = conn.sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return _DEFER if time.monotonic() < conn.head_deadline and self.alive else False
            except OSError:
                return False
            if not data:
                return False  # the client left before its request was complete
            head += data
        conn.head = None
        conn.data_ready = True
        conn.init()
        conn.parser.unreader.unread(bytes(head))
        return True


def request_size(head, most):
    """Bytes to read before a thread takes the request: its head, plus a Content-Length body up to
    BODY_AHEAD_MAX; None while the head is incomplete. Past `most` bytes of head, or a bare-LF end, the
    parser answers (a 4xx) from what is there."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        bare = head.find(b"\n\n")
        return bare + 2 if bare >= 0 else (len(head) if len(head) > most else None)
    block = head[:end + 2]
    length = _CONTENT_LENGTH.search(block)
    body = int(length.group(1)) if length else 0
    return end + 4 + (body if body <= BODY_AHEAD_MAX and not _EXPECT.search(block) else 0)


class _BootFailureFilter(logging.Filter):
    """Drops the master's lines about a worker that could not load the app: the worker has printed
    `qwen_server: error: ...` already, which is all the user needs."""
    LINES = ("Shutting down: Master", "Reason: App failed to load.")

    def filter(self, record):
        msg = record.getMessage()
        return not (record.levelno >= logging.ERROR and (msg in self.LINES or msg.endswith("exited with code 4.")))


@dataclass
class WorkerDeaths:
    """qwen_server's worker processes that died after they had started, as the master saw them. Kept in the
    master and copied into the next worker when it forks, which shows it in /status."""
    restarts: int = 0
    last_signal: Optional[str] = None  # e.g. "SIGSEGV": native code crashed
    last_exit_code: Optional[int] = None
    last_at: Optional[float] = None  # time.time()

    def view(self) -> dict:
        return {"restarts": self.restarts, "last_signal": self.last_signal, "last_exit_code": self.last_exit_code,
                "last_at": None if self.last_at is None else time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                           time.gmtime(self.last_at))}


WORKER_DEATHS = WorkerDeaths()


class _WorkerDeathFilter(logging.Filter):
    """Reads how a worker died from the master's own line about it: gunicorn hands child_exit the worker,
    not its wait status. (The lines are gunicorn 27's; tests/test_startup_probe.py checks they still come.)"""
    pending = None  # (signal name or None, exit code or None) of the worker being reaped

    def filter(self, record):
        if isinstance(record.msg, str) and record.msg.startswith("Worker (pid:%s) was sent %s!"):
            _WorkerDeathFilter.pending = (str(record.args[1]), None)
        elif record.msg == "Worker (pid:%s) exited with code %s.":
            _WorkerDeathFilter.pending = (None, int(record.args[1]))
        return True


def _child_exit(server, worker):
    """In the master, after a worker exited: a crash (a signal other than the SIGTERM of a stop, or an exit
    code) is counted; gunicorn then starts the one worker again."""
    sig, code = _WorkerDeathFilter.pending or (None, None)
    _WorkerDeathFilter.pending = None
    if sig in (None, "SIGTERM") and not code:
        return
    d = WORKER_DEATHS
    d.restarts, d.last_signal, d.last_exit_code, d.last_at = d.restarts + 1, sig, code, time.time()
    server.log.error("qwen_server: the worker process died (%s) and is started again (restart %d, /status "
                     "counts them); the lines above say why", sig or f"exit code {code}", d.restarts)


class EmbeddedServer(BaseApplication):
    """gunicorn inside `python qwen_server.py`: one worker process (the model loads once, in it: CUDA must
    not be initialised before a fork), HeadersFirstWorker threads, `load_app()` called in the worker."""

    def __init__(self, load_app, options):
        self.load_app, self.options = load_app, options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        worker = self.worker  # set by post_fork
        beat = threading.Event()

        def heartbeat():  # loading a model may take minutes: the master must not take the worker for hung
            while not beat.wait(1.0):
                worker.notify()
        threading.Thread(target=heartbeat, daemon=True).start()
        try:
            return self.load_app()
        except StartupError as e:  # printed by gunicorn on its own line; the master exits with APP_LOAD_ERROR
            raise AppImportError(str(e)) from None
        finally:
            beat.set()


class StartupError(Exception):
    """A problem the user can fix at start-up: becomes one `name: error: ...` line and exit status 2."""


def _post_fork(server, worker):
    server.app.worker = worker
    if sys.platform == "linux":  # the worker (the model, its GPU memory, the port) dies with the master, even
        import ctypes            # a master killed with SIGKILL: never an orphan serving on after a "crash"
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != server.pid:  # the master died before the line above
            os._exit(1)


def serve(load_app, host, port, threads, log_level="info", graceful_timeout=10):
    """Run `load_app()`'s WSGI app on host:port until SIGTERM/SIGINT; returns the exit status (2 when the
    app could not load)."""
    options = {"bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}", "workers": 1,
               "worker_class": "common.wsgi_server.HeadersFirstWorker", "threads": threads,
               "timeout": 60,  # the worker's main loop is idle polling; 60 s silent means it hung
               "graceful_timeout": graceful_timeout, "keepalive": 5, "accesslog": None, "errorlog": "-",
               "loglevel": log_level.lower(), "proc_name": "qwen_server",
               "control_socket_disable": True,
               "post_fork": _post_fork, "child_exit": _child_exit}
    failure_filter, death_filter = _BootFailureFilter(), _WorkerDeathFilter()
    logging.getLogger("gunicorn.error").addFilter(failure_filter)
    logging.getLogger("gunicorn.error").addFilter(death_filter)
    master = os.getpid()
    try:
        EmbeddedServer(load_app, options).run()
    except SystemExit as e:
        if os.getpid() != master:  # a worker leaving: its exit status is the master's news
            raise
        return 2 if e.code == 4 else (e.code or 0)
    finally:
        logging.getLogger("gunicorn.error").removeFilter(failure_filter)
        logging.getLogger("gunicorn.error").removeFilter(death_filter)
    return 0


if __name__ == "__main__":  # pragma: no cover - a module of the two servers, not a program
    sys.exit("wsgi_server.py is imported by qwen_server.py and gunicorn.conf.py; it does not run alone")
