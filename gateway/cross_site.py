"""Keyless means local only: a web page on another site must not make the gateway spend (GigaChat's quota,
the Qwen model's time) or write the history, through `<img src="/gigachat?q=…">`, a link, a form or a
no-cors fetch, which browsers send without asking. Such a request (anything but a read: GET and HEAD
of every path except the answering routes /gigachat, /qwen and /ask) is refused with a 403 when the
browser says it comes from another site (`Sec-Fetch-Site: cross-site` or `same-site`), or its `Origin`
is neither this server's own nor listed in CHAT_CORS_ORIGINS. A URL typed in the address bar (`Sec-Fetch-Site: none`), the
page itself (`same-origin`), curl and SDKs (no such headers) go through."""
from urllib.parse import urlsplit

from flask import current_app, request

from common.api_common import ApiError

ANSWERING = ("/gigachat", "/qwen", "/ask")  # (gateway/ask.py) GET asks a model and saves, like a POST
FOREIGN_SITES = ("cross-site", "same-site")


def spends_or_writes() -> bool:
    return request.method not in ("GET", "HEAD", "OPTIONS") or request.path in ANSWERING


def foreign_origin() -> str | None:
    """What makes the request another site's ('' when the browser names no origin), or None."""
    origin = request.headers.get("Origin")
    if origin and origin in current_app.config["CORS_ORIGINS"]:
        return None
    site = request.headers.get("Sec-Fetch-Site", "").lower()
    if site:  # the browser's own word (behind a proxy the Host may not be what the page's origin names)
        return (origin or "") if site in FOREIGN_SITES else None
    if origin and urlsplit(origin).netloc.lower() != request.host.lower():  # a browser without Sec-Fetch-*
        return origin
    return None


def refuse_cross_site():
    if not spends_or_writes():
        return
    origin = foreign_origin()
    if origin is not None:
        who = origin or "origin not given"
        raise ApiError(403, f"Refused: this request was sent by a web page on another site ({who}), and pages "
                            f"elsewhere may not make this gateway ask a model or save history. Use the gateway's own page, curl or an SDK; to let a web app on another "
                            f"origin call it, list that origin in CHAT_CORS_ORIGINS (and set CHAT_API_KEY).",
                       type="permission_error", code="cross_site_request")


def install(app):
    """After install_access (a wrong key is a 401 first; a CORS preflight is answered before this)."""
    app.before_request(refuse_cross_site)
