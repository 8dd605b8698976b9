"""OpenAI's legacy text completions on the wire (POST /v1/completions), shared by qwen_server (qwen_api/) and
the gateway (gateway/text_completions.py): the request checked, the response and its chunks built."""
import time
import uuid

from common.api_common import ApiError
from common.openai_format import parse_params, parse_stop, reject_unsupported

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint
MAX_LOGPROBS = 5  # OpenAI's limit for the legacy `logprobs` integer
# The chat endpoint's fields that this one has not (each a 400, never a silent drop): what to do instead.
CHAT_ONLY = {"response_format": "send the request to /v1/chat/completions to shape the answer as JSON.",
             "top_logprobs": "here 'logprobs' is the number of alternatives per token (0 to 5).",
             "tools": "send the request to /v1/chat/completions to let the model call tools.",
             "tool_choice": "send the request to /v1/chat/completions to let the model call tools."}


def bad_param(param, message, code="invalid_parameter"):
    """The 400 for one field of the request: `message` says what to send instead."""
    return ApiError(400, message, code=code, param=param)


def parse_completion_request(body: dict, defaults: dict) -> dict:
    reject_unsupported(body)
    for name, hint in CHAT_ONLY.items():
        if body.get(name) is not None:
            raise bad_param(name, f"'{name}' is not accepted on /v1/completions: {hint}", "unsupported_parameter")
    if body.get("echo"):
        raise bad_param("echo", "'echo' is not supported: the answer holds the completion only.", "unsupported_parameter")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_param("prompt", "'prompt' must be a string (one prompt a request; token-id prompts are not accepted).")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise bad_param("suffix", "'suffix' must be a string: the text after the cursor.")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_param("stream", "'stream' must be true or false.")
    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= MAX_LOGPROBS):
        raise bad_param("logprobs", f"'logprobs' must be an integer from 0 to {MAX_LOGPROBS} (alternatives per token).")
    params = parse_params(body, defaults)
    params.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    params.update(stop=parse_stop(body.get("stop")), logprobs=logprobs is not None, top_logprobs=logprobs or 0)
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise bad_param("stream_options", "'stream_options' must be an object, like {\"include_usage\": true}.")
    return {"prompt": prompt, "suffix": suffix, "params": params, "stream": stream,
            "include_usage": bool(opts.get("include_usage"))}


def text_completion(cid, model, text, finish_reason, logprobs=None, usage=None):
    out = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
           "choices": [] if text is None else [{"index": 0, "text": text, "logprobs": logprobs,
                                                "finish_reason": finish_reason}]}
    if usage is not None:
        out["usage"] = usage
    return out


def new_completion_id():
    return "cmpl-" + uuid.uuid4().hex[:24]
