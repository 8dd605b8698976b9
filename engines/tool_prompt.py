"""Tools for chat templates that have no tool section of their own (SmolLM2's, the tiny test Qwen2's).

A template that mentions `tools` (Qwen2.5's) renders them itself. For any other template the tools and
the tool turns are written into plain messages the way Qwen2.5's template writes them, so the model is
asked the same thing and answers in the same `<tool_call>{json}</tool_call>` form that the server parses:
- the tool list goes at the end of the system message (one is added if there is none);
- an assistant turn's calls follow its text as `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`;
- consecutive `tool` results become one user turn of `<tool_response>\\n...\\n</tool_response>` blocks."""
import json

TOOLS_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
                "\"arguments\": <args-json-object>}\n</tool_call>")


def tools_block(tools) -> str:
    return TOOLS_HEADER + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools) + TOOLS_FOOTER


def call_text(call) -> str:
    fn = call["function"]
    return ("<tool_call>\n" + json.dumps({"name": fn["name"], "arguments": fn["arguments"]}, ensure_ascii=False)
            + "\n</tool_call>")


def uses_tools(messages, tools) -> bool:
    return bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def plain_messages(messages, tools) -> list:
    """`messages` (+ `tools`) as system/user/assistant messages with text content only."""
    out = [dict(m) for m in messages]
    if tools:
        if out and out[0]["role"] == "system":
            out[0]["content"] = out[0]["content"] + "\n\n" + tools_block(tools)
        else:
            out.insert(0, {"role": "system", "content": tools_block(tools)})
    merged = []
    for m in out:
        if m["role"] == "tool":
            block = "<tool_response>\n" + m["content"] + "\n</tool_response>"
            if merged and merged[-1].get("from_tool"):
                merged[-1]["content"] += "\n" + block
            else:
                merged.append({"role": "user", "content": block, "from_tool": True})
        elif m.get("tool_calls"):
            parts = ([m["content"]] if m["content"] else []) + [call_text(c) for c in m["tool_calls"]]
            merged.append({"role": "assistant", "content": "\n".join(parts)})
        else:
            merged.append({"role": m["role"], "content": m["content"]})
    return [{"role": m["role"], "content": m["content"]} for m in merged]
