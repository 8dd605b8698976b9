"""Model "auto": which model answers a question, decided here without asking any model.

Privacy first: a question or conversation holding a secret (gateway/secret_scan.py), or a conversation
once kept local for it, is answered by the local Qwen only ("private"). Otherwise questions about code go
to Qwen ("code") and the rest to GigaChat ("general"), by gateway/route_rules.py. When the chosen model
can't answer before its first word (GigaChat unreachable, not configured, out of tokens, rate-limited or
failing; Qwen down), the other one answers ("fallback: <why>"), except that a private question never goes
to GigaChat: it gets a 503 that says why.

An explicit GigaChat request holding a secret is refused (400) by default; CHAT_SECRETS_TO_GIGACHAT=redact
sends it with the secrets replaced by [REDACTED], =allow sends it as it is."""
import functools
from dataclasses import dataclass

from flask import current_app
from prometheus_client import Counter

import db
from common.api_common import ApiError
from gateway import route_rules, secret_scan
from providers import Provider

AUTO, PRIVATE = "auto", "private"
_OTHER = {"qwen": "gigachat", "gigachat": "qwen"}


@dataclass(frozen=True)
class Decision:
    provider: str  # the model asked first: "qwen" or "gigachat"
    route: str  # "code", "general" or "private"
    why_private: tuple = ()  # what kept it local: kinds of secret found, or the conversation's earlier turn


def message_texts(messages):
    """Every text a request would send upstream (contents of all its messages)."""
    return [m["content"] for m in messages if isinstance(m.get("content"), str)]


@functools.lru_cache(maxsize=512)  # a conversation's earlier turns are scanned once, not at every turn
def kinds_in(text) -> tuple:
    return tuple(dict.fromkeys(f.kind for f in secret_scan.find(text)))


def secret_kinds(texts) -> tuple:
    """The kinds of secret (never the secrets) in any of texts."""
    return tuple(dict.fromkeys(kind for text in texts for kind in kinds_in(text)))


def decide(question, messages, kept_local=False, qwen_only=False) -> Decision:
    """The route for a question, given all the messages that would be sent (the conversation, the system
    prompt) and whether its conversation was already kept local. qwen_only: the request asks for what only
    Qwen does (response_format, logprobs)."""
    kinds = secret_kinds(message_texts(messages))
    if kinds or kept_local:
        return Decision("qwen", PRIVATE, kinds or ("an earlier turn of this conversation",))
    route = route_rules.CODE if qwen_only else route_rules.classify(question)
    return Decision("qwen" if route == route_rules.CODE else "gigachat", route)


def _fallback_reason(name, e) -> str:
    """Why `name` could not answer, for the route "fallback: <why>"."""
    if name == "qwen":
        return "qwen unavailable"
    if e.status == 402:
        return "gigachat out of tokens (402)"
    if e.status == 429:
        return "gigachat rate-limited (429)"
    code = e.code or ""
    if code.endswith("not_configured"):
        return "gigachat not configured"
    if code.endswith(("unreachable", "tls_error", "timeout")):
        return "gigachat unreachable"
    if code.endswith("busy"):
        return "gigachat busy"
    return "gigachat failing (5xx)" if code.endswith("server_error") else "gigachat failing"


def can_fall_back(e) -> bool:
    """Failures another model may answer instead: the upstream's, not the request's."""
    return isinstance(e, ApiError) and (e.status in (402, 429) or e.status >= 500)


