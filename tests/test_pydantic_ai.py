"""pydantic-ai's tool output against qwen_server: an Agent with an `output_type` answers through a forced
call of its `final_result` tool (tool_choice "required"), which its pydantic model then validates. The tiny
random Qwen2 on both CPU engines: Qwen2.5's vocabulary, where <tool_call> is one added token (issue 21)."""
import pytest
from pydantic import BaseModel, Field
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider


class Weather(BaseModel):
    """The weather in a city."""
    city: str = Field(max_length=12)  # bounded: the random tiny Qwen2 never ends a string by itself
    degrees: int = Field(ge=-60, le=60)
    sky: str = Field(pattern="^(sunny|cloudy|rain)$", max_length=6)


@pytest.fixture(scope="module", params=["qwen_tiny_2k", "qwen_tiny_llama"])
def server(request):
    return request.getfixturevalue(request.param)


def agent(proc, output_type=Weather):
    model = OpenAIChatModel("local", provider=OpenAIProvider(base_url=proc.base_url + "/v1", api_key="unused"))
    return Agent(model, output_type=output_type, retries=0)


def test_tool_output_is_the_validated_model(server):
    result = agent(server).run_sync("What is the weather in Paris?",
                                    model_settings={"max_tokens": 200, "temperature": 1.0, "seed": 5})
    assert isinstance(result.output, Weather), result.output
    calls = [p for m in result.all_messages() for p in getattr(m, "parts", []) if p.part_kind == "tool-call"]
    assert [c.tool_name for c in calls] == ["final_result"]


def test_a_choice_of_outputs_calls_one_of_their_tools(server):
    """Two output types: two tools, and the forced call picks one of them; either validates."""
    class Refusal(BaseModel):
        reason: str = Field(max_length=10)
    result = agent(server, [Weather, Refusal]).run_sync(
        "Weather in Paris?", model_settings={"max_tokens": 200, "temperature": 1.0, "seed": 2})
    assert isinstance(result.output, (Weather, Refusal)), result.output
