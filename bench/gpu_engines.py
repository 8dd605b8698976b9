#!/usr/bin/env python
"""GPU engines side by side on a Qwen2.5-Coder-7B-shaped model at 16k context: decode speed, time to first
token, 4 concurrent requests and VRAM.

    python3 -m bench.gpu_engines [--configs exllamav2:q4,transformers:eager,...] [--ctx 16384] [--layers 28]
                                 [--tokens 128] [--repeats 2] [--http exllamav2:q4|none]
                                 (make gpu-bench GPU_BENCH_ARGS="...")

Needs a CUDA GPU (~20 GB free for the FP16 weights + cache); without one it says so and exits 0.

The model (bench/_gpu_model.py): random FP16 weights in exactly Qwen2.5-Coder-7B-Instruct's shapes, built
once into .cache/bench/ (~15 GB; --layers makes a shallower one, faster to build and load, for a quick
look); every run decodes exactly the tokens asked for (greedy, no penalty, stop tokens never win).

Every run gets a FRESH prompt (its own system message first): exllamav2 reuses cached prefixes, so one
repeated prompt would time a 1-token prefill against transformers' full one. Configurations, each in a
fresh process: exllamav2 with an fp16/q8/q6/q4 cache and the transformers engine ("eager", fp16 cache),
both through engines.create_engine() as qwen_server runs them, and plain transformers generate() with a
static cache, whose decode step transformers compiles with torch.compile ("compile"; no engine, no
streaming: the ceiling of that library). Per configuration: load time; batch-1 decode tok/s (median of
--repeats runs of --tokens tokens from a 512-token prompt); time to first token (a 1-token answer, wall)
at 1k and 8k prompt tokens; 4 concurrent requests' aggregate tok/s; peak VRAM (torch / whole device).
In the --http configuration also: qwen_server.py on the same model beside the engine, client-side decode
tok/s of both (fresh prompts, strictly alternate runs) and their ratio (goal >= 0.97).
"""
import argparse
import json
import os
import subprocess
import sys
import time

from bench._gpu_model import CACHE_DIR, build_model, log, model_dir_for

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALL_CONFIGS = ["exllamav2:fp16", "exllamav2:q8", "exllamav2:q6", "exllamav2:q4", "transformers:eager",
               "transformers:compile"]
GREEDY = dict(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)  # no penalty: the same work every run
WORDS = ("the model reads a prompt and writes code for the server def return value list string file test data "
         "query index table thread process latency answer question context window cache memory token stream "
         "модель читает запрос и пишет код для сервера функция значение список строка файл").split()


def cuda_or_exit():
    try:
        import torch
    except ImportError:
        print("gpu_engines: SKIPPED: torch is not installed.")
        sys.exit(0)
    if not torch.cuda.is_available():
        print(f"gpu_engines: SKIPPED: no CUDA GPU here (torch {torch.__version__}, "
              f"CUDA build: {torch.version.cuda or 'no'}). Run it on a GPU machine with a CUDA build of torch.")
        sys.exit(0)
    return torch


# -- one configuration, in its own process ----------------------------------------------------------

_runs = [0]


