"""GigaChat for the gateway: a thin layer over the official `gigachat` SDK (its v1 chat API).

The SDK does OAuth and refreshes the token (before expiry, and once more on a 401); it reads the
GIGACHAT_* connection settings from the environment itself. Added here: GigaChat's message rules,
a wait queue instead of 429s, X-Session-ID for prompt caching, and ApiErrors that say what to fix."""
import contextlib
import logging
import os
import threading
import time

import pydantic
from gigachat import GigaChat
from gigachat.context import session_id_cvar
from gigachat.models import Chat

from common.api_common import ApiError
from common.openai_tools import check_tool_turns
from common.stop_strings import StopCutter
from providers.base import Provider
from providers.gigachat_errors import RETRY_AFTER_S, map_error, upstream
from providers.gigachat_openai import finish_reason, function_messages, functions_payload, tool_calls

log = logging.getLogger(__name__)

DEFAULT_MODEL = "GigaChat"
MIN_TEMPERATURE = 1e-3  # GigaChat answers 422 "temperature must be in range (0, +inf)" to 0
QUEUE_POLL_S = 0.05  # how soon a queued request whose client left gives up its place
ROLES = ("system", "user", "assistant", "function")
_NOT_CONFIGURED = ("GigaChat is not configured: set GIGACHAT_CREDENTIALS in .env "
                   "(Authorization key from developers.sber.ru), or ask Qwen (/qwen, model \"qwen\").")
NO_RETRY = {"x-should-retry": "false"}  # the openai SDK would otherwise retry a 503 that can't get better


def _interrupted(err, chars):
    return upstream(err.status, f"GigaChat stream broke after {chars} characters ({err.message.rstrip('.')}); the "
                                "partial answer was kept, ask again to get the rest.", "gigachat_stream_interrupted",
                    err.headers)


@contextlib.contextmanager
def _session(session_id):
    """X-Session-ID through the SDK's own context variable, for exactly one SDK call.
    Set even when None, so a value left in a reused thread never leaks into this request."""
    token = session_id_cvar.set(str(session_id) if session_id else None)
    try:
        yield
    finally:
        session_id_cvar.reset(token)


