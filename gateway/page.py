"""The web page (GET / for a browser; the endpoint list for anyone else), GET /config for its
settings panel and GET /health. Its script and styles are the app's static files."""
from flask import Blueprint, current_app, jsonify, make_response, render_template, request

from common.api_common import endpoint_list
from gateway import auth
from gateway.routing import AUTO

PUBLIC_PATHS = ("/health", "/", "/favicon.ico")  # the page shell asks for the key; /config needs it
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'; form-action 'self'")

bp = Blueprint("page", __name__)


@bp.get("/config")
def public_config():
    """What the web page needs to fill its settings panel (no secrets, but the key when one is set: the
    default system prompt may say more about its owner than a stranger should read). "auto" (POST /ask)
    works when either model does, and is then the default choice."""
    config = current_app.config
    providers = {name: {"configured": provider.configured()}
                 for name, provider in current_app.extensions["providers"].items()}
    providers[AUTO] = {"configured": any(p["configured"] for p in providers.values())}
    default = next((name for name in (AUTO, *providers) if providers[name]["configured"]), "qwen")
    return jsonify({"default_system_prompt": config["DEFAULT_SYSTEM_PROMPT"],
                    "qwen_defaults": config["QWEN_DEFAULTS"], "gigachat_model": config["GIGACHAT_MODEL"],
                    "auth_required": auth.required(), "providers": providers, "default_provider": default})


@bp.get("/health")
def health():
    return jsonify({"status": "ok"})


@bp.get("/")
def index():
    if request.accept_mimetypes.accept_html:
        resp = make_response(render_template("index.html"))
        resp.headers["Content-Security-Policy"] = PAGE_CSP  # the page never runs injected script
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        return resp
    return jsonify({"service": "Dual AI Chat API", "endpoints": endpoint_list(current_app)})
