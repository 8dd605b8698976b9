"""What an OpenAI-compatible upstream (qwen_server, vLLM, TabbyAPI...) answers, checked before the gateway
relies on it: a reply of the wrong shape raises OddReply with what was wrong, which the caller turns into
a 502 that counts against that upstream (a request) or marks it unhealthy (the poller), never a crash."""

MAX_TOOL_CALLS = 64  # tool calls in one answer; a streamed delta may not name a higher index


class OddReply(ValueError):
    """An upstream's answer that is not what the OpenAI API (or qwen_server's /status) promises."""


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def _object(value, what) -> dict:
    if not isinstance(value, dict):
        raise OddReply(f"{what} is a JSON {_kind(value)}, not an object")
    return value


def _count(value, what, positive=False):
    """A whole number (None when left out); "lots", -1 or true are odd."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 if positive else 0):
        raise OddReply(f"{what} is {str(value)[:40]!r}, not a {'positive' if positive else 'non-negative'} integer")
    return value


def status(st) -> dict:
    """qwen_server's /status: an object; queue_length and max_seq_len whole numbers when given."""
    _object(st, "/status")
    _count(st.get("queue_length"), "/status queue_length")
    _count(st.get("max_seq_len"), "/status max_seq_len", positive=True)
    return st


def model_ids(data) -> list:
    """The ids of /v1/models: {"data": [{"id": str}, ...]}."""
    models = _object(data, "/v1/models").get("data")
    if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in models):
        raise OddReply(f"/v1/models data is {str(models)[:60]!r}, not a list of {{\"id\": ...}} objects")
    return [m["id"] for m in models]


def _text(value, what):
    if value is not None and not isinstance(value, str):
        raise OddReply(f"{what} is a JSON {_kind(value)}, not a string")
    return value


def tool_calls(calls, what, streamed=False):
    """A list of at most MAX_TOOL_CALLS call objects; a streamed piece's index below MAX_TOOL_CALLS."""
    if calls is None:
        return None
    if not isinstance(calls, list) or len(calls) > MAX_TOOL_CALLS or not all(isinstance(c, dict) for c in calls):
        raise OddReply(f"{what} tool_calls is not a list of up to {MAX_TOOL_CALLS} objects")
    for c in calls:
        if streamed and not (isinstance(c.get("index"), int) and 0 <= c["index"] < MAX_TOOL_CALLS):
            raise OddReply(f"{what} tool_calls index {str(c.get('index'))[:20]} is not 0 to {MAX_TOOL_CALLS - 1}")
        fn = _object(c.get("function", {}), f"{what} tool_calls function")
        _text(fn.get("name"), f"{what} function name")
        _text(fn.get("arguments"), f"{what} function arguments")
    return calls


def completion(data) -> dict:
    """The first choice of a chat or text completion, checked: {"choice", "message"}."""
    choices = _object(data, "The answer").get("choices")
    if not isinstance(choices, list) or not choices:
        raise OddReply("the answer has no choices")
    choice = _object(choices[0], "choices[0]")
    message = _object(choice.get("message") or {}, "choices[0].message")
    _text(choice.get("text"), "choices[0].text")
    _text(message.get("content"), "choices[0].message.content")
    tool_calls(message.get("tool_calls"), "choices[0].message")
    _object(data.get("usage") or {}, "usage")
    return {"choice": choice, "message": message}


def stream_chunk(obj) -> dict:
    """One streamed chunk, its choices' deltas checked."""
    _object(obj, "A streamed chunk")
    choices = obj.get("choices") or []
    if not isinstance(choices, list):
        raise OddReply("a streamed chunk's choices is not a list")
    for choice in choices:
        delta = _object(_object(choice, "a streamed choice").get("delta") or {}, "a streamed delta")
        _text(choice.get("text"), "a streamed text")
        _text(delta.get("content"), "a streamed delta's content")
        tool_calls(delta.get("tool_calls"), "a streamed delta's", streamed=True)
    _object(obj.get("usage") or {}, "a streamed usage")
    return obj
