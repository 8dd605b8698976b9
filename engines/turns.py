"""One request at a time on an engine that serves one at a time: a first-come queue that a client
who leaves drops out of at once."""
import collections
import threading
from contextlib import contextmanager


class Turns:
    """One request at a time, first come first served. A waiter whose `cancel` is set (its client
    left) leaves the queue at once, so a dropped request never costs a prefill."""

    POLL_S = 0.05  # how soon a cancelled waiter notices: cancel events can't wake a Condition

    def __init__(self):
        self._cond = threading.Condition()
        self._queue = collections.deque()

    def waiting(self) -> int:
        """Requests queued behind the one being served."""
        with self._cond:
            return max(0, len(self._queue) - 1)

    @contextmanager
    def turn(self, cancel: threading.Event):
        """Yields True once it is this request's turn, or False if it was cancelled while waiting."""
        me = object()
        with self._cond:
            self._queue.append(me)
            while self._queue[0] is not me and not cancel.is_set():
                self._cond.wait(self.POLL_S)
            got_turn = self._queue[0] is me and not cancel.is_set()
            if not got_turn:
                self._queue.remove(me)
                self._cond.notify_all()
        if not got_turn:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self._queue.remove(me)
                self._cond.notify_all()
