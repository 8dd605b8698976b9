"""exllamav2's constrained decoding and logprobs against the real 0.3.2 generator (the GPU twin of the
stand-in tests in tests/test_exllamav2_engine.py): a random-weights model writes noise, so only the
grammar filter can make its answer parse; logprobs are checked against transformers fp16's log-softmax.
Skipped without CUDA (CI). No jsonschema on the GPU machine: the schemas are small enough to check by hand."""
import json

import pytest

from constrained_cases import SCHEMA, WEATHER
from gpu_models import Reference, tiny_qwen
from helpers import engine_chunks

# pytestmark: skipped without CUDA; q4_server: qwen_server on exllamav2 with the Q4 cache
from test_exllamav2 import GREEDY, TIMEOUT_S, post, pytestmark, q4_server  # noqa: F401

ASK = [{"role": "user", "content": "Answer in JSON, please."}]


@pytest.fixture(scope="module")
def engine():
    from engines.exllamav2_engine import ExLlamaV2Engine
    eng = ExLlamaV2Engine(tiny_qwen(), "fp16", 2048)
    eng.load()
    return eng


def ask(engine, messages, **params):
    from engines import GenParams
    return engine_chunks(engine, messages, GenParams(**{**GREEDY, **params}), None, TIMEOUT_S)


def text_of(chunks):
    return "".join(c.text for c in chunks)


@pytest.mark.parametrize("sampling", [GREEDY, dict(temperature=1.0, top_p=1.0, top_k=0, seed=7)])
def test_json_schema_answer_parses_and_matches_the_schema(engine, sampling):
    from engines.constrained import json_grammar
    chunks = ask(engine, ASK, max_tokens=300, grammar=json_grammar(SCHEMA), **sampling)
    assert chunks[-1].finish_reason == "stop", text_of(chunks)
    answer = json.loads(text_of(chunks))
    assert set(answer) == {"n", "ok", "color"} and answer["color"] in ("red", "green", "blue")
    assert type(answer["n"]) is int and type(answer["ok"]) is bool


def test_forced_tool_call_matches_its_schema(engine):
    from engines.constrained import lark_grammar, tool_call_lark
    tags = engine.tool_tag_ids()  # the tiny Qwen2 has Qwen2.5's <tool_call> and </tool_call> tokens
    chunks = ask(engine, ASK, max_tokens=300, grammar=lark_grammar(tool_call_lark([WEATHER], "get_weather", tags)))
    text = text_of(chunks)
    assert text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>"), text
    call = json.loads(text[len("<tool_call>\n"):-len("\n</tool_call>")])
    assert call["name"] == "get_weather" and set(call["arguments"]) == {"unit", "days"}
    assert call["arguments"]["unit"] in ("C", "F") and type(call["arguments"]["days"]) is int


def test_logprobs_match_transformers_and_greedy_tokens_are_the_top_ones(engine):
    import torch
    ref = Reference(tiny_qwen())
    prompt = engine.encode(ASK)
    chunks = ask(engine, ASK, max_tokens=16, logprobs=True, top_logprobs=3)
    entries = [e for c in chunks for e in (c.logprobs or [])]
    assert entries and "".join(e["token"] for e in entries) == text_of(chunks)
    for e in entries:  # greedy, no repetition penalty: the chosen token is the top-1 of the model's logits
        assert e["top_logprobs"][0]["token"] == e["token"] and e["logprob"] == e["top_logprobs"][0]["logprob"]
        assert len(e["top_logprobs"]) == 3 and e["logprob"] <= 0
    want = torch.topk(torch.log_softmax(ref.logits(prompt)[-1], dim=-1).cpu(), 3)  # the first token's
    got = entries[0]["top_logprobs"]
    assert [t["logprob"] for t in got] == pytest.approx(want.values.tolist(), abs=0.05)  # fp16 vs fp16 kernels


def test_http_json_schema_and_logprobs_streamed_and_not(q4_server):
    from helpers import sse_events
    body = {"messages": ASK, "max_tokens": 200, **GREEDY, "logprobs": True, "top_logprobs": 2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}}}
    r = post(q4_server, body)
    assert r.status_code == 200, r.text  # no longer a 400 on exllamav2
    choice = r.json()["choices"][0]
    assert set(json.loads(choice["message"]["content"])) == {"n", "ok", "color"}
    assert "".join(e["token"] for e in choice["logprobs"]["content"]) == choice["message"]["content"]
    events = sse_events(post(q4_server, {**body, "stream": True}, stream=True))
    deltas = [e["choices"][0] for e in events[:-1] if e["choices"]]
    assert "".join(d["delta"].get("content") or "" for d in deltas) == choice["message"]["content"]
    assert [e for d in deltas for e in ((d.get("logprobs") or {}).get("content") or [])] == \
        choice["logprobs"]["content"]


def test_logprobs_are_the_same_with_and_without_a_grammar(engine):
    """0.3.2 sets the head's padding rows to -inf in the kept logits only when no filter masked a copy:
    the engine normalises over the real vocabulary, so the first token's logprobs do not depend on it."""
    from engines.constrained import json_grammar
    firsts = []
    for grammar in (None, json_grammar(SCHEMA)):
        ask(engine, [{"role": "user", "content": "count"}], max_tokens=1)  # the same prefix reused by each
        chunks = ask(engine, ASK, max_tokens=2, logprobs=True, top_logprobs=5, grammar=grammar)
        firsts.append(next(e for c in chunks for e in (c.logprobs or [])))
    free, constrained = ([t["logprob"] for t in e["top_logprobs"]] for e in firsts)
    assert constrained == pytest.approx(free, abs=1e-3)  # the same forward passes: equal but for fp16 noise
    assert [t["token"] for t in firsts[0]["top_logprobs"]][:1] == [t["token"] for t in firsts[1]["top_logprobs"]][:1]
