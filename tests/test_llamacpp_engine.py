"""The llamacpp engine end to end: SmolLM2 straight from its GGUF, real HTTP to a real qwen_server.
(The behaviour every engine shares runs on it too: tests/test_qwen_server.py, `smol_server`.)"""
import json
import os
import threading
import time

import pytest
import requests

from conftest import CLEAN_ENV, start_qwen
from helpers import PYTHON, REPO_ROOT, sse_events, stop_process
from test_qwen_server import FRANCE, post

CYRILLIC = [{"role": "system", "content": "Ты - эксперт по Python. Пиши чистый код с комментариями."},
            {"role": "user", "content": "Привет, мир! 🙂 Как дела?"}]
CONVERSATIONS = [
    FRANCE,
    CYRILLIC,
    [{"role": "user", "content": "def f(x):\n    return x  # «ёлка» 日本 🙂\n\ttabs   and  spaces"},
     {"role": "assistant", "content": "The function returns its argument."},
     {"role": "user", "content": "Rewrite it with type hints, <b>please</b>."}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["english", "cyrillic-system", "multi-turn-code"])
def test_same_prompt_tokens_as_transformers(qwen_smol, qwen_llama, messages):
    """The GGUF's own template and tokenizer give exactly the ids of the HF dir built from that GGUF."""
    def ask(server, path, body):
        r = requests.post(server.base_url + path, json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()
    hf, cpp = (ask(s, "/v1/token/encode", {"messages": messages}) for s in (qwen_smol, qwen_llama))
    assert cpp["tokens"] == hf["tokens"] and cpp["length"] == hf["length"] > 10
    counts = [ask(s, "/v1/token/count", {"messages": messages})["count"] for s in (qwen_smol, qwen_llama)]
    assert counts == [hf["length"]] * 2
    text = messages[-1]["content"] + "<|im_end|>"  # a special token written as text is that token
    hf, cpp = (ask(s, "/v1/token/encode", {"text": text}) for s in (qwen_smol, qwen_llama))
    assert cpp["tokens"] == hf["tokens"]


def test_cyrillic_streams_intact_and_a_cyrillic_stop_string_holds(qwen_llama):
    msgs = [{"role": "user", "content": "Repeat exactly, nothing else: Привет, мир! Как дела? Всё хорошо."}]
    body = {"messages": msgs, "temperature": 0, "max_tokens": 40}
    whole = post(qwen_llama, body).json()["choices"][0]["message"]["content"]
    words = [w.strip(".,!?") for w in whole.split()]
    words = [w for w in words if len(w) >= 3 and all("а" <= ch.lower() <= "я" or ch in "ёЁ" for ch in w)]
    assert len(words) >= 2 and "\ufffd" not in whole, whole
    events = sse_events(post(qwen_llama, {**body, "stream": True}, stream=True))
    deltas = [e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]]
    assert "".join(deltas) == whole and not any("\ufffd" in d for d in deltas)
    stop = words[1][1:]  # starts inside a word: held back until it is surely not the stop string
    cut = post(qwen_llama, {**body, "stop": [stop]}).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["message"]["content"] == whole[:whole.index(stop)]


def test_second_turn_evaluates_only_the_new_suffix(qwen_llama):
    """The gateway resends the whole history each turn; the KV cache of the last request is kept."""
    system = "You are a careful assistant. " + " ".join(f"Rule {i}: answer briefly and politely." for i in range(30))
    turn1 = [{"role": "system", "content": system}, {"role": "user", "content": "What is the capital of France?"}]
    first = post(qwen_llama, {"messages": turn1, "temperature": 0, "max_tokens": 12}).json()
    answer = first["choices"][0]["message"]["content"]
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And of Italy?"}]
    second = post(qwen_llama, {"messages": turn2, "temperature": 0, "max_tokens": 12}).json()
    u1, u2 = first["usage"], second["usage"]
    assert u1["prompt_tokens"] > 300 and u2["prompt_tokens"] > u1["prompt_tokens"]
    # everything up to the first answer is reused: at most its last token and the new turn are evaluated
    assert u2["prompt_tokens_details"]["cached_tokens"] >= u1["prompt_tokens"]
    assert u2["timings"]["prefill_ms"] < 0.5 * u1["timings"]["prefill_ms"], (u1["timings"], u2["timings"])
    # a different conversation shares only the template's first tokens, and is answered from scratch
    other = post(qwen_llama, {"messages": FRANCE, "temperature": 0, "max_tokens": 12}).json()
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] < 10
    assert "Paris" in other["choices"][0]["message"]["content"]


