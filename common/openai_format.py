"""OpenAI wire format, shared by qwen_server.py and the gateway's /v1 endpoints:
request validation with errors that say what to fix, and response/chunk builders."""
import math
import time
import uuid

from common.api_common import ApiError
from common.openai_tools import call_arguments, check_tool_turns

ROLES = ("system", "user", "assistant")
# name: (type, min, max). Ranges follow OpenAI where it has the parameter.
PARAM_RANGES = {
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.0, 1.0),
    "top_k": (int, 0, 1000),
    "repetition_penalty": (float, 0.01, 10.0),
    "max_tokens": (int, 1, 1 << 20),
    "seed": (int, -(1 << 63), (1 << 63) - 1),
}
MAX_STOP = 4


def parse_param(name, value, from_query=False):
    """One sampling parameter, type- and range-checked. Query strings arrive as text."""
    kind, lo, hi = PARAM_RANGES[name]
    if from_query and isinstance(value, str):
        try:
            value = float(value) if kind is float else int(value)
        except ValueError:
            raise ApiError(400, f"'{name}' must be a {kind.__name__}, got {value[:40]!r}.",
                           code="invalid_parameter", param=name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and isinstance(value, float)
                                                                         and not value.is_integer()):
        raise ApiError(400, f"'{name}' must be a {kind.__name__}, got {type(value).__name__}.",
                       code="invalid_parameter", param=name)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be between {lo} and {hi}, got {value}.",
                       code="invalid_parameter", param=name)
    return kind(value)


def parse_params(src: dict, defaults: dict, from_query=False) -> dict:
    """Sampling parameters from a JSON body or query string, over the given defaults."""
    out = dict(defaults)
    for name in PARAM_RANGES:
        value = src.get(name)
        if name == "max_tokens" and value is None:
            value = src.get("max_completion_tokens")  # the newer OpenAI name
        if value is not None and value != "":
            out[name] = parse_param(name, value, from_query)
    return out


