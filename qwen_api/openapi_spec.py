"""qwen_server's OpenAPI document (GET /openapi.json), beside its routes (qwen_api/routes.py), from
common.openapi's helpers."""
from common.api_common import MAX_BODY_BYTES
from common.openapi import (
    CHAT_REQUEST_PROPS,
    COMPLETION,
    COMPLETIONS_REQUEST,
    INT,
    MODEL_LIST,
    QWEN_CHAT_PROPS,
    QWEN_STATUS_PROPS,
    STR,
    TEXT_COMPLETION,
    array,
    common_paths,
    document,
    obj,
    ok,
    op,
    string,
)


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
        **common_paths("qwen"),  # no API key on this server: no 401
    }
    paths["/qwen/status"] = {"get": dict(paths["/status"]["get"], summary="Same as /status.")}
    return document("Qwen server", f"Local Qwen 2.5 Coder behind an OpenAI-compatible API. Bodies over "
                                   f"{MAX_BODY_BYTES // 1024} KiB are a 413. Errors are always "
                                   f"`{{\"error\": {{\"message\", \"type\", \"code\"}}}}`.", paths, {})
