"""What qwen_server's routes share: the engine, its traffic figures, the context budget, and the SSE
framing of an answer (with the watcher that cancels a generation whose client left)."""
import logging
import threading
import time

from common import client_watch
from common.api_common import ApiError, sse
from common.openai_format import chunk, usage_with_timings

log = logging.getLogger("qwen_server")


class Stats:
    """What /status reports about traffic since start-up."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.time()
        self.requests = self.tokens = self.active = 0
        self.decode_ms = 0.0
        self.last_tps = None

    def busy(self, delta):
        with self.lock:
            self.active += delta

    def record(self, usage):
        with self.lock:
            self.requests += 1
            self.tokens += usage["completion_tokens"]
            self.decode_ms += usage["timings"]["decode_ms"] or 0
            self.last_tps = usage["timings"]["tokens_per_second"]

    def snapshot(self):
        with self.lock:
            return {"requests_served": self.requests, "tokens_generated": self.tokens,
                    "average_tokens_per_second": round(self.tokens / self.decode_ms * 1000, 2)
                    if self.decode_ms else None,
                    "last_tokens_per_second": self.last_tps, "active_requests": self.active,
                    "uptime_seconds": round(time.time() - self.started, 1)}


class ModelService:
    """One loaded engine behind the HTTP routes (app.extensions["qwen"])."""

    def __init__(self, engine, metrics, max_tokens_default=2048, source=None):
        self.engine, self.metrics, self.max_tokens_default = engine, metrics, max_tokens_default
        self.source = source  # model_hub.ResolvedModel when -m named a hub model, else None
        self.stats = Stats()

    def budget(self, messages, max_tokens, tools=None, prompt=None):
        """The max_tokens that fits the context (prompt: its token count, else counted), or a 400."""
        engine = self.engine
        prompt = engine.count_tokens(messages, tools) if prompt is None else prompt
        room = engine.max_seq_len - prompt
        if max_tokens is None:  # no answer runs to the end of the context unasked
            max_tokens = max(1, min(self.max_tokens_default, room))
        if room < 1 or max_tokens > room:
            raise ApiError(400, f"This model's context is {engine.max_seq_len} tokens: the prompt has {prompt} "
                                f"and max_tokens asks for {max_tokens}. Shorten the conversation or lower "
                                f"max_tokens.", code="context_length_exceeded", param="messages")
        return max_tokens

    def finished(self, model, usage):
        """Counts a finished answer; its usage with timings, as the client gets it."""
        usage = usage_with_timings(usage)
        self.stats.record(usage)
        self.metrics.tokens.labels(model).inc(usage["completion_tokens"])
        if usage["timings"]["tokens_per_second"]:
            self.metrics.tok_per_s.labels(model).set(usage["timings"]["tokens_per_second"])
        return usage

    def collect(self, chunks, environ, cancel, collector, *args):
        """A whole (non-streamed) answer. A client that hangs up stops its generation, or takes it out
        of the queue before its prefill."""
        self.stats.busy(+1)
        try:
            with client_watch.watching(environ, on_leave=cancel.set):
                return collector(chunks, *args)
        finally:
            self.stats.busy(-1)
            chunks.close()

    def stream_frames(self, frames, chunks, environ, cancel, first=None):
        self.stats.busy(+1)
        self.metrics.active_streams.inc()
        try:
            if first is not None:
                yield sse(first)
            # A write fails only when there is something to write: a stream waiting in the queue (or in its
            # prefill) would not notice its client leaving. The watcher does, and cancels it.
            with client_watch.watching(environ, on_leave=cancel.set):
                yield from frames
            yield sse("[DONE]")
        except Exception as e:  # noqa: BLE001 - headers are gone: report in-band, as OpenAI does
            log.exception("generation failed")
            yield sse(ApiError(500, f"Generation failed: {e}", type="server_error", code="engine_error").body())
            yield sse("[DONE]")
        finally:
            self.stats.busy(-1)
            self.metrics.active_streams.dec()
            chunks.close()  # a client that hung up cancels its job here

    def chat_frames(self, events, cid, model, include_usage):
        for delta, logprobs, finish_reason, usage in events:
            if delta is not None:
                yield sse(chunk(cid, model, delta=delta, logprobs=logprobs))
            if finish_reason:
                usage = self.finished(model, usage)
                yield sse(chunk(cid, model, finish_reason=finish_reason))
                if include_usage:
                    yield sse(chunk(cid, model, usage=usage))
