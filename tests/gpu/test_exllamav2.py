"""exllamav2 engine on a GPU: same answers as transformers, and the HTTP API on fp16 and q4 caches.
Skipped where CUDA is absent (CI); run on a GPU machine with `python -m pytest tests/gpu`."""
import threading

import pytest
import requests

from conftest import start_qwen
from helpers import sse_events, stop_process


def _has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


pytestmark = pytest.mark.skipif(not _has_cuda(), reason="no CUDA GPU: the exllamav2 engine needs one")
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def last_token_logits_cosine(model_dir):
    """Cosine of exllamav2's and transformers' last-token logits for one prompt (prefill path)."""
    import torch
    from transformers import AutoModelForCausalLM

    from engines.exllamav2_engine import ExLlamaV2Engine
    engine = ExLlamaV2Engine(model_dir, "fp16", 1024)
    engine.load()
    ids = engine.encode([{"role": "user", "content": "Write a Python function that reverses a string. " * 8}])
    exl = engine.model.forward(torch.tensor([ids]))[0, -1].float().cpu()
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16).cuda().eval()
    with torch.inference_mode():
        ref = hf(torch.tensor([ids]).cuda()).logits[0, -1].float().cpu()
    n = min(exl.shape[-1], ref.shape[-1])  # exllamav2 may pad the vocabulary
    return torch.nn.functional.cosine_similarity(exl[:n], ref[:n], dim=0).item()


@pytest.mark.parametrize("which", ["smollm2_dir", "tiny_qwen_dir"])
def test_logits_match_transformers(which, request):
    assert last_token_logits_cosine(request.getfixturevalue(which)) > 0.999


@pytest.fixture(scope="module", params=["fp16", "q4"])
def exl_server(request, smollm2_dir):
    proc = start_qwen(smollm2_dir, "--engine", "exllamav2", "-cache", request.param, "-l", "2048")
    proc.cache = request.param
    yield proc
    stop_process(proc)


def post(server, body, **kw):
    return requests.post(server.base_url + "/v1/chat/completions", json=body, timeout=120, **kw)


def test_status_reports_the_engine_and_cache(exl_server):
    st = requests.get(exl_server.base_url + "/status").json()
    assert st["engine"] == "exllamav2" and st["cache_mode"] == exl_server.cache and st["device"] == "cuda"
    assert st["memory"]["kind"] == "vram" and st["memory"]["used_bytes"] > 0


def test_real_answer_and_stream(exl_server):
    body = post(exl_server, {"messages": FRANCE, "temperature": 0, "max_tokens": 20}).json()
    assert "Paris" in body["choices"][0]["message"]["content"]
    events = sse_events(post(exl_server, {"messages": FRANCE, "temperature": 0, "max_tokens": 20, "stream": True,
                                          "stream_options": {"include_usage": True}}, stream=True))
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] > 0
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2])
    assert text == body["choices"][0]["message"]["content"]


def test_stop_strings_and_context_limit(exl_server):
    body = post(exl_server, {"messages": FRANCE, "temperature": 0, "max_tokens": 20, "stop": ["Paris"]}).json()
    assert "Paris" not in body["choices"][0]["message"]["content"]
    r = post(exl_server, {"messages": FRANCE, "max_tokens": 4000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_concurrent_clients_and_disconnect(exl_server):
    prompts = [f"Repeat exactly this number: {n}" for n in range(11, 99, 11)]

    def ask(p):
        return post(exl_server, {"messages": [{"role": "user", "content": p}], "temperature": 0,
                                 "max_tokens": 8}).json()["choices"][0]["message"]["content"]
    expected = {p: ask(p) for p in prompts}
    got = {}
    threads = [threading.Thread(target=lambda p=p: got.__setitem__(p, ask(p))) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == expected
    r = post(exl_server, {"messages": [{"role": "user", "content": "Count to 1000."}], "max_tokens": 1500,
                          "stream": True}, stream=True)
    next(r.iter_lines())
    r.close()
    assert "Paris" in post(exl_server, {"messages": FRANCE, "temperature": 0, "max_tokens": 20}).text