def normalize_messages(messages):
    """GigaChat takes one system message and only as the first (else 422): merge all into one, first."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content}.", code="invalid_messages")
    system, rest = [], []
    if all(isinstance(m, dict) for m in messages) and any(m.get("role") == "tool" for m in messages):
        check_tool_turns(messages)  # (the gateway's parse_messages checked them already; direct callers too)
        messages = function_messages(messages)
    for i, m in enumerate(messages):
        role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None)
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be system, user or assistant, got {role!r}.",
                           code="invalid_messages", param=f"messages[{i}].role")
        if not isinstance(content, (str, type(None))):
            raise ApiError(400, f"messages[{i}].content must be a string.", code="invalid_messages",
                           param=f"messages[{i}].content")
        if role == "system":
            system += [content] if content and content.strip() else []
        else:
            kept = {k: m[k] for k in ("function_call", "name") if m.get(k)}  # (a function call and its result)
            rest.append(dict(kept, role=role, content=content or ""))
    return ([{"role": "system", "content": "\n\n".join(system)}] if system else []) + rest


def _usage(u):
    keys = ("prompt_tokens", "completion_tokens", "total_tokens", "precached_prompt_tokens")
    return {k: getattr(u, k, None) for k in keys}  # None = GigaChat did not say


class GigaChatProvider(Provider):
    """One shared SDK client for all Flask threads.

    Thread safety (gigachat 0.2.x sync client): token refresh runs under the client's RLock with a
    re-check, so parallel threads fetch one token, not one each; the httpx.Client is thread-safe.
    A 401 race at worst costs one extra token fetch, so no extra guard is needed here."""

    name = "gigachat"

    def __init__(self, model=DEFAULT_MODEL, context_tokens=32768, max_concurrency=1, queue_timeout=60.0):
        """The GIGACHAT_* settings the SDK does not read itself (gateway/settings.py reads and checks them)."""
        self.model, self.context_tokens = model, context_tokens
        self.max_concurrency, self.queue_timeout = max(1, max_concurrency), max(0.0, queue_timeout)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._lock = threading.Lock()
        self._waiting = 0
        self._client = None  # made at the first request: a missing key must not break the import

    @property
    def queue_length(self):
        """Requests waiting for a free slot now (for the queue-length metric)."""
        return self._waiting

    def max_seq_len(self):
        """Context size for trimming long conversations (GIGACHAT_CONTEXT_TOKENS)."""
        return self.context_tokens

    def status(self):
        """The configuration and the queue; no call to GigaChat (it has no status endpoint)."""
        return {"model": self.model, "context_tokens": self.context_tokens,
                "max_concurrency": self.max_concurrency, "waiting": self._waiting}

    # ---- public API -------------------------------------------------------------------------
    def complete(self, request, session_id=None, cancel=None):
        client = self._sdk()
        payload = self._payload(request)
        with self._slot(cancel), _session(session_id):
            try:
                resp = client.chat(payload)  # v1: POST {base_url}/chat/completions
            except Exception as e:
                raise self._mapped(e) from e
        choice = resp.choices[0] if resp.choices else None
        finish = choice.finish_reason if choice else None
        cutter = StopCutter(request.sampling.get("stop"))
        text = cutter.feed((choice.message.content or "") if choice else "")
        text += "" if cutter.hit else cutter.flush()
        return {"answer": text, "finish_reason": "stop" if cutter.hit else finish_reason(finish),
                "usage": _usage(resp.usage), "model": resp.model, "blocked": finish == "blacklist",
                "tool_calls": tool_calls(choice.message.function_call) if choice else None}

    def stream(self, request, session_id=None, cancel=None):
        """Yield {"delta": text}..., then {"finish_reason", "usage", "model", "blocked"}.

        Lazy: nothing is sent before the first next(), and errors (ApiError) come from next();
        pull the first item before sending response headers to answer them with a real status.
        After text went out, a failure raises ApiError code "gigachat_stream_interrupted": the
        stream is never restarted (that would repeat text). The queue slot is held until the
        stream ends or the generator is closed. A request whose client leaves (`cancel`, an
        exchange.Cancel) leaves the queue; one already sent runs to its end (GIGACHAT_TIMEOUT)."""
        client = self._sdk()
        payload = self._payload(request)
        chars, finish, usage, model = 0, None, None, None
        cutter = StopCutter(request.sampling.get("stop"))
        with self._slot(cancel):
            chunks = client.stream(payload)  # v1 SSE; SDK retries are off (see _sdk), so no replay
            try:
                while True:
                    # The SDK builds headers inside next(): the session var must be set just then,
                    # and reset before we yield, or it would leak into the caller between chunks.
                    with _session(session_id):
                        try:
                            chunk = next(chunks)
                        except StopIteration:
                            break
                        except Exception as e:
                            err = self._mapped(e)
                            raise (_interrupted(err, chars) if chars else err) from e
                    model, usage = chunk.model or model, chunk.usage or usage
                    choice = chunk.choices[0] if chunk.choices else None
                    finish = (choice and choice.finish_reason) or finish
                    text = cutter.feed(choice.delta.content or "") if choice else ""
                    if text:
                        chars += len(text)
                        yield {"delta": text}
                    if choice and choice.delta.function_call:
                        yield {"tool_calls": [dict(c, index=0) for c in tool_calls(choice.delta.function_call)]}
                    if cutter.hit:  # a stop string: the rest is not wanted, so stop GigaChat's stream now
                        finish = "stop"
                        break
            finally:
                chunks.close()  # closes the HTTP response if we stop early
            if finish is None:  # the connection closed cleanly, but before GigaChat finished
                err = upstream(502, "GigaChat ended the stream before the answer was complete; try again.",
                               "gigachat_stream_interrupted")
                raise _interrupted(err, chars) if chars else err
        if cutter.held:
            yield {"delta": cutter.flush()}
        # Slot released before the last yield: a caller that stops here must not block others.
        yield {"finish_reason": finish_reason(finish), "usage": _usage(usage), "model": model,
               "blocked": finish == "blacklist"}

    def models(self):
        """Model names GigaChat offers to this key (for /v1/models)."""
        client = self._sdk()
        try:
            return [m.id_ for m in client.get_models().data]
        except Exception as e:
            raise self._mapped(e) from e

    def check_ready(self):
        self._sdk()  # builds the SDK client (no network): raises the 503 that says what to set in .env

    # ---- plumbing ---------------------------------------------------------------------------
    def _sdk(self):
        with self._lock:
            if self._client is None:
                try:
                    # model: SDK 0.2.x refuses a request without one. max_retries=0 whatever
                    # GIGACHAT_MAX_RETRIES says: SDK retries would replay a broken stream from the
                    # start (duplicate text) and sleep while holding our slot; 429 goes to the caller.
                    client = GigaChat(model=self.model, max_retries=0)
                except pydantic.ValidationError as e:
                    bad = e.errors()[0]
                    name = "GIGACHAT_" + str(bad["loc"][0]).upper() if bad.get("loc") else "a GIGACHAT_* variable"
                    raise upstream(503, f"GigaChat settings are invalid: {name}: {bad['msg']}; fix it in .env.",
                                   "gigachat_not_configured")
                s = client._settings
                if not (s.credentials or s.access_token or (s.user and s.password)):
                    raise upstream(503, _NOT_CONFIGURED, "gigachat_not_configured", NO_RETRY)
                if s.ca_bundle_file and not os.path.isfile(s.ca_bundle_file):
                    raise upstream(503, f"GIGACHAT_CA_BUNDLE_FILE={s.ca_bundle_file} does not exist: point it at the "
                                        "Russian Trusted Root CA file (.crt/.pem).", "gigachat_not_configured",
                                   NO_RETRY)
                self._client = client
            return self._client

    def _payload(self, request):
        payload = {"model": request.model or self.model, "messages": normalize_messages(request.messages),
                   **functions_payload(request.shaping)}
        # top_k is ignored on purpose: GigaChat has no top_k parameter.
        for key, cast in (("temperature", float), ("top_p", float), ("max_tokens", int),
                          ("repetition_penalty", float)):
            value = request.sampling.get(key)
            if value is None:
                continue
            try:
                payload[key] = cast(value)
            except (TypeError, ValueError):
                raise ApiError(400, f"{key} must be a number, got {value!r}.", code="invalid_parameter", param=key)
        if payload.get("temperature") is not None and payload["temperature"] <= 0:
            payload["temperature"] = MIN_TEMPERATURE  # "as deterministic as possible", what 0 means elsewhere
        try:  # what the SDK's model of a request cannot hold (a schema's "type": [...]) is the client's 400
            Chat.model_validate(payload)
        except pydantic.ValidationError as e:
            bad = e.errors()[0]
            where = ".".join(str(p) for p in bad.get("loc", ()))
            raise ApiError(400, f"GigaChat cannot take this request: {where}: {bad['msg']}.", code="invalid_parameter",
                           param="tools" if where.startswith("functions") else None) from None
        return payload

    @contextlib.contextmanager
    def _slot(self, cancel=None):
        """GigaChat allows few parallel requests per key (1 for personal keys): queue, don't 429.
        A waiter whose client left gives up its place (ApiError 499) instead of being sent later."""
        if not self._slots.acquire(blocking=False):
            self._count_waiting(+1)
            try:
                got = self._wait_for_slot(cancel)
            finally:
                self._count_waiting(-1)
            if not got:
                raise upstream(503, f"GigaChat is busy: {self.max_concurrency} request(s) running and this one "
                                    f"waited {self.queue_timeout:g} s (GIGACHAT_QUEUE_TIMEOUT); try again shortly.",
                               "gigachat_busy", {"Retry-After": str(RETRY_AFTER_S)})
        try:
            yield
        finally:
            self._slots.release()

    def _wait_for_slot(self, cancel) -> bool:
        if cancel is None:
            return self._slots.acquire(timeout=self.queue_timeout)
        deadline = time.monotonic() + self.queue_timeout
        while not self._slots.acquire(timeout=max(0.0, min(QUEUE_POLL_S, deadline - time.monotonic()))):
            if cancel.is_set():
                raise ApiError(499, "The client left while waiting for GigaChat.", code="client_closed_request")
            if time.monotonic() >= deadline:
                return False
        return True

    def _count_waiting(self, delta):
        with self._lock:
            self._waiting += delta
            n = self._waiting
        self.on_queue_change(n)

    def _mapped(self, e):
        """The ApiError for an SDK/httpx exception; anything else (a bug) is re-raised as is."""
        err = map_error(e, self._client, self.model)
        if err is None:
            raise e
        log.warning("GigaChat error %s: %s (%s)", err.status, err.message, type(e).__name__)
        return err
