"""The OpenAI-compatible side: POST /v1/chat/completions (the model name picks the provider; every
exchange is saved like the spec's endpoints') and GET /v1/models. Tools, tool turns, response_format
and logprobs go to the provider (qwen_server takes them as sent; providers/gigachat_openai.py maps tools
to GigaChat functions), and tool_calls / logprobs come back in OpenAI's shapes, streamed and not."""
import json
import re

from flask import Blueprint, current_app, jsonify, request

import db
from common.api_common import ApiError, json_body, sse
from common.openai_format import chunk, completion, new_id, parse_chat_request
from gateway import exchange, routing
from gateway.delivery import begin, deliver, providers
from providers import UpstreamRequest

# What the page can open (#c/<id>, GET /history/<id>): not "." or ".." (dot segments a URL drops).
SESSION_ID = re.compile(r"(?!\.+$)[A-Za-z0-9._-]{1,100}")

bp = Blueprint("openai", __name__)
# Fields passed on to the provider as sent (qwen_server validates them; GigaChat maps tools to functions).
SHAPING = ("tools", "tool_choice", "response_format", "logprobs", "top_logprobs", "parallel_tool_calls")
NOT_ON_GIGACHAT = {"response_format": (None, {"type": "text"}), "logprobs": (None, False), "top_logprobs": (None, 0)}


def route_model(model):
    """(provider name, GigaChat model to ask for or None) for the request's model."""
    m = model.lower() if isinstance(model, str) else ""  # a non-string model is a 404 too, not a crash
    if m == routing.AUTO:  # gateway/routing.py picks the model
        return routing.AUTO, None
    if m.startswith("qwen"):
        return "qwen", None
    if m.startswith("gigachat"):
        return "gigachat", None if m == "gigachat" else model
    if m and model in providers()["qwen"].models():  # an id a Qwen upstream serves, named otherwise
        return "qwen", None
    raise ApiError(404, f"Unknown model {str(model)[:60]!r}: use 'auto', 'gigachat' (or a GigaChat-* name) or "
                        f"'qwen'. GET /v1/models lists them.", code="model_not_found", param="model")


def with_default_system(messages):
    system_prompt = current_app.config["DEFAULT_SYSTEM_PROMPT"]
    if not any(m["role"] == "system" for m in messages) and system_prompt:
        return [{"role": "system", "content": system_prompt}] + messages
    return messages


def question_text(messages):
    """The question as history keeps it: the last user message; after a tool call, the tool results
    the request ends with, each as <tool_response>{"tool_call_id", "content"}</tool_response>."""
    tail = []
    for m in reversed(messages):
        if m["role"] != "tool":
            break
        tail.insert(0, "<tool_response>" + json.dumps({"tool_call_id": m.get("tool_call_id"), "content": m["content"]},
                                                      ensure_ascii=False) + "</tool_response>")
    if tail:
        return "\n".join(tail)
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def session_id():
    sid = request.headers.get("X-Session-ID") or db.new_session_id()
    if not SESSION_ID.fullmatch(sid):
        raise ApiError(400, "X-Session-ID must be 1-100 letters, digits, '.', '_' or '-', and not only dots "
                            "('.' and '..' cannot be opened as /history/<id>).", code="invalid_session_id",
                       param="X-Session-ID")
    return sid


@bp.post("/v1/chat/completions")
def v1_chat():
    body = json_body()
    name, gc_model = route_model(body.get("model"))
    req = parse_chat_request(body, current_app.config["QWEN_DEFAULTS"] if name == "qwen" else {}, tools_ok=True)
    named = gc_model or (body["model"] if name == "qwen" and body["model"].lower() != "qwen" else None)
    if name == "gigachat":
        for field, neutral in NOT_ON_GIGACHAT.items():
            if body.get(field) not in neutral:
                raise ApiError(400, f"GigaChat has no '{field}': leave it out, or ask model 'qwen'.",
                               code="unsupported_parameter", param=field)
    shaping = {k: body[k] for k in SHAPING if body.get(k) is not None}
    messages = with_default_system(req["messages"])
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    question = question_text(messages)
    conn = db.get_db()
    sid = session_id()
    qwen_only = any(body.get(field) not in neutral for field, neutral in NOT_ON_GIGACHAT.items())
    provider = routing.auto(conn, sid, question, messages, qwen_only) if name == routing.AUTO \
        else routing.explicit(name, providers(), messages, conn, sid)
    upstream_request = UpstreamRequest(messages, req["params"], named, shaping)
    ex = exchange.start(conn, provider, sid, question, upstream_request, system, gc_model,
                        title=question.strip() or "(no question)")
    model_out, cid = body.get("model"), new_id()
    try:
        r = begin(ex, req["stream"])
    except ApiError as e:
        if gc_model and e.code == "gigachat_model_not_found":  # the client's choice, not the config's
            raise ApiError(404, f"GigaChat has no model {gc_model!r}: GET /v1/models lists the models.",
                           code="model_not_found", param="model", headers=e.headers)
        raise
    resp = deliver(provider.name, r, req["stream"],
                   lambda events: completion_chunks(events, cid, model_out, req["include_usage"]),
                   lambda r: dict(completion(cid, model_out, r["answer"], r.get("finish_reason"), r.get("usage"),
                                             logprobs=r.get("logprobs"), tool_calls=r.get("tool_calls")),
                                  **routing.fields(provider)))
    routing.mark(resp, provider)
    resp.headers["X-Session-ID"] = sid
    return resp


def completion_chunks(events, cid, model, include_usage):
    """OpenAI's chat.completion.chunk frames for an answer's events, then [DONE]."""
    yield sse(chunk(cid, model, delta={"role": "assistant", "content": ""}))
    for kind, value in events:
        if kind == "delta":
            yield sse(chunk(cid, model, delta={"content": value}))
        elif kind == "chunk":  # tool call pieces and/or logprobs, passed on as the provider gave them
            delta = {"content": value["delta"]} if value.get("delta") else {}
            if value.get("tool_calls"):
                delta["tool_calls"] = value["tool_calls"]
            yield sse(chunk(cid, model, delta=delta, logprobs=value.get("logprobs")))
        elif kind == "done":
            yield sse(chunk(cid, model, finish_reason=value.get("finish_reason") or "stop"))
            if include_usage:
                yield sse(chunk(cid, model, usage=value.get("usage") or {}))
        else:
            yield sse(value.body())
    yield sse("[DONE]")


@bp.get("/v1/models")
def v1_models():
    ids = [routing.AUTO, "gigachat", current_app.config["GIGACHAT_MODEL"], "qwen"]  # all routable
    ids += providers()["qwen"].models()
    return jsonify({"object": "list", "data": [{"id": i, "object": "model", "owned_by": "dual-ai-chat"}
                                               for i in dict.fromkeys(ids)]})
