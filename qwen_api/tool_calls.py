"""qwen_server's side of OpenAI's answer-shaping fields: `response_format`, `tools` / `tool_choice` and
`logprobs` (request -> grammar, tools to render, logprobs settings), and the parser that turns the model's
`<tool_call>{"name": ..., "arguments": ...}</tool_call>` output into OpenAI `tool_calls`."""
import json
import uuid

from common import openai_tools
from common.api_common import ApiError
from common.stop_strings import partial_tail
from qwen_api import completions
from engines.constrained import grammar_error, json_grammar, lark_grammar, tool_call_lark
from engines.json_schema import SchemaError, check_time, preparing

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_TOP_LOGPROBS = 20


def _bad(param, message):
    return ApiError(400, message, code="invalid_parameter", param=param)


def response_format_grammar(rf):
    if rf is None or rf == {"type": "text"}:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "json_object":
        return json_grammar({"type": "object"})
    if kind == "json_schema" and isinstance(rf.get("json_schema"), dict) \
            and isinstance(rf["json_schema"].get("schema", {}), dict):
        return json_grammar(rf["json_schema"].get("schema") or {"type": "object"})
    raise _bad("response_format", "'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                                  "{\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}.")


def parse_tools(body):
    """(tools, mode, forced name): mode is None (no tools), "auto", "required" or "named"."""
    tools = openai_tools.parse_tools(body.get("tools"))
    choice = openai_tools.parse_tool_choice(body.get("tool_choice"), tools)
    if choice.mode == "none":
        return None, None, None  # not rendered, not parsed: the model answers in text
    return tools, choice.mode, choice.name


def parse_shaping(body: dict, tag_ids=None, cancel=None) -> dict:
    """The request's grammar (llguidance), tools to render, tool mode, logprobs settings; 400 when
    something is malformed (every engine honours all of them). `tag_ids`: the engine's tool_tag_ids();
    `cancel` (an Event, set when the client leaves) stops the schema preparation."""
    tools, mode, name = parse_tools(body)
    forced = mode in ("required", "named")
    with preparing(cancel):
        try:
            grammar = response_format_grammar(body.get("response_format"))
            if forced:
                if grammar is not None:
                    raise _bad("response_format", "A forced tool call and 'response_format' cannot both shape the "
                                                  "answer: drop one of them.")
                grammar = lark_grammar(tool_call_lark(tools, name, tag_ids))
            error = grammar_error(grammar) if grammar is not None else None
            check_time()
        except (SchemaError, ValueError) as e:  # (llguidance's own refusals: ValueError)
            error = str(e)
    if error:
        raise _bad("tools" if forced else "response_format", f"The JSON schema cannot be used: {error[:300]}")
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs not in (None, True, False):
        raise _bad("logprobs", "'logprobs' must be true or false.")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise _bad("top_logprobs", f"'top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}.")
    if top and not logprobs:
        raise _bad("top_logprobs", "'top_logprobs' needs 'logprobs': true.")
    return {"grammar": grammar, "tools": tools, "tool_mode": mode, "logprobs": bool(logprobs),
            "top_logprobs": top or 0}


def new_call(name, arguments, index):
    return {"index": index, "id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": name, "arguments": arguments}}


def parse_call(body: str):
    """(name, arguments JSON text) of one `<tool_call>` body, or None if it is not a call."""
    try:
        call = json.loads(body)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    args = call.get("arguments", {})
    return call["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


class ToolCallStream:
    """Text deltas in -> ("text", str) and ("call", {index, id, type, function}) events out. Text that may
    be the start of `<tool_call>` is held back; a call is sent once its `</tool_call>` has arrived. A block
    that does not parse as a call goes out as text."""

    def __init__(self):
        self.buf = ""
        self.calls = 0

    def feed(self, text):
        self.buf += text
        out = []
        while self.buf:
            at = self.buf.find(OPEN)
            if at < 0:
                keep = partial_tail(self.buf, (OPEN,))
                self._text(out, self.buf[:len(self.buf) - keep])
                self.buf = self.buf[len(self.buf) - keep:]
                break
            self._text(out, self.buf[:at])
            end = self.buf.find(CLOSE, at)
            if end < 0:
                self.buf = self.buf[at:]
                break
            parsed = parse_call(self.buf[at + len(OPEN):end].strip())
            if parsed:
                out.append(("call", new_call(*parsed, self.calls)))
                self.calls += 1
            else:
                self._text(out, self.buf[at:end + len(CLOSE)])
            self.buf = self.buf[end + len(CLOSE):]
        return out

    def finish(self):
        out, self.buf = [("text", self.buf)] if self.buf else [], ""
        return out

    def _text(self, out, text):
        if text and not (self.calls and not text.strip()):  # whitespace between calls is not content
            out.append(("text", text))


def split_answer(text):
    """A whole answer -> (content or None, tool_calls list)."""
    s = ToolCallStream()
    events = s.feed(text) + s.finish()
    calls = [e[1] for e in events if e[0] == "call"]
    content = "".join(e[1] for e in events if e[0] == "text")
    for c in calls:
        c.pop("index")
    return (content.strip() or None) if calls else content, calls


def deltas(chunks, tool_mode):
    """Engine chunks -> (delta, logprobs, finish_reason, usage) for the stream, OpenAI's way: text as
    content deltas; a tool call as one delta with its id, type and name (arguments "") and one with
    its arguments; finish_reason "tool_calls" when the answer made calls."""
    parser = ToolCallStream() if tool_mode else None
    for c in chunks:
        events = [("text", c.text)] if c.text and parser is None else parser.feed(c.text) if c.text else []
        if c.finish_reason and parser is not None:
            events += parser.finish()
        lp = c.logprobs
        for kind, value in events:
            if kind == "text":
                yield {"content": value}, lp, None, None
            else:
                yield {"tool_calls": [{**value, "function": {"name": value["function"]["name"], "arguments": ""}}]}, \
                    lp, None, None
                yield {"tool_calls": [{"index": value["index"],
                                       "function": {"arguments": value["function"]["arguments"]}}]}, None, None, None
            lp = None
        if lp:
            yield {}, lp, None, None
        if c.finish_reason:
            finish = "tool_calls" if parser is not None and parser.calls and c.finish_reason == "stop" \
                else c.finish_reason
            yield None, None, finish, c.usage or {}


def collect(chunks, tool_mode):
    """Engine chunks -> (content, tool_calls, logprobs list or None, finish_reason, usage)."""
    text, lps, finish, usage = completions.collect(chunks)
    content, calls = split_answer(text) if tool_mode else (text, [])
    return content, calls, lps, "tool_calls" if calls and finish == "stop" else finish, usage
