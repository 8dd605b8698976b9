"""The gateway in front of the real qwen_server (the tiny Qwen2 with Qwen2.5's template and Qwen2.5-Coder's
FIM tokens): tools, tool_choice, tool turns, response_format and logprobs pass through unchanged and
tool_calls / logprobs / finish_reason come back unchanged, streamed and not; /v1/completions (with
`suffix`) is proxied; both are saved to history. Clients: the `openai` SDK and LangChain's ChatOpenAI."""
import json

import jsonschema
import pytest
from openai import BadRequestError

from conftest import start_gateway, start_qwen
from helpers import http, openai_client, stop_process

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 16},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "seed": 5, "max_tokens": 80}


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    proc = start_qwen(tiny_qwen_dir, "-l", "2048")  # (its toy tokenizer spends many tokens on a tool list)
    yield proc
    stop_process(proc)


@pytest.fixture(scope="module")
def gw(tiny, fake_gigachat, tmp_path_factory):
    proc = start_gateway(tiny.base_url, fake_gigachat, tmp_path_factory.mktemp("gwqwen"))
    yield proc
    stop_process(proc)


client = openai_client  # (tests/helpers.py)


def history(gw, sid):
    return http("GET", f"{gw.base_url}/history/{sid}")[2]["messages"]


def test_forced_tool_call_passes_through_and_is_saved(gw, tiny):
    kw = dict(model="qwen", messages=ASK, tools=[WEATHER], tool_choice="required", **SAMPLING)
    raw = client(gw).chat.completions.with_raw_response.create(**kw)
    res = raw.parse()
    direct = client(tiny).chat.completions.create(**kw)  # the same request straight to qwen_server
    choice, call = res.choices[0], res.choices[0].message.tool_calls[0]
    assert choice.finish_reason == "tool_calls" == direct.choices[0].finish_reason
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    assert args == json.loads(direct.choices[0].message.tool_calls[0].function.arguments)  # (same seed)
    answer = history(gw, raw.headers["X-Session-ID"])[-1]
    assert answer["finish_reason"] == "tool_calls"
    saved = json.loads(answer["content"].split("<tool_call>")[1].removesuffix("</tool_call>"))
    assert saved == {"id": call.id, "name": "get_weather", "arguments": args}


def test_streamed_tool_call_passes_through(gw):
    chunks = list(client(gw).chat.completions.create(
        model="qwen", messages=ASK, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True, **SAMPLING))
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert pieces[0].id and pieces[0].function.name == "get_weather"
    args = json.loads("".join(p.function.arguments or "" for p in pieces))
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_tool_turns_are_forwarded(gw):
    call = {"id": "call_7", "type": "function", "function": {"name": "get_weather",
                                                             "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    msgs = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                  {"role": "tool", "tool_call_id": "call_7", "content": "sunny"}]
    without = client(gw).chat.completions.create(model="qwen", messages=ASK, tools=[WEATHER], tool_choice="none",
                                                 max_tokens=1)
    raw = client(gw).chat.completions.with_raw_response.create(model="qwen", messages=msgs, tools=[WEATHER],
                                                               tool_choice="none", max_tokens=4)
    res = raw.parse()
    assert res.usage.prompt_tokens > without.usage.prompt_tokens  # the call and its result were rendered
    question = history(gw, raw.headers["X-Session-ID"])[0]["content"]
    assert question == '<tool_response>{"tool_call_id": "call_7", "content": "sunny"}</tool_response>'


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_passes_through(gw, stream):
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    res = client(gw).chat.completions.create(model="qwen", messages=[{"role": "user", "content": "A person"}],
                                             response_format=rf, stream=stream, **SAMPLING)
    text = "".join(c.choices[0].delta.content or "" for c in res if c.choices) if stream \
        else res.choices[0].message.content
    jsonschema.validate(json.loads(text), PERSON)


def test_logprobs_pass_through_streamed_and_not(gw):
    kw = dict(model="qwen", messages=ASK, logprobs=True, top_logprobs=2, max_tokens=6, temperature=0.0)
    res = client(gw).chat.completions.create(**kw)
    entries = res.choices[0].logprobs.content
    assert len(entries) == res.usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in entries)
    assert "".join(e.token for e in entries) == res.choices[0].message.content
    streamed = [e for c in client(gw).chat.completions.create(stream=True, **kw)
                if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]


def test_what_changes_the_answer_is_a_400_through_the_gateway(gw):
    # n and presence_penalty: the gateway's own check; the others: qwen_server's 400, its param passed on
    for field, value in (("n", 3), ("presence_penalty", 0.5), ("response_format", {"type": "yaml"}),
                         ("tool_choice", "required"), ("top_logprobs", 99)):
        with pytest.raises(BadRequestError) as e:
            client(gw).chat.completions.create(model="qwen", messages=ASK, **{field: value})
        assert e.value.body["param"] == field


@pytest.mark.parametrize("stream", [False, True])
def test_fim_completion_through_the_gateway_is_qwen_servers_and_saved(gw, tiny, stream):
    kw = dict(model="qwen", prompt="def add(a, b):\n    ", suffix="\n    return c\n", max_tokens=8,
              temperature=0.0, extra_body={"repetition_penalty": 1.0})
    direct = client(tiny).completions.create(**kw).choices[0]
    raw = client(gw).completions.with_raw_response.create(stream=stream, **kw)
    if stream:
        frames = [f for f in raw.parse() if f.choices]
        text, finish = "".join(f.choices[0].text for f in frames), frames[-1].choices[0].finish_reason
    else:
        res = raw.parse()
        text, finish = res.choices[0].text, res.choices[0].finish_reason
    assert (text, finish) == (direct.text, direct.finish_reason)
    question, answer = history(gw, raw.headers["X-Session-ID"])
    assert question["content"] == "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n    return c\n<|fim_middle|>"
    assert "completion" not in question["params"]
    assert (answer["content"], answer["status"], answer["question_id"]) == (text, "ok", question["id"])


def test_completions_on_gigachat_or_unknown_model_are_refused(gw):
    status, _, body = http("POST", gw.base_url + "/v1/completions", {"model": "gigachat", "prompt": "x"})
    assert status == 400 and body["error"]["param"] == "model" and "/v1/chat/completions" in body["error"]["message"]
    status, _, body = http("POST", gw.base_url + "/v1/completions", {"model": "gpt-4", "prompt": "x"})
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_langchain_bind_tools_through_the_gateway(gw):
    from langchain_openai import ChatOpenAI
    llm = ChatOpenAI(model="qwen", base_url=gw.base_url + "/v1", api_key="unused", max_retries=0, timeout=120,
                     temperature=1.0, max_tokens=80, seed=5)
    msg = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Paris?")
    assert msg.tool_calls[0]["name"] == "get_weather"
    jsonschema.validate(msg.tool_calls[0]["args"], WEATHER["function"]["parameters"])


def test_streamed_completion_left_by_its_client_is_saved_as_cancelled(gw):
    import time

    import requests
    body = {"model": "qwen", "prompt": "def f():", "suffix": "\n", "max_tokens": 1500, "stream": True,
            "temperature": 1.0}
    with requests.post(gw.base_url + "/v1/completions", json=body, stream=True, timeout=60) as r:
        sid = r.headers["X-Session-ID"]
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith(b"data: "))
        assert b'"text_completion"' in first
    for _ in range(100):  # the gateway notices at its next write
        rows = history(gw, sid)
        if len(rows) == 2:
            break
        time.sleep(0.1)
    question, answer = rows
    assert (answer["status"], answer["error"], answer["question_id"]) == ("cancelled", "client disconnected",
                                                                          question["id"])
