"""HTTP pieces both servers share: JSON errors, SSE framing, request ids,
access logs, Prometheus metrics, the API key and CORS. Kept here so chat.py and qwen_server.py
never copy code from each other."""
import hmac
import ipaddress
import json
import logging
import os
import time
import uuid

from flask import Response, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from werkzeug.exceptions import HTTPException

from common import wsgi_server
from common.env import load_env  # noqa: F401 - re-exported: the servers import it from here

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any sane prompt, small enough to refuse abuse

access_log = logging.getLogger("access")


class ApiError(Exception):
    """An error the client can act on; rendered as {"error": {...}}."""

    def __init__(self, status, message, type="invalid_request_error", code=None, headers=None, param=None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.code, self.headers, self.param = code, headers or {}, param

    def body(self):
        err = {"message": self.message, "type": self.type, "code": self.code}
        if self.param:
            err["param"] = self.param
        return {"error": err}


def error_response(err: ApiError):
    resp = jsonify(err.body())
    resp.status_code = err.status
    for k, v in err.headers.items():
        resp.headers[k] = v
    return resp


_HTTP_HINTS = {
    404: ("not_found", "No such endpoint: {path}. GET / lists the endpoints."),
    405: ("method_not_allowed", "Method {method} is not allowed on {path}."),
    413: ("request_too_large", f"Request body is over {MAX_BODY_BYTES // 1024} KiB; send a shorter prompt."),
}


def sse(data) -> str:
    """One Server-Sent Events frame; dicts become compact JSON with raw UTF-8."""
    if not isinstance(data, str):
        data = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


def sse_response(frames):
    return Response(frames, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def json_body():
    """The request's JSON object, or a 400 that says what is wrong with it."""
    if request.content_length and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, _HTTP_HINTS[413][1], code="request_too_large")
    raw = request.get_data(cache=True)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, _HTTP_HINTS[413][1], code="request_too_large")
    try:
        body = json.loads(raw.decode("utf-8")) if raw else None
        json.dumps(body, ensure_ascii=False).encode("utf-8")  # a lone surrogate "\ud800": unstorable
    except UnicodeDecodeError:
        raise ApiError(400, "Request body is not valid UTF-8.", code="invalid_utf8")
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"Request body is not valid JSON ({str(e)[:80]}); send Content-Type: application/json.",
                       code="invalid_json")
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.", code="invalid_json")
    return body


class Metrics:
    """Per-app Prometheus registry (a fresh one per app so tests can build many apps). Under gunicorn
    (gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR) every worker writes its values to that directory
    and /metrics adds up all workers, whichever one answers the scrape."""

    def __init__(self, prefix):
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{prefix}_http_requests_total", "HTTP requests",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram(f"{prefix}_http_request_seconds", "Time to the response headers",
                                 ["endpoint"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.tokens = Counter(f"{prefix}_tokens_generated_total", "Completion tokens", ["model"], registry=r)
        self.tok_per_s = Gauge(f"{prefix}_last_tokens_per_second", "Decode speed of the last answer", ["model"],
                               registry=r, multiprocess_mode="mostrecent")
        self.active_streams = Gauge(f"{prefix}_active_streams", "Streams being sent now", registry=r,
                                    multiprocess_mode="livesum")
        self.queue_length = Gauge(f"{prefix}_queue_length", "Requests waiting for the model", registry=r,
                                  multiprocess_mode="livesum")
        self.slow_clients = Counter(f"{prefix}_slow_clients_closed_total", "Connections closed (408) because a "
                                    "request's head or body did not arrive within SLOW_CLIENT_TIMEOUT", ["part"],
                                    registry=r)
        for part in ("head", "body"):
            self.slow_clients.labels(part)  # 0 from the start
        self.collectors = []  # computed at scrape time (the gateway's upstreams), this process's view

    def add_collector(self, collector):
        self.registry.register(collector)
        self.collectors.append(collector)

    def response(self):
        registry = self.registry
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            for collector in self.collectors:
                registry.register(collector)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))  # others: "other"


