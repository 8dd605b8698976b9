"""The exllamav2 engine's constrained decoding and logprobs (engines/exllamav2_extras.py) on CPU, through
tests/exl_standin.py's copy of 0.3.2's sampler path with a random-logits "model": free text is noise, so only
the grammar filter can make an answer valid. tests/gpu/test_exllamav2_constrained.py runs the real one."""
import json

import jsonschema
import pytest
import torch

import exl_standin
from constrained_cases import SCHEMA, WEATHER
from engines.constrained import closed, json_grammar, lark_grammar, tool_call_lark
from engines.exllamav2_engine import ExLlamaV2Engine
from test_exllamav2_engine import GREEDY, model_dir, run, text_of, user, watchdog  # noqa: F401 - fixtures

PADDING_LOGIT = 20.0  # above every real logit: a sampler or a normaliser that forgets the padding rows shows


def random_logits(n_logits, n_vocab):
    """A "model" whose logits are random but fixed for each prefix: free text is noise, so only the filter
    can make the answer valid. The head's rows past the real vocabulary (Qwen pads its head) are large."""
    def logits(ids):
        g = torch.Generator().manual_seed(hash(tuple(ids)) & 0xFFFFFFFF)
        out = torch.randn(n_logits, generator=g) * 4
        out[n_vocab:] = PADDING_LOGIT
        return out
    return logits


def random_engine(model_dir):
    engine = ExLlamaV2Engine(model_dir, "q4", 512)
    engine.load_tokenizer()
    assert engine.model_config["vocab_size"] > len(engine.hf_tokenizer)  # the tiny model's head is padded
    fn = random_logits(engine.model_config["vocab_size"], len(engine.hf_tokenizer))
    gen = exl_standin.Generator(engine.hf_tokenizer, None, max_total_tokens=512, logits=fn)
    engine.start(gen, exl_standin.Job, exl_standin.Settings, exl_standin.Filter)
    return engine, fn


@pytest.mark.parametrize("sampling", [GREEDY, dict(temperature=1.0, top_p=1.0, top_k=0, seed=7)])
def test_json_schema_answer_parses_and_matches_the_schema(model_dir, sampling):
    engine, _ = random_engine(model_dir)
    chunks = run(engine, user("json please"), max_tokens=300, grammar=json_grammar(SCHEMA), **sampling)
    assert chunks[-1].finish_reason == "stop", text_of(chunks)
    jsonschema.validate(json.loads(text_of(chunks)), closed(SCHEMA))
    free = run(engine, user("json please"), max_tokens=30, **sampling)  # the same "model", no filter: noise
    with pytest.raises(ValueError):
        json.loads(text_of(free))


def test_forced_tool_call_matches_its_schema(model_dir):
    engine, _ = random_engine(model_dir)
    tags = engine.tool_tag_ids()
    assert set(tags) == {"<tool_call>", "</tool_call>"}  # one token each, as in Qwen2.5 (tests/MODELS.md)
    grammar = lark_grammar(tool_call_lark([WEATHER], "get_weather", tags))
    chunks = run(engine, user("weather?"), max_tokens=300, grammar=grammar)
    text = text_of(chunks)
    assert text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>"), text
    call = json.loads(text[len("<tool_call>\n"):-len("\n</tool_call>")])
    assert call["name"] == "get_weather"
    jsonschema.validate(call["arguments"], closed(WEATHER["function"]["parameters"]))


def real_log_softmax(engine, logits):
    return torch.log_softmax(logits[:len(engine.hf_tokenizer)], dim=-1)  # over the real vocabulary


@pytest.mark.parametrize("grammar", [None, json_grammar(SCHEMA)])
def test_logprobs_are_the_models_and_greedy_tokens_are_the_top_ones(model_dir, grammar):
    engine, fn = random_engine(model_dir)
    jobs = []
    real_enqueue = engine.generator.enqueue
    engine.generator.enqueue = lambda job: (jobs.append(job), real_enqueue(job))[1]
    chunks = run(engine, user("q"), max_tokens=12, logprobs=True, top_logprobs=3, grammar=grammar)
    entries = [e for c in chunks for e in (c.logprobs or [])]
    assert "".join(e["token"] for e in entries) == text_of(chunks)  # one entry a token, the stop token none
    job = jobs[0]
    assert all(t < len(engine.hf_tokenizer) for t in job.sampled)  # never a padding row, as 0.3.2's sampler
    sampled = [t for t in job.sampled if t not in engine.stop_ids]
    assert len(entries) == len(sampled) == chunks[-1].usage["completion_tokens"] - (len(job.sampled) - len(sampled))
    for i, (e, tid) in enumerate(zip(entries, sampled)):
        lp = real_log_softmax(engine, fn(job.ids + job.sampled[:i]))  # the model's own, before the mask
        top = torch.topk(lp, 3)
        assert e["logprob"] == pytest.approx(float(lp[tid]), abs=1e-4) and e["logprob"] <= 0
        assert [t["logprob"] for t in e["top_logprobs"]] == pytest.approx(top.values.tolist(), abs=1e-4)
        if grammar is None:  # unconstrained greedy: the token is the model's top-1
            assert tid == int(top.indices[0]) and e["top_logprobs"][0]["token"] == e["token"]


def test_logprobs_are_the_same_with_and_without_a_grammar(model_dir):
    """The first token has the same prefix either way: the same model distribution, whether or not a filter
    made the sampler mask a copy of the logits (and left the kept ones' padding rows as they were)."""
    engine, _ = random_engine(model_dir)
    firsts = []
    for grammar in (None, json_grammar(SCHEMA)):
        chunks = run(engine, user("q"), max_tokens=3, logprobs=True, top_logprobs=5, grammar=grammar)
        firsts.append(next(e for c in chunks for e in (c.logprobs or [])))
    free, constrained = firsts
    assert constrained["top_logprobs"] == free["top_logprobs"]
    assert free["logprob"] == free["top_logprobs"][0]["logprob"]


def test_no_logprobs_unless_asked(model_dir):
    engine, _ = random_engine(model_dir)
    chunks = run(engine, user("q"), max_tokens=5)
    assert all(c.logprobs is None for c in chunks) and text_of(chunks)
