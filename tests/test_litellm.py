"""litellm (what many agent frameworks call through) against the gateway, as an OpenAI-compatible
endpoint: a forced tool call on Qwen (the tiny Qwen2 with Qwen2.5's tool template, constrained decoding)
and on GigaChat (the real SDK against the fake), a strict json_schema answer, and a streamed answer."""
import json
import os

import pytest

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no network here: litellm would fetch its price list
litellm = pytest.importorskip("litellm")

from conftest import start_gateway  # noqa: E402
from helpers import http, stop_process  # noqa: E402

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 12}}}}}
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
CITY_SCHEMA = {"type": "object", "required": ["name"], "additionalProperties": False,
               "properties": {"name": {"type": "string", "maxLength": 12}}}


@pytest.fixture(scope="module")
def gw(qwen_tiny_2k, fake_gigachat, tmp_path_factory):
    proc = start_gateway(qwen_tiny_2k.base_url, fake_gigachat, tmp_path_factory.mktemp("gwlitellm"))
    yield proc
    stop_process(proc)


def ask(gw, model, **kw):
    """litellm's OpenAI-compatible route ("openai/<model>") pointed at the gateway."""
    return litellm.completion(model=f"openai/{model}", api_base=gw.base_url + "/v1", api_key="unused",
                              num_retries=0, timeout=60, **kw)


@pytest.mark.parametrize("model", ["qwen", "gigachat"])
def test_forced_tool_call_comes_back_as_tool_calls(gw, model):
    res = ask(gw, model, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
              tools=[WEATHER], tool_choice=FORCE_WEATHER, max_tokens=200, temperature=0)
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str), args
    if model == "qwen":  # constrained decoding holds the schema's bound; the fake GigaChat echoes the question
        assert len(args["city"]) <= 12, args


def test_json_schema_answer_parses_and_matches(gw):
    res = ask(gw, "qwen", messages=[{"role": "user", "content": "Name a city."}], max_tokens=200, temperature=0,
              response_format={"type": "json_schema", "json_schema": {"name": "city", "strict": True,
                                                                      "schema": CITY_SCHEMA}})
    city = json.loads(res.choices[0].message.content)
    assert set(city) == {"name"} and isinstance(city["name"], str) and len(city["name"]) <= 12


def test_streamed_answer_is_saved_whole(gw):
    sid = "litellm-stream-1"
    parts = [c.choices[0].delta.content or "" for c in
             ask(gw, "qwen", messages=[{"role": "user", "content": "Привет! Say hi."}], stream=True,
                 max_tokens=12, temperature=0, extra_headers={"X-Session-ID": sid}) if c.choices]
    text = "".join(parts)
    saved = http("GET", f"{gw.base_url}/history/{sid}")[2]["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant"]
    assert saved[0]["content"] == "Привет! Say hi." and saved[1]["content"] == text
