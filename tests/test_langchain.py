"""LangChain's ChatOpenAI against qwen_server: bind_tools and with_structured_output in its three methods
(function_calling -> a forced tool call, json_mode -> json_object, json_schema -> strict schema). Real
servers; SmolLM2 and the tiny random Qwen2 (Qwen2.5's added tokens), each on both CPU engines."""
import json

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field


class City(BaseModel):
    """A city and its country."""
    name: str = Field(max_length=16)
    country: str = Field(max_length=16)
    population_millions: int = Field(ge=0, le=50)


class get_weather(BaseModel):  # noqa: N801 - a tool's name as the model sees it
    """The current weather in a city."""
    city: str = Field(max_length=16)  # bounded: the random tiny Qwen2 never ends a string by itself


@pytest.fixture(scope="module", params=["qwen_smol", "qwen_llama", "qwen_tiny_2k", "qwen_tiny_llama"])
def server(request):
    return request.getfixturevalue(request.param)


def chat(proc, **kw):
    return ChatOpenAI(base_url=proc.base_url + "/v1", api_key="unused", model="local", max_retries=0,
                      timeout=120, **{"temperature": 0.0, "max_tokens": 120, **kw})


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_structured_output_returns_the_model(server, method):
    city = chat(server).with_structured_output(City, method=method).invoke("Tell me about Paris.")
    assert isinstance(city, City), city  # None or a ValidationError if the server ignored the request
    City.model_validate(city.model_dump())


def test_structured_output_json_mode(qwen_smol, qwen_llama):
    """json_mode sends no schema, only json_object: the answer parses as a JSON object (real model)."""
    schema = {"title": "answer", "description": "An answer", "type": "object",
              "properties": {"answer": {"type": "string"}}}
    for proc in (qwen_smol, qwen_llama):
        out = chat(proc, max_tokens=200).with_structured_output(schema, method="json_mode").invoke(
            "Answer in JSON with the key 'answer': what is the capital of France?")
        assert isinstance(out, dict)


def test_bind_tools_forced_and_the_tool_result_round_trip(server):
    llm = chat(server).bind_tools([get_weather], tool_choice="get_weather")
    msg = llm.invoke("What is the weather in Paris?")
    assert isinstance(msg, AIMessage) and len(msg.tool_calls) == 1, msg
    call = msg.tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str) and call["id"]
    history = [HumanMessage("What is the weather in Paris?"), msg,
               ToolMessage(f"sunny in {call['args']['city']}", tool_call_id=call["id"])]
    answer = chat(server, max_tokens=20).bind_tools([get_weather]).invoke(history)
    assert answer.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")


def test_bind_tools_streamed_call_assembles(qwen_smol):
    llm = chat(qwen_smol).bind_tools([get_weather], tool_choice="any")  # "any" -> OpenAI's "required"
    full = None
    for part in llm.stream("What is the weather in Paris?"):
        full = part if full is None else full + part
    assert len(full.tool_calls) == 1 and full.tool_calls[0]["name"] == "get_weather"
    assert json.loads(full.tool_call_chunks[0]["args"])["city"]
