"""Notices a client that hangs up while the server is still busy with its request.

A WSGI app learns that its client left only when it writes to the socket; a request that writes
nothing until its work is done (a whole answer, a request waiting in a queue, the wait for the
first token) would otherwise run to the end for nobody. `watching()` polls the client's socket
from a small thread while a block runs and fires when the peer has closed it:

    with client_watch.watching(request.environ, on_leave=upstream.abort) as left:
        result = slow_call()          # on_leave() runs (once, in the watcher thread) if the client goes
    if left.is_set(): ...

The socket comes from the WSGI server: environ["gunicorn.socket"] (gunicorn) or
environ["werkzeug.socket"] (the Werkzeug server). With neither (another server, a test client)
the block runs unwatched and `left` is never set. A client that half-closes its side
(shutdown(SHUT_WR)) after sending the request reads as gone, as in most servers' checks."""
import contextlib
import logging
import os
import select
import socket
import threading

POLL_S = 0.05  # how soon a hang-up is noticed; costs one select() wake-up per interval per request
SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT

log = logging.getLogger(__name__)


def client_socket(environ):
    """The client's socket from a WSGI environ, or None."""
    for key in SOCKET_KEYS:
        sock = environ.get(key)
        if sock is not None and hasattr(sock, "fileno"):
            return sock
    return None


def peer_closed(sock) -> bool:
    """True when the peer has closed (EOF or reset); False while it is connected, even with
    unread bytes waiting (a pipelined request, the rest of a body)."""
    try:
        # socket.socket.recv on the raw descriptor: a TLS socket (ssl.SSLSocket) refuses flags, and
        # reading the encrypted bytes is enough to see EOF. MSG_DONTWAIT: never changes the socket's mode.
        return socket.socket.recv(sock, 1, _PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # ECONNRESET, EBADF: gone
        return True


@contextlib.contextmanager
def watching(environ, on_leave=None, poll_s=POLL_S):
    """Yields a threading.Event that is set when the client closes its connection while the
    block runs; on_leave() (if given) is called once, from the watcher thread, right after.
    The watcher stops (joined) when the block exits, before the server reuses or closes the socket."""
    left = threading.Event()
    sock = client_socket(environ)
    if sock is None:
        yield left
        return
    wake_r, wake_w = os.pipe()  # wakes the watcher at once when the block ends

    def watch():
        try:
            while True:
                ready, _, _ = select.select([sock, wake_r], [], [], poll_s)
                if wake_r in ready:
                    return
                if sock in ready and peer_closed(sock):
                    break
                if sock in ready:  # bytes wait unread (not ours to read): don't spin on them
                    if _wait_wake(wake_r, poll_s):
                        return
        except (OSError, ValueError):  # the socket was closed under us: nothing left to watch
            return
        left.set()
        if on_leave is not None:
            try:
                on_leave()
            except Exception:  # a failed callback must not leave a traceback per request
                log.exception("client_watch: on_leave failed")

    watcher = threading.Thread(target=watch, name="client-watch", daemon=True)
    watcher.start()
    try:
        yield left
    finally:
        os.write(wake_w, b"x")
        watcher.join()
        os.close(wake_r)
        os.close(wake_w)


def _wait_wake(wake_r, seconds) -> bool:
    return bool(select.select([wake_r], [], [], seconds)[0])
