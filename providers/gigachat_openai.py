"""OpenAI's fields that GigaChat spells differently: `tools` / `tool_choice` as GigaChat functions and
function_call, tool turns as its `function` messages, its function_call answers as OpenAI `tool_calls`.
(`stop`, which GigaChat's API lacks, is cut by common/stop_strings.py, as in qwen_server's engines.)"""
import json
import uuid

from common.api_common import ApiError
from common.openai_tools import parse_tool_choice, parse_tools


def _bad(param, message):
    return ApiError(400, message, code="unsupported_parameter", param=param)


def functions_payload(shaping):
    """{"functions", "function_call"} for the SDK's Chat from OpenAI's tools / tool_choice ({} when none)."""
    tools = parse_tools(shaping.get("tools"))
    choice = parse_tool_choice(shaping.get("tool_choice"), tools)
    if not tools:
        return {}
    functions = [{k: t["function"][k] for k in ("name", "description", "parameters") if t["function"].get(k)}
                 for t in tools]
    for f in functions:
        if isinstance(f.get("parameters"), dict):
            f["parameters"] = typed(f["parameters"])
    if choice.mode in ("auto", "none"):
        return {"functions": functions, "function_call": choice.mode}
    if choice.mode == "required":  # GigaChat can force one named function, not "any of them"
        if len(functions) != 1:
            raise _bad("tool_choice", "GigaChat cannot force 'some' tool call: with tool_choice 'required' send one "
                                      "tool, or name the function ({\"type\": \"function\", \"function\": {\"name\": "
                                      "...}}), or use 'auto'.")
        return {"functions": functions, "function_call": {"name": functions[0]["name"]}}
    return {"functions": functions, "function_call": {"name": choice.name}}


def typed(schema):
    """A JSON schema whose properties all say their type: the SDK's model of a property defaults a
    missing type to "object", which would tell GigaChat to answer an object for an enum or for an
    optional field (JSON schema's anyOf [T, null], as pydantic and LangChain write it)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    kinds = out.get("type")
    if isinstance(kinds, list) and len([k for k in kinds if k != "null"]) == 1:  # ["string", "null"]: optional
        out["type"] = next(k for k in kinds if k != "null")
    if "type" not in out:
        branches = [b for b in out.get("anyOf") or out.get("oneOf") or () if isinstance(b, dict)
                    and b.get("type") != "null"]
        if branches:
            out = {**{k: v for k, v in out.items() if k not in ("anyOf", "oneOf")}, **branches[0]}
        elif out.get("enum"):
            kinds = {bool: "boolean", int: "integer", float: "number", str: "string"}
            out["type"] = kinds.get(type(out["enum"][0]), "string")
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: typed(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = typed(out["items"])
    return out


def _result_content(text):
    """GigaChat wants a function's result as a JSON object; plain text goes in {"result": text}."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return text if isinstance(value, dict) else json.dumps({"result": text}, ensure_ascii=False)


def function_messages(messages):
    """OpenAI messages with tool turns (as parse_messages left them: checked) -> GigaChat's: an assistant's
    tool_calls become one assistant message a call (GigaChat makes one call a turn), each followed by its
    `function` result."""
    out, calls = [], {}  # calls: tool_call_id -> (name, arguments) not yet answered
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            if m.get("content"):
                out.append({"role": "assistant", "content": m["content"]})
            for c in m["tool_calls"]:
                calls[c.get("id")] = (c["function"]["name"], c["function"]["arguments"])
        elif m["role"] == "tool":  # (answering an earlier call: openai_tools.check_tool_turns)
            name, args = calls.pop(m["tool_call_id"])
            out += [{"role": "assistant", "content": "", "function_call": {"name": name, "arguments": args}},
                    {"role": "function", "name": name, "content": _result_content(m["content"])}]
        else:
            out.append(m)
    return out


def tool_calls(function_call):
    """GigaChat's function_call (the SDK's FunctionCall) as OpenAI tool_calls, with a new id."""
    if function_call is None:
        return None
    return [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
             "function": {"name": function_call.name,
                          "arguments": json.dumps(function_call.arguments or {}, ensure_ascii=False)}}]


def finish_reason(reason):
    return "tool_calls" if reason == "function_call" else reason
