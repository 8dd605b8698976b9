"""OpenAPI 3.0 descriptions of both HTTP APIs, served at GET /openapi.json.

    openapi.register(app, gateway_spec)       # in chat.py's create_app (gateway/openapi_spec.py)
    openapi.register(app, qwen_server_spec)   # in qwen_server.py's create_app (qwen_api/openapi_spec.py)

Built from small helpers so that each endpoint reads as one short entry; kept in step with
the gateway's blueprints, qwen_server.py, api_common.py and openai_format.py (tests/test_schemathesis.py fuzzes
both servers from these documents and fails on any answer they do not describe)."""
from flask import jsonify

from common.openai_format import MAX_STOP, PARAM_RANGES, UNSUPPORTED

VERSION = "1.0.0"


# -- schema helpers ----------------------------------------------------------------------------

def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema):
    return {**schema, "nullable": True}


def string(**kw):
    return {"type": "string", **kw}


def _bounded(kind, lo, hi, kw):
    s = {"type": kind, **kw}
    if lo is not None:
        s["minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    return s


def integer(lo=None, hi=None, **kw):
    return _bounded("integer", lo, hi, kw)


def number(lo=None, hi=None, **kw):
    return _bounded("number", lo, hi, kw)


def array(items, **kw):
    return {"type": "array", "items": items, **kw}


def obj(required=(), description=None, **props):
    """An object with these properties (others allowed, as the servers ignore unknown fields)."""
    s = {"type": "object", "properties": props}
    if required:
        s["required"] = list(required)
    if description:
        s["description"] = description
    return s


STR, BOOL, NUM, INT = string(), {"type": "boolean"}, number(), integer()


def sampling_schemas():
    """openai_format.PARAM_RANGES as JSON schemas: the same names, types and ranges the code checks."""
    out = {}
    for name, (kind, lo, hi) in PARAM_RANGES.items():
        out[name] = integer(lo, hi) if kind is int else number(lo, hi)
    out["max_completion_tokens"] = dict(out["max_tokens"], description="The newer OpenAI name of max_tokens.")
    out["seed"]["format"] = "int64"
    return out


SAMPLING = sampling_schemas()
# Other servers' fields that no model here honours (openai_format.UNSUPPORTED): only their neutral values
# are accepted (the same as leaving them out); any other value is a 400 unsupported_parameter.
UNSUPPORTED_PROPS = {name: {"nullable": True, "enum": list(neutral),
                            "description": "Not supported here: leave it out (only its neutral value is accepted)."}
                     for name, neutral in UNSUPPORTED.items() if name != "n"}


# -- operation helpers -------------------------------------------------------------------------

def param(name, schema, where="query", required=False, description=None):
    p = {"name": name, "in": where, "required": required or where == "path", "schema": schema}
    if description:
        p["description"] = description
    return p


def content(schema, media="application/json"):
    return {media: {"schema": schema}}


REQUEST_ID = {"X-Request-ID": {"description": "The request's id (the client's own X-Request-ID, when it sent "
                                              "one of up to 64 printable characters), also in the access log.",
                               "required": True, "schema": STR}}


def ok(description, schema=None, media="application/json", stream=False, headers=None):
    body = content(schema, media) if schema is not None else {}
    if stream:  # OpenAPI 3.0: the schema of a text/event-stream describes each event
        body["text/event-stream"] = {"schema": obj(["data"], "One Server-Sent Event; `data` is a JSON object "
                                                            "(or `[DONE]` on the OpenAI-style stream).",
                                                   data=STR, event=STR)}
    r = {"description": description, "headers": {**REQUEST_ID, **(headers or {})}}
    if body:
        r["content"] = body
    return r


ERRORS = {
    400: "Invalid request: the message says what to fix (`param` names the field).",
    401: "Missing or wrong API key (when the gateway runs with CHAT_API_KEY or has users).",
    403: "Refused: an admin-only path for a user's key, or a cross-site request that would spend or write.",
    402: "GigaChat: the token package is used up.",
    404: "Unknown endpoint, session or model.",
    405: "Method not allowed on this path.",
    409: "The conversation was deleted while its answer was being written (the answer was not saved).",
    413: "Request body over 1 MiB, or a question over 100,000 characters.",
    415: "The body is not sent as `Content-Type: application/json` (refused so that web pages cannot post).",
    429: "A rate limit was hit: GigaChat's for the key, or the user's own (see Retry-After).",
    500: "A bug: the message names the request id to look up in the server log.",
    502: "The upstream model server failed or answered something unusable.",
    503: "An upstream or the history database is unavailable (Retry-After when known).",
    504: "The upstream did not answer within its timeout.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": STR}}


def error_responses():
    out = {}
    for status, text in ERRORS.items():
        r = ok(text, ref("Error"))
        if status in (429, 503):
            r["headers"] = {**r["headers"], **RETRY_AFTER}
        out[f"E{status}"] = r
    return out


