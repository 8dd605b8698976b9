#!/usr/bin/env python
"""Issue 22 item 6: would pydantic models for the OpenAI request bodies cost the gateway time?

    .venv/bin/python -m bench.request_models [--n 20000]

Times, side by side in one process, the checks a POST /v1/chat/completions body goes through today
(common.openai_format.parse_chat_request: hand-written, errors that say what to fix) and a pydantic v2
model of the same rules (ChatBody below: roles, text parts, tool calls, the sampling ranges, stop,
stream), on a one-question body and on a 20-turn body with tools. Reports microseconds a body (median of
--runs) and the ratio. Compare with the gateway's added p50 (bench.gateway_overhead) to judge."""
import argparse
import json
import statistics
import time
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from common.openai_format import MAX_STOP, parse_chat_request


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Function(BaseModel):
    name: str
    arguments: Union[str, dict] = "{}"


class ToolCall(BaseModel):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: Function


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None



class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: Optional[str] = None
    messages: list[Message] = Field(min_length=1)
    temperature: Optional[float] = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, ge=0, le=1, allow_inf_nan=False)
    top_k: Optional[int] = Field(None, ge=0, le=1000)
    repetition_penalty: Optional[float] = Field(None, ge=0.01, le=10, allow_inf_nan=False)
    max_tokens: Optional[int] = Field(None, ge=1, le=1 << 20)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = Field(None, max_length=MAX_STOP)
    stream: StrictBool = False
    tools: Optional[list[dict]] = None


TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Погода в городе",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}


def bodies():
    small = {"model": "qwen", "messages": [{"role": "user", "content": "Как развернуть список в Python?"}],
             "temperature": 0.2, "max_tokens": 64}
    turns = []
    for i in range(10):
        turns += [{"role": "user", "content": f"Вопрос {i}: " + "слово " * 40},
                  {"role": "assistant", "content": f"Ответ {i}: " + "текст " * 60}]
    turns += [{"role": "user", "content": "Какая погода в Риме?"},
              {"role": "assistant", "content": None, "tool_calls": [
                  {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                    "arguments": "{\"city\": \"Рим\"}"}}]},
              {"role": "tool", "tool_call_id": "call_1", "content": "+21, солнечно"}]
    large = {"model": "qwen", "messages": [{"role": "system", "content": "Ты помощник."}] + turns,
             "tools": [TOOL], "temperature": 0.7, "top_p": 0.9, "stop": ["\n\n"], "stream": True}
    return {"one question": small, "20 turns + tools": large}


def per_call_us(fn, n, runs):
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="calls a run (default 20000)")
    ap.add_argument("--runs", type=int, default=5, help="runs, median reported (default 5)")
    args = ap.parse_args()
    print("| body | today's parse_chat_request (µs) | pydantic ChatBody.model_validate (µs) | "
          "pydantic model_validate_json from bytes (µs) | json.loads + today's (µs) | ratio (validate/today) |")
    print("|---|---|---|---|---|---|")
    for label, body in bodies().items():
        raw = json.dumps(body, ensure_ascii=False).encode()
        ChatBody.model_validate(body)  # (both accept it)
        parse_chat_request(body, {}, tools_ok=True)
        today = per_call_us(lambda: parse_chat_request(body, {}, tools_ok=True), args.n, args.runs)
        model = per_call_us(lambda: ChatBody.model_validate(body), args.n, args.runs)
        model_json = per_call_us(lambda: ChatBody.model_validate_json(raw), args.n, args.runs)
        today_json = per_call_us(lambda: parse_chat_request(json.loads(raw), {}, tools_ok=True), args.n, args.runs)
        print(f"| {label} | {today:.1f} | {model:.1f} | {model_json:.1f} | {today_json:.1f} | {model / today:.2f} |")


if __name__ == "__main__":
    main()
