"""qwen_server's /v1/completions with the `openai` SDK: plain prompts and fill-in-the-middle (`suffix`)
with the model's FIM tokens, streamed and not, stop, max_tokens, logprobs; a 400 for a model without FIM
tokens (SmolLM2). Real servers: SmolLM2 on both CPU engines, the tiny Qwen2 (which has Qwen2.5-Coder's
FIM tokens)."""
import time

import pytest
from openai import BadRequestError

from helpers import http, openai_client


@pytest.fixture(scope="module", params=["qwen_smol", "qwen_llama", "qwen_tiny"])
def server(request):
    return request.getfixturevalue(request.param)


client = openai_client  # (tests/helpers.py)


def complete(proc, **kw):
    return client(proc).completions.create(model="local", **{"temperature": 0.0, **kw})


def test_plain_prompt_streamed_equals_whole(server):
    kw = {"prompt": "def add(a, b):", "max_tokens": 12, "extra_body": {"repetition_penalty": 1.0}}
    whole = complete(server, **kw)
    c = whole.choices[0]
    assert whole.object == "text_completion" and c.text and c.finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 12
    parts, finish, usage = [], None, None
    for ev in complete(server, stream=True, stream_options={"include_usage": True}, **kw):
        assert ev.object == "text_completion"
        if ev.choices:
            parts.append(ev.choices[0].text)
            finish = ev.choices[0].finish_reason or finish
        else:
            usage = ev.usage
    assert "".join(parts) == c.text and finish == c.finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_max_tokens_and_stop(qwen_smol):
    c = complete(qwen_smol, prompt="1, 2, 3, 4,", max_tokens=3).choices[0]
    assert c.finish_reason == "length"
    free = complete(qwen_smol, prompt="1, 2, 3, 4,", max_tokens=12).choices[0].text
    stop = free.strip()[:1]
    cut = complete(qwen_smol, prompt="1, 2, 3, 4,", max_tokens=12, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and stop not in cut.text and free.startswith(cut.text)


def test_logprobs_legacy_shape(server):
    c = complete(server, prompt="The capital of France is", max_tokens=5, logprobs=2,
                 extra_body={"repetition_penalty": 1.0}).choices[0]
    lp = c.logprobs
    assert "".join(lp.tokens) == c.text and len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs)
    assert lp.text_offset[0] == 0 and all(len(t) == 2 for t in lp.top_logprobs)
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen == pytest.approx(max(top.values()), abs=1e-4)  # greedy


@pytest.fixture(scope="module", params=["qwen_tiny", "qwen_tiny_llama"])
def fim_server(request):
    """The tiny Qwen2 (Qwen2.5's FIM tokens, added but not special) on both CPU engines."""
    return request.getfixturevalue(request.param)


def test_fill_in_the_middle_uses_the_fim_tokens(fim_server):
    """The prompt is <|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>: 3 tokens more than P and S alone."""
    def prompt_tokens(**kw):
        return complete(fim_server, max_tokens=1, **kw).usage.prompt_tokens
    p, s = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    plain = prompt_tokens(prompt=p)
    suffix_only = prompt_tokens(prompt=s)
    assert prompt_tokens(prompt=p, suffix=s) == plain + suffix_only + 3
    parts = [e.choices[0].text for e in complete(fim_server, prompt=p, suffix=s, max_tokens=6, stream=True)
             if e.choices]
    assert "".join(parts) == complete(fim_server, prompt=p, suffix=s, max_tokens=6).choices[0].text


def test_fim_without_fim_tokens_is_a_clear_400(qwen_smol, qwen_llama):
    for proc in (qwen_smol, qwen_llama):
        with pytest.raises(BadRequestError) as e:
            complete(proc, prompt="a = ", suffix="\nprint(a)")
        assert e.value.body["param"] == "suffix" and "fill-in-the-middle" in e.value.body["message"]


@pytest.mark.parametrize("body,param", [({"prompt": ["a", "b"]}, "prompt"), ({"prompt": [1, 2]}, "prompt"),
                                        ({"prompt": "a", "echo": True}, "echo"), ({"prompt": "a", "n": 2}, "n"),
                                        ({"prompt": "a", "logprobs": 9}, "logprobs"),
                                        ({"prompt": "a", "suffix": 3}, "suffix")])
def test_bad_completion_requests_are_400(qwen_tiny, body, param):
    status, _, out = http("POST", qwen_tiny.base_url + "/v1/completions", body)
    assert status == 400 and out["error"]["param"] == param, out


def _hang_up_after_two_events(stream):
    for i, _ in enumerate(stream):
        if i == 1:
            break
    stream.close()


@pytest.mark.parametrize("kind", ["fim", "json_schema"])
def test_a_client_that_hangs_up_mid_stream_stops_its_generation(qwen_tiny_2k, qwen_llama, kind):
    """A long constrained (or FIM) stream whose client leaves stops at once: the next request (engines
    serve one at a time) does not wait for the abandoned one's ~1800 tokens (several seconds)."""
    proc = qwen_tiny_2k if kind == "fim" else qwen_llama
    if kind == "fim":
        stream = complete(proc, prompt="def f(x):", suffix="\nprint(f(1))\n", max_tokens=1800, stream=True)
    else:
        schema = {"type": "array", "minItems": 1000, "items": {"type": "string", "maxLength": 20}}
        stream = client(proc).chat.completions.create(
            model="local", stream=True, max_tokens=1800, temperature=0.0,
            messages=[{"role": "user", "content": "List words."}],
            response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}})
    _hang_up_after_two_events(stream)
    t0 = time.monotonic()
    assert complete(proc, prompt="Hello", max_tokens=2).choices[0].finish_reason in ("stop", "length")
    assert time.monotonic() - t0 < 2.0
    assert http("GET", proc.base_url + "/status")[2]["active_requests"] == 0