def content_text(content, where):
    """A message's text: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"] for p in content)
    raise ApiError(400, f"{where}.content must be a string or a list of text parts.",
                   code="invalid_message", param="messages")


# Fields that would change the answer and that no model here honours: a 400, never a silent drop.
# name -> the values that are the same as leaving the field out.
UNSUPPORTED = {"n": (None, 1), "best_of": (None, 1), "logit_bias": (None, {}), "presence_penalty": (None, 0),
               "frequency_penalty": (None, 0), "functions": (None, []), "function_call": (None,),
               "audio": (None,), "prediction": (None,), "modalities": (None, ["text"]), "web_search_options": (None,),
               # other servers' sampling and grammar fields (llama.cpp, vLLM): response_format does that here
               "min_p": (None, 0), "typical_p": (None, 1), "grammar": (None,), "json_schema": (None,),
               "guided_json": (None,), "guided_regex": (None,), "guided_choice": (None,), "guided_grammar": (None,)}
# Accepted and ignored: they do not change the answer (bookkeeping, routing, caching hints).
HARMLESS = ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
            "safety_identifier", "reasoning_effort", "verbosity")


def reject_unsupported(body: dict):
    for name, neutral in UNSUPPORTED.items():
        value = body.get(name)
        if value not in neutral:
            hint = " Use 'tools' instead." if name in ("functions", "function_call") else ""
            raise ApiError(400, f"'{name}' is not supported here (got {str(value)[:40]}): leave it out.{hint}",
                           code="unsupported_parameter", param=name)


def parse_tool_message(m: dict, where: str) -> dict:
    """qwen_server only: a `tool` result, or an assistant message that made tool calls."""
    if m.get("role") == "tool":
        return {"role": "tool", "content": content_text(m.get("content"), where),
                "tool_call_id": str(m.get("tool_call_id") or "")}
    calls = m.get("tool_calls")
    if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                              and isinstance(c["function"].get("name"), str)
                                              and isinstance(c.get("id"), (str, type(None))) for c in calls):
        raise ApiError(400, f"{where}.tool_calls must be a list of {{id, type, function: {{name, arguments}}}}.",
                       code="invalid_message", param="messages")
    out = [{"id": c.get("id"), "type": "function",
            "function": {"name": c["function"]["name"],
                         "arguments": call_arguments(c["function"].get("arguments"), where)}} for c in calls]
    content = m.get("content")
    return {"role": "assistant", "content": content_text(content, where) if content is not None else "",
            "tool_calls": out}


def parse_messages(raw, tools_ok=False) -> list:
    if raw is None:
        raise ApiError(400, "'messages' is required: a list like [{\"role\": \"user\", \"content\": \"...\"}].",
                       code="missing_messages", param="messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects.",
                       code="invalid_messages", param="messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object with 'role' and 'content'.",
                           code="invalid_message", param="messages")
        role = m.get("role")
        if role == "developer":  # newer OpenAI clients send this for system prompts
            role = "system"
        if tools_ok and (role == "tool" or role == "assistant" and m.get("tool_calls")):
            out.append(parse_tool_message(m, where))
            continue
        if role not in ROLES:
            raise ApiError(400, f"{where}.role {str(role)[:40]!r} is unknown: use system, user or assistant.",
                           code="invalid_role", param="messages")
        out.append({"role": role, "content": content_text(m.get("content"), where)})
    if tools_ok:
        check_tool_turns(out)
    if out[-1]["role"] == "assistant" and not out[-1]["content"]:
        raise ApiError(400, "The last message is an empty assistant message: end with a user message.",
                       code="invalid_messages", param="messages")
    return out


def parse_stop(raw) -> list:
    if raw is None:
        return []
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or len(stops) > MAX_STOP or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"'stop' must be a non-empty string or a list of up to {MAX_STOP} of them.",
                       code="invalid_parameter", param="stop")
    return stops


def parse_chat_request(body: dict, defaults: dict, tools_ok=False) -> dict:
    """A /v1/chat/completions body -> messages, params, stream flags; 400 on anything wrong.
    tools_ok: `tool` messages and assistant tool_calls are accepted (the server renders them)."""
    reject_unsupported(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", code="invalid_parameter", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object.", code="invalid_parameter", param="stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string.", code="invalid_parameter", param="model")
    params = parse_params(body, defaults)
    params["stop"] = parse_stop(body.get("stop"))
    return {"messages": parse_messages(body.get("messages"), tools_ok), "params": params, "stream": stream,
            "include_usage": bool(opts.get("include_usage")), "model": model}


def new_id():
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def completion(cid, model, text, finish_reason, usage, logprobs=None, tool_calls=None):
    message = {"role": "assistant", "content": text}
    if tool_calls:
        message.update(content=text or None, tool_calls=tool_calls)
    choice = {"index": 0, "message": message, "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage}


def chunk(cid, model, delta=None, finish_reason=None, usage=None, logprobs=None):
    """One chat.completion.chunk; with usage and no delta it is the usage-only last chunk."""
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [] if usage is not None else [{"index": 0, "delta": delta or {},
                                                     "finish_reason": finish_reason}]}
    if logprobs is not None and out["choices"]:
        out["choices"][0]["logprobs"] = {"content": logprobs}
    if usage is not None:
        out["usage"] = usage
    return out


def usage_with_timings(u: dict) -> dict:
    """OpenAI usage plus Ollama-like timings: prefill ms, decode ms, tok/s."""
    p, c = u.get("prompt_tokens", 0), u.get("completion_tokens", 0)
    decode_ms = u.get("decode_ms") or 0
    out = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
           "timings": {"prompt_tokens": p, "prefill_ms": u.get("prefill_ms"), "generated_tokens": c,
                       "decode_ms": decode_ms,
                       "tokens_per_second": round(c / decode_ms * 1000, 2) if decode_ms and c else None}}
    if u.get("cached_tokens") is not None:  # prompt tokens whose KV cache an earlier request left (llama.cpp)
        out["prompt_tokens_details"] = {"cached_tokens": u["cached_tokens"]}
    return out
