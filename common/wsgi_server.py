"""The production WSGI server both services run on: gunicorn's threaded worker, made proof against slow
clients, and an embedded one-worker gunicorn for `python qwen_server.py` (which owns one model in one
process) and `python chat.py` (the gateway; `gunicorn -c gunicorn.conf.py chat:app` for several workers).

Why gunicorn for qwen_server too (over cheroot and waitress): it is already the gateway's server, a
pure-Python wheel with no compiled parts (the offline GPU box installs it from .whl/), its gthread worker
writes every chunk an app yields straight to the socket (SSE tokens are never held back; waitress buffers
output up to `send_bytes`), and it puts the client socket in the environ (`gunicorn.socket`), which
client_watch needs to notice a client that left. cheroot gives every connection a thread while it reads
headers; gunicorn did too, which HeadersFirstWorker below fixes."""
import contextlib
import errno
import heapq
import itertools
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from functools import partial

from gunicorn import util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import TConn, ThreadWorker

from common import request_reader, worker_deaths

LINGER_S = 2.0  # a closed connection's last bytes from the client are drained this long at most (gunicorn's too)
_slow_close_listeners = []


def on_slow_close(callback):
    """callback(part) runs, in the worker's main thread, for each connection closed because its request's
    "head" or "body" did not arrive within SLOW_CLIENT_TIMEOUT (the apps count them in /metrics)."""
    _slow_close_listeners.append(callback)


class _Conn(TConn):
    """gunicorn's connection, except that a graceful close lingers in the worker's poller, not in its main
    thread: gunicorn's own waits there up to 2 s for the client to close its side, and 50 clients that do
    not stall everything else for 100 s."""

    def __init__(self, worker, *args):
        super().__init__(worker.cfg, *args)
        self.worker, self.incoming, self.request_bytes = worker, None, None

    def close(self, graceful=False):
        if graceful:
            self.worker.linger(self.sock)
        else:
            super().close()


class HeadersFirstWorker(ThreadWorker):
    """gthread, except that a connection costs a thread only once its whole request is in.

    Stock gthread hands a connection to a pool thread that then blocks reading the request: clients sending
    a header a byte at a time take all the threads, and /health waits behind them. Here the worker's main
    thread reads each request in its poller, without blocking, as its bytes arrive (request_reader.Incoming):
    its head, then a Content-Length body up to 1 MiB or a chunked body up to its last chunk (answering
    `Expect: 100-continue` itself). Only the complete request goes to a thread. One whose head, or then
    whose body, is not in SLOW_CLIENT_TIMEOUT seconds after it began gets a 408 and is closed (counted by
    on_slow_close listeners). Closing never waits on a client in the main thread (_Conn.close, linger).
    TLS connections are left to gunicorn (terminate TLS in nginx, deploy/)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timeout_s = request_reader.timeout_from_env()
        self.deadlines, self.lingering, self._seq = [], deque(), itertools.count()

    def accept(self, listener):
        if self.cfg.is_ssl:
            return super().accept(listener)
        try:
            sock, client = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self.enqueue_req(_Conn(self, sock, client, listener.getsockname()))

    def enqueue_req(self, conn):
        """A new connection, a kept-alive one with bytes again, or bytes left behind a request: read the
        (next) request first."""
        if self.cfg.is_ssl or conn.request_bytes is not None:
            return super().enqueue_req(conn)
        buffered = conn.parser.unreader.take_buffered() if conn.parser else b""
        cfg = self.cfg
        most = cfg.limit_request_line + cfg.limit_request_fields * (cfg.limit_request_field_size + 2) + 4
        conn.incoming = request_reader.Incoming(bytearray(buffered), time.monotonic() + self.timeout_s, most)
        self._watch_deadline(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        if buffered:
            self._on_readable(conn)

    def _watch_deadline(self, conn):
        heapq.heappush(self.deadlines, (conn.incoming.deadline, next(self._seq), conn, conn.incoming))

    def _on_readable(self, conn, _fileobj=None):
        incoming = conn.incoming
        while True:
            part = incoming.part
            verdict = incoming.verdict(time.monotonic(), self.timeout_s)
            if incoming.part != part:
                self._watch_deadline(conn)
            if verdict is request_reader.Verdict.READY:
                break
            if incoming.send_continue:
                incoming.send_continue = False
                _send_now(conn.sock, request_reader.CONTINUE)
            try:
                data = conn.sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return  # the rest comes later: the poller calls again
            except OSError:
                data = b""
            if not data:  # the client left before its request was complete
                self._stop_reading(conn)
                self.nr_conns -= 1
                conn.close()
                return
            incoming.data += data
        self._stop_reading(conn)
        conn.request_bytes, conn.data_ready = bytes(incoming.data), True
        super().enqueue_req(conn)

    def _stop_reading(self, conn):
        conn.incoming = None
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def murder_pending(self):
        """Each turn of the main loop (a second at most): requests past their deadline, lingering closes."""
        super().murder_pending()
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, conn, incoming = heapq.heappop(self.deadlines)
            if conn.incoming is incoming and incoming.deadline <= now:  # still being read, and this is its deadline
                part = incoming.part
                self._stop_reading(conn)
                self.nr_conns -= 1
                _send_now(conn.sock, request_reader.timeout_response(self.timeout_s))
                self.linger(conn.sock)
                self.log.debug("closed %s: its request %s was not in within %g s", conn.client, part,
                               self.timeout_s)
                for listener in _slow_close_listeners:
                    try:
                        listener(part)
                    except Exception:  # a metric must never stop the worker's loop
                        self.log.exception("on_slow_close listener failed")
        while self.lingering and self.lingering[0][0] <= now:
            self._close_lingering(self.lingering.popleft()[1])

    def linger(self, sock):
        """Close `sock` gracefully (RFC 9112 section 9.6: FIN, then its last bytes read and dropped) without
        waiting on the client here: the poller drains it, LINGER_S at most."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, self._drain)
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self.lingering.append((time.monotonic() + LINGER_S, sock))

    def _drain(self, sock):
        try:
            if sock.recv(65536):
                return  # dropped; more may come until the client closes or LINGER_S is up
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close_lingering(sock)

    def _close_lingering(self, sock):
        if sock.fileno() < 0:
            return  # closed already (drained to its end): its entry in self.lingering is stale
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(sock)
        util.close(sock)

    def handle(self, conn):
        if getattr(conn, "request_bytes", None) is not None:  # read by the poller: the parser starts from these bytes
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(conn.request_bytes)
            conn.request_bytes = None
        return super().handle(conn)

    def _keepalive_after(self, conn, keepalive):
        """A body the app left unread is dropped only if it is here already: a thread never waits on a client
        for it (stock gthread: up to 5 s); otherwise the connection closes."""
        if not keepalive:
            return False
        return bool(conn.parser.finish_body(deadline=time.monotonic() + 0.05))


