"""What no single request may do to qwen_server or the gateway (issue 20): a nested JSON schema is prepared
in linear time and one past the limits is a 400 within milliseconds, for response_format and forced tool
parameters alike; a $ref loop is a 400; a malformed tool_choice, a tool message answering no call and tool
call arguments that are no JSON object are 400s on both servers (GigaChat's path too), and leave every
upstream healthy; /v1/completions refuses the chat endpoint's fields instead of dropping them.
Real servers: the tiny Qwen2 (2k context: room for a tool list), the gateway on it twice (two upstreams
that are the same server, so the circuit breaker is in play), the fake GigaChat."""
import threading
import time

import pytest
import requests

from conftest import start_gateway
from helpers import stop_process
from test_upstreams import FAST_BREAKER, upstream_view

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"days": {"type": "integer"}}, "required": ["days"]}}}
USER = [{"role": "user", "content": "hi"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"days": 2}'}}


@pytest.fixture(scope="module")
def gw(qwen_tiny_2k, fake_gigachat, tmp_path_factory):
    url = qwen_tiny_2k.base_url
    proc = start_gateway(f"{url},{url.replace('127.0.0.1', 'localhost')}", fake_gigachat,
                         tmp_path_factory.mktemp("validation"), **FAST_BREAKER)
    yield proc
    stop_process(proc)


def post(base, path, body, timeout=30):
    t0 = time.monotonic()
    r = requests.post(base + path, json=body, timeout=timeout)
    r.elapsed_s = time.monotonic() - t0
    return r


def assert_400(r, param=None, code=None):
    assert r.status_code == 400, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    if param:
        assert err.get("param") == param, err
    if code:
        assert err["code"] == code, err
    return err


def nested(depth, leaf=None):
    s = leaf or {"type": "integer"}
    for _ in range(depth):
        s = {"type": "object", "properties": {"a": s}, "required": ["a"]}
    return s


def schema_format(schema):
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def forced_tool(schema):
    return {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}}


SHAPES = {"response_format": lambda s: {"response_format": schema_format(s)}, "forced_tool": forced_tool}


# -- 1. schema preparation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_a_deeply_nested_schema_is_prepared_in_linear_time(qwen_tiny_2k, shape):
    """Depth 30 took about 1.5 h (each level's properties were walked twice); now well under a second."""
    r = post(qwen_tiny_2k.base_url, "/v1/chat/completions",
             {"messages": USER, "max_tokens": 2, **SHAPES[shape](nested(30))}, timeout=20)
    assert r.status_code == 200, r.text[:300]
    assert r.elapsed_s < 5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("schema,words", [
    (nested(200), "deeper than 32"),
    ({"type": "object", "properties": {f"p{i}": {"enum": list(range(10))} for i in range(3000)}}, "values"),
    ({"$ref": "#"}, "refers to itself"),
    ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},
     "refers to itself"),
], ids=["depth-200", "30k-values", "self-ref", "ref-cycle"])
def test_a_schema_past_a_limit_or_in_a_loop_is_a_400_at_once(qwen_tiny_2k, gw, shape, schema, words):
    param = "response_format" if shape == "response_format" else "tools"
    for base in (qwen_tiny_2k.base_url, gw.base_url):
        r = post(base, "/v1/chat/completions", {"model": "qwen", "messages": USER, "max_tokens": 2,
                                                 **SHAPES[shape](schema)})
        assert words in assert_400(r, param)["message"]
        assert r.elapsed_s < 1.0


def test_recursion_through_a_property_is_no_loop(qwen_tiny_2k):
    tree = {"type": "object", "properties": {"child": {"$ref": "#"}, "n": {"type": "integer"}}, "required": ["n"]}
    r = post(qwen_tiny_2k.base_url, "/v1/chat/completions",
             {"messages": USER, "max_tokens": 4, "response_format": schema_format(tree)})
    assert r.status_code == 200, r.text[:300]


def test_hostile_schemas_do_not_hold_up_other_answers(qwen_tiny_2k):
    hostile = {"messages": USER, "max_tokens": 2, "response_format": schema_format(nested(31))}
    results = []
    threads = [threading.Thread(target=lambda: results.append(post(qwen_tiny_2k.base_url, "/v1/chat/completions",
                                                                   hostile).status_code)) for _ in range(6)]
    for t in threads:
        t.start()
    plain = post(qwen_tiny_2k.base_url, "/v1/chat/completions", {"messages": USER, "max_tokens": 2}, timeout=20)
    for t in threads:
        t.join(30)
    assert plain.status_code == 200 and plain.elapsed_s < 5
    assert results == [200] * 6


# -- 2. malformed tool fields ---------------------------------------------------------------------------------

BAD_CHOICES = [{"type": "function", "function": "get_weather"}, {"type": "function", "function": None},
               {"type": "function"}, {"type": "function", "function": {"name": 5}}, {"type": "tool"}, 7, [], "any",
               {"type": "function", "function": {"name": "nope"}}]


