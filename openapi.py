"""OpenAPI 3.0 descriptions of both HTTP APIs, served at GET /openapi.json.

    openapi.register(app, "gateway")       # in chat.py's create_app
    openapi.register(app, "qwen_server")   # in qwen_server.py's create_app

Built from small helpers so that each endpoint reads as one short entry; kept in step with
chat.py, qwen_server.py, api_common.py and openai_format.py (tests/test_schemathesis.py fuzzes
both servers from these documents and fails on any answer they do not describe)."""
from flask import jsonify

from api_common import MAX_BODY_BYTES
from openai_format import MAX_STOP, PARAM_RANGES

VERSION = "1.0.0"
MAX_QUESTION_CHARS = 100_000  # chat.MAX_QUESTION_CHARS (not imported: chat.py imports this module)
INT64_MAX = (1 << 63) - 1
# Not blank for Python's str.strip(): one character that is neither regex whitespace nor the
# separators \x1c-\x1f and \x85 (whitespace to Python, not to ECMAScript regexes).
NOT_BLANK = r"[^\s\x1c-\x1f\x85]"
MAX_GET_QUESTION_CHARS = 1000  # what surely fits a URL, even %-encoded Cyrillic, under gunicorn


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
    401: "Missing or wrong API key (only when the gateway runs with CHAT_API_KEY).",
    402: "GigaChat: the token package is used up.",
    404: "Unknown endpoint, session or model.",
    405: "Method not allowed on this path.",
    409: "The conversation was deleted while its answer was being written (the answer was not saved).",
    413: "Request body over 1 MiB, or a question over 100,000 characters.",
    415: "The body is not sent as `Content-Type: application/json` (refused so that web pages cannot post).",
    429: "GigaChat's rate limit for the key was hit (see Retry-After).",
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
    **SAMPLING)
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
    stop=CHAT_REQUEST_PROPS["stop"], **SAMPLING)
MODEL_LIST = obj(["object", "data"], object=string(enum=["list"]),
                 data=array(obj(["id", "object", "owned_by"], id=STR, object=string(enum=["model"]), owned_by=STR,
                                created=INT, max_seq_len=INT)))
HEALTH = obj(["status"], status=string(enum=["ok"]))
QWEN_STATUS_PROPS = dict(
    online=BOOL, engine=STR, model=STR, model_path=STR, architecture=STR, cache_mode=STR, cache_requested=STR,
    cache_note=nullable(STR), max_seq_len=INT, device=STR, load_seconds=nullable(NUM),
    memory=obj(["kind", "used_bytes", "total_bytes"], kind=string(enum=["vram", "ram"]), used_bytes=INT,
               total_bytes=INT),
    requests_served=INT, tokens_generated=INT, average_tokens_per_second=nullable(NUM),
    last_tokens_per_second=nullable(NUM), active_requests=INT, uptime_seconds=NUM, queue_length=INT)
OPENAPI_DOC = obj(["openapi", "info", "paths"], openapi=STR, info=obj(), paths=obj())
METRICS_TEXT = {"text/plain": {"schema": STR}}


def common_paths(service):
    return {
        "/health": {"get": op("Liveness: answers while the process serves HTTP.", {"200": ok("Alive.", HEALTH)},
                              tag="service", secured=False)},
        "/metrics": {"get": op(f"Prometheus metrics ({service}_* series).",
                               {"200": {**ok("Prometheus text format."), "content": METRICS_TEXT}},
                               tag="service", errors=(401,))},
        "/openapi.json": {"get": op("This document.", {"200": ok("OpenAPI 3.0 document.", OPENAPI_DOC)},
                                    tag="service", errors=(401,))},
    }


# -- the gateway (chat.py) ---------------------------------------------------------------------

