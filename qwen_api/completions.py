"""qwen_server's /v1/completions (OpenAI's legacy text completions, what editor plugins call): a plain
prompt continued, or fill-in-the-middle when `suffix` is sent, written with the model's own FIM tokens
(`<|fim_prefix|>{prompt}<|fim_suffix|>{suffix}<|fim_middle|>`, Qwen2.5-Coder's). Streamed or not."""
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


def _bad(param, message, code="invalid_parameter"):
    return ApiError(400, message, code=code, param=param)


def parse_completion_request(body: dict, defaults: dict) -> dict:
    reject_unsupported(body)
    for name, hint in CHAT_ONLY.items():
        if body.get(name) is not None:
            raise _bad(name, f"'{name}' is not accepted on /v1/completions: {hint}", "unsupported_parameter")
    if body.get("echo"):
        raise _bad("echo", "'echo' is not supported: the answer holds the completion only.", "unsupported_parameter")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("prompt", "'prompt' must be a string (one prompt a request; token-id prompts are not accepted).")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise _bad("suffix", "'suffix' must be a string: the text after the cursor.")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", "'stream' must be true or false.")
    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= MAX_LOGPROBS):
        raise _bad("logprobs", f"'logprobs' must be an integer from 0 to {MAX_LOGPROBS} (alternatives per token).")
    params = parse_params(body, defaults)
    params.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    params.update(stop=parse_stop(body.get("stop")), logprobs=logprobs is not None, top_logprobs=logprobs or 0)
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise _bad("stream_options", "'stream_options' must be an object, like {\"include_usage\": true}.")
    return {"prompt": prompt, "suffix": suffix, "params": params, "stream": stream,
            "include_usage": bool(opts.get("include_usage"))}


def prompt_ids(engine, prompt, suffix) -> list:
    if suffix is None:
        if not prompt:
            raise _bad("prompt", "'prompt' is empty: send the text to continue.")
        return engine.tokenize(prompt)
    fim = engine.fim_ids()
    if fim is None:
        raise _bad("suffix", f"{engine.model_name} has no fill-in-the-middle tokens (<|fim_prefix|>, "
                             f"<|fim_suffix|>, <|fim_middle|>): leave 'suffix' out, or serve a model that has "
                             f"them (Qwen2.5-Coder).", "fim_not_supported")
    pre, suf, mid = fim
    return [pre] + engine.tokenize(prompt) + [suf] + engine.tokenize(suffix) + [mid]


def legacy_logprobs(entries, offset0=0):
    """Chat-style entries -> the completions endpoint's {tokens, token_logprobs, top_logprobs, text_offset}."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    at = offset0
    for e in entries:
        out["tokens"].append(e["token"])
        out["token_logprobs"].append(e["logprob"])
        out["top_logprobs"].append({t["token"]: t["logprob"] for t in e["top_logprobs"]})
        out["text_offset"].append(at)
        at += len(e["token"])
    return out


def text_completion(cid, model, text, finish_reason, logprobs=None, usage=None):
    out = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
           "choices": [] if text is None else [{"index": 0, "text": text, "logprobs": logprobs,
                                                "finish_reason": finish_reason}]}
    if usage is not None:
        out["usage"] = usage
    return out


def new_completion_id():
    return "cmpl-" + uuid.uuid4().hex[:24]


def collect(chunks):
    """(text, logprob entries, finish_reason, usage) of a whole answer."""
    parts, entries, last = [], [], None
    for last in chunks:
        parts.append(last.text)
        entries.extend(last.logprobs or [])
    return "".join(parts), entries, last.finish_reason, last.usage or {}


def stream_events(chunks, cid, model, want_logprobs):
    """Engine chunks -> (text_completion frame, usage of the last one or None)."""
    offset = 0
    for c in chunks:
        lp = legacy_logprobs(c.logprobs or [], offset) if want_logprobs else None
        if c.text or (lp and lp["tokens"]):
            yield text_completion(cid, model, c.text, None, lp), None
            offset += len(c.text)
        if c.finish_reason:
            yield text_completion(cid, model, "", c.finish_reason), c.usage or {}