class Routed(Provider):
    """The provider of one request: the chosen model, and the other one when the chosen can't answer before
    its first word. `name` and `route` say who answers (as exchange saves them); per request, not shared."""

    def __init__(self, providers, decision, qwen_defaults=None, fallback=True, redact=False):
        self.providers, self.decision = providers, decision
        self.name, self.route = decision.provider, decision.route
        self.fallback = fallback and decision.route != PRIVATE
        self.qwen_defaults = {k: v for k, v in (qwen_defaults or {}).items() if v is not None}
        self.redact = redact

    @property
    def current(self):
        return self.providers[self.name]

    def _switch(self, e):
        """To the other model, or the error to raise when there is none."""
        if not self.fallback or not can_fall_back(e):
            return self._refusal(e)
        self.route = f"fallback: {_fallback_reason(self.name, e)}"
        self.name, self.fallback = _OTHER[self.name], False
        return None

    def _refusal(self, e):
        if self.route == PRIVATE and can_fall_back(e):
            why = ", ".join(self.decision.why_private)
            return ApiError(503, f"This question was kept on the local model for privacy ({why}), and the local "
                                 f"Qwen can't answer now: {e.message} It was not sent to GigaChat: start Qwen and "
                                 f"ask again, or remove the secret.", type="upstream_unavailable",
                            code="private_needs_local_model", headers={"Retry-After": "5"})
        return e

    def _request(self, request):
        """The request as the current model gets it: secrets masked (redact), Qwen's defaults filled in."""
        if self.redact:
            request = request.replace(messages=[dict(m, content=secret_scan.redact(m["content"]))
                                                if isinstance(m.get("content"), str) else m
                                                for m in request.messages])
        return request.replace(sampling={**self.qwen_defaults, **request.sampling}) if self.name == "qwen" \
            else request

    def check_ready(self):
        try:
            self.current.check_ready()
        except ApiError as e:
            err = self._switch(e)
            if err is not None:
                raise err
            self.current.check_ready()

    def complete(self, request, session_id=None, cancel=None):
        try:
            return self.current.complete(self._request(request), session_id, cancel=cancel)
        except ApiError as e:
            err = e if cancel is not None and cancel.is_set() else self._switch(e)
            if err is not None:
                raise err from None
        return self.current.complete(self._request(request), session_id, cancel=cancel)

    def stream(self, request, session_id=None, cancel=None):
        upstream = self.current.stream(self._request(request), session_id, cancel=cancel)
        try:
            first = next(upstream, None)
        except ApiError as e:
            upstream.close()
            err = e if cancel is not None and cancel.is_set() else self._switch(e)
            if err is not None:
                raise err from None
            upstream = self.current.stream(self._request(request), session_id, cancel=cancel)
            first = next(upstream, None)
        try:
            if first is not None:
                yield first
            yield from upstream
        finally:
            upstream.close()

    def max_seq_len(self):
        """The smaller context of the models that may answer, so the fallback gets a conversation that fits."""
        limits = [(p.max_seq_len(), p) for p in self._candidates()]
        known = [x for x in limits if x[0]]
        return min(known, key=lambda x: x[0])[0] if known else None

    def count_tokens(self, messages):
        limits = [(p.max_seq_len() or 0, p) for p in self._candidates()]
        smallest = min((x for x in limits if x[0]), key=lambda x: x[0], default=(0, self.current))[1]
        return smallest.count_tokens(messages)

    def _candidates(self):
        return [self.current] + ([self.providers[_OTHER[self.name]]] if self.fallback else [])

    def status(self):
        return self.current.status()

    def models(self):
        return self.current.models()


def policy() -> str:
    """CHAT_SECRETS_TO_GIGACHAT: refuse, redact or allow (gateway/settings.py refuses any other at start)."""
    return current_app.config["SECRETS_TO_GIGACHAT"]


def explicit(name, providers, messages, conn=None, sid=None):
    """The provider for a request that named `name`: GigaChat only after the secrets check (a 400, or a
    redacting wrapper, per CHAT_SECRETS_TO_GIGACHAT). A conversation that model auto kept local for privacy
    is refused to GigaChat too (under the default policy) even when the turn with the secret is not sent."""
    provider = providers[name]
    if name != "gigachat" or policy() == "allow":
        return provider
    kinds = secret_kinds(message_texts(messages))
    if policy() == "redact":
        return Routed(providers, Decision("gigachat", None), fallback=False, redact=True) if kinds else provider
    if kinds:
        raise ApiError(400, f"This request holds a secret ({', '.join(kinds)}), and GigaChat is a cloud service, "
                            f"so it was not sent. Ask model \"auto\" or \"qwen\" to keep it on this machine, or "
                            f"remove the secret (CHAT_SECRETS_TO_GIGACHAT=redact in .env sends it with secrets "
                            f"masked).", code="secret_in_request")
    if conn is not None and sid and db.has_route(conn, sid, PRIVATE):
        raise ApiError(400, "This conversation was kept on this machine for privacy (an earlier turn held a "
                            "secret), so GigaChat is not asked in it: ask model \"auto\" or \"qwen\", or start a "
                            "new conversation for GigaChat.", code="secret_in_request", param="session")
    return provider


def auto(conn, sid, question, messages, qwen_only=False):
    """The Routed provider for a model "auto" request in session sid (new or not)."""
    kept_local = db.has_route(conn, sid, PRIVATE)
    decision = decide(question, messages, kept_local, qwen_only)
    providers = current_app.extensions["providers"]
    return Routed(providers, decision, current_app.config["QWEN_DEFAULTS"], fallback=not qwen_only)


def routes_counter(registry):
    return Counter("chat_routes_total", "Answers of model \"auto\" by the model that answered and why",
                   ["provider", "route"], registry=registry)


def fields(provider) -> dict:
    """What an OpenAI-shaped answer adds for model "auto": who answered and why (nothing otherwise)."""
    return {"provider": provider.name, "route": provider.route} if provider.route else {}


def mark(resp, provider):
    """The response of an answer: says who answered (X-Routed-To) and counts an auto route."""
    resp.headers["X-Routed-To"] = provider.name
    if provider.route:
        current_app.extensions["routes_total"].labels(provider.name, provider.route).inc()
    return resp
