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
(shutdown(SHUT_WR)) after sending the request reads as gone, as in most servers' checks.

On Linux one thread per process watches every socket (epoll, woken only by a hang-up: nothing per
request but two epoll_ctl calls; a thread per request cost ~2 ms of added latency under load);
elsewhere each block gets its own polling thread."""
import contextlib
import logging
import os
import select
import socket
import threading
from dataclasses import dataclass, field

POLL_S = 0.05  # how soon a hang-up is noticed; costs one poll() wake-up per interval per request
SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
USE_EPOLL = hasattr(select, "epoll")  # else a polling thread per block
_EPOLL_EVENTS = getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLONESHOT", 0)  # the peer's FIN, once

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
    return _peek(sock) == "gone"


def _peek(sock) -> str:
    """"gone" (EOF or reset), "bytes" (unread bytes wait: an EOF behind them can't be seen), or "open"."""
    try:
        # socket.socket.recv on the raw descriptor: a TLS socket (ssl.SSLSocket) refuses flags, and
        # reading the encrypted bytes is enough to see EOF. MSG_DONTWAIT: never changes the socket's mode.
        return "gone" if socket.socket.recv(sock, 1, _PEEK) == b"" else "bytes"
    except (BlockingIOError, InterruptedError):
        return "open"
    except OSError:  # ECONNRESET, EBADF: gone
        return "gone"


@dataclass
class _Watch:
    sock: socket.socket
    on_leave: object
    left: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)  # held while on_leave runs
    over: bool = False  # the block has ended: never fire after that

    def fire(self):
        with self.lock:
            if self.over:
                return
            self.left.set()
            if self.on_leave is not None:
                try:
                    self.on_leave()
                except Exception:  # a failed callback must not kill the watcher
                    log.exception("client_watch: on_leave failed")

    def end(self):
        with self.lock:  # waits for an on_leave that is running
            self.over = True


class _EpollWatcher:
    """One thread per process: each watched socket is registered for EPOLLRDHUP (the peer's FIN),
    one-shot, so the thread sleeps until some client hangs up."""

    def __init__(self):
        self.epoll, self.lock, self.watches = select.epoll(), threading.Lock(), {}
        threading.Thread(target=self._run, name="client-watch", daemon=True).start()

    def add(self, watch) -> bool:
        fd = watch.sock.fileno()
        with self.lock:
            if fd in self.watches:  # already watched (a nested block): leave it to the outer one
                return False
            try:
                self.epoll.register(fd, _EPOLL_EVENTS)
            except OSError:
                return False
            self.watches[fd] = watch
        return True

    def remove(self, watch):
        fd = watch.sock.fileno()
        with self.lock:
            if self.watches.get(fd) is watch:
                del self.watches[fd]
                with contextlib.suppress(OSError):
                    self.epoll.unregister(fd)
        watch.end()

    def _run(self):
        while True:
            for fd, _ in self.epoll.poll():
                with self.lock:
                    watch = self.watches.get(fd)
                    if watch is None:
                        continue
                    state = _peek(watch.sock)
                    if state == "open":  # an event meant for an earlier socket with this number
                        with contextlib.suppress(OSError):
                            self.epoll.modify(fd, _EPOLL_EVENTS)  # re-arm (one-shot)
                        continue
                    del self.watches[fd]  # gone; or bytes ahead of the FIN: can't tell, stop watching
                    with contextlib.suppress(OSError):
                        self.epoll.unregister(fd)
                if state == "gone":
                    watch.fire()


_shared, _shared_lock = {}, threading.Lock()


def _watcher():
    """This process's epoll watcher (made after a fork, in the process that serves), or None."""
    if not USE_EPOLL:
        return None
    pid = os.getpid()
    if pid not in _shared:
        with _shared_lock:
            if pid not in _shared:
                _shared[pid] = _EpollWatcher()
    return _shared[pid]


@contextlib.contextmanager
def watching(environ, on_leave=None, poll_s=POLL_S):
    """Yields a threading.Event that is set when the client closes its connection while the
    block runs; on_leave() (if given) is called once, from a watcher thread, right after.
    Watching ends when the block exits: on_leave never runs after that (an exit waits for one
    that is running), and the socket is no longer touched."""
    sock = client_socket(environ)
    if sock is None:
        yield threading.Event()
        return
    watch, shared = _Watch(sock, on_leave), _watcher()
    if shared is not None:
        if not shared.add(watch):
            yield watch.left
            return
        try:
            yield watch.left
        finally:
            shared.remove(watch)
        return
    with _polling(watch, poll_s):
        yield watch.left


@contextlib.contextmanager
def _polling(watch, poll_s):
    """Without epoll: a thread for this block that polls the socket."""
    sock = watch.sock
    wake_r, wake_w = os.pipe()  # wakes the watcher at once when the block ends

    def poll():
        try:
            while True:
                ready = _readable([sock.fileno(), wake_r], poll_s)
                if wake_r in ready:
                    return
                if sock.fileno() in ready and peer_closed(sock):
                    break
                if sock.fileno() in ready:  # bytes wait unread (not ours to read): don't spin on them
                    if _wait_wake(wake_r, poll_s):
                        return
        except (OSError, ValueError):  # the socket was closed under us: nothing left to watch
            return
        watch.fire()

    watcher = threading.Thread(target=poll, name="client-watch-poll", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        os.write(wake_w, b"x")
        watcher.join()
        watch.end()
        os.close(wake_r)
        os.close(wake_w)


def _wait_wake(wake_r, seconds) -> bool:
    return bool(_readable([wake_r], seconds))


def _readable(fds, seconds) -> set:
    """The descriptors of `fds` readable (or hung up) within `seconds`. poll(), not select(): select()
    refuses descriptors >= 1024 (FD_SETSIZE), which a busy server reaches."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return {fd for fd, _ in poller.poll(seconds * 1000)}