def op(summary, responses, params=(), body=None, errors=(), tag=None, description=None, secured=True):
    """One operation: `responses` maps 2xx statuses to ok(...); `errors` lists the error statuses.
    500 is always possible (any bug answers it, in the JSON error shape)."""
    o = {"summary": summary, "responses": dict(responses)}
    for status in sorted({*errors, 500, *((415,) if body is not None else ())}):
        o["responses"][str(status)] = {"$ref": f"#/components/responses/E{status}"}
    if description:
        o["description"] = description
    if tag:
        o["tags"] = [tag]
    if params:
        o["parameters"] = list(params)
    if body is not None:
        o["requestBody"] = {"required": True, "content": content(body)}
    if not secured:
        o["security"] = []
    return o


def document(title, description, paths, schemas, security=None):
    doc = {"openapi": "3.0.3",
           "info": {"title": title, "version": VERSION, "description": description},
           "paths": paths,
           "components": {"schemas": {"Error": ERROR_SCHEMA, **schemas}, "responses": error_responses()}}
    if security:
        doc["components"]["securitySchemes"], doc["security"] = security
    return doc


# -- shared schemas ----------------------------------------------------------------------------

ERROR_SCHEMA = obj(["error"], "Every error, from both servers.", error=obj(
    ["message", "type", "code"], message=string(description="What went wrong and what to do about it."),
    type=string(description="invalid_request_error, authentication_error, rate_limit_error, server_error, "
                            "upstream_error, upstream_timeout, upstream_unavailable, ..."),
    code=nullable(string(description="Machine-readable reason: missing_q, invalid_parameter, unknown_session, "
                                     "model_not_found, context_length_exceeded, request_too_large, ...")),
    param=string(description="The request field at fault, when there is one.")))

TEXT_PART = obj(["type", "text"], type=string(enum=["text"]), text=STR)
CHAT_MESSAGE = obj(["role", "content"],
                   role=string(enum=["system", "user", "assistant", "developer"],
                               description="`developer` is read as `system`."),
                   content={"oneOf": [STR, array(TEXT_PART)],
                            "description": "Text, or OpenAI's list of text parts (joined)."})
CHAT_REQUEST_PROPS = dict(
    messages=array(CHAT_MESSAGE, minItems=1, description="The conversation; it must not end with an empty "
                                                         "assistant message."),
    stream=BOOL, stream_options=nullable(obj(include_usage=BOOL)),
    n=nullable(integer(1, 1, description="Only 1 is supported.")),
    stop=nullable({"oneOf": [string(minLength=1), array(string(minLength=1), minItems=1, maxItems=MAX_STOP)]}),
    **SAMPLING, **UNSUPPORTED_PROPS)
USAGE = obj(description="OpenAI usage; the gateway adds GigaChat's precached_prompt_tokens, qwen_server its "
                        "timings (prefill/decode ms, tokens per second).",
            prompt_tokens=nullable(INT), completion_tokens=nullable(INT), total_tokens=nullable(INT),
            precached_prompt_tokens=nullable(INT), timings=obj(),
            prompt_tokens_details=obj(description="cached_tokens: prompt tokens reused from the last request's "
                                                  "KV cache (llamacpp engine)"))
TOOL_CALL = obj(["id", "type", "function"], id=STR, type=string(enum=["function"]),
                function=obj(["name", "arguments"], name=STR, arguments=string(description="JSON text")))
LOGPROBS = nullable(obj(["content"], content=array(obj(
    ["token", "logprob"], token=STR, logprob=NUM, bytes=array(INT), top_logprobs=array(obj(
        ["token", "logprob"], token=STR, logprob=NUM, bytes=array(INT)))))))
COMPLETION = obj(["id", "object", "created", "choices"],
                 id=STR, object=string(enum=["chat.completion"]), created=INT, model=nullable(STR),
                 choices=array(obj(["index", "message", "finish_reason"], index=INT,
                                   message=obj(["role", "content"], role=string(enum=["assistant"]),
                                               content=nullable(STR), tool_calls=array(TOOL_CALL)),
                                   logprobs=LOGPROBS, finish_reason=nullable(STR))),
                 usage=nullable(USAGE))
# qwen_server only: what shapes the answer (tool_calls.py, engines/constrained.py).
QWEN_CHAT_MESSAGE = obj(["role", "content"], role=string(enum=["system", "user", "assistant", "developer", "tool"]),
                        content={"oneOf": [STR, array(TEXT_PART)],
                                 "description": "Text or text parts (joined with a newline); may be null in an "
                                                "assistant message with tool_calls."}, tool_call_id=STR,
                        tool_calls=array(obj(["function"], id=STR, type=STR, function=obj(
                            ["name"], name=STR, arguments=string(description="A JSON object as text.")))))
