"""Who calls the gateway. CHAT_API_KEY is the built-in admin's key; each user has their own (history/users.py).
Once either exists, every path but the public ones needs a key (`Authorization: Bearer KEY` or
`X-API-Key: KEY`); with neither, the gateway is the keyless single-user tool. A question (the answering
routes) must not name someone else's conversation (a 404, as for an unknown one), and passes the asking
user's limits (gateway/limits.py). GET /whoami tells the page who is signed in."""
import hmac

from flask import Blueprint, current_app, g, jsonify, request

import db
from common.api_common import ApiError, json_body
from gateway import limits
from history import users

ASKING_PATHS = ("/gigachat", "/qwen", "/ask", "/v1/chat/completions", "/v1/completions")
ADMIN_PATHS = ("/metrics",)  # names every busy user: for admins (and the scraper holding an admin key)

bp = Blueprint("auth", __name__)


def presented_key(req) -> str:
    auth = req.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return (req.headers.get("X-API-Key") or "").strip()


def caller() -> users.Caller:
    """The request's caller (the keyless single user on public paths and outside requests' guard)."""
    return g.get("caller") or users.KEYLESS


def required() -> bool:
    """Whether requests need a key: CHAT_API_KEY is set, or any user exists."""
    if current_app.config["API_KEY"]:
        return True
    with db.briefly() as conn:
        return users.any_user(conn)


def authenticate():
    """Sets g.caller from the request's key, or raises the 401. (install_access calls it on non-public paths.)"""
    given, admin_key = presented_key(request), current_app.config["API_KEY"]
    if given and admin_key and hmac.compare_digest(given.encode(), admin_key.encode()):
        g.caller = users.ADMIN
    else:
        if given:
            with db.briefly() as conn:
                g.caller = users.by_key(conn, given)
        else:
            g.caller = None
        if g.caller is None and not required():  # keyless: any key or none (SDKs insist on sending one)
            g.caller = users.KEYLESS
    if g.caller is None:
        raise ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <your key>' or "
                            "'X-API-Key: <your key>' (CHAT_API_KEY, or the key `python chat.py users add` printed).",
                       type="authentication_error", code="invalid_api_key")
    g.user_name = None if g.caller.keyless else g.caller.name  # (the access log names the user)
    if request.path in ADMIN_PATHS and not g.caller.admin:
        raise ApiError(403, f"{request.path} is for admins: use CHAT_API_KEY or the key of a user added with "
                            f"--admin.", type="permission_error", code="admins_only")


def asked_session():
    """The conversation a question continues: X-Session-ID (/v1), or `session` in the query or JSON body."""
    sid = request.headers.get("X-Session-ID") or request.args.get("session")
    if not sid and request.method == "POST" and request.is_json:
        sid = json_body().get("session")  # (the shared parser: a body it refuses is its 4xx here already)
    return str(sid)[:100] if sid else None


def owns(conv, who: users.Caller) -> bool:
    return conv["user_id"] == who.id


def guard_question():
    """Before an answering route: someone else's conversation is a 404; then the caller's limits."""
    if request.path not in ASKING_PATHS or request.method not in ("GET", "POST"):
        return
    who, conn = caller(), db.get_db()
    sid = asked_session()
    conv = db.get_conversation(conn, sid) if sid else None
    if conv is not None and not owns(conv, who):
        raise ApiError(404, f"Unknown session {sid!r}: omit 'session' to start a new conversation "
                            f"(GET /history/sessions lists yours).", code="unknown_session", param="session")
    if not who.keyless:
        limits.admit(conn, who)


def history_scope():
    """The user id whose conversations a history request sees: the caller's own; an admin sees every user's
    (None) or, with ?user=NAME, that user's."""
    who = caller()
    name = request.args.get("user")
    if not who.admin:
        return who.id
    if not name:
        return None
    user_id = users.id_of(db.get_db(), name)
    if user_id is None:
        raise ApiError(404, f"No user {name[:64]!r}; `python chat.py users list` shows them.", code="unknown_user",
                       param="user")
    return user_id


def visible(conv) -> bool:
    """Whether the caller may see this conversation (its own; an admin: any)."""
    who = caller()
    return who.admin or owns(conv, who)


@bp.get("/whoami")
def whoami():
    who = caller()
    return jsonify({"user": None if who.keyless else who.name, "admin": who.admin, "auth_required": not who.keyless})


def install(app):
    """The question guard, the users' usage in /metrics and GET /whoami (after install_access)."""
    app.before_request(guard_question)
    app.extensions["metrics"].add_collector(limits.UsageCollector())
    app.register_blueprint(bp)
