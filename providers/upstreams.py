"""Several OpenAI-compatible servers (qwen_server, vLLM, TabbyAPI, Ollama's /v1) as one pool: which one
takes the next request (least busy, the conversation's last one first), which ones are out (circuit
breaker), and a background poller that keeps each one's queue length, models and health fresh, so
that choosing never waits on the network."""
import collections
import logging
import os
import threading
import time

from common.api_common import ApiError
from providers.openai_reply import OddReply
from providers.qwen import QwenProvider

log = logging.getLogger(__name__)

MODELS_EVERY = 30.0  # seconds between /v1/models reads of a healthy upstream (model lists rarely change)
EWMA = 0.2  # weight of the newest time-to-first-byte in an upstream's latency figure


class Upstream:
    """One server: its HTTP client and its figures. The pool's lock guards every field."""

    def __init__(self, url, timeout):
        self.url, self.client = url, QwenProvider(url, timeout)
        self.in_flight = self.served = self.errors = 0
        self.queue = 0  # what its /status says waits there (others' requests included); 0 when unknown
        self.models, self.models_at = None, 0.0  # ids from /v1/models; None until read
        self.status, self.latency_ms, self.last_pick = None, None, 0.0
        self.down_until, self.down_reason = 0.0, None  # > 0: taken out (breaker open)

    def load(self):
        return self.in_flight + self.queue

    def view(self, now):
        return {"url": self.url, "healthy": not self.down_until, "in_flight": self.in_flight,
                "queue_length": self.queue, "served": self.served, "errors": self.errors,
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
                "models": self.models or [], "down_reason": self.down_reason,
                "probe_in_s": round(max(0.0, self.down_until - now), 2) if self.down_until else None}


class Upstreams:
    """The pool. pick() chooses among healthy upstreams that serve the model: the session's last
    upstream while its load is within `affinity_slack` of the least busy, else the least busy (ties:
    the one picked longest ago). failed() opens the breaker for `cooldown` seconds; the poller then
    probes it and closes the breaker on the first good answer."""

    def __init__(self, urls, timeout=300.0, cooldown=5.0, poll=1.0, affinity_slack=0, sessions=10_000):
        self.all = [Upstream(u, timeout) for u in urls]
        self.cooldown, self.poll, self.slack = cooldown, poll, affinity_slack
        self.lock = threading.Lock()
        self.affinity = collections.OrderedDict()  # session id -> Upstream, least recently used first
        self.max_sessions = sessions
        self._poller_pid, self._polled = None, threading.Event()

    # -- choosing -------------------------------------------------------------------------------
    def candidates(self, model=None, exclude=()):
        """Healthy upstreams not in `exclude` that serve `model` (any, when none is known to)."""
        ups = [u for u in self.all if not u.down_until and u not in exclude]
        if model:
            serving = [u for u in ups if u.models and model in u.models]
            if serving or self.serves(model):
                return serving  # only those that serve it (none right now: the caller says so)
        return ups

    def pick(self, model=None, session_id=None, exclude=()):
        """The upstream for a request, counted in flight; None when no healthy one is left."""
        self.start_poller()
        with self.lock:
            ups = self.candidates(model, exclude)
            if not ups:
                return None
            best = min(ups, key=lambda u: (u.load(), u.last_pick))
            mine = self.affinity.get(session_id) if session_id else None
            if mine in ups and mine.load() <= best.load() + self.slack:
                best = mine
            best.in_flight += 1
            best.last_pick = time.monotonic()
            return best

    def serves(self, model):
        """Whether some upstream (healthy or not) lists `model` among its ids."""
        return any(u.models and model in u.models for u in self.all)

    # -- outcomes -------------------------------------------------------------------------------
    def done(self, u, session_id=None, first_byte_s=None, failed=None):
        """The end of a request on `u`: served (and the session's upstream now), or failed with a
        reason that takes it out; a request the client left is neither."""
        with self.lock:
            u.in_flight -= 1
            if failed:
                u.errors += 1
                u.down_until, u.down_reason = time.monotonic() + self.cooldown, failed
                return
            if first_byte_s is not None:
                u.served += 1
                ms = first_byte_s * 1000
                u.latency_ms = ms if u.latency_ms is None else (1 - EWMA) * u.latency_ms + EWMA * ms
            if session_id:
                self.affinity[session_id] = u
                self.affinity.move_to_end(session_id)
                while len(self.affinity) > self.max_sessions:
                    self.affinity.popitem(last=False)

    # -- the poller -----------------------------------------------------------------------------
    def start_poller(self):
        """One thread an upstream, started on first use in each process (threads do not survive a fork)."""
        if self._poller_pid == os.getpid():
            return
        with self.lock:
            if self._poller_pid == os.getpid():
                return
            self._poller_pid, self._seen, self._polled = os.getpid(), 0, threading.Event()
        for u in self.all:
            threading.Thread(target=self._poll_loop, args=(u,), daemon=True, name=f"upstream-{u.url}").start()

    def wait_first_poll(self, timeout=5.0):
        """Until every upstream has been looked at once in this process (or `timeout`): right after a
        start, so that status, models and context size are known."""
        self.start_poller()
        self._polled.wait(timeout)

    def _poll_loop(self, u):
        first = True
        while True:
            try:
                self.refresh(u)
            except Exception as e:  # noqa: BLE001 - whatever an upstream answers, the poller goes on
                log.exception("polling %s failed", u.url)
                self._out(u, f"polling it failed: {type(e).__name__}: {str(e)[:200]}")
            if first:
                first = False
                with self.lock:
                    self._seen += 1
                    if self._seen == len(self.all):
                        self._polled.set()
            time.sleep(self.poll)

    def refresh(self, u):
        """One look at `u`: its /status (queue, context size), now and then its models; a probe
        when its breaker is open and the cooldown is over."""
        now = time.monotonic()
        with self.lock:
            if u.down_until and now < u.down_until:
                return  # still cooling down: not even a probe
        st = u.client.status()  # never raises; vLLM and others without /status: their /v1/models
        models = None
        if st.get("online") and (u.models is None or now - u.models_at > MODELS_EVERY or u.down_until):
            try:
                models = u.client.model_ids()
            except (ApiError, OddReply) as e:
                st = {"online": False, "reason": f"/v1/models: {e}"}
        with self.lock:
            if u.down_until > time.monotonic():
                return  # a request failed on it during this look: that counts, not the look
            if not st.get("online"):
                u.down_until, u.down_reason = time.monotonic() + self.cooldown, st.get("reason")
                return
            u.status, u.queue = st, st.get("queue_length") or 0  # (checked by openai_reply.status)
            if models is not None:
                u.models, u.models_at = models, now
            u.down_until, u.down_reason = 0.0, None

    def down_reasons(self) -> str:
        """Each upstream that is out and its last error (refused, closed the connection, timed out...)."""
        with self.lock:
            return "; ".join(f"{u.url}: {u.down_reason or 'not looked at yet'}" for u in self.all if u.down_until)

    def _out(self, u, reason):
        """Takes `u` out for a cooldown, for a reason the poller found (its next look probes it again)."""
        with self.lock:
            u.down_until, u.down_reason = time.monotonic() + self.cooldown, reason

    def view(self):
        now = time.monotonic()
        with self.lock:
            return [u.view(now) for u in self.all]