def test_four_concurrent_streams_all_finish_one_after_another_in_arrival_order(qwen_llama):
    """llama-cpp-python's own server drops 3 of 4 concurrent streams; here all 4 are served to the
    end, one at a time, first come first served."""
    n_tokens, results = 40, {}

    def client(i):
        r = post(qwen_llama, {"messages": [{"role": "user", "content": f"Write a long story about robot number {i}."}],
                              "temperature": 0, "max_tokens": n_tokens, "stream": True,
                              "stream_options": {"include_usage": True}}, stream=True)
        times, events = [], []
        for line in r.iter_lines():
            if line.startswith(b"data: "):
                times.append(time.monotonic())
                events.append(line[6:].decode())
        results[i] = (times, events)

    threads = []
    for i in range(4):  # each one queued before the next arrives
        threads.append(threading.Thread(target=client, args=(i,)))
        threads[-1].start()
        deadline = time.monotonic() + 30
        while requests.get(qwen_llama.base_url + "/status").json()["active_requests"] < i + 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    for t in threads:
        t.join(120)
    for i in range(4):
        times, events = results[i]
        finish, usage = json.loads(events[-3]), json.loads(events[-2])["usage"]
        assert events[-1] == "[DONE]" and finish["choices"][0]["finish_reason"] == "length"
        assert usage["completion_tokens"] == n_tokens
    # the content of stream i starts after stream i-1 has ended: one at a time, in arrival order
    content_start = [results[i][0][1] for i in range(4)]  # [0] is the role chunk, sent before the turn
    ends = [results[i][0][-1] for i in range(4)]
    assert all(ends[i - 1] <= content_start[i] for i in range(1, 4)), (content_start, ends)


@pytest.mark.parametrize("cache,expected,note,ctx", [("fp16", "f16", None, "512"), ("q8", "q8_0", None, None),
                                                     ("q6", "q5_1", "q5_1", "512")])
def test_cache_modes_map_to_llamacpp_types(smollm2_gguf, cache, expected, note, ctx):
    proc = start_qwen(smollm2_gguf, "-cache", cache, "-t", "1", *(["-l", ctx] if ctx else []), engine="llamacpp")
    try:
        st = requests.get(proc.base_url + "/status").json()
        assert st["engine"] == "llamacpp" and st["cache_requested"] == cache and st["threads"] == 1
        assert st["max_seq_len"] == int(ctx or 8192)  # without -l: the GGUF's own context_length
        assert st["cache_mode"] == st["cache_type_k"] == st["cache_type_v"] == expected
        assert st["flash_attn"] is (cache != "fp16")
        assert (st["cache_note"] is None) if note is None else (note in st["cache_note"])
        assert "Paris" in post(proc, {"messages": FRANCE, "temperature": 0, "max_tokens": 20}).text
    finally:
        stop_process(proc)


def test_cli_errors_for_gguf_paths_are_one_line_and_exit_2(tmp_path, smollm2_dir):
    import subprocess
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}

    def run(*args):
        return subprocess.run([PYTHON, os.path.join(REPO_ROOT, "qwen_server.py"), *args], capture_output=True,
                              text=True, timeout=120, env=env, cwd="/")
    r = run("-m", smollm2_dir, "--engine", "llamacpp")  # an HF dir holds no GGUF
    assert r.returncode == 2 and "not a .gguf file" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    r = run("-m", str(bad))  # auto picks llamacpp for a .gguf; llama.cpp cannot read it
    assert r.returncode == 2 and "broken.gguf" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "second.gguf").write_bytes(b"GGUF")
    r = run("-m", str(tmp_path))
    assert r.returncode == 2 and "several GGUF files" in r.stderr and "Traceback" not in r.stderr


