"""The flag an exchange's upstream call watches: set when its client has gone."""
import threading


class Cancel:
    """Set when the client has gone. Providers register how to abort their upstream call (shut its
    socket) with on_cancel(); set() runs those, from whatever thread notices the hang-up."""

    def __init__(self):
        self._set, self._aborts, self._lock = False, [], threading.Lock()

    def is_set(self):
        return self._set

    def on_cancel(self, abort):
        """Runs abort() when the client goes (now, if it is gone); returns the function that
        unregisters it, to call once the upstream call is over."""
        with self._lock:
            if not self._set:
                self._aborts.append(abort)
                return lambda: self._off(abort)
        abort()
        return lambda: None

    def _off(self, abort):
        with self._lock:
            if abort in self._aborts:
                self._aborts.remove(abort)

    def set(self):
        with self._lock:
            self._set, aborts, self._aborts = True, self._aborts, []
        for abort in aborts:
            abort()