def host_name(host_header: str) -> str:
    """'Example.COM:5000' -> 'example.com', '[::1]:5000' -> '::1'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def allowed_host_names(env_name: str, bind_host: str = "") -> frozenset:
    """host_names with the list read from the variable env_name."""
    return host_names(os.environ.get(env_name, ""), bind_host)


def host_names(listed: str, bind_host: str = "") -> frozenset:
    """Host names a request may carry: loopback, the bound name, and the comma-separated `listed` names
    ('*' there allows any). IP literals are always allowed: DNS rebinding needs a name."""
    names = {*LOOPBACK_NAMES, host_name(bind_host)} if bind_host else set(LOOPBACK_NAMES)
    names.update(host_name(h) for h in listed.split(",") if h.strip())
    return frozenset(names)


def check_browser_origin(allowed_hosts, hosts_env):
    """Refuses what a hostile web page could send without a key: a Host that is not ours (DNS rebinding:
    evil.example resolving to 127.0.0.1 makes the page same-origin with this server) and a POST body
    that is not JSON (a form or a text/plain fetch is sent cross-origin without a CORS preflight)."""
    name = host_name(request.host)
    if "*" not in allowed_hosts and name not in allowed_hosts and not is_ip_literal(name):
        raise ApiError(403, f"Host {name!r} is not allowed here (a guard against DNS rebinding). If this server "
                            f"is meant to be reached by that name, add it to {hosts_env} (comma-separated) and "
                            f"restart.", type="permission_error", code="host_not_allowed")
    if request.method in ("POST", "PUT", "PATCH") and request.mimetype != "application/json" and (
            request.mimetype or request.content_length):
        raise ApiError(415, f"Send the request body as JSON with 'Content-Type: application/json' (got "
                            f"{request.mimetype or 'none'!r}): other types are refused so that web pages cannot "
                            f"post to this API.", code="unsupported_media_type")


def warn_if_exposed(service: str, bind_host: str, api_key_env: str = None):
    """A loud start-up warning when a server listens beyond loopback and no API key guards it."""
    name = host_name(bind_host)
    if name in LOOPBACK_NAMES or (is_ip_literal(name) and ipaddress.ip_address(name).is_loopback):
        return
    if api_key_env and os.environ.get(api_key_env):
        return
    guard = f"set {api_key_env} or " if api_key_env else ""
    logging.getLogger(service).warning(
        "!!! %s listens on %s with NO API KEY: anyone who can reach this address can use it. %sbind to "
        "127.0.0.1 behind a reverse proxy that authenticates (docs/operations.md: Security).", service, bind_host, guard)


def install_common(app, metrics: Metrics, service: str, allowed_hosts=frozenset(LOOPBACK_NAMES),
                   hosts_env="ALLOWED_HOSTS"):
    """JSON errors, request ids, access log, browser-origin checks and /metrics for a Flask app."""
    app.config.setdefault("MAX_CONTENT_LENGTH", MAX_BODY_BYTES)
    wsgi_server.on_slow_close(lambda part: metrics.slow_clients.labels(part).inc())
    app.json.ensure_ascii = False  # Cyrillic in, Cyrillic out: raw UTF-8, not \\u escapes
    app.json.sort_keys = False

    @app.errorhandler(ApiError)
    def _api_error(err):
        return error_response(err)

    @app.errorhandler(HTTPException)
    def _http_error(exc):
        code, msg = _HTTP_HINTS.get(exc.code, ("http_error", exc.description or exc.name))
        return error_response(ApiError(exc.code, msg.format(path=request.path, method=request.method), code=code,
                                       headers={k: v for k, v in exc.get_headers() if k.lower() != "content-type"}))

    @app.errorhandler(Exception)
    def _crash(exc):
        app.logger.exception("unhandled error on %s", request.path)
        return error_response(ApiError(500, f"Internal error in {service} ({type(exc).__name__}); "
                                            f"see the server log for request {g.get('request_id')}.",
                                       type="server_error", code="internal_error"))

    @app.before_request
    def _start():
        rid = request.headers.get("X-Request-ID", "")
        g.request_id = rid if 0 < len(rid) <= 64 and rid.isprintable() else uuid.uuid4().hex[:16]
        g.t0 = time.perf_counter()
        check_browser_origin(allowed_hosts, hosts_env)

    @app.after_request
    def _finish(resp):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("t0", time.perf_counter())
        method = request.method if request.method in HTTP_METHODS else "other"  # a label per name: unbounded
        metrics.requests.labels(endpoint, method, str(resp.status_code)).inc()
        metrics.latency.labels(endpoint).observe(elapsed)
        resp.headers["X-Request-ID"] = g.get("request_id", "")
        if access_log.isEnabledFor(logging.INFO):
            # Structured, one JSON line; never the body, query text or auth headers.
            line = {"service": service, "rid": g.get("request_id"), "method": request.method, "path": request.path,
                    "status": resp.status_code, "ms": round(elapsed * 1000, 2)}
            if g.get("user_name"):  # who asked (set by the gateway's authentication), never the key
                line["user"] = g.user_name
            access_log.info(json.dumps(line, ensure_ascii=False))
        return resp

    app.add_url_rule("/metrics", "metrics", metrics.response)


def install_access(app, public_paths=(), authenticate=None):
    """The API key (app.config["API_KEY"], when set) on every path but public_paths and /static/, and CORS
    for the origins listed in app.config["CORS_ORIGINS"]. Call after install_common: its checks run first.
    `authenticate()`, when given, replaces the key check on those paths (the gateway's users: gateway/auth.py)."""

    @app.before_request
    def _guard():
        if request.method == "OPTIONS" and request.headers.get("Origin"):
            return Response(status=204)  # CORS preflight: headers are added in _cors
        if request.path in public_paths or request.path.startswith("/static/"):
            return
        if authenticate is not None:
            return authenticate()
        key = app.config["API_KEY"]
        if key:
            given = request.headers.get("X-API-Key") or ""
            auth = request.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode(), key.encode()):
                raise ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <CHAT_API_KEY>' or "
                                    "'X-API-Key: <CHAT_API_KEY>'.", type="authentication_error",
                               code="invalid_api_key")

    @app.after_request
    def _cors(resp):
        origin = request.headers.get("Origin")
        if origin and origin in app.config["CORS_ORIGINS"]:  # an explicit list only, never "*"
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
            resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-API-Key"
            resp.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        return resp


def endpoint_list(app):
    """'METHOD /rule' for every route, for the services' index (read from the app, so never stale)."""
    return sorted(f"{method} {rule.rule}" for rule in app.url_map.iter_rules() if rule.endpoint != "static"
                  for method in rule.methods - {"HEAD", "OPTIONS"})


def setup_logging(level: str = None):
    """Log lines at `level` (default: the variable LOG_LEVEL, else INFO) and up."""
    logging.basicConfig(level=(level or os.environ.get("LOG_LEVEL", "INFO")).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").addFilter(lambda r: '] "' not in str(r.msg))  # request lines: the query (questions)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per GigaChat call repeating the access log
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # the same for each huggingface_hub call (model_hub)
