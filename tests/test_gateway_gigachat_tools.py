"""The gateway's /v1/chat/completions on GigaChat with what agents send: OpenAI tools <-> GigaChat functions
(the real SDK against tests/fake_gigachat.py), `stop` cut by the gateway, content parts, and 400s for what
GigaChat cannot do. Clients: the `openai` SDK and LangChain's ChatOpenAI."""
import json
import time

import pytest
from openai import BadRequestError, OpenAI

from conftest import start_gateway
from helpers import http, stop_process

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}}}}
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def gw(fake_gigachat, tmp_path_factory):
    proc = start_gateway("http://127.0.0.1:9", fake_gigachat, tmp_path_factory.mktemp("gwtools"))
    yield proc
    stop_process(proc)


def client(gw, **kw):
    return OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0, timeout=30, **kw)


def last_upstream(fake):
    return http("GET", fake.base_url + "/_debug/last_request")[2]["body"]


def history(gw, sid):
    return http("GET", f"{gw.base_url}/history/{sid}")[2]["messages"]


def test_forced_tool_becomes_a_function_call_and_comes_back_as_tool_calls(gw, fake_gigachat):
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gigachat", messages=[{"role": "user", "content": "Weather in Paris"}], tools=[WEATHER, CLOCK],
        tool_choice=FORCE_WEATHER)
    res, sid = raw.parse(), raw.headers["X-Session-ID"]
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Weather in Paris", "days": 3}
    sent = last_upstream(fake_gigachat)
    assert sent["function_call"] == {"name": "get_weather"}
    assert [f["name"] for f in sent["functions"]] == ["get_weather", "get_time"]
    assert sent["functions"][0]["parameters"]["required"] == ["city"]
    answer = history(gw, sid)[-1]
    assert answer["finish_reason"] == "tool_calls"
    saved = json.loads(answer["content"].removeprefix("<tool_call>").removesuffix("</tool_call>"))
    assert saved == {"id": call.id, "name": "get_weather", "arguments": {"city": "Weather in Paris", "days": 3}}


