"""qwen_server's side of OpenAI's answer-shaping fields: `response_format`, `tools` / `tool_choice` and
`logprobs` (request -> grammar, tools to render, logprobs settings), and the parser that turns the model's
`<tool_call>{"name": ..., "arguments": ...}</tool_call>` output into OpenAI `tool_calls`."""
import json
import uuid
from dataclasses import dataclass

from common import openai_tools
from common.api_common import ApiError
from common.stop_strings import partial_tail
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


@dataclass(frozen=True)
class ToolCall:
    """One call the model made, parsed once from its `<tool_call>` block; `arguments` is JSON text, as
    OpenAI sends it. It stays this object until the wire: message_entry() or stream_deltas()."""
    index: int
    id: str
    name: str
    arguments: str

    def message_entry(self) -> dict:
        """The call in a whole answer's message.tool_calls (no index there, as OpenAI's)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def stream_deltas(self) -> tuple:
        """The call streamed OpenAI's way: a delta with its id, type and name (arguments ""), then one
        with its arguments."""
        return ({"index": self.index, "id": self.id, "type": "function",
                 "function": {"name": self.name, "arguments": ""}},
                {"index": self.index, "function": {"arguments": self.arguments}})


def parse_call(body: str, index: int):
    """The ToolCall of one `<tool_call>` body, or None if it is not a call."""
    try:
        call = json.loads(body)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    args = call.get("arguments", {})
    return ToolCall(index, "call_" + uuid.uuid4().hex[:24], call["name"],
                    args if isinstance(args, str) else json.dumps(args, ensure_ascii=False))


class ToolCallStream:
    """Text deltas in -> events out: text (str) and calls (ToolCall). Text that may be the start of
    `<tool_call>` is held back; a call is sent once its `</tool_call>` has arrived. A block that does not
    parse as a call goes out as text. Whitespace between calls (or after the last) is not content: it is
    held until text follows it, so the events do not depend on where the chunks were cut."""

    def __init__(self):
        self.buf = self.gap = ""
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
            call = parse_call(self.buf[at + len(OPEN):end].strip(), self.calls)
            if call:
                out.append(call)
                self.calls, self.gap = self.calls + 1, ""
            else:
                self._text(out, self.buf[at:end + len(CLOSE)])
            self.buf = self.buf[end + len(CLOSE):]
        return out

    def finish(self):
        out, rest, self.buf = [], self.buf, ""
        self._text(out, rest)
        return out

    def _text(self, out, text):
        if self.calls:
            self.gap += text
            if not self.gap.strip():
                return
            text, self.gap = self.gap, ""
        if text:
            out.append(text)


def answer_events(chunks, tool_mode):
    """Engine chunks -> (chunk, its events): the answer's text (str) and, when tools are on, its calls
    (ToolCall), each block parsed once. The stream (deltas) and the whole answer (collect) are both
    built from these events."""
    parser = ToolCallStream() if tool_mode else None
    for c in chunks:
        if parser is None:
            events = [c.text] if c.text else []
        else:
            events = parser.feed(c.text) if c.text else []
            if c.finish_reason:
                events += parser.finish()
        yield c, events


def finish_reason(reason, made_calls):
    return "tool_calls" if made_calls and reason == "stop" else reason


def deltas(chunks, tool_mode):
    """Engine chunks -> (delta, logprobs, finish_reason, usage) for the stream, OpenAI's way: text as
    content deltas; a call as its two deltas (ToolCall.stream_deltas); finish_reason "tool_calls" when
    the answer made calls."""
    calls = 0
    for c, events in answer_events(chunks, tool_mode):
        lp = c.logprobs
        for e in events:
            if isinstance(e, ToolCall):
                head, args = e.stream_deltas()
                yield {"tool_calls": [head]}, lp, None, None
                yield {"tool_calls": [args]}, None, None, None
                calls += 1
            else:
                yield {"content": e}, lp, None, None
            lp = None
        if lp:
            yield {}, lp, None, None
        if c.finish_reason:
            yield None, None, finish_reason(c.finish_reason, calls), c.usage or {}


def collect(chunks, tool_mode):
    """Engine chunks -> (content, tool_calls, logprobs list, finish_reason, usage) of a whole answer;
    with calls, the content is stripped (None when nothing is left)."""
    texts, calls, lps, last = [], [], [], None
    for last, events in answer_events(chunks, tool_mode):
        lps.extend(last.logprobs or [])
        for e in events:
            (calls if isinstance(e, ToolCall) else texts).append(e)
    content = "".join(texts)
    if calls:
        content = content.strip() or None
    return (content, [c.message_entry() for c in calls], lps, finish_reason(last.finish_reason, calls),
            last.usage or {})
