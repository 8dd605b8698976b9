"""OpenAI's fields that GigaChat spells differently: `tools` / `tool_choice` as GigaChat functions and
function_call, tool turns as its `function` messages, its function_call answers as OpenAI `tool_calls`.
(`stop`, which GigaChat's API lacks, is cut by common/stop_strings.py, as in qwen_server's engines.)"""
import json
import uuid

from common.api_common import ApiError


def _bad(param, message):
    return ApiError(400, message, code="unsupported_parameter", param=param)


def functions_payload(shaping):
    """{"functions", "function_call"} for the SDK's Chat from OpenAI's tools / tool_choice ({} when none)."""
    tools, choice = shaping.get("tools"), shaping.get("tool_choice")
    if not tools:
        if choice not in (None, "none", "auto"):
            raise _bad("tool_choice", "'tool_choice' needs 'tools': send the functions the model may call.")
        return {}
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("function"), dict)
                                              and isinstance(t["function"].get("name"), str) for t in tools):
        raise ApiError(400, "'tools' must be a list of {\"type\": \"function\", \"function\": {\"name\": ..., "
                            "\"parameters\": {JSON schema}}}.", code="invalid_parameter", param="tools")
    functions = [{k: t["function"][k] for k in ("name", "description", "parameters") if t["function"].get(k)}
                 for t in tools]
    for f in functions:
        if isinstance(f.get("parameters"), dict):
            f["parameters"] = typed(f["parameters"])
    names = [f["name"] for f in functions]
    if choice in (None, "auto", "none"):
        return {"functions": functions, "function_call": choice or "auto"}
    if choice == "required":  # GigaChat can force one named function, not "any of them"
        if len(names) != 1:
            raise _bad("tool_choice", "GigaChat cannot force 'some' tool call: with tool_choice 'required' send one "
                                      "tool, or name the function ({\"type\": \"function\", \"function\": {\"name\": "
                                      "...}}), or use 'auto'.")
        return {"functions": functions, "function_call": {"name": names[0]}}
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if name not in names:
        raise ApiError(400, f"'tool_choice' must be none, auto, required or {{\"type\": \"function\", \"function\": "
                            f"{{\"name\": one of {names}}}}}.", code="invalid_parameter", param="tool_choice")
    return {"functions": functions, "function_call": {"name": name}}


def typed(schema):
    """A JSON schema whose properties all say their type: the SDK's model of a property defaults a
    missing type to "object", which would tell GigaChat to answer an object for an enum or for an
    optional field (JSON schema's anyOf [T, null], as pydantic and LangChain write it)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
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


def _arguments(raw):
    """A call's arguments as parse_tool_message left them (parsed, or a JSON string inside a JSON string)."""
    try:
        raw = raw or "{}"
        args = json.loads(raw) if isinstance(raw, str) else raw  # a list or a number: a 400 below, not a crash
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise ApiError(400, "tool_calls[].function.arguments must be a JSON object (as a string).",
                       code="invalid_message", param="messages")
    return args


def _result_content(text):
    """GigaChat wants a function's result as a JSON object; plain text goes in {"result": text}."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return text if isinstance(value, dict) else json.dumps({"result": text}, ensure_ascii=False)


def function_messages(messages):
    """OpenAI messages with tool turns -> GigaChat's: an assistant's tool_calls become one assistant
    message a call (GigaChat makes one call a turn), each followed by its `function` result."""
    out, calls = [], {}  # calls: tool_call_id -> (name, arguments) not yet answered
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            if m.get("content"):
                out.append({"role": "assistant", "content": m["content"]})
            for c in m["tool_calls"]:
                calls[c.get("id")] = (c["function"]["name"], _arguments(c["function"].get("arguments")))
        elif m["role"] == "tool":
            if m.get("tool_call_id") not in calls:
                raise ApiError(400, f"A tool message answers tool_call_id {m.get('tool_call_id')!r}, which is in no "
                                    f"earlier assistant message's tool_calls.", code="invalid_message",
                               param="messages")
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