def fresh_prompt(tok, n_tokens):
    """Chat messages whose rendered prompt is about n_tokens long and shares no prefix with any earlier
    run's beyond the template's first tokens (its own system message comes first)."""
    import random
    _runs[0] += 1
    rng = random.Random(f"{n_tokens}/{_runs[0]}/{time.time_ns()}")
    system = {"role": "system", "content": f"Session {rng.getrandbits(64):016x}. You are a coding assistant."}
    words, n = [], 0
    while True:
        words += rng.choices(WORDS, k=max(4, (n_tokens - n) // 3))
        msgs = [system, {"role": "user", "content": " ".join(words)}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)  # as Engine.encode
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        if n >= n_tokens:
            return msgs, n


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def engine_runs(engine, a):
    """Through engine.generate(), as qwen_server drives it."""
    import threading

    from engines import GenParams
    tok = engine.hf_tokenizer

    def run(n_prompt, max_tokens):
        msgs, n = fresh_prompt(tok, n_prompt)
        params = GenParams(**GREEDY, max_tokens=max_tokens)
        t0 = time.perf_counter()
        usage = [c.usage for c in engine.generate(msgs, params, threading.Event()) if c.usage][-1]
        return {"wall_s": time.perf_counter() - t0, "prompt": n, "tokens": usage["completion_tokens"],
                "tps": usage["completion_tokens"] / usage["decode_ms"] * 1000 if usage.get("decode_ms") else None}

    run(512, 8)  # warm-up: kernels, allocator, autotune
    out = {"decode_tps": median(run(512, a.tokens)["tps"] for _ in range(a.repeats)),
           "ttft_1k_ms": median(run(1024, 1)["wall_s"] * 1000 for _ in range(a.repeats))}
    long_n = min(8192, a.ctx - 64)
    run(long_n, 1)  # the first long prompt allocates bigger buffers: not timed
    out["ttft_8k_ms"] = median(run(long_n, 1)["wall_s"] * 1000 for _ in range(2))
    done, t0 = [], time.perf_counter()
    threads = [threading.Thread(target=lambda: done.append(run(512, a.tokens))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["concurrent4_tps"] = sum(r["tokens"] for r in done) / (time.perf_counter() - t0)
    return out


def compiled_runs(model_dir, a):
    """Plain transformers generate() with a static cache (its decode step compiled by transformers)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16).cuda().eval()

    def run(n_prompt, new):
        msgs, _ = fresh_prompt(tok, n_prompt)
        ids = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), add_special_tokens=False,
                  return_tensors="pt")["input_ids"].cuda()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, cache_implementation="static",
                       pad_token_id=tok.pad_token_id)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    long_n = min(8192, a.ctx - 64 - a.tokens)
    # The longest call first: transformers keeps the static cache at the largest size asked so far, so later
    # calls reuse its shape and the compiled decode step (compiling takes minutes, once).
    run(long_n + 32, a.tokens), run(512, a.tokens)
    first, whole = median(run(512, 1) for _ in range(a.repeats)), median(run(512, a.tokens) for _ in range(a.repeats))
    return {"decode_tps": (a.tokens - 1) / (whole - first), "ttft_1k_ms": median(run(1024, 1) * 1000 for _ in range(2)),
            "ttft_8k_ms": run(long_n, 1) * 1000, "concurrent4_tps": None}


def http_vs_bare(engine, kind, model_dir, mode, a):
    """Client-side decode tok/s of this process's engine vs qwen_server.py (a second copy of the same model and
    cache, loaded beside it) streaming over HTTP; fresh prompts, strictly alternate runs, medians and ratio."""
    import threading

    from bench._common import Client
    from engines import GenParams
    from helpers import start_qwen, stop_process
    greedy = dict(GREEDY, max_tokens=a.tokens)
    tok = engine.hf_tokenizer

    def rate(times, tokens):  # tokens after the first text, over the time from the first text to the last
        return (tokens - 1) / (times[-1] - times[0]) if len(times) > 1 else None

    def bare():
        times, n = [], 0
        for c in engine.generate(fresh_prompt(tok, 512)[0], GenParams(**greedy), threading.Event()):
            times += [time.perf_counter()] if c.text else []
            n = c.usage["completion_tokens"] if c.usage else n
        return rate(times, n)

    def http(client):
        body = {"messages": fresh_prompt(tok, 512)[0], "stream": True, "stream_options": {"include_usage": True},
                **greedy}
        status, _, events, _ = client.stream("POST", "/v1/chat/completions", body)
        assert status == 200, status
        times, n = [], 0
        for t, data in events:
            ev = json.loads(data) if data != b"[DONE]" else {}
            n = ev["usage"]["completion_tokens"] if ev.get("usage") else n
            times += [t] if ev.get("choices") and ev["choices"][0]["delta"].get("content") else []
        return rate(times, n)

    proc = start_qwen(model_dir, "-cache", mode, "-l", str(a.ctx), engine=kind, env={"LOG_LEVEL": "WARNING"})
    try:
        client = Client(proc.base_url, timeout=300)
        bare(), http(client)  # warm-up
        pairs = [(bare(), http(client)) for _ in range(5)]
    finally:
        stop_process(proc)
    b, h = median(p[0] for p in pairs), median(p[1] for p in pairs)
    return {"http_vs_bare": {"bare_tps": b, "http_tps": h, "ratio": h / b if b and h else None, "pairs": len(pairs)}}


def worker(kind, mode, model_dir, a):
    import torch
    torch.cuda.reset_peak_memory_stats()
    free0, total = torch.cuda.mem_get_info()
    t0 = time.perf_counter()
    out = {"engine": kind, "mode": mode, "gpu": torch.cuda.get_device_name(0), "device_total": total}
    if kind == "transformers" and mode == "compile":
        out.update(compiled_runs(model_dir, a), load_s=None, note="generate(), static cache, compiled decode")
    else:
        from engines import create_engine
        engine = create_engine(kind, model_dir, "fp16" if kind == "transformers" else mode, a.ctx)
        engine.load()
        out.update(load_s=time.perf_counter() - t0, note=engine.status().get("attention", "engine, fp16 cache"))
        out.update(engine_runs(engine, a))
        if f"{kind}:{mode}" == a.http:
            out.update(http_vs_bare(engine, kind, model_dir, mode, a))
    torch.cuda.synchronize()
    out.update(peak_alloc=torch.cuda.max_memory_allocated(), device_used=free0 - torch.cuda.mem_get_info()[0])
    return out


def gib(b):
    return f"{b / 2**30:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ctx", type=int, default=16384, help="context length / cache size in tokens (default 16384)")
    ap.add_argument("--configs", default=",".join(ALL_CONFIGS), help="comma-separated engine:mode list")
    ap.add_argument("--layers", type=int, default=28, help="decoder layers of the model (28 = Qwen2.5-Coder-7B)")
    ap.add_argument("--tokens", type=int, default=128, help="tokens decoded per timed run (default 128)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per figure, median reported (default 2)")
    ap.add_argument("--http", default="exllamav2:q4", metavar="ENGINE:MODE",
                    help="in this configuration also compare qwen_server's HTTP streaming with the bare engine "
                         "(default exllamav2:q4; 'none' to skip)")
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch = cuda_or_exit()
    model_dir = model_dir_for(a.layers)
    if a.worker:
        with open(a.out, "w") as f:
            json.dump(worker(a.worker[0], a.worker[1], model_dir, a), f)
        return
    from tools.make_models import ensure_tiny_qwen
    os.makedirs(CACHE_DIR, exist_ok=True)
    build_model(torch, str(ensure_tiny_qwen(os.path.join(CACHE_DIR, "models"))), a.layers)
    results, t_all = [], time.perf_counter()
    for c in a.configs.split(","):
        kind, mode = c.split(":")
        out = os.path.join(CACHE_DIR, f"gpu-{kind}-{mode}.json")
        if os.path.exists(out):
            os.unlink(out)
        log(f"running {kind} {mode} ...")
        args = [sys.executable, "-m", "bench.gpu_engines", "--worker", kind, mode, "--out", out, "--ctx", str(a.ctx),
                "--layers", str(a.layers), "--tokens", str(a.tokens), "--repeats", str(a.repeats), "--http", a.http]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        p = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if p.returncode != 0 or not os.path.exists(out):
            tail = (p.stderr or p.stdout)[-1500:]
            log(f"  {kind} {mode} failed (exit {p.returncode}):\n{tail}")
            results.append({"engine": kind, "mode": mode, "error": tail.strip().splitlines()[-1] if tail else "?"})
            continue
        with open(out) as f:
            results.append(json.load(f))
        os.unlink(out)
        log("  " + json.dumps(results[-1]))  # as it comes: a run cut short still leaves its figures
    report(results, a, torch, time.perf_counter() - t_all)


def report(results, a, torch, seconds):
    import datetime
    import platform
    fmt = lambda v, f="{:.0f}": "–" if v is None else f.format(v)  # noqa: E731
    print(f"\n### GPU engines: Qwen2.5-Coder-7B-shaped model ({a.layers} layers, random FP16 weights), "
          f"context {a.ctx}\n")
    print(f"Machine: {torch.cuda.get_device_name(0)} ({gib(torch.cuda.mem_get_info()[1])} GiB), {os.cpu_count()} "
          f"CPU cores, torch {torch.__version__} (CUDA {torch.version.cuda}), Python {platform.python_version()}; "
          f"{datetime.date.today().isoformat()}; all configurations in {seconds:.0f} s")
    print(f"Greedy, a fresh prompt every run; decode = median of {a.repeats} runs of {a.tokens} tokens after a "
          f"512-token prompt; TTFT = wall time of a 1-token answer; 4 concurrent = aggregate tok/s of 4 requests "
          f"of {a.tokens} tokens; VRAM peak GiB: torch allocated / fall in the device's free memory.\n")
    print("| engine | mode | load s | decode tok/s (batch 1) | TTFT ms 1k | TTFT ms 8k | 4 concurrent tok/s | "
          "VRAM peak torch / device | notes |")
    print("|" + "---|" * 9)
    for r in results:
        if "error" in r:
            print(f"| {r['engine']} | {r['mode']} | " + "– | " * 6 + f"failed: {r['error'][:100]} |")
            continue
        print(f"| {r['engine']} | {r['mode']} | {fmt(r['load_s'], '{:.1f}')} | {fmt(r['decode_tps'], '{:.1f}')} | "
              f"{fmt(r['ttft_1k_ms'])} | {fmt(r['ttft_8k_ms'])} | {fmt(r['concurrent4_tps'], '{:.1f}')} | "
              f"{gib(r['peak_alloc'])} / {gib(r['device_used'])} | {r['note']} |")
    for r in results:
        if r.get("http_vs_bare"):
            h = r["http_vs_bare"]
            print(f"\nHTTP streaming vs the bare engine ({r['engine']} {r['mode']}, client-side decode tok/s, medians of "
                  f"{h['pairs']} alternate runs): bare {fmt(h['bare_tps'], '{:.1f}')}, qwen_server "
                  f"{fmt(h['http_tps'], '{:.1f}')}, ratio {fmt(h['ratio'], '{:.3f}')} (goal >= 0.97)")


if __name__ == "__main__":
    main()
