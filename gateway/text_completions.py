"""POST /v1/completions through the gateway (what editor plugins call: a prompt, and with `suffix`
fill-in-the-middle; model "qwen", or "auto", which here always means Qwen): passed on to the Qwen server's
/v1/completions, streamed or not, and saved to history like a chat exchange. History keeps the question in
Qwen2.5-Coder's own FIM notation, `<|fim_prefix|>PROMPT<|fim_suffix|>SUFFIX<|fim_middle|>` (a plain prompt as
it is), the completion as the answer."""
from flask import Blueprint, current_app

import db
from common.api_common import ApiError, json_body, sse
from common.openai_completions import new_completion_id, parse_completion_request, text_completion
from gateway import exchange, routing
from gateway.delivery import begin, deliver, providers
from gateway.openai_api import route_model, session_id
from providers import UpstreamRequest

bp = Blueprint("text_completions", __name__)
FORWARDED = ("prompt", "suffix", "logprobs")  # as sent; the sampling fields go as parsed


def question_text(prompt, suffix):
    return prompt if suffix is None else f"<|fim_prefix|>{prompt}<|fim_suffix|>{suffix}<|fim_middle|>"


@bp.post("/v1/completions")
def v1_completions():
    body = json_body()
    name, _ = route_model(body.get("model"))
    if name == "gigachat":
        raise ApiError(400, "GigaChat has no text completions API: use /v1/chat/completions for GigaChat, or "
                            "model 'qwen' here.", code="model_not_supported", param="model")
    req = parse_completion_request(body, current_app.config["QWEN_DEFAULTS"])
    sampling = {k: v for k, v in req["params"].items() if k not in ("logprobs", "top_logprobs")}
    upstream_request = UpstreamRequest(sampling=sampling,
                                       completion={k: body[k] for k in FORWARDED if body.get(k) is not None})
    question = question_text(req["prompt"], req["suffix"])
    conn, sid = db.get_db(), session_id()
    provider = providers()[name] if name == "qwen" else \
        routing.auto(conn, sid, question, [{"role": "user", "content": question}], qwen_only=True)
    ex = exchange.start(conn, provider, sid, question, upstream_request, None,
                        title=question.strip()[:200] or "(empty prompt)")
    model_out, cid = body.get("model"), new_completion_id()
    resp = deliver(provider.name, begin(ex, req["stream"]), req["stream"],
                   lambda events: completion_frames(events, cid, model_out, req["include_usage"]),
                   lambda r: dict(text_completion(cid, model_out, r["answer"], r.get("finish_reason"),
                                                  r.get("logprobs"), r.get("usage")), **routing.fields(provider)))
    routing.mark(resp, provider)
    resp.headers["X-Session-ID"] = sid
    return resp


def completion_frames(events, cid, model, include_usage):
    """text_completion frames for an answer's events, then [DONE]."""
    for kind, value in events:
        if kind == "delta":
            yield sse(text_completion(cid, model, value, None))
        elif kind == "chunk":
            yield sse(text_completion(cid, model, value.get("delta") or "", None, value.get("logprobs")))
        elif kind == "done":
            yield sse(text_completion(cid, model, "", value.get("finish_reason") or "stop"))
            if include_usage:
                yield sse(text_completion(cid, model, None, None, usage=value.get("usage") or {}))
        else:
            yield sse(value.body())
    yield sse("[DONE]")
