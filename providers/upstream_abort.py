"""Aborting one upstream HTTP call from another thread (a client that left: exchange.Cancel) by shutting its
socket: the wait for the answer ends, and the upstream sees the connection close and stops generating."""
import contextlib
import contextvars
import socket

request_sent = contextvars.ContextVar("qwen_request_sent", default=None)  # set around one urlopen() only


def abortable(base):
    """A connection class that hands its socket to the current call's abort once the request is
    sent: shutting it from another thread ends the wait for the answer, and the Qwen server sees
    the connection close and cancels the generation (a client that left, exchange.Cancel)."""
    class AbortableConnection(base):
        def request(self, *args, **kwargs):
            super().request(*args, **kwargs)
            sent = request_sent.get()
            if sent is not None:
                sent(self.sock)
    return AbortableConnection


class _Abort:
    """Shuts the socket of one upstream call when its client leaves (before or after it is sent)."""

    def __init__(self, cancel):
        self.cancel, self.sock = cancel, None

    def sent(self, sock):
        self.sock = sock
        if self.cancel.is_set():
            self()

    def __call__(self):
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def aborting(cancel):
    """The _Abort for a call, registered with the request's exchange.Cancel while the call runs."""
    if cancel is None:
        yield None
        return
    abort = _Abort(cancel)
    off = cancel.on_cancel(abort)
    try:
        yield abort
    finally:
        off()