FUNCTION = obj(["name"], name=STR, parameters=obj(description="JSON schema of the arguments."))
FUNCTION["properties"]["description"] = STR  # (obj() takes `description` as its own)
FUNCTION_TOOL = obj(["function"], type=string(enum=["function"]), function=FUNCTION)
QWEN_CHAT_PROPS = dict(
    CHAT_REQUEST_PROPS, messages=array(QWEN_CHAT_MESSAGE, minItems=1),
    tools=nullable(array(FUNCTION_TOOL)),
    tool_choice=nullable({"oneOf": [string(enum=["none", "auto", "required"]),
                                    obj(["function"], type=STR, function=obj(["name"], name=STR))],
                          "description": "required or a named function: the call is forced by a grammar."}),
    response_format=nullable(obj(["type"], type=string(enum=["text", "json_object", "json_schema"]),
                                 json_schema=obj(["name"], name=STR, schema=obj(), strict=BOOL))),
    logprobs=nullable(BOOL), top_logprobs=nullable(integer(0, 20)))
TEXT_COMPLETION = obj(["id", "object", "created", "choices"], id=STR, object=string(enum=["text_completion"]),
                      created=INT, model=STR, usage=nullable(USAGE), choices=array(obj(
                          ["index", "text", "finish_reason"], index=INT, text=STR, finish_reason=nullable(STR),
                          logprobs=nullable(obj(tokens=array(STR), token_logprobs=array(NUM),
                                                top_logprobs=array(obj()), text_offset=array(INT))))))
COMPLETIONS_REQUEST = obj(
    ["prompt"], model=string(description="Ignored: this server runs one model."),
    prompt=string(minLength=1, description="The text to continue (before the cursor; may be empty with a suffix)."),
    suffix=nullable(string(description="Fill-in-the-middle: the text after the cursor (needs the model's "
                                       "<|fim_*|> tokens; 400 fim_not_supported otherwise).")),
    stream=BOOL, stream_options=nullable(obj(include_usage=BOOL)), logprobs=nullable(integer(0, 5)),
    echo=nullable({"type": "boolean", "enum": [False], "description": "true is not supported."}),
    n=CHAT_REQUEST_PROPS["n"],
    stop=CHAT_REQUEST_PROPS["stop"], **SAMPLING, **UNSUPPORTED_PROPS)
MODEL_LIST = obj(["object", "data"], object=string(enum=["list"]),
                 data=array(obj(["id", "object", "owned_by"], id=STR, object=string(enum=["model"]), owned_by=STR,
                                created=INT, max_seq_len=INT)))
HEALTH = obj(["status"], status=string(enum=["ok"]))
QWEN_STATUS_PROPS = dict(
    online=BOOL, engine=STR, model=STR, model_path=STR, architecture=STR, cache_mode=STR, cache_requested=STR,
    cache_note=nullable(STR), max_seq_len=INT, device=STR, load_seconds=nullable(NUM),
    constrained_decoding={"type": "string", "description": "\"ready\", \"preparing\" (the vocabulary is being "
                          "read after the load; grammar and logprobs requests wait), \"not started\" or "
                          "\"failed: ...\"."},
    constrained_vocab_seconds=nullable(NUM),
    memory=obj(["kind", "used_bytes", "total_bytes"], kind=string(enum=["vram", "ram"]), used_bytes=INT,
               total_bytes=INT),
    requests_served=INT, tokens_generated=INT, average_tokens_per_second=nullable(NUM),
    last_tokens_per_second=nullable(NUM), active_requests=INT, uptime_seconds=NUM, queue_length=INT,
    worker=obj(["restarts"], restarts=INT, last_signal=nullable(STR), last_exit_code=nullable(INT),
               last_at=nullable(STR)),
    source=nullable(obj(["repo", "quant", "revision", "commit", "file", "files", "path", "from_cache"],
                        "The Hugging Face repo -m named (null for a local path): quant tag or EXL2 branch, the "
                        "GGUF file served (null for a model dir), whether it came from the cache.",
                        repo=STR, quant=nullable(STR), revision=STR, commit=STR, file=nullable(STR), files=array(STR),
                        path=STR, from_cache=BOOL)))
OPENAPI_DOC = obj(["openapi", "info", "paths"], openapi=STR, info=obj(), paths=obj())
METRICS_TEXT = {"text/plain": {"schema": STR}}


def common_paths(service, errors=(), metrics_errors=None):
    """/health, /metrics, /openapi.json; `errors`: (401,) where an API key guards the last two
    (`metrics_errors`: /metrics's, when they differ)."""
    return {
        "/health": {"get": op("Liveness: answers while the process serves HTTP.", {"200": ok("Alive.", HEALTH)},
                              tag="service", secured=False)},
        "/metrics": {"get": op(f"Prometheus metrics ({service}_* series).",
                               {"200": {**ok("Prometheus text format."), "content": METRICS_TEXT}},
                               tag="service", errors=errors if metrics_errors is None else metrics_errors)},
        "/openapi.json": {"get": op("This document.", {"200": ok("OpenAPI 3.0 document.", OPENAPI_DOC)},
                                    tag="service", errors=errors)},
    }


def register(app, build):
    """GET /openapi.json on `app`, the document that build() returns."""
    spec = build()
    app.add_url_rule("/openapi.json", "openapi", lambda: jsonify(spec))
