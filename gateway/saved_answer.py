"""An answer as history keeps it: its text, then each tool call it made, on a line of its own."""
import json

from common.api_common import ApiError
from providers.openai_reply import MAX_TOOL_CALLS


def saved_text(text, tool_calls):
    """An answer as history keeps it: its text, then each tool call it made as Qwen writes them,
    <tool_call>{"id", "name", "arguments"}</tool_call> on a line of its own (readable, and lossless JSON)."""
    lines = [text] if text else []
    for c in tool_calls or ():
        f = c.get("function") or {}
        args = f.get("arguments")
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            pass  # (kept as the string it was)
        lines.append("<tool_call>" + json.dumps({"id": c.get("id"), "name": f.get("name"), "arguments": args},
                                                ensure_ascii=False) + "</tool_call>")
    return "\n".join(lines)


def merge_tool_call_deltas(calls, deltas):
    """OpenAI's streamed tool_calls pieces (by index: id and name once, arguments in pieces) into calls."""
    for d in deltas:
        i = d.get("index", len(calls))
        if not isinstance(i, int) or not 0 <= i < MAX_TOOL_CALLS:  # (a list a million entries long, otherwise)
            raise ApiError(502, f"The upstream sent a tool call numbered {str(i)[:20]}: at most {MAX_TOOL_CALLS} "
                                f"calls an answer.", type="upstream_error", code="upstream_bad_answer")
        while len(calls) <= i:
            calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        c, f = calls[i], d.get("function") or {}
        c["id"] = d.get("id") or c["id"]
        c["function"]["name"] += f.get("name") or ""
        c["function"]["arguments"] += f.get("arguments") or ""
    return calls
