"""The interface every upstream provider implements (Provider); providers/__init__.py is the package's face."""
from providers.upstream_request import UpstreamRequest


class Provider:
    """What the gateway asks of an upstream. `cancel` is a gateway.exchange.Cancel: a provider aborts
    (or leaves its queue) when it is set. Errors are common.api_common.ApiError with the status to answer."""

    name = ""
    route = None  # how model "auto" chose this provider (gateway/routing.py); None when the client named it
    on_queue_change = staticmethod(lambda n: None)  # told how many wait for the upstream (a metrics gauge)

    def complete(self, request: UpstreamRequest, session_id=None, cancel=None) -> dict:
        """The whole answer: {"answer", "finish_reason", "usage", "model", "blocked"}."""
        raise NotImplementedError

    def stream(self, request: UpstreamRequest, session_id=None, cancel=None):
        """Lazily yields {"delta": text}..., then one {"finish_reason", "usage", "model", "blocked"};
        errors come from next(), so the first item can be pulled before any response header is sent."""
        raise NotImplementedError

    def check_ready(self):
        """Raises the ApiError to answer when the provider can't be asked at all (not configured), so the
        gateway refuses before saving anything. Cheap: no network."""

    def configured(self) -> bool:
        """Whether check_ready() passes (GET /config tells the page which tab works)."""
        from common.api_common import ApiError
        try:
            self.check_ready()
            return True
        except ApiError:
            return False

    def status(self) -> dict:
        """What the upstream says about itself, for a status page; never raises."""
        raise NotImplementedError

    def models(self) -> list:
        """Model names the upstream offers (for /v1/models)."""
        return []

    def max_seq_len(self):
        """The context size in tokens, to trim long conversations; None when unknown (nothing is trimmed)."""
        return None

    def count_tokens(self, messages):
        """Exact prompt tokens for messages, or None when only the cheap upper bound is known."""
        return None
