"""exllamav2 on a GPU, with no network: its generator's greedy tokens against transformers fp16, every KV
cache mode, the engine's streaming/stop/cancel/concurrency/context behaviour, and qwen_server over HTTP
with `-cache q4`. Models are built on the spot (tests/gpu/gpu_models.py). Skipped without CUDA (CI).
Run through `make gpu-check`; figures go to $GPU_FIGURES (JSON lines) when set."""
import json
import os
import threading
import time

import pytest
import requests

from gpu_models import Reference, deep_qwen, first_divergence, tiny_qwen
from helpers import engine_chunks, sse_events, start_qwen, stop_process


def _has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


pytestmark = pytest.mark.skipif(not _has_cuda(), reason="no CUDA GPU: the exllamav2 engine needs one")
RU_EMOJI = [{"role": "user", "content": "Привет! Напиши функцию на Python, которая переворачивает строку 🙂🚀"}]
GREEDY = dict(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)
TIMEOUT_S = 120


def record(name, **values):
    print(name, values)
    if os.environ.get("GPU_FIGURES"):
        with open(os.environ["GPU_FIGURES"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"figure": name, **values}, ensure_ascii=False) + "\n")


def exl_generator(model_dir, cache, max_seq_len):
    """A bare ExLlamaV2DynamicGenerator built by the engine's own code (paging, SDPA, chunk size)."""
    from engines.exllamav2_engine import PAGE, ExLlamaV2Engine, import_exllamav2
    engine = ExLlamaV2Engine(model_dir, cache, max_seq_len)
    engine.load_tokenizer()
    from qwen_api.settings import QwenSettings
    s = QwenSettings()  # EXLLAMAV2_JIT_STD: the extension built before, not a second build
    exl = import_exllamav2(s.exllamav2_jit_std, s.exllamav2_jit_verbose)
    return engine, exl, engine._build_generator(exl, -(-engine.max_seq_len // PAGE) * PAGE)


def exl_greedy(exl, gen, prompt_ids, n):
    """Token ids of one greedy job, no stop conditions, and its decode tok/s."""
    import torch
    job = exl.Job(input_ids=torch.tensor([prompt_ids]), max_new_tokens=n,
                  gen_settings=exl.Settings(temperature=1.0, top_k=1, top_p=0.0, token_repetition_penalty=1.0))
    gen.enqueue(job)
    ids, tps = [], None
    while gen.num_remaining_jobs():
        for r in gen.iterate():
            if r["stage"] == "streaming" and "token_ids" in r:
                ids += r["token_ids"][0].tolist()
            if r["eos"]:
                tps = (r["new_tokens"] - 1) / r["time_generate"] if r["time_generate"] else None
    return ids, tps


@pytest.fixture(scope="module", params=["tiny", "deep"])
def model_and_ref(request):
    model_dir = tiny_qwen() if request.param == "tiny" else deep_qwen()
    return request.param, model_dir, Reference(model_dir)


def long_prompt(engine, n_tokens):
    words = "кэш токен поток сервер модель cache token stream server model 🙂".split()
    text = " ".join(words[i % len(words)] for i in range(n_tokens))
    msgs = [{"role": "user", "content": text}]
    while engine.count_tokens(msgs) > n_tokens:
        msgs = [{"role": "user", "content": msgs[0]["content"][:-40]}]
    return msgs


@pytest.mark.parametrize("cache", ["fp16", "q8", "q6", "q4"])
def test_generator_greedy_tokens_match_transformers(model_and_ref, cache):
    name, model_dir, ref = model_and_ref
    engine, exl, gen = exl_generator(model_dir, cache, 4096)
    for label, msgs in [("ru+emoji", RU_EMOJI), ("over one prefill chunk", long_prompt(engine, 2600))]:
        prompt = engine.encode(msgs)
        ids, tps = exl_greedy(exl, gen, prompt, 64)
        assert len(ids) == 64
        bad, first, agree = ref.judge(prompt, ids)
        want = ref.greedy(prompt, 64)
        record("greedy_agreement", model=name, cache=cache, prompt=label, prompt_tokens=len(prompt),
               teacher_forced_agreement=round(agree, 3), mismatches_beyond_ties=bad, first_mismatch=first,
               vs_transformers_greedy=first_divergence(ids, want) or "identical", decode_tok_s=tps and round(tps))
        if cache == "fp16":
            assert bad == 0, first  # every token is transformers' argmax, or a tie fp16 may break either way
        else:
            assert agree >= {"q8": 0.95, "q6": 0.9, "q4": 0.8}[cache], (agree, first)


def test_last_token_logits_match_transformers(model_and_ref):
    import torch
    name, model_dir, ref = model_and_ref
    engine, _, gen = exl_generator(model_dir, "fp16", 2048)
    ids = engine.encode([{"role": "user", "content": "Write a Python function that reverses a string. " * 8}])
    exl = engine.model.forward(torch.tensor([ids]))[0, -1].float().cpu()
    want = ref.logits(ids)[-1].cpu()
    n = ref.n_vocab  # exllamav2 may pad the vocabulary
    cos = torch.nn.functional.cosine_similarity(exl[:n], want[:n], dim=0).item()
    record("last_token_logits_cosine", model=name, cosine=round(cos, 6))
    assert cos > 0.999


@pytest.fixture(scope="module")
def engine():
    from engines.exllamav2_engine import ExLlamaV2Engine
    eng = ExLlamaV2Engine(tiny_qwen(), "fp16", 4096)
    eng.load()
    return eng


def ask(engine, messages, cancel=None, **params):
    from engines import GenParams
    chunks = engine_chunks(engine, messages, GenParams(**{**GREEDY, **params}), cancel, TIMEOUT_S)
    return "".join(c.text for c in chunks), chunks[-1]


def test_stop_string_cuts_the_answer_before_it(engine):
    text, _ = ask(engine, RU_EMOJI, max_tokens=48)
    cut = next(i for i in range(8, len(text) - 3)
               if text[i:i + 3].strip() and "\ufffd" not in text[i:i + 3] and text.find(text[i:i + 3]) == i)
    stopped, last = ask(engine, RU_EMOJI, max_tokens=48, stop=[text[cut:cut + 3]])
    assert stopped == text[:cut] and last.finish_reason == "stop"


def test_text_held_for_a_partial_stop_string_survives_a_stop_token(engine):
    """0.3.2 returns text it was holding only in r["held"] when a stop token ends a job. Make the k-th
    greedy token a stop token, with a stop string that begins with the last character before it: that
    character is held when the stop token comes, and must still reach the client."""
    _, exl, gen = exl_generator(engine.model_path, "fp16", engine.max_seq_len)  # same plan: same tokens
    ids, _ = exl_greedy(exl, gen, engine.encode(RU_EMOJI), 24)
    full, _ = ask(engine, RU_EMOJI, max_tokens=24)
    dec = engine.hf_tokenizer.decode
    k = next(k for k in range(8, 24) if ids[k] not in ids[:k] and dec(ids[:k]).strip()
             and not dec(ids[:k]).endswith("\ufffd"))
    head = dec(ids[:k])
    saved = engine.stop_ids
    try:
        engine.stop_ids = list(saved) + [ids[k]]
        got, last = ask(engine, RU_EMOJI, max_tokens=24, stop=[head[-1] + "\u2603never"])
    finally:
        engine.stop_ids = saved
    assert last.finish_reason == "stop" and full.startswith(got)
    assert got.endswith(head[-1]) and len(got) >= len(head.rstrip()), (got, head)


def test_cancel_then_the_next_answer_is_right(engine):
    from engines import GenParams
    expected, _ = ask(engine, RU_EMOJI, max_tokens=32)
    stream = engine.generate([{"role": "user", "content": "count"}], GenParams(**GREEDY, max_tokens=2000),
                             threading.Event())
    next(stream)
    stream.close()
    assert ask(engine, RU_EMOJI, max_tokens=32)[0] == expected


def test_four_concurrent_requests_equal_the_same_one_by_one(engine):
    prompts = [[{"role": "user", "content": f"Вопрос номер {n}: what is {n} squared? 🙂"}] for n in range(4)]
    alone = [ask(engine, p, max_tokens=40)[0] for p in prompts]
    got, t0 = [None] * 4, time.perf_counter()
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, ask(engine, prompts[i], max_tokens=40)[0]))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    record("four_concurrent", paged=engine.paged, seconds=round(time.perf_counter() - t0, 3))
    assert got == alone