def test_context_beyond_the_model_runs_with_a_warning(smollm2_gguf, tiny_qwen_dir):
    """-l above what the model was built for (SmolLM2's GGUF: 8192; the tiny Qwen2: 4096) is said out loud:
    at start in the log and in /status, on the llamacpp engine (served) and the HF engines (from config.json)."""
    proc = start_qwen(smollm2_gguf, "-l", "16384", engine="llamacpp", env={"LOG_LEVEL": "INFO"})
    try:
        st = requests.get(proc.base_url + "/status", timeout=10).json()
        assert st["max_seq_len"] == 16384 and "beyond the 8192 tokens" in st["context_note"], st
        with open(proc.log_path, encoding="utf-8") as f:
            assert "WARNING" in f.read().split("beyond the 8192 tokens")[0].splitlines()[-1]
    finally:
        stop_process(proc)
    from engines.transformers_engine import TransformersEngine
    assert "beyond the 4096 tokens" in TransformersEngine(tiny_qwen_dir, "q4", 8192).context_note
    assert TransformersEngine(tiny_qwen_dir, "q4", 4096).context_note is None


def test_threads_and_wait_policy_are_chosen_said_and_overridable(qwen_llama, smollm2_gguf):
    """By default prompts on the physical cores and, for a model as small as SmolLM2-135M, one decode thread
    with a short spin (GOMP_SPINCOUNT); with more decode threads, PASSIVE; said in /status with why.
    QWEN_THREADS, QWEN_THREADS_BATCH and OMP_WAIT_POLICY win; an empty OMP_WAIT_POLICY (as .env.example
    has it) is unset."""
    from engines.llamacpp_cpu import ONE_THREAD_BELOW_BYTES, SPIN_ROUNDS, physical_cores, plan_threads
    cores = physical_cores()
    plan = requests.get(qwen_llama.base_url + "/status", timeout=10).json()["cpu_plan"]
    assert (plan["decode_threads"], plan["prompt_threads"]) == (1, cores), plan
    assert plan["wait"] == f"GOMP_SPINCOUNT={SPIN_ROUNDS}" and "short spin" in plan["wait_why"], plan
    assert ("too small to share" if cores > 1 else "physical cores") in plan["threads_why"], plan
    big = plan_threads(ONE_THREAD_BELOW_BYTES + 1)  # a 0.5B model and up: every core for decoding too
    assert (big.decode, big.batch) == (cores, cores) and "physical cores" in big.threads_why
    assert (plan_threads(1 << 20, threads=3).decode, plan_threads(1 << 20, threads=3).batch) == (3, 3)
    for env, wait in (({"QWEN_THREADS": "1", "QWEN_THREADS_BATCH": "2", "OMP_WAIT_POLICY": "PASSIVE"},
                       "OMP_WAIT_POLICY=PASSIVE"), ({"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": None},
                                                    f"GOMP_SPINCOUNT={SPIN_ROUNDS}"),
                      ({"QWEN_THREADS": "2", "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None},
                       "OMP_WAIT_POLICY=PASSIVE")):
        proc = start_qwen(smollm2_gguf, "-l", "512", engine="llamacpp", env=env)
        try:
            st = requests.get(proc.base_url + "/status", timeout=10).json()
            assert st["cpu_plan"]["wait"] == wait, st["cpu_plan"]
            if env.get("QWEN_THREADS") == "1":
                assert (st["threads"], st["threads_batch"]) == (1, 2) and "QWEN_THREADS" in st["cpu_plan"]["threads_why"]
                assert st["cpu_plan"]["wait_why"] == "set in the environment"
            elif env.get("QWEN_THREADS") == "2":  # 2 decode threads: they sleep at the barrier
                assert st["threads"] == 2 and st["cpu_plan"]["wait_why"].startswith("PASSIVE"), st["cpu_plan"]
            assert "Paris" in post(proc, {"messages": FRANCE, "temperature": 0, "max_tokens": 20}).text
        finally:
            stop_process(proc)