def test_tool_result_goes_back_as_a_function_message(gw, fake_gigachat):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Омск"}'}}
    raw = client(gw).chat.completions.with_raw_response.create(model="gigachat", tools=[WEATHER], messages=[
        {"role": "user", "content": "Погода в Омске?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "солнечно, +20"}])
    res = raw.parse()
    assert res.choices[0].message.content == 'Эхо: {"result": "солнечно, +20"}'
    assert res.choices[0].finish_reason == "stop"
    sent = last_upstream(fake_gigachat)["messages"]
    assert sent[1:] == [{"role": "assistant", "content": "", "function_call": {"name": "get_weather",
                                                                               "arguments": {"city": "Омск"}}},
                        {"role": "function", "name": "get_weather", "content": '{"result": "солнечно, +20"}'}]
    question = history(gw, raw.headers["X-Session-ID"])[0]
    assert question["content"] == \
        '<tool_response>{"tool_call_id": "call_1", "content": "солнечно, +20"}</tool_response>'


@pytest.mark.parametrize("arguments", ["[1, 2]", "7", '"text"', "not json"])
def test_tool_call_arguments_that_are_no_json_object_are_a_400(gw, arguments):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    status, _, body = http("POST", gw.base_url + "/v1/chat/completions", {
        "model": "gigachat", "tools": [WEATHER], "messages": [
            {"role": "user", "content": "Погода?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "+20"}]})
    assert status == 400 and body["error"]["code"] == "invalid_message", body


def test_automatic_tool_call_streamed(gw):
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gigachat", stream=True, tools=[WEATHER, CLOCK],
        messages=[{"role": "user", "content": "call get_time please"}])
    chunks = list(raw.parse())
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_time"
    assert json.loads(calls[0].function.arguments) == {"zone": "call get_time please"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    answer = history(gw, raw.headers["X-Session-ID"])[-1]
    assert (answer["content"], answer["finish_reason"]) == (
        f'<tool_call>{{"id": "{calls[0].id}", "name": "get_time", "arguments": {{"zone": "call get_time please"}}}}'
        f'</tool_call>', "tool_calls")


def test_tool_choice_none_and_auto_without_a_match_answer_in_text(gw, fake_gigachat):
    for choice in ("none", "auto"):
        res = client(gw).chat.completions.create(model="gigachat", tools=[WEATHER], tool_choice=choice,
                                                 messages=[{"role": "user", "content": "get_weather? no, hi"
                                                            if choice == "none" else "hi"}])
        assert res.choices[0].message.tool_calls is None and res.choices[0].finish_reason == "stop"
        assert last_upstream(fake_gigachat)["function_call"] == choice


def test_required_forces_the_only_tool_and_is_a_400_with_several(gw, fake_gigachat):
    res = client(gw).chat.completions.create(model="gigachat", tools=[WEATHER], tool_choice="required",
                                             messages=[{"role": "user", "content": "hi"}])
    assert res.choices[0].message.tool_calls[0].function.name == "get_weather"
    with pytest.raises(BadRequestError) as e:
        client(gw).chat.completions.create(model="gigachat", tools=[WEATHER, CLOCK], tool_choice="required",
                                           messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "tool_choice" and "GigaChat cannot force" in e.value.body["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_stop_cuts_the_answer_and_the_upstream(gw, stream):
    # 40 words, 0.1 s apart: the whole answer takes 4 s; the stop string comes at the third word.
    words = " ".join(f"w{i}" for i in range(40))
    kw = dict(model="gigachat", stop=["1 w"],
              messages=[{"role": "user", "content": words + " [[fault:sleepstream=0.1]]"}])
    t0 = time.monotonic()
    raw = client(gw).chat.completions.with_raw_response.create(stream=stream, **kw)
    if stream:
        chunks = [c for c in raw.parse() if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:  # (a plain request is not streamed upstream: cut after the whole answer)
        res = raw.parse()
        text, finish = res.choices[0].message.content, res.choices[0].finish_reason
    assert (text, finish) == ("Эхо: w0 w", "stop")
    if stream:
        assert time.monotonic() - t0 < 2.0  # the upstream stream was closed at the stop string
    assert history(gw, raw.headers["X-Session-ID"])[-1]["content"] == "Эхо: w0 w"


def test_stop_split_across_chunks_is_held_back(gw):
    chunks = client(gw).chat.completions.create(model="gigachat", stream=True, stop=["two thr", "zzz"],
                                                messages=[{"role": "user", "content": "one two three four"}])
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "Эхо: one "
    assert not any("two" in p for p in pieces)
    res = client(gw).chat.completions.create(model="gigachat", stop="zzz", stream=True,
                                             messages=[{"role": "user", "content": "one two three four"}])
    assert "".join(c.choices[0].delta.content or "" for c in res if c.choices) == "Эхо: one two three four"


def test_content_parts_are_joined_by_newlines_and_other_parts_are_400(gw):
    res = client(gw).chat.completions.create(model="gigachat", messages=[{"role": "user", "content": [
        {"type": "text", "text": "первая"}, {"type": "text", "text": "вторая"}]}])
    assert res.choices[0].message.content == "Эхо: первая\nвторая"
    with pytest.raises(BadRequestError) as e:
        client(gw).chat.completions.create(model="gigachat", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert e.value.body["param"] == "messages"


@pytest.mark.parametrize("field,value", [("n", 2), ("response_format", {"type": "json_object"}),
                                         ("logprobs", True), ("top_logprobs", 2), ("logit_bias", {"1": 5})])
def test_what_gigachat_cannot_do_is_a_400_naming_it(gw, field, value):
    status, _, body = http("POST", gw.base_url + "/v1/chat/completions", {
        "model": "gigachat", "messages": [{"role": "user", "content": "hi"}], field: value})
    assert status == 400 and body["error"]["param"] == field, body


def test_harmless_fields_are_accepted(gw):
    status, _, body = http("POST", gw.base_url + "/v1/chat/completions", {
        "model": "gigachat", "messages": [{"role": "user", "content": "hi"}], "user": "u1", "metadata": {"a": "b"},
        "store": False, "parallel_tool_calls": False, "seed": 3})
    assert status == 200 and body["choices"][0]["message"]["content"] == "Эхо: hi", body


def test_langchain_bind_tools_and_structured_output(gw):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    llm = ChatOpenAI(model="gigachat", base_url=gw.base_url + "/v1", api_key="unused", max_retries=0, timeout=30)
    msg = llm.bind_tools([WEATHER]).invoke([HumanMessage("please get_weather for Rome")])
    assert msg.tool_calls[0]["name"] == "get_weather"
    assert msg.tool_calls[0]["args"]["city"] == "please get_weather for Rome"
    follow = llm.bind_tools([WEATHER]).invoke([HumanMessage("please get_weather for Rome"), msg,
                                               ToolMessage("rainy", tool_call_id=msg.tool_calls[0]["id"])])
    assert follow.content == 'Эхо: {"result": "rainy"}' and not follow.tool_calls
    person = llm.with_structured_output(Person, method="function_calling").invoke("Ann is 3 words")
    assert person == Person(name="Ann is 3 words", age=4)
    with pytest.raises(BadRequestError) as e:  # LangChain's default method sends response_format json_schema
        llm.with_structured_output(Person).invoke("Ann")
    assert e.value.body["param"] == "response_format"
    for chunk in llm.bind_tools([WEATHER], tool_choice="get_weather").stream("Rome"):
        assert not chunk.content


def test_every_parameter_reaches_gigachat_with_its_type(gw, fake_gigachat):
    """The SDK would send a property without a type as an "object": enums and optional fields
    (anyOf [T, null], as pydantic writes them) get their real type."""
    tool = {"type": "function", "function": {"name": "book", "parameters": {"type": "object", "properties": {
        "unit": {"enum": ["celsius", "fahrenheit"]}, "nights": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "guests": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}}}}
    client(gw).chat.completions.create(model="gigachat", tools=[tool], messages=[{"role": "user", "content": "hi"}])
    props = last_upstream(fake_gigachat)["functions"][0]["parameters"]["properties"]
    assert (props["unit"]["type"], props["unit"]["enum"]) == ("string", ["celsius", "fahrenheit"])
    assert props["nights"]["type"] == "integer"
    assert props["guests"]["items"] == {"type": "string"}