def test_prompt_over_the_context_is_a_clean_error_and_no_hang(engine):
    huge = [{"role": "user", "content": "токен " * 6000}]
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="context"):
        ask(engine, huge)
    assert time.perf_counter() - t0 < 10
    assert ask(engine, RU_EMOJI, max_tokens=8)[1].finish_reason in ("length", "stop")


@pytest.fixture(scope="module")
def q4_server():
    # EXLLAMAV2_JIT_STD and PYTHONPATH pass through: the server must load the extension built before.
    proc = start_qwen(tiny_qwen(), "--engine", "exllamav2", "-cache", "q4", "-l", "2048", env={"LOG_LEVEL": "WARNING"})
    yield proc
    stop_process(proc)


def post(server, body, **kw):
    return requests.post(server.base_url + "/v1/chat/completions", json=body, timeout=TIMEOUT_S, **kw)


def test_http_with_q4_cache(q4_server):
    st = requests.get(q4_server.base_url + "/status", timeout=10).json()
    assert (st["engine"], st["cache_mode"], st["device"]) == ("exllamav2", "q4", "cuda")
    body = {"messages": RU_EMOJI, "max_tokens": 32, **GREEDY}
    whole = post(q4_server, body).json()["choices"][0]["message"]["content"]
    events = sse_events(post(q4_server, {**body, "stream": True, "stream_options": {"include_usage": True}},
                             stream=True))
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] > 0
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]) == whole
    record("http_q4", tokens_per_second=events[-2]["usage"].get("timings", {}).get("tokens_per_second"))
    r = post(q4_server, {"messages": RU_EMOJI, "max_tokens": 4000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