def _send_now(sock, data):
    """As much of `data` as the socket takes without waiting (a 408 or a 100 Continue: one small segment)."""
    with contextlib.suppress(OSError):
        sock.send(data, socket.MSG_DONTWAIT)


class _BootFailureFilter(logging.Filter):
    """Drops the master's lines about a worker that could not load the app: the worker has printed
    `qwen_server: error: ...` already, which is all the user needs."""
    LINES = ("Shutting down: Master", "Reason: App failed to load.")

    def filter(self, record):
        msg = record.getMessage()
        return not (record.levelno >= logging.ERROR and (msg in self.LINES or msg.endswith("exited with code 4.")))


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
        except StartupError as e:  # one line; the master exits on APP_LOAD_ERROR. os._exit: no interpreter
            print(e, file=sys.stderr, flush=True)  # teardown, in which a loaded llama.cpp can itself crash
            os._exit(Arbiter.APP_LOAD_ERROR)
        finally:
            beat.set()


class StartupError(Exception):
    """A problem the user can fix at start-up: becomes one `name: error: ...` line and exit status 2."""


def _post_fork(server, worker):
    server.app.worker = worker
    if sys.platform == "linux":  # the worker (the model, its GPU memory, the port) dies with the master, even
        import ctypes  # a master killed with SIGKILL: never an orphan serving on after a "crash"
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != server.pid:  # the master died before the line above
            os._exit(1)


def _with_timeout(timeout_s):
    def post_fork(server, worker):
        worker.timeout_s = timeout_s
        _post_fork(server, worker)
    return post_fork


def serve(load_app, host, port, threads, log_level="info", graceful_timeout=10, name="qwen_server", timeout_s=None):
    """Run `load_app()`'s WSGI app on host:port until SIGTERM/SIGINT; returns the exit status (2 when the
    app could not load). `python qwen_server.py` and `python chat.py` both serve this way. `timeout_s`: the
    slow-client timeout (default: SLOW_CLIENT_TIMEOUT, read by the worker)."""
    options = {"bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}", "workers": 1,
               "worker_class": "common.wsgi_server.HeadersFirstWorker", "threads": threads,
               "timeout": 60,  # the worker's main loop is idle polling; 60 s silent means it hung
               "graceful_timeout": graceful_timeout, "keepalive": 5, "accesslog": None, "errorlog": "-",
               "loglevel": log_level.lower(), "proc_name": name,
               "limit_request_line": 8190,  # as gunicorn.conf.py: long GET ?q= questions
               "control_socket_disable": True,
               "post_fork": _post_fork if timeout_s is None else _with_timeout(timeout_s),
               "child_exit": worker_deaths.child_exit}
    failure_filter, death_filter = _BootFailureFilter(), worker_deaths.DeathFilter()
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
    sys.exit("wsgi_server.py is imported by qwen_server.py, chat.py and gunicorn.conf.py; it does not run alone")
