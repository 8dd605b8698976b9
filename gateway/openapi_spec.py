"""The gateway's OpenAPI document (GET /openapi.json of chat.py), from common.openapi's helpers."""
from common.openapi import (
    BOOL,
    COMPLETION,
    COMPLETIONS_REQUEST,
    INT,
    MODEL_LIST,
    NUM,
    QWEN_CHAT_PROPS,
    QWEN_STATUS_PROPS,
    SAMPLING,
    STR,
    TEXT_COMPLETION,
    USAGE,
    array,
    common_paths,
    document,
    integer,
    nullable,
    obj,
    ok,
    op,
    param,
    ref,
    string,
)
from gateway.ask import MAX_QUESTION_CHARS

INT64_MAX = (1 << 63) - 1
# Not blank for Python's str.strip(): one character that is neither regex whitespace nor the
# separators \x1c-\x1f and \x85 (whitespace to Python, not to ECMAScript regexes).
NOT_BLANK = r"[^\s\x1c-\x1f\x85]"
MAX_GET_QUESTION_CHARS = 1000  # what surely fits a URL, even %-encoded Cyrillic, under gunicorn

UPSTREAM = obj(["url", "healthy", "in_flight", "served", "errors", "models"],
               "One Qwen upstream (QWEN_URL lists them) as the gateway's pool sees it.",
               url=STR, healthy=BOOL, in_flight=INT, queue_length=INT, served=INT, errors=INT,
               latency_ms=nullable(NUM), models=array(STR), down_reason=nullable(STR), probe_in_s=nullable(NUM))

ROUTE_NOTE = ("How model auto chose the provider: code, general, private (a secret: kept local) or "
              "\"fallback: <why>\" (the chosen one could not answer); null when the client named the provider.")
MESSAGE = obj(["id", "session", "role", "content", "provider", "status", "created_at"],
              id=INT, session=STR, role=string(enum=["system", "user", "assistant"]), content=STR,
              provider=STR, model=nullable(STR), system_prompt=nullable(STR),
              params=nullable(obj(description="The request's parameters as the OpenAI body names them: the sampling, "
                                            "the model it named, and tools, tool_choice, response_format, "
                                            "logprobs... as sent (never the messages or the prompt).")),
              prompt_tokens=nullable(INT), completion_tokens=nullable(INT),
              precached_prompt_tokens=nullable(INT), latency_ms=nullable(NUM), finish_reason=nullable(STR),
              status=string(enum=["ok", "error", "cancelled", "blocked"]), error=nullable(STR), created_at=NUM,
              question_id=nullable({**INT, "description": "The id of the question an answer answers; null for a question."}),
              route=nullable(string(description=ROUTE_NOTE)))


def ask_paths():
    """The spec's endpoints: /gigachat, /qwen, /ask (model auto; GET and POST) and /qwen/status."""
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
                 answer=STR, model=nullable(STR), provider=string(enum=["gigachat", "qwen"]),
                 route=nullable(string(description=ROUTE_NOTE)), session=STR,
                 message_id={**nullable(INT), "description": "null while the answer waits in the journal (the "
                                                           "history database was unavailable)"},
                 finish_reason=nullable(STR), blocked=BOOL, usage=nullable(USAGE), elapsed_ms=NUM)
    ask_errors = (400, 401, 402, 404, 409, 413, 429, 502, 503, 504)

    def ask(provider, extra=""):
        answered = ok("The answer, saved to history (or, with stream, its events).", answer, stream=True,
                      headers={"X-Routed-To": {"description": "gigachat or qwen: who answered.", "schema": STR}})
        notes = "Errors after the session was created carry its id in an X-Session-ID header." + extra
        return {"get": op(f"Ask {provider} (the seed's endpoint).", {"200": answered}, ask_params, description=notes,
                          errors=ask_errors, tag="chat"),
                "post": op(f"Ask {provider} with a JSON body (query fields also read).", {"200": answered},
                           body=ask_body, description=notes, errors=ask_errors, tag="chat")}

    return {
    "/gigachat": ask("GigaChat"),
    "/qwen": ask("the local Qwen server"),
    "/ask": ask("model auto: code to Qwen, the rest to GigaChat, secrets never to the cloud",
                " The answer's `provider` and `route` say who answered and why; a question that holds a secret "
                "gets a 503 (private_needs_local_model) when Qwen is down, never GigaChat."),
    "/qwen/status": {"get": op("The Qwen server's /status as the gateway sees it; never fails.",
                               {"200": ok("`online` false with a `reason` when it is unreachable.",
                                          obj(["online"], **{**QWEN_STATUS_PROPS, "max_seq_len": nullable(INT)},
                                              url=STR, reason=STR, gateway_rtt_ms=NUM, upstreams=array(UPSTREAM)))},
                               errors=(401,), tag="chat",
                               description="Another OpenAI-compatible server (no /status) shows as online "
                                           "with its first model and max_seq_len null.")},
    }


