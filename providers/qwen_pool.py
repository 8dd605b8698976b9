"""The Qwen provider over several upstreams (QWEN_URL=url1,url2,...): each request goes to the pool's
choice (providers/upstreams.py); one that fails before its first piece of answer is retried on
another upstream, never after (the client would get the same text twice)."""
import time

from common.api_common import ApiError
from providers.base import Provider
from providers.upstreams import Upstreams


def _fault(e):
    """Why an upstream's error takes it out (refused, timed out, 5xx, cut stream), or None: a 4xx is
    the request's fault, and the same request would fail anywhere."""
    return e.message if isinstance(e, ApiError) and e.status >= 500 else None


class QwenPoolProvider(Provider):
    name = "qwen"

    def __init__(self, urls, timeout=300.0, cooldown=5.0, poll=1.0, affinity_slack=0):
        self.pool = Upstreams(urls, timeout, cooldown, poll, affinity_slack)

    def _choose(self, request, session_id, tried):
        """(upstream, request to send it) for the next try; ApiError when none is left."""
        model = request.model
        model = None if not model or model.lower() == "qwen" else model
        u = self.pool.pick(model, session_id, tried)  # a model no upstream lists: any of them
        if u is None:
            if tried:  # the last try's error is more telling; the caller raises it
                return None, None
            if model and self.pool.serves(model):
                raise ApiError(503, f"Every Qwen server that serves {model!r} is down or out; try again in a "
                                    f"few seconds, or ask for model 'qwen'.", type="upstream_unavailable",
                               code="qwen_unreachable")
            why = self.pool.down_reasons() or "none is healthy"
            raise ApiError(503, f"Every Qwen server in QWEN_URL is down or out; they are probed back in every few "
                                f"seconds. Why: {why}", type="upstream_unavailable", code="qwen_unreachable")
        # Servers that check the name (vLLM) get one they serve; qwen_server takes any.
        name = model if model and u.models and model in u.models else (u.models or ["qwen"])[0]
        return u, request.replace(model=name)

    def _attempts(self, request, session_id):
        """(upstream, request) for each try, each upstream at most once; ends when none is left."""
        tried = []
        while True:
            u, p = self._choose(request, session_id, tried)
            if u is None:
                return
            tried.append(u)
            yield u, p

    def _retry(self, u, e, cancel):
        """Counts a try that failed before its first byte; whether another upstream may take it."""
        gone = cancel is not None and cancel.is_set()
        self.pool.done(u, failed=None if gone else _fault(e))
        return not gone and _fault(e) is not None

    def complete(self, request, session_id=None, cancel=None):
        last = None
        for u, p in self._attempts(request, session_id):
            t0 = time.perf_counter()
            try:
                result = u.client.complete(p, session_id, cancel)
            except Exception as e:
                if not self._retry(u, e, cancel):
                    raise
                last = e
                continue
            self.pool.done(u, session_id, time.perf_counter() - t0)
            return result
        raise last

    def stream(self, request, session_id=None, cancel=None):
        last = None
        for u, p in self._attempts(request, session_id):
            t0 = time.perf_counter()
            upstream = u.client.stream(p, session_id, cancel)
            try:
                first = next(upstream, None)
            except Exception as e:  # nothing reached the client yet: another upstream may answer
                upstream.close()
                if not self._retry(u, e, cancel):
                    raise
                last = e
                continue
            yield from self._rest(u, upstream, first, session_id, time.perf_counter() - t0)
            return
        raise last

    def _rest(self, u, upstream, first, session_id, first_byte_s):
        """The stream after its first piece: an error now ends it (no retry), and takes `u` out."""
        failed = None
        try:
            if first is not None:
                yield first
            yield from upstream
        except ApiError as e:
            failed = _fault(e)
            raise
        finally:
            upstream.close()
            self.pool.done(u, None if failed else session_id, None if failed else first_byte_s, failed)

    def status(self) -> dict:
        """The first healthy upstream's status, and every upstream's figures under "upstreams"."""
        self.pool.wait_first_poll()
        ups = self.pool.view()
        base = next((u.status for u in self.pool.all if u.status and not u.down_until), None)
        out = dict(base or {}, online=any(u["healthy"] for u in ups), upstreams=ups)
        if not out["online"]:
            out["reason"] = "every Qwen server in QWEN_URL is down: " + self.pool.down_reasons()
        return out

    def models(self):
        self.pool.wait_first_poll()
        return list(dict.fromkeys(m for u in self.pool.all for m in (u.models or [])))

    def max_seq_len(self):
        """The smallest context among the upstreams (a conversation may land on any of them)."""
        self.pool.wait_first_poll()
        sizes = [u.status.get("max_seq_len") for u in self.pool.all if u.status]
        sizes = [s for s in sizes if s]
        return min(sizes) if sizes else None

    def count_tokens(self, messages):
        for u in self.pool.all:
            if not u.down_until:
                try:
                    return u.client.count_tokens(messages)
                except (ApiError, KeyError, ValueError):
                    continue
        return None

    def collect(self):
        """Per-upstream figures for /metrics (a prometheus_client collector); labels: configured URLs only."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        ups = self.pool.view()
        fams = [GaugeMetricFamily("chat_upstream_healthy", "1 while the upstream takes requests", labels=["upstream"]),
                GaugeMetricFamily("chat_upstream_in_flight", "Requests on the upstream now", labels=["upstream"]),
                GaugeMetricFamily("chat_upstream_queue_length", "Its own queue, from its /status", labels=["upstream"]),
                CounterMetricFamily("chat_upstream_served", "Requests it answered", labels=["upstream"]),
                CounterMetricFamily("chat_upstream_errors", "Failures that took it out", labels=["upstream"]),
                GaugeMetricFamily("chat_upstream_first_byte_ms", "Time to first byte (moving average)",
                                  labels=["upstream"])]
        for u in ups:
            values = (int(u["healthy"]), u["in_flight"], u["queue_length"], u["served"], u["errors"],
                      u["latency_ms"] or 0)
            for fam, v in zip(fams, values):
                fam.add_metric([u["url"]], v)
        return fams
