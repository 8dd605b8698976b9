"""A seeded, time-bounded fuzz of both servers' /v1 bodies, aimed where schemathesis (tests/test_schemathesis.py,
which follows the OpenAPI documents) does not go: the free-form fields, tools, tool_choice, response_format,
tool turns and messages, with values of every wrong type and shape, nested into near-valid requests.
Every answer must be a 2xx or a JSON 4xx, never a 5xx (nor a server_error inside a stream), and a sane
request must still be answered afterwards. FUZZ_SEED changes the run, FUZZ_CASES its length."""
import json
import os
import random

import pytest
import requests

from conftest import start_gateway
from helpers import stop_process

SEED = int(os.environ.get("FUZZ_SEED", "20"))
CASES = int(os.environ.get("FUZZ_CASES", "120"))  # per target
MAX_TOKENS = 3  # the most any fuzzed request asks for: each answer is over in milliseconds

SCALARS = [None, True, False, 0, -1, 7, 2.5, -1e308, 1 << 70, "", "x", "auto", "none", "required",
           "function", "ж" * 30, "\u0000", [], {}, [None], {"": None}]
SCHEMAS = [{"type": "object"}, {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
           {"$ref": "#"}, {"$ref": "#/$defs/x"}, {"type": "array", "items": {"$ref": "#"}}, {"enum": []},
           {"type": "string", "pattern": "("}, {"anyOf": []}, {"type": ["string", "null"]}, {"not": {}}, True, False,
           {"properties": {"properties": {"type": "object"}}},
           {"type": "object", "additionalProperties": {"$ref": "#"}}]


class Fuzzer:
    def __init__(self, rng):
        self.rng = rng

    def pick(self, options):
        return self.rng.choice(options)

    def scalar(self):
        return self.pick(SCALARS)

    def mutate(self, value, depth=0):
        """`value` with one part (or itself) replaced by something of the wrong type or shape."""
        r = self.rng.random()
        if depth > 4 or r < 0.25 or not isinstance(value, (dict, list)) or not value:
            return self.scalar() if r < 0.5 or not isinstance(value, (dict, list)) else value
        out = dict(value) if isinstance(value, dict) else list(value)
        key = self.pick(list(out) if isinstance(out, dict) else range(len(out)))
        if isinstance(out, dict) and self.rng.random() < 0.2:
            del out[key]
        else:
            out[key] = self.mutate(out[key], depth + 1)
        return out

    def maybe(self, value):
        return self.mutate(value) if self.rng.random() < 0.5 else value

    def tool(self):
        return self.maybe({"type": "function", "function": {"name": self.pick(["f", "g", "", "ж"]),
                                                            "parameters": self.pick(SCHEMAS)}})

    def call(self, cid="c1"):
        args = self.pick(['{"a": 1}', "[1]", "7", "{", '"s"', {"a": 1}, None, ""])
        return self.maybe({"id": cid, "type": "function", "function": {"name": "f", "arguments": args}})

    def messages(self):
        msgs = [{"role": "user", "content": self.pick(["hi", "привет", [{"type": "text", "text": "hi"}]])}]
        if self.rng.random() < 0.5:
            msgs += [{"role": "assistant", "content": None, "tool_calls": [self.call()]},
                     {"role": "tool", "tool_call_id": self.pick(["c1", "c2", None, 5]), "content": "ok"}]
        if self.rng.random() < 0.3:
            msgs.append({"role": self.pick(["system", "developer", "tool", "x", None]), "content": self.scalar()})
        return self.maybe(msgs)

    def response_format(self):
        return self.maybe(self.pick([{"type": "json_object"}, {"type": "text"},
                                     {"type": "json_schema", "json_schema": {"name": "n",
                                                                             "schema": self.pick(SCHEMAS)}}]))

    def tool_choice(self):
        return self.maybe(self.pick(["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]))

    def chat_body(self, model):
        body = {"model": model, "messages": self.messages(), "max_tokens": MAX_TOKENS}
        extra = {"tools": lambda: self.maybe([self.tool() for _ in range(self.rng.randint(1, 3))]),
                 "tool_choice": self.tool_choice, "response_format": self.response_format,
                 "stream": lambda: self.pick([True, False, "yes", None]),
                 "stream_options": lambda: self.pick([{"include_usage": True}, "x", [], None, {"include_usage": 3}]),
                 "logprobs": lambda: self.pick([True, False, 1, "yes"]),
                 "top_logprobs": lambda: self.pick([0, 3, 21, -1, "2", True]),
                 "stop": lambda: self.pick([["\n"], "", [1], ["a"] * 5, None]),
                 "temperature": self.scalar, "seed": self.scalar, "n": self.scalar,
                 "max_tokens": lambda: self.pick([0, -1, "3", 2.5, 1 << 40, MAX_TOKENS])}  # (left out: 2k tokens)
        for name in self.rng.sample(sorted(extra), self.rng.randint(1, 4)):
            body[name] = extra[name]()
        if self.rng.random() < 0.4:  # tool_choice is only looked at closely beside tools that pass
            body.update(tools=[self.tool() for _ in range(self.rng.randint(1, 2))], tool_choice=self.tool_choice())
        return body

    def completion_body(self):
        body = {"model": "qwen", "prompt": self.pick(["def f():", ["x"], ["a", "b"], [1, 2], "", None, {"p": 1}]),
                "max_tokens": MAX_TOKENS}
        extra = {"suffix": self.scalar, "logprobs": lambda: self.pick([0, 5, 6, -1, True, "2"]),
                 "echo": self.scalar, "stream": lambda: self.pick([True, False, 1]),
                 "stream_options": lambda: self.pick([{"include_usage": True}, "x", []]),
                 "response_format": self.response_format, "tools": lambda: [self.tool()], "stop": self.scalar,
                 "top_logprobs": self.scalar, "min_p": self.scalar, "grammar": self.scalar}
        for name in self.rng.sample(sorted(extra), self.rng.randint(1, 3)):
            body[name] = extra[name]()
        return body


def check(resp, body):
    """A JSON 4xx or a 2xx, and no server_error in a stream's events."""
    what = json.dumps(body, ensure_ascii=False)[:600]
    assert resp.status_code < 500, f"{resp.status_code} for {what}: {resp.text[:300]}"
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert isinstance(err["message"], str) and isinstance(err["type"], str), what
        assert err["code"] is None or isinstance(err["code"], str), what
    elif resp.headers.get("Content-Type", "").startswith("text/event-stream"):
        assert '"server_error"' not in resp.text, f"{what}: {resp.text[-400:]}"


@pytest.fixture(scope="module")
def gw(qwen_tiny_2k, fake_gigachat, tmp_path_factory):
    proc = start_gateway(qwen_tiny_2k.base_url, fake_gigachat, tmp_path_factory.mktemp("fuzz"))
    yield proc
    stop_process(proc)


TARGETS = ["qwen chat", "qwen completions", "gateway qwen chat", "gateway gigachat chat", "gateway completions"]


@pytest.mark.parametrize("target", TARGETS)
def test_fuzzed_bodies_get_no_5xx(qwen_tiny_2k, gw, target):
    fuzz = Fuzzer(random.Random(f"{SEED}:{target}"))
    base = qwen_tiny_2k.base_url if target.startswith("qwen") else gw.base_url
    path = "/v1/completions" if target.endswith("completions") else "/v1/chat/completions"
    refused = 0
    with requests.Session() as s:
        for _ in range(CASES):
            body = fuzz.completion_body() if path == "/v1/completions" else \
                fuzz.chat_body("gigachat" if "gigachat" in target else "qwen")
            try:
                resp = s.post(base + path, json=body, timeout=30)
            except requests.RequestException as e:
                raise AssertionError(f"{type(e).__name__} for {json.dumps(body, ensure_ascii=False)[:600]}") from None
            check(resp, body)
            refused += resp.status_code >= 400
        sane = {"model": "gigachat" if "gigachat" in target else "qwen", "max_tokens": MAX_TOKENS}
        sane.update({"prompt": "def f():"} if path == "/v1/completions" else {"messages": [{"role": "user",
                                                                                        "content": "hi"}]})
        assert s.post(base + path, json=sane, timeout=30).status_code == 200
    assert 0 < refused < CASES  # the fuzz reached both the refusals and the answers
