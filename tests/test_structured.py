"""qwen_server with the `openai` SDK: response_format (json_object, json_schema through llguidance),
forced and automatic tools (streamed the way OpenAI streams them), logprobs, and the 400s for what the
server does not do. Real servers, real models: SmolLM2 and the tiny random Qwen2, each on both CPU engines."""
import json

import jsonschema
import pytest
from openai import BadRequestError, OpenAI

from helpers import http

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags", "role"],
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
                         "role": {"enum": ["admin", "user"]}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 16},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                                       "properties": {"zone": {"type": "string", "maxLength": 10}}}}}


@pytest.fixture(scope="module", params=["qwen_smol", "qwen_llama", "qwen_tiny_2k", "qwen_tiny_llama"])
def server(request):
    """SmolLM2 and the tiny Qwen2 (Qwen2.5's added tokens: <tool_call> is one token) on both CPU engines."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module", params=["qwen_smol", "qwen_llama"])
def smol(request):
    """SmolLM2 on both CPU engines: a real model, that ends its strings."""
    return request.getfixturevalue(request.param)


def client(proc):
    return OpenAI(base_url=proc.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(proc, **kw):
    kw.setdefault("messages", [{"role": "user", "content": "Describe a user of our site as JSON."}])
    return client(proc).chat.completions.create(model="local", **{"max_tokens": 120, **kw})


@pytest.mark.parametrize("seed", [1, 2])
def test_json_schema_answer_parses_and_matches(server, seed):
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    res = ask(server, response_format=rf, temperature=1.0, top_p=1.0, seed=seed)
    choice = res.choices[0]
    assert choice.finish_reason == "stop", choice
    jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_json_object_is_an_object_streamed(smol):
    parts = [c.choices[0].delta.content or "" for c in ask(
        smol, response_format={"type": "json_object"}, max_tokens=200, stream=True, temperature=0.0,
        messages=[{"role": "user", "content": "Give me a JSON object with the capital of France."}]) if c.choices]
    assert isinstance(json.loads("".join(parts)), dict)


def test_bad_schema_and_unknown_response_format_are_400(qwen_tiny):
    for rf in ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
               {"type": "yaml"}):
        with pytest.raises(BadRequestError) as e:
            ask(qwen_tiny, response_format=rf)
        assert e.value.body["param"] == "response_format"


def check_call(call, tool):
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == tool["function"]["name"]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_call_matches_its_schema(server, choice):
    res = ask(server, tools=[WEATHER, CLOCK], tool_choice=choice, temperature=1.0, top_p=1.0, seed=3,
              messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    c = res.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None, c
    assert len(c.message.tool_calls) == 1
    name = c.message.tool_calls[0].function.name
    if choice != "required":
        assert name == "get_time"
    check_call(c.message.tool_calls[0], WEATHER if name == "get_weather" else CLOCK)


def test_streamed_tool_call_id_and_name_first_then_arguments(server):
    stream = ask(server, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
                 stream=True, temperature=0.0, messages=[{"role": "user", "content": "Weather in Paris?"}])
    deltas, finish = [], None
    for c in stream:
        if c.choices:
            deltas += c.choices[0].delta.tool_calls or []
            finish = c.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    first, rest = deltas[0], deltas[1:]
    assert first.id.startswith("call_") and first.function.name == "get_weather" and first.function.arguments == ""
    assert rest and all(d.index == 0 and d.id is None and d.function.name is None for d in rest)
    args = json.loads("".join(d.function.arguments for d in rest))
    jsonschema.validate(args, WEATHER["function"]["parameters"])


def test_tool_results_round_trip_and_tool_choice_none(qwen_smol):
    """The tools are in the prompt (more prompt tokens) unless tool_choice is none; a call and its result
    go back to the model as the template writes them; SmolLM2 reads it and answers in text."""
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    plain = ask(qwen_smol, messages=msgs, max_tokens=1).usage.prompt_tokens
    with_tools = ask(qwen_smol, messages=msgs, max_tokens=1, tools=[WEATHER]).usage.prompt_tokens
    no_tools = ask(qwen_smol, messages=msgs, max_tokens=1, tools=[WEATHER], tool_choice="none").usage.prompt_tokens
    assert with_tools > plain + 40 and no_tools == plain
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}
    history = msgs + [{"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees, sunny"}]
    res = ask(qwen_smol, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=30, temperature=0.0)
    assert res.usage.prompt_tokens > plain + 15
    assert res.choices[0].finish_reason in ("stop", "length") and res.choices[0].message.content


def test_logprobs_greedy_tokens_are_the_top_ones(server):
    n = 6
    res = ask(server, logprobs=True, top_logprobs=3, max_tokens=n, temperature=0.0, extra_body={"repetition_penalty": 1.0},
              messages=[{"role": "user", "content": "What is the capital of France?"}])
    c = res.choices[0]
    entries = c.logprobs.content
    assert len(entries) == res.usage.completion_tokens - (c.finish_reason == "stop")
    assert "".join(e.token for e in entries) == c.message.content
    for e in entries:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert e.logprob == pytest.approx(tops[0], abs=1e-4)  # greedy: the chosen token is the top one
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token


def test_logprobs_streamed_cover_the_text(server):
    text, tokens = "", ""
    for c in ask(server, logprobs=True, stream=True, max_tokens=8, temperature=0.0):
        if c.choices:
            text += c.choices[0].delta.content or ""
            tokens += "".join(e.token for e in (c.choices[0].logprobs.content if c.choices[0].logprobs else []))
    assert text and tokens == text


@pytest.mark.parametrize("field,value", [("n", 2), ("logit_bias", {"1": 5}), ("presence_penalty", 0.5),
                                         ("functions", [{"name": "f"}]), ("top_logprobs", 3),
                                         ("tool_choice", "required")])
def test_what_would_change_the_answer_is_a_400_naming_it(qwen_tiny, field, value):
    status, _, body = http("POST", qwen_tiny.base_url + "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "hi"}], field: value})
    assert status == 400 and body["error"]["param"] == field, body


def test_harmless_fields_are_accepted(qwen_tiny):
    status, _, body = http("POST", qwen_tiny.base_url + "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "user": "u1", "n": 1,
                         "metadata": {"k": "v"}, "store": False, "presence_penalty": 0, "parallel_tool_calls": True})
    assert status == 200, body


def test_content_parts_are_joined_with_a_newline(qwen_tiny):
    def ids(content):
        return http("POST", qwen_tiny.base_url + "/v1/token/encode",
                    {"messages": [{"role": "user", "content": content}]})[2]["tokens"]
    parts = [{"type": "text", "text": "first part"}, {"type": "text", "text": "second part"}]
    assert ids(parts) == ids("first part\nsecond part") != ids("first partsecond part")


def test_automatic_tools_text_answer_stays_content(qwen_llama):
    """tool_choice auto: SmolLM2-135M answers this in prose (it is too small to call on its own); the text
    must come back as content, not be swallowed by the <tool_call> parser, and finish is not tool_calls."""
    res = ask(qwen_llama, tools=[WEATHER], max_tokens=24, temperature=0.0,
              messages=[{"role": "user", "content": "Say hello."}])
    c = res.choices[0]
    assert c.message.tool_calls is None and c.message.content and c.finish_reason in ("stop", "length")
