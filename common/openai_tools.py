"""OpenAI's tool fields, checked the same way for qwen_server and for both of the gateway's providers:
`tools`, `tool_choice`, the arguments of an assistant's tool calls, and tool results that answer a call.
Every malformed value is a 400 that says what to send."""
import json
from dataclasses import dataclass
from typing import Optional

from common.api_common import ApiError

TOOLS_SHAPE = ("'tools' must be a list of {\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": "
               "{JSON schema}}}.")


@dataclass(frozen=True)
class ToolChoice:
    """What tool_choice asks for: mode "none", "auto", "required" or "named" (then `name`)."""
    mode: str
    name: Optional[str] = None


def _bad(param, message):
    return ApiError(400, message, code="invalid_parameter", param=param)


def parse_tools(tools) -> list:
    """The `tools` list ([] when none), each {"type": "function", "function": {"name": str, "parameters": {...},
    "description": str}} (type, parameters and description optional)."""
    if tools is None:
        return []
    if not isinstance(tools, list) or not all(_is_tool(t) for t in tools):
        raise _bad("tools", TOOLS_SHAPE)
    return tools


def _is_tool(t) -> bool:
    if not isinstance(t, dict):
        return False
    fn = t.get("function")
    return (t.get("type", "function") == "function" and isinstance(fn, dict) and isinstance(fn.get("name"), str)
            and bool(fn["name"]) and isinstance(fn.get("parameters", {}), dict)
            and isinstance(fn.get("description", ""), (str, type(None))))


def parse_tool_choice(choice, tools: list) -> ToolChoice:
    """tool_choice against the tools sent (parse_tools'): none/auto (also when left out), required, or
    {"type": "function", "function": {"name": one of the tools}}."""
    names = [t["function"]["name"] for t in tools]
    if not tools:
        if choice not in (None, "none", "auto"):
            raise _bad("tool_choice", "'tool_choice' needs 'tools': send the functions the model may call.")
        return ToolChoice("none")
    if choice is None:
        return ToolChoice("auto")
    if choice in ("none", "auto", "required"):
        return ToolChoice(choice)
    fn = choice.get("function") if isinstance(choice, dict) and choice.get("type", "function") == "function" \
        else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or name not in names:
        raise _bad("tool_choice", f"'tool_choice' must be \"none\", \"auto\", \"required\" or "
                                  f"{{\"type\": \"function\", \"function\": {{\"name\": one of {names}}}}}.")
    return ToolChoice("named", name)


def call_arguments(raw, where):
    """A tool call's arguments as an object: OpenAI sends a JSON object as a string (an object itself is
    taken too). A list, a number, a string or text that is no JSON is a 400."""
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        args = None
    if raw in (None, ""):
        args = {}
    if not isinstance(args, dict):
        raise ApiError(400, f"{where}.tool_calls[].function.arguments must be a JSON object (as a string), "
                            f"like \"{{\\\"city\\\": \\\"Paris\\\"}}\".", code="invalid_message", param="messages")
    return args


def check_tool_turns(messages):
    """Every `tool` message answers a call an earlier assistant message made, once."""
    open_calls = set()
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            open_calls.update(c.get("id") for c in m.get("tool_calls") or ())
        elif m["role"] == "tool":
            if m.get("tool_call_id") not in open_calls:
                raise ApiError(400, f"messages[{i}] answers tool_call_id {m.get('tool_call_id')!r}, which is in no "
                                    f"earlier assistant message's tool_calls (or was answered already): send the "
                                    f"assistant message with that call before its result.", code="invalid_message",
                               param="messages")
            open_calls.discard(m["tool_call_id"])