def gateway_spec():
    ask_params = [
        param("q", string(minLength=1, maxLength=MAX_GET_QUESTION_CHARS, pattern=NOT_BLANK), required=True,
              description="The question (not blank). URLs are limited by the HTTP server (the request line: "
                          "4 KiB under gunicorn's default, 64 KiB under `python chat.py`), so longer questions "
                          "go in a POST body (up to 100,000 characters)."),
        param("system", STR, description="System prompt; default: the session's, else DEFAULT_SYSTEM_PROMPT."),
        param("session", STR, description="Continue this conversation (the `session` of an earlier answer); "
                                          "unknown ids are a 404."),
        param("stream", STR, description="1, true or yes: answer as Server-Sent Events (start, delta..., "
                                         "then done or error)."),
        *(param(name, schema) for name, schema in SAMPLING.items()),
    ]
    ask_body = obj(["q"], "The same fields as the GET query, as JSON; sampling parameters must be numbers.",
                   q=string(minLength=1, maxLength=MAX_QUESTION_CHARS, pattern=NOT_BLANK), system=STR, session=STR,
                   stream={"description": "true, 1, \"1\", \"true\" or \"yes\" streams."}, **SAMPLING)
    answer = obj(["answer", "provider", "session", "message_id", "blocked", "elapsed_ms"],
                 answer=STR, model=nullable(STR), provider=string(enum=["gigachat", "qwen"]), session=STR,
                 message_id=INT, finish_reason=nullable(STR), blocked=BOOL, usage=nullable(USAGE), elapsed_ms=NUM)
    ask_errors = (400, 401, 402, 404, 409, 413, 429, 502, 503, 504)

    def ask(provider):
        answered = ok("The answer, saved to history (or, with stream, its events).", answer, stream=True)
        notes = "Errors after the session was created carry its id in an X-Session-ID header."
        return {"get": op(f"Ask {provider} (the seed's endpoint).", {"200": answered}, ask_params, description=notes,
                          errors=ask_errors, tag="chat"),
                "post": op(f"Ask {provider} with a JSON body (query fields also read).", {"200": answered},
                           body=ask_body, description=notes, errors=ask_errors, tag="chat")}

    provider_filter = param("model", string(enum=["", "gigachat", "qwen"]), description="Only this provider.")
    limit = param("limit", integer(1, 500), description="Page size (default 50).")
    message = obj(["id", "session", "role", "content", "provider", "status", "created_at"],
                  id=INT, session=STR, role=string(enum=["system", "user", "assistant"]), content=STR,
                  provider=STR, model=nullable(STR), system_prompt=nullable(STR),
                  params=nullable(obj(description="The sampling parameters sent upstream.")),
                  prompt_tokens=nullable(INT), completion_tokens=nullable(INT),
                  precached_prompt_tokens=nullable(INT), latency_ms=nullable(NUM), finish_reason=nullable(STR),
                  status=string(enum=["ok", "error", "cancelled", "blocked"]), error=nullable(STR), created_at=NUM,
                  question_id=nullable({**INT, "description": "The id of the question an answer answers; null for a question."}))
    conversation_props = dict(id=STR, provider=string(enum=["gigachat", "qwen"]), model=nullable(STR),
                              system_prompt=nullable(STR), title=nullable(STR), created_at=NUM, updated_at=NUM)
    conv_required = ["id", "provider", "created_at", "updated_at"]
    sid = param("sid", STR, "path", description="The session id.")

    paths = {
        "/gigachat": ask("GigaChat"),
        "/qwen": ask("the local Qwen server"),
        "/qwen/status": {"get": op("The Qwen server's /status as the gateway sees it; never fails.",
                                   {"200": ok("`online` false with a `reason` when it is unreachable.",
                                              obj(["online"], **{**QWEN_STATUS_PROPS, "max_seq_len": nullable(INT)},
                                                  url=STR, reason=STR, gateway_rtt_ms=NUM))},
                                   errors=(401,), tag="chat",
                                   description="Another OpenAI-compatible server (no /status) shows as online "
                                               "with its first model and max_seq_len null.")},
        "/history": {"get": op("Messages, newest first, with filters and full-text search.", {
            "200": ok("A page; pass next_before as `before` for the next one.",
                      obj(["messages", "next_before"], messages=array(ref("Message")), next_before=nullable(INT)))},
            [limit, param("before", integer(1, INT64_MAX, format="int64"), description="Messages with smaller ids."),
             param("session", STR), provider_filter,
             param("q", STR, description="Full-text search: messages with all these words.")],
            errors=(400, 401, 503), tag="history")},
        "/history/sessions": {"get": op("Conversations, most recently active first.", {
            "200": ok("A page; pass next_before as `before` for the next one.",
                      obj(["sessions", "next_before"], sessions=array(obj(conv_required, **conversation_props)),
                          next_before=nullable(NUM)))},
            [limit, param("before", NUM, description="updated_at timestamp (seconds)."), provider_filter],
            errors=(400, 401, 503), tag="history")},
        "/history/export": {"get": op("All messages (or one session's) as JSON Lines, oldest first.", {
            "200": {**ok("One Message object per line."), "content": {"application/x-ndjson": {"schema": STR}}}},
            [param("format", string(enum=["jsonl"])), param("session", STR)], errors=(400, 401, 503),
            tag="history")},
        "/history/{sid}": {
            "get": op("One conversation with its messages.", {"200": ok("The conversation.", obj(
                conv_required + ["messages"], messages=array(ref("Message")), **conversation_props))},
                [sid], errors=(401, 404, 503), tag="history"),
            "delete": op("Delete a conversation and its messages.", {
                "200": ok("Deleted.", obj(["deleted"], deleted=STR))}, [sid], errors=(401, 404, 503),
                tag="history")},
        "/v1/chat/completions": {"post": op(
            "OpenAI-compatible chat: model `gigachat`/`GigaChat-*` or `qwen*`; saved to history.",
            {"200": ok("chat.completion, or chat.completion.chunk events ending with [DONE] when streaming.",
                       COMPLETION, stream=True,
                       headers={"X-Session-ID": {"description": "The history session of this exchange.",
                                                 "required": True, "schema": STR}})},
            [param("X-Session-ID", string(pattern=r"^(?!\.+$)[A-Za-z0-9._-]{1,100}$"), "header",
                   description="Save into this history session (created when new): 1-100 letters, digits, "
                               "'.', '_' or '-', not only dots.")],
            body=obj(["model", "messages"], model=string(description="gigachat, GigaChat-*, or qwen*; "
                                                                     "anything else is a 404."),
                     **CHAT_REQUEST_PROPS),
            errors=(400, 401, 402, 404, 409, 413, 429, 502, 503, 504), tag="openai")},
        "/v1/models": {"get": op("Models this gateway routes.", {"200": ok("OpenAI model list.", MODEL_LIST)},
                                 errors=(401,), tag="openai")},
        "/config": {"get": op("What the web page needs (no secrets).", {"200": ok("Public settings.", obj(
            ["default_system_prompt", "qwen_defaults", "gigachat_model", "auth_required"],
            default_system_prompt=STR, gigachat_model=STR, auth_required=BOOL,
            qwen_defaults=obj(["temperature", "top_p", "top_k", "repetition_penalty", "max_tokens"],
                              temperature=NUM, top_p=NUM, top_k=INT, repetition_penalty=NUM,
                              max_tokens=nullable(INT))))}, tag="service", secured=False)},
        "/": {"get": op("The web page (Accept: text/html) or the endpoint list.", {"200": {
            **ok("HTML page, or a JSON endpoint list."),
            "content": {"text/html": {"schema": STR},
                        "application/json": {"schema": obj(["service", "endpoints"], service=STR,
                                                           endpoints=array(STR))}}}},
            tag="service", secured=False)},
        **common_paths("chat"),
    }
    security = ({"bearerAuth": {"type": "http", "scheme": "bearer",
                                "description": "CHAT_API_KEY, when the gateway is started with one."},
                 "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
                [{"bearerAuth": []}, {"apiKeyHeader": []}, {}])  # {}: no key needed when CHAT_API_KEY is unset
    return document("Dual AI Chat API gateway",
                    "GigaChat and the local Qwen server behind one HTTP API; every exchange saved to SQLite. "
                    "Errors are always `{\"error\": {\"message\", \"type\", \"code\"}}`.",
                    paths, {"Message": message}, security)


# -- qwen_server.py ----------------------------------------------------------------------------

def qwen_server_spec():
    token_body = {"anyOf": [obj(["messages"], messages=CHAT_REQUEST_PROPS["messages"]),
                            obj(["text"], text=string(description="Raw text, without the chat template "
                                                                  "(used when `messages` is absent)."))]}
    paths = {
        "/v1/chat/completions": {"post": op(
            "OpenAI-compatible chat completion, streamed token by token with stream=true.",
            {"200": ok("chat.completion, or chat.completion.chunk events ending with [DONE].", COMPLETION,
                       stream=True)},
            body=obj(["messages"], model=string(description="Ignored: this server runs one model."),
                     **QWEN_CHAT_PROPS),
            errors=(400, 413), tag="openai",
            description="max_tokens defaults to what fits the context; a prompt plus max_tokens over the "
                        "context is a 400 context_length_exceeded. Fields that would change the answer and "
                        "are not supported (n > 1, logit_bias, ...) are a 400 unsupported_parameter.")},
        "/v1/completions": {"post": op(
            "OpenAI text completion: a prompt continued, or fill-in-the-middle with `suffix`.",
            {"200": ok("text_completion, or text_completion events ending with [DONE].", TEXT_COMPLETION,
                       stream=True)},
            body=COMPLETIONS_REQUEST, errors=(400, 413), tag="openai",
            description="max_tokens defaults to 16, as OpenAI's.")},
        "/v1/token/count": {"post": op("Tokens of messages (chat template applied) or of raw text.", {
            "200": ok("The count.", obj(["count", "max_seq_len"], count=INT, max_seq_len=INT))},
            body=token_body, errors=(400, 413), tag="tokens")},
        "/v1/token/encode": {"post": op("Token ids of messages (chat template applied) or of raw text.", {
            "200": ok("TabbyAPI's shape.", obj(["tokens", "length"], tokens=array(INT), length=INT))},
            body=token_body, errors=(400, 413), tag="tokens")},
        "/v1/models": {"get": op("The loaded model.", {"200": ok("OpenAI model list.", MODEL_LIST)}, tag="openai")},
        "/status": {"get": op("Engine, model, memory and traffic.", {
            "200": ok("Status.", obj(["online", "model", "max_seq_len"], **QWEN_STATUS_PROPS))}, tag="service")},
        "/": {"get": op("The endpoint list.", {"200": ok("Endpoints.", obj(
            ["service", "model", "endpoints"], service=STR, model=STR, endpoints=array(STR)))}, tag="service")},
        **common_paths("qwen"),
    }
    paths["/qwen/status"] = {"get": dict(paths["/status"]["get"], summary="Same as /status.")}
    for item in paths.values():  # no API key on this server
        for o in item.values():
            o["responses"].pop("401", None)
    return document("Qwen server", f"Local Qwen 2.5 Coder behind an OpenAI-compatible API. Bodies over "
                                   f"{MAX_BODY_BYTES // 1024} KiB are a 413. Errors are always "
                                   f"`{{\"error\": {{\"message\", \"type\", \"code\"}}}}`.", paths, {})


SPECS = {"gateway": gateway_spec, "qwen_server": qwen_server_spec}


def register(app, which):
    """GET /openapi.json on `app`; which is "gateway" or "qwen_server"."""
    spec = SPECS[which]()
    app.add_url_rule("/openapi.json", "openapi", lambda: jsonify(spec))