@pytest.mark.parametrize("choice", BAD_CHOICES, ids=[str(i) for i in range(len(BAD_CHOICES))])
def test_a_malformed_tool_choice_is_a_400_everywhere_and_takes_no_upstream_out(qwen_tiny_2k, gw, choice):
    body = {"messages": USER, "max_tokens": 2, "tools": [WEATHER], "tool_choice": choice}
    assert_400(post(qwen_tiny_2k.base_url, "/v1/chat/completions", body), "tool_choice")
    for model in ("qwen", "gigachat"):
        assert_400(post(gw.base_url, "/v1/chat/completions", {**body, "model": model}), "tool_choice")
    url = qwen_tiny_2k.base_url
    for u in (url, url.replace("127.0.0.1", "localhost")):
        view = upstream_view(gw, type("U", (), {"base_url": u}))
        assert view["healthy"] and view["errors"] == 0, view
    r = post(gw.base_url, "/v1/chat/completions", {"model": "qwen", "messages": USER, "max_tokens": 2})
    assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize("tools", [[{"type": "function", "function": {"name": ""}}], [{"function": "f"}], {"a": 1},
                                   [{"type": "function", "function": {"name": "f", "parameters": []}}], "x"])
def test_malformed_tools_are_a_400_on_both_routes(qwen_tiny_2k, gw, tools):
    body = {"messages": USER, "max_tokens": 2, "tools": tools}
    assert_400(post(qwen_tiny_2k.base_url, "/v1/chat/completions", body), "tools")
    for model in ("qwen", "gigachat"):
        assert_400(post(gw.base_url, "/v1/chat/completions", {**body, "model": model}), "tools")


# -- 12. tool turns and the completions endpoint ---------------------------------------------------------------

TURNS = {
    "no-call": USER + [{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
    "other-id": USER + [{"role": "assistant", "tool_calls": [CALL]},
                        {"role": "tool", "tool_call_id": "call_2", "content": "sunny"}],
    "answered-twice": USER + [{"role": "assistant", "tool_calls": [CALL]},
                              {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                              {"role": "tool", "tool_call_id": "call_1", "content": "rainy"}],
    "args-list": USER + [{"role": "assistant", "tool_calls": [dict(CALL, function={"name": "f", "arguments": "[1]"})]},
                         {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
    "args-number": USER + [{"role": "assistant", "tool_calls": [dict(CALL, function={"name": "f", "arguments": "7"})]},
                           {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
}


@pytest.mark.parametrize("case", TURNS)
def test_tool_turns_that_do_not_pair_up_are_a_400_on_every_route(qwen_tiny_2k, gw, case):
    body = {"messages": TURNS[case], "max_tokens": 2, "tools": [WEATHER]}
    assert_400(post(qwen_tiny_2k.base_url, "/v1/chat/completions", body), "messages", "invalid_message")
    for model in ("qwen", "gigachat"):
        assert_400(post(gw.base_url, "/v1/chat/completions", {**body, "model": model}), "messages")


def test_a_paired_tool_turn_is_accepted(qwen_tiny_2k):
    msgs = USER + [{"role": "assistant", "content": None, "tool_calls": [CALL]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    r = post(qwen_tiny_2k.base_url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 2, "tools": [WEATHER]})
    assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize("field,value", [("response_format", {"type": "json_object"}), ("top_logprobs", 2),
                                         ("min_p", 0.1), ("grammar", "root ::= \"a\""), ("stream_options", "yes"),
                                         ("stream_options", [1]), ("tools", [WEATHER])])
def test_completions_refuse_what_they_would_drop(qwen_tiny_2k, gw, field, value):
    body = {"model": "qwen", "prompt": "def f():", "max_tokens": 2, field: value}
    for base in (qwen_tiny_2k.base_url, gw.base_url):
        assert_400(post(base, "/v1/completions", body), field)


@pytest.mark.parametrize("field,value", [("min_p", 0.1), ("grammar", "root ::= \"a\"")])
def test_chat_refuses_other_servers_sampling_fields(qwen_tiny_2k, gw, field, value):
    body = {"model": "qwen", "messages": USER, "max_tokens": 2, field: value}
    for base in (qwen_tiny_2k.base_url, gw.base_url):
        assert_400(post(base, "/v1/chat/completions", body), field, "unsupported_parameter")


def test_tool_parameters_gigachat_cannot_hold_are_a_400_there(gw):
    """GigaChat's SDK models a property's type as one string: a list of types was a 502 "GigaChat sent an
    answer this gateway cannot read" (the SDK refused the request, before sending it)."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": ["string", "integer"]}}}}}
    r = post(gw.base_url, "/v1/chat/completions", {"model": "gigachat", "messages": USER, "tools": [tool]})
    assert "functions" in assert_400(r, "tools")["message"]
    optional = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": ["string", "null"]}}}}}  # pydantic's optional field
    r = post(gw.base_url, "/v1/chat/completions", {"model": "gigachat", "messages": USER, "tools": [optional]})
    assert r.status_code == 200, r.text[:300]
