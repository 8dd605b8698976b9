"""qwen_server's routes: OpenAI chat and text completions, token counting, models, status."""
import threading

from flask import Blueprint, current_app, jsonify, request

from common import client_watch
from common.api_common import ApiError, endpoint_list, json_body, sse, sse_response
from common.openai_completions import new_completion_id, parse_completion_request, text_completion
from common.openai_format import chunk, completion, new_id, parse_chat_request, parse_messages
from common.worker_deaths import WORKER_DEATHS
from engines.base import GenParams
from qwen_api import completions
from qwen_api.tool_calls import collect, deltas, parse_shaping

bp = Blueprint("qwen", __name__)
SEED_DEFAULTS = {"temperature": 0.4, "top_p": 0.9, "top_k": 60, "repetition_penalty": 1.1}


def service():
    return current_app.extensions["qwen"]


@bp.post("/v1/chat/completions")
def chat_completions():
    svc, body = service(), json_body()
    engine = svc.engine
    req = parse_chat_request(body, SEED_DEFAULTS, tools_ok=True)
    cancel = threading.Event()
    with client_watch.watching(request.environ, on_leave=cancel.set):  # a schema's preparation stops with it
        shape = parse_shaping(body, engine.tool_tag_ids(), cancel)  # response_format, tools, logprobs
    params = {**req["params"], "grammar": shape["grammar"], "logprobs": shape["logprobs"],
              "top_logprobs": shape["top_logprobs"]}
    params["max_tokens"] = svc.budget(req["messages"], params.get("max_tokens"), shape["tools"])
    model, cid = engine.model_name, new_id()
    chunks = engine.generate(req["messages"], GenParams(**params), cancel, tools=shape["tools"])
    if req["stream"]:
        frames = svc.chat_frames(deltas(chunks, shape["tool_mode"]), cid, model, req["include_usage"])
        first = chunk(cid, model, delta={"role": "assistant", "content": ""})
        return sse_response(svc.stream_frames(frames, chunks, request.environ, cancel, first))
    content, calls, lps, finish, usage = svc.collect(chunks, request.environ, cancel, collect, shape["tool_mode"])
    usage = svc.finished(model, usage)
    return jsonify(completion(cid, model, content, finish, usage, lps if shape["logprobs"] else None, calls))


@bp.post("/v1/completions")
def text_completions():  # a prompt continued, or fill-in-the-middle with `suffix` (editor plugins)
    svc = service()
    engine = svc.engine
    req = parse_completion_request(json_body(), SEED_DEFAULTS)
    params = req["params"]
    ids = completions.prompt_ids(engine, req["prompt"], req["suffix"])
    params["max_tokens"] = svc.budget(None, params["max_tokens"], prompt=len(ids))
    model, cid, cancel = engine.model_name, new_completion_id(), threading.Event()
    chunks = engine.generate_ids(ids, GenParams(**params), cancel)
    if req["stream"]:
        frames = completion_frames(svc, chunks, cid, model, params["logprobs"], req["include_usage"])
        return sse_response(svc.stream_frames(frames, chunks, request.environ, cancel))
    text, entries, finish, usage = svc.collect(chunks, request.environ, cancel, completions.collect)
    usage = svc.finished(model, usage)
    lp = completions.legacy_logprobs(entries) if params["logprobs"] else None
    return jsonify(text_completion(cid, model, text, finish, lp, usage))


def completion_frames(svc, chunks, cid, model, want_logprobs, include_usage):
    for frame, usage in completions.stream_events(chunks, cid, model, want_logprobs):
        yield sse(frame)
        if usage is not None:
            usage = svc.finished(model, usage)
            if include_usage:
                yield sse(text_completion(cid, model, None, None, usage=usage))


def messages_from_body():
    body = json_body()
    if "text" in body and "messages" not in body:
        if not isinstance(body["text"], str):
            raise ApiError(400, "'text' must be a string.", code="invalid_parameter", param="text")
        return None, body["text"]
    return parse_messages(body.get("messages")), None


@bp.post("/v1/token/count")
def token_count():
    engine = service().engine
    messages, text = messages_from_body()
    n = len(engine.tokenize(text)) if messages is None else engine.count_tokens(messages)
    return jsonify({"count": n, "max_seq_len": engine.max_seq_len})


@bp.post("/v1/token/encode")
def token_encode():  # TabbyAPI's shape: {"tokens": [...], "length": n}
    engine = service().engine
    messages, text = messages_from_body()
    ids = engine.tokenize(text) if messages is None else engine.encode(messages)
    return jsonify({"tokens": ids, "length": len(ids)})


@bp.get("/v1/models")
def models():
    svc = service()
    return jsonify({"object": "list", "data": [{"id": svc.engine.model_name, "object": "model",
                                                "created": int(svc.stats.started), "owned_by": "local",
                                                "max_seq_len": svc.engine.max_seq_len}]})


@bp.get("/status")
@bp.get("/qwen/status")
def status():
    svc = service()
    st = svc.engine.status()
    st.update(svc.stats.snapshot(), queue_length=svc.engine.queue_length(), online=True,
              source=svc.source.status() if svc.source else None, worker=WORKER_DEATHS.view())
    svc.metrics.queue_length.set(st["queue_length"])
    return jsonify(st)


@bp.get("/health")
def health():
    return jsonify({"status": "ok"})


@bp.get("/")
def index():
    return jsonify({"service": "qwen_server", "model": service().engine.model_name,
                    "endpoints": endpoint_list(current_app)})