def history_paths():
    """/history and its sub-paths."""
    provider_filter = param("model", string(enum=["", "gigachat", "qwen"]), description="Only this provider.")
    limit = param("limit", integer(1, 500), description="Page size (default 50).")
    conversation_props = dict(id=STR, provider=string(enum=["gigachat", "qwen"]), model=nullable(STR),
                              system_prompt=nullable(STR), title=nullable(STR), created_at=NUM, updated_at=NUM,
                              user_id={**INT, "description": "Its owner (0: the built-in admin)."})
    user = param("user", STR, description="Admins only: this user's conversations (`admin`: the built-in admin's); "
                                          "an unknown name is a 404. Others always see only their own.")
    conv_required = ["id", "provider", "created_at", "updated_at"]
    sid = param("sid", STR, "path", description="The session id.")

    return {
    "/history": {"get": op("Messages, newest first, with filters and full-text search.", {
        "200": ok("A page; pass next_before as `before` for the next one.",
                  obj(["messages", "next_before"], messages=array(ref("Message")), next_before=nullable(INT)))},
        [limit, param("before", integer(1, INT64_MAX, format="int64"), description="Messages with smaller ids."),
         param("session", STR), provider_filter,
         param("q", STR, description="Full-text search: messages with all these words."), user],
        errors=(400, 401, 404, 503), tag="history")},
    "/history/sessions": {"get": op("Conversations, most recently active first.", {
        "200": ok("A page; pass next_before as `before` for the next one.",
                  obj(["sessions", "next_before"], sessions=array(obj(conv_required, **conversation_props)),
                      next_before=nullable(NUM)))},
        [limit, param("before", NUM, description="updated_at timestamp (seconds)."), provider_filter, user],
        errors=(400, 401, 404, 503), tag="history")},
    "/history/export": {"get": op("All messages (or one session's) as JSON Lines, oldest first.", {
        "200": {**ok("One Message object per line."), "content": {"application/x-ndjson": {"schema": STR}}}},
        [param("format", string(enum=["jsonl"])), param("session", STR), user], errors=(400, 401, 404, 503),
        tag="history")},
    "/history/{sid}": {
        "get": op("One conversation with its messages.", {"200": ok("The conversation.", obj(
            conv_required + ["messages"], messages=array(ref("Message")), **conversation_props))},
            [sid], errors=(401, 404, 503), tag="history"),
        "delete": op("Delete a conversation and its messages.", {
            "200": ok("Deleted.", obj(["deleted"], deleted=STR))}, [sid], errors=(401, 404, 503),
            tag="history")},
    }


SESSION_HEADER = param("X-Session-ID", string(pattern=r"^(?!\.+$)[A-Za-z0-9._-]{1,100}$"), "header",
                       description="Save into this history session (created when new): 1-100 letters, digits, "
                                   "'.', '_' or '-', not only dots.")


SESSION_ANSWER_HEADER = {"X-Session-ID": {"description": "The history session of this exchange.", "required": True,
                                          "schema": STR}}


