"""GigaChat's failures as ApiErrors that tell the user what to fix (the setting, the URL, the key)."""
import json
import ssl

import httpx
import pydantic
from gigachat.exceptions import ResponseError

from common.api_common import ApiError

RETRY_AFTER_S = 5  # when neither GigaChat nor our queue knows better
UPSTREAM = "upstream_error"
_CHECK_KEY = ("check GIGACHAT_CREDENTIALS (the Authorization key from developers.sber.ru) and GIGACHAT_SCOPE "
              "(GIGACHAT_API_PERS, GIGACHAT_API_B2B or GIGACHAT_API_CORP) in .env")


def upstream(status, message, code, headers=None):
    return ApiError(status, message, type=UPSTREAM, code=code, headers=headers)


def upstream_message(e: ResponseError):
    """GigaChat's own words from an error body: {"status", "message"} (API) or {"code", "message"} (OAuth)."""
    raw = (e.content or b"").decode("utf-8", "replace").strip()
    try:
        msg = json.loads(raw).get("message")
    except (ValueError, AttributeError):
        msg = None
    return str(msg or raw[:200] or "no details")


def chain(e):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def where(client, url):
    """(setting, URL) of what failed: the OAuth server or the API."""
    s = client._settings
    auth = s.auth_url.rstrip("/")
    return ("GIGACHAT_AUTH_URL", auth) if url and str(url).startswith(auth) else ("GIGACHAT_BASE_URL", s.base_url)


def map_error(e, client, model):
    """The ApiError for an SDK/httpx exception, or None for anything else (a bug)."""
    if isinstance(e, ResponseError):
        return map_status(e, client, model)
    try:
        var, url = where(client, e.request.url)
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError when no request is attached
        var, url = where(client, None)
    if isinstance(e, httpx.TimeoutException):
        return upstream(504, f"GigaChat did not answer within {client._settings.timeout:g} s "
                             f"(GIGACHAT_TIMEOUT) at {url}; try again, or raise GIGACHAT_TIMEOUT.",
                        "gigachat_timeout")
    tls = [x for x in chain(e) if isinstance(x, ssl.SSLError)]
    if tls or "CERTIFICATE_VERIFY_FAILED" in str(e):
        return upstream(503, f"TLS check of GigaChat at {url} failed ({tls[0] if tls else e}). GigaChat's "
                             "certificate is issued by the \"Russian Trusted Root CA\" (Минцифры), which Python "
                             "does not trust by default: download it from gosuslugi.ru/crt and set "
                             "GIGACHAT_CA_BUNDLE_FILE to that file (the right fix), or set "
                             "GIGACHAT_VERIFY_SSL_CERTS=false (development only).", "gigachat_tls_error")
    if isinstance(e, httpx.ConnectError):  # refused, DNS, no route
        return upstream(503, f"Cannot reach GigaChat at {url} ({e}): check the network / {var}.",
                        "gigachat_unreachable")
    if isinstance(e, httpx.TransportError):  # reset, cut mid-answer, not SSE, ...
        return upstream(502, f"The connection to GigaChat failed ({e or type(e).__name__}); try again.",
                        "gigachat_connection_lost")
    if isinstance(e, (pydantic.ValidationError, json.JSONDecodeError)):
        return upstream(502, f"GigaChat sent an answer this gateway cannot read ({type(e).__name__}); try "
                             "again, and update the gigachat package if it persists.", "gigachat_bad_response")
    return None


def map_status(e: ResponseError, client, model):
    status, msg = e.status_code, upstream_message(e)
    if status == 401 or (where(client, e.url)[0] == "GIGACHAT_AUTH_URL" and status in (400, 403)):
        # An API 401 reaches us only after the SDK fetched a fresh token and retried: the key is bad.
        extra = " (or renew GIGACHAT_ACCESS_TOKEN)" if client._settings.access_token else ""
        return upstream(502, f"GigaChat rejected the authorization ({status}: {msg}): {_CHECK_KEY}{extra}.",
                        "gigachat_auth_failed")
    if status == 402:
        return upstream(402, f"The GigaChat token package for model '{model}' is used up ({msg}): buy or "
                             "activate a package at developers.sber.ru, or set GIGACHAT_MODEL to a model you "
                             "still have tokens for.", "gigachat_quota_exceeded")
    if status == 403:
        return upstream(502, f"GigaChat refused access ({msg}): check that GIGACHAT_SCOPE matches your key.",
                        "gigachat_forbidden")
    if status == 404:
        return upstream(502, not_found(e, msg, client, model), "gigachat_model_not_found")
    if status == 413:
        return ApiError(413, f"The request is too large for GigaChat ({msg}); shorten the conversation.",
                        code="request_too_large")
    if status in (400, 422):
        return ApiError(400, f"GigaChat rejected the request: {msg}", code="gigachat_invalid_request")
    if status == 429:
        retry = (e.headers or {}).get("retry-after") or str(RETRY_AFTER_S)
        return ApiError(429, f"GigaChat's rate limit for this key is hit ({msg}); retry in {retry} s.",
                        type="rate_limit_error", code="gigachat_rate_limited", headers={"Retry-After": retry})
    if status >= 500:
        return upstream(502, f"GigaChat failed (status {status}): {msg}; try again.", "gigachat_server_error")
    return upstream(502, f"GigaChat answered {status}: {msg}.", "gigachat_error")


def not_found(e, msg, client, model):
    try:  # one cheap call tells a wrong model from a wrong base URL
        names = [m.id_ for m in client.get_models().data]
    except Exception:
        names = None
    if names and model not in names:
        return f"Unknown model '{model}': set GIGACHAT_MODEL to one of {', '.join(names)}."
    return (f"GigaChat answered 404 ({msg}) at {e.url}: check GIGACHAT_MODEL ('{model}', see "
            "GET /v1/models) and GIGACHAT_BASE_URL (it should end in /api/v1).")