def openai_paths():
    """The OpenAI-compatible routes: /v1/chat/completions, /v1/completions and /v1/models."""
    return {
    "/v1/chat/completions": {"post": op(
        "OpenAI-compatible chat: model `auto`, `gigachat`/`GigaChat-*`, `qwen*` or an id a Qwen upstream lists; "
        "saved to history.",
        {"200": ok("chat.completion, or chat.completion.chunk events ending with [DONE] when streaming.",
                   COMPLETION, stream=True,
                   headers=SESSION_ANSWER_HEADER)},
        [SESSION_HEADER],
        body=obj(["model", "messages"], model=string(description="auto, gigachat, GigaChat-*, qwen*, or an id "
                                                                 "GET /v1/models lists; anything else is a 404."),
                 **QWEN_CHAT_PROPS),
        errors=(400, 401, 402, 404, 409, 413, 429, 502, 503, 504), tag="openai",
        description="Also passed on to qwen_server as sent: tools, tool_choice, tool messages and assistant "
                    "tool_calls, response_format, logprobs, top_logprobs, parallel_tool_calls. On GigaChat tools "
                    "become GigaChat functions, `stop` is cut by the gateway, and response_format / logprobs "
                    "are a 400. With model auto the answer adds `provider` and `route`, and X-Routed-To names "
                    "who answered.")},
    "/v1/completions": {"post": op(
        "OpenAI text completion (editor plugins: prompt + suffix = fill-in-the-middle), Qwen only; saved to history.",
        {"200": ok("text_completion, or text_completion events ending with [DONE] when streaming.",
                   TEXT_COMPLETION, stream=True,
                   headers=SESSION_ANSWER_HEADER)},
        [SESSION_HEADER],
        body=obj(["model", "prompt"], model=string(enum=["qwen", "auto"],
                                                                description="qwen, a qwen* model id, or auto "
                                                                            "(Qwen); GigaChat has no such API (400)."),
                 **{k: v for k, v in COMPLETIONS_REQUEST["properties"].items() if k != "model"}),
        errors=(400, 401, 404, 409, 413, 429, 502, 503, 504), tag="openai")},
    "/v1/models": {"get": op("Models this gateway routes.", {"200": ok("OpenAI model list.", MODEL_LIST)},
                             errors=(401,), tag="openai")},
    }


def page_paths():
    """The web page and its settings."""
    return {
    "/config": {"get": op("What the web page needs (no secrets; the key when one is set).", {"200": ok("Public settings.", obj(
        ["default_system_prompt", "qwen_defaults", "gigachat_model", "auth_required", "providers"],
        default_system_prompt=STR, gigachat_model=STR, auth_required=BOOL,
        default_provider=string(description="auto when either model works, else the one that does."),
        providers={"type": "object", "description": "provider name -> whether it is configured (the page "
                                                    "opens on one that is)",
                   "additionalProperties": obj(["configured"], configured=BOOL)},
        qwen_defaults=obj(["temperature", "top_p", "top_k", "repetition_penalty", "max_tokens"],
                          temperature=NUM, top_p=NUM, top_k=INT, repetition_penalty=NUM,
                          max_tokens=nullable(INT))))}, errors=(401,), tag="service")},
    "/whoami": {"get": op("Who this key belongs to (the page's \"Signed in as\").", {"200": ok("The caller.", obj(
        ["user", "admin", "auth_required"], user=nullable(string(description="null: the keyless single user.")),
        admin=BOOL, auth_required=BOOL))}, errors=(401,), tag="service")},
    "/": {"get": op("The web page (Accept: text/html) or the endpoint list.", {"200": {
        **ok("HTML page, or a JSON endpoint list."),
        "content": {"text/html": {"schema": STR},
                    "application/json": {"schema": obj(["service", "endpoints"], service=STR,
                                                       endpoints=array(STR))}}}},
        tag="service", secured=False)},
    }


def gateway_spec():
    """The whole document, served by chat.py."""
    paths = {**ask_paths(), **history_paths(), **openai_paths(), **page_paths(),
             **common_paths("chat", errors=(401,), metrics_errors=(401, 403))}  # 403: /metrics is for admins
    security = ({"bearerAuth": {"type": "http", "scheme": "bearer",
                                "description": "CHAT_API_KEY (the admin's), or a user's key "
                                               "(`python chat.py users add`)."},
                 "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
                [{"bearerAuth": []}, {"apiKeyHeader": []}, {}])  # {}: no key needed with no CHAT_API_KEY and no users
    return document("Dual AI Chat API gateway",
                    "GigaChat and the local Qwen server behind one HTTP API; every exchange saved to SQLite. "
                    "Errors are always `{\"error\": {\"message\", \"type\", \"code\"}}`.",
                    paths, {"Message": MESSAGE}, security)
