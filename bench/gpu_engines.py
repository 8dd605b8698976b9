#!/usr/bin/env python
"""GPU engines side by side on a Qwen2.5-Coder-7B-shaped model: decode speed and VRAM.

    .venv/bin/python bench/gpu_engines.py [--quick] [--ctx 16384] [--configs transformers:fp16,exllamav2:q4,...]

Needs a CUDA GPU (~20 GB free for the FP16 weights + cache) and a CUDA build of torch
(`make TORCH=torch install`); without CUDA it prints why and exits 0 (nothing to measure).

The model: random weights in exactly Qwen2.5-Coder-7B-Instruct's shapes (hidden 3584, 28 layers,
28 heads, 4 KV heads, intermediate 18944, vocab 152064, untied head, QKV bias), FP16 safetensors
with a top-level rope_theta (exllamav2 reads only that), built once into .cache/bench/ (~15 GB)
with the tiny-qwen2 tokenizer and chat template. Speed does not depend on the weights' values;
two things are rigged so that every run decodes exactly max_tokens tokens: the lm_head rows of
ids the tokenizer lacks and of the stop tokens are zero (their logit is 0, below the max of the
others), and sampling is greedy without repetition penalty.

Each configuration (engine x KV-cache mode) runs in a fresh process through the project's own
engine classes (engines.create_engine(...).load(), engine.generate(...)), as qwen_server would:
  load time; VRAM after load (torch allocated / whole device used); a 512-token prompt decoding
  256 tokens (3 runs: time to first token, decode tok/s); an 8k-token prompt decoding 128 (prefill
  tok/s, decode tok/s deep in the context); and the peak VRAM (torch max allocated, device used).
The transformers engine has no quantized KV cache (it runs fp16 whatever is asked), so it is
measured at fp16 only. Context (the cache exllamav2 allocates) = --ctx, default 16384.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
CACHE_DIR = os.path.join(REPO_ROOT, ".cache", "bench")
MODEL_DIR = os.path.join(CACHE_DIR, "qwen2.5-coder-7b-shaped-random")
sys.path.insert(0, REPO_ROOT)

SHAPE = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
             num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1000000.0,
             rms_norm_eps=1e-6, tie_word_embeddings=False)
ALL_CONFIGS = ["transformers:fp16", "exllamav2:fp16", "exllamav2:q8", "exllamav2:q6", "exllamav2:q4"]
WORDS = ("the model reads a prompt and writes code for the server def return value list string file test data "
         "query index table thread process latency answer question context window cache memory token stream "
         "модель читает запрос и пишет код для сервера функция значение список строка файл").split()
MARKER = ".complete"
DEVICE = "cuda"  # where the random weights are drawn (fast); a CPU dry run of the layout sets "cpu"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


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


# -- the model ---------------------------------------------------------------------------------

def tensor_shapes(shape=None):
    """(name, shape) of every tensor of a Qwen2ForCausalLM checkpoint, in Hugging Face naming."""
    shape = shape or SHAPE
    h, i, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    head_dim = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    yield "model.embed_tokens.weight", (v, h)
    for n in range(shape["num_hidden_layers"]):
        p = f"model.layers.{n}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (h, h)
        yield p + "self_attn.q_proj.bias", (h,)
        yield p + "self_attn.k_proj.weight", (kv, h)
        yield p + "self_attn.k_proj.bias", (kv,)
        yield p + "self_attn.v_proj.weight", (kv, h)
        yield p + "self_attn.v_proj.bias", (kv,)
        yield p + "self_attn.o_proj.weight", (h, h)
        yield p + "mlp.gate_proj.weight", (i, h)
        yield p + "mlp.up_proj.weight", (i, h)
        yield p + "mlp.down_proj.weight", (h, i)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (v, h)


def build_model(torch, tok_src):
    """Random FP16 safetensors in Qwen2.5-Coder-7B's layout; ~15 GB, written once."""
    if os.path.exists(os.path.join(MODEL_DIR, MARKER)):
        return MODEL_DIR
    from safetensors.torch import save_file
    from transformers import AutoTokenizer
    t0 = time.time()
    tmp = MODEL_DIR + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for f in ("tokenizer.json", "chat_template.jinja"):
        if os.path.exists(os.path.join(tok_src, f)):
            shutil.copy(os.path.join(tok_src, f), tmp)
    with open(os.path.join(tok_src, "tokenizer_config.json"), encoding="utf-8") as f:
        tc = json.load(f)
    tc["model_max_length"] = SHAPE["max_position_embeddings"]
    with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tc, f, indent=2)
    tok = AutoTokenizer.from_pretrained(tok_src)
    n_tok = len(tok)
    eot, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": eot, "pad_token_id": eot, "eos_token_id": [im_end, eot]}, f)
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
           "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True, "use_sliding_window": False,
           "sliding_window": None, "max_window_layers": SHAPE["num_hidden_layers"], "rope_scaling": None,
           "bos_token_id": eot, "eos_token_id": im_end, "pad_token_id": eot,
           "torch_dtype": "float16", "dtype": "float16", **SHAPE}
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    shard, shard_bytes, shard_no, index = {}, 0, 0, {}

    def flush():
        nonlocal shard, shard_bytes, shard_no
        if shard:
            shard_no += 1
            name = f"model-{shard_no:05d}.safetensors"
            save_file(shard, os.path.join(tmp, name), metadata={"format": "pt"})
            index.update({k: name for k in shard})
            shard, shard_bytes = {}, 0

    total = 0
    for name, shape in tensor_shapes():
        if name.endswith("norm.weight"):
            t = torch.ones(shape, dtype=torch.float16)
        else:
            t = (torch.randn(shape, generator=gen, device=DEVICE, dtype=torch.float32) * 0.02).to(torch.float16)
            if name == "lm_head.weight":
                t[n_tok:] = 0  # ids the tokenizer lacks never win the argmax ...
                t[[eot, im_end]] = 0  # ... nor the stop tokens: every run decodes max_tokens
            t = t.cpu()
        shard[name] = t.contiguous()
        shard_bytes += t.numel() * 2
        total += t.numel()
        if shard_bytes >= 4 << 30:
            flush()
    flush()
    with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total * 2}, "weight_map": index}, f, indent=1)
    with open(os.path.join(tmp, MARKER), "w") as f:
        f.write(f"{total} parameters\n")
    shutil.rmtree(MODEL_DIR, ignore_errors=True)
    os.replace(tmp, MODEL_DIR)
    log(f"built {MODEL_DIR}: {total / 1e9:.2f} B parameters in {time.time() - t0:.0f} s")
    return MODEL_DIR


# -- one configuration, in its own process ----------------------------------------------------------

def prompt_of(tok, n_tokens):
    """A user message whose rendered chat prompt is about n_tokens long."""
    import random
    rng = random.Random(n_tokens)
    words, n = [], 0
    while True:
        words += rng.choices(WORDS, k=max(4, (n_tokens - n) // 3))
        msgs = [{"role": "user", "content": " ".join(words)}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)  # as Engine.encode
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        if n >= n_tokens:
            return msgs, n


def worker(engine_kind, cache, model_dir, ctx, quick):
    import threading

    import torch
    from engines import GenParams, create_engine
    torch.cuda.reset_peak_memory_stats()
    free0, total = torch.cuda.mem_get_info()
    t0 = time.perf_counter()
    engine = create_engine(engine_kind, model_dir, cache, ctx)
    engine.load()
    load_s = time.perf_counter() - t0
    torch.cuda.synchronize()
    free1, _ = torch.cuda.mem_get_info()
    out = {"engine": engine_kind, "cache": engine.cache_mode, "cache_note": engine.cache_note, "load_s": load_s,
           "alloc_after_load": torch.cuda.memory_allocated(), "device_after_load": free0 - free1,
           "device_total": total, "gpu": torch.cuda.get_device_name(0), "ctx": engine.max_seq_len}
    if engine_kind == "exllamav2":
        out["attention"] = engine.status().get("attention")

    def run(messages, max_tokens):
        params = GenParams(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_tokens=max_tokens)
        t = time.perf_counter()
        first = last = None
        usage = None
        for ch in engine.generate(messages, params, threading.Event()):
            now = time.perf_counter() - t
            if ch.text:
                first = now if first is None else first
                last = now
            if ch.usage:
                usage = ch.usage
        end = time.perf_counter() - t
        n = usage["completion_tokens"]
        return {"ttft_ms": (first or end) * 1000, "end_ms": end * 1000, "tokens": n,
                "prefill_ms": usage.get("prefill_ms"), "decode_ms": usage.get("decode_ms"),
                "decode_tps": n / usage["decode_ms"] * 1000 if usage.get("decode_ms") else None,
                "wall_decode_tps": (n - 1) / (last - first) if first is not None and last > first else None}

    tok = engine.hf_tokenizer
    short, n_short = prompt_of(tok, 512)
    long_n = min(8192, ctx - 256)
    long_, n_long = prompt_of(tok, long_n)
    run(short, 16)  # warm-up (kernels, autotune, allocator)
    short_runs = [run(short, 128 if quick else 256) for _ in range(2 if quick else 3)]
    long_run = run(long_, 64 if quick else 128)
    torch.cuda.synchronize()
    free2, _ = torch.cuda.mem_get_info()
    out.update(short_prompt=n_short, long_prompt=n_long, short=short_runs, long=long_run,
               peak_alloc=torch.cuda.max_memory_allocated(), peak_reserved=torch.cuda.max_memory_reserved(),
               device_end=free0 - free2)
    return out


def gib(b):
    return f"{b / 2**30:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="transformers fp16, exllamav2 fp16 and q4; fewer tokens")
    ap.add_argument("--ctx", type=int, default=16384, help="context length / cache size in tokens (default 16384)")
    ap.add_argument("--configs", help=f"comma-separated engine:cache list (default: {','.join(ALL_CONFIGS)})")
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "CACHE"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch = cuda_or_exit()
    if a.worker:
        res = worker(a.worker[0], a.worker[1], MODEL_DIR, a.ctx, a.quick)
        with open(a.out, "w") as f:
            json.dump(res, f)
        return
    from tools.make_models import ensure_tiny_qwen
    os.makedirs(CACHE_DIR, exist_ok=True)
    build_model(torch, str(ensure_tiny_qwen()))
    configs = a.configs.split(",") if a.configs else \
        (["transformers:fp16", "exllamav2:fp16", "exllamav2:q4"] if a.quick else ALL_CONFIGS)
    results = []
    for c in configs:
        kind, cache = c.split(":")
        out = os.path.join(CACHE_DIR, f"gpu-{kind}-{cache}.json")
        if os.path.exists(out):
            os.unlink(out)
        log(f"running {kind} {cache} ...")
        args = [sys.executable, os.path.abspath(__file__), "--worker", kind, cache, "--out", out, "--ctx", str(a.ctx)]
        if a.quick:
            args.append("--quick")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        p = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if p.returncode != 0 or not os.path.exists(out):
            tail = (p.stderr or p.stdout)[-1500:]
            log(f"  {kind} {cache} failed (exit {p.returncode}):\n{tail}")
            results.append({"engine": kind, "cache": cache, "error": tail.strip().splitlines()[-1] if tail else "?"})
            continue
        with open(out) as f:
            results.append(json.load(f))
        os.unlink(out)

    report(results, a.ctx, torch)


def report(results, ctx, torch):
    import datetime
    import platform
    ok = [r for r in results if "error" not in r]
    gpu = ok[0]["gpu"] if ok else torch.cuda.get_device_name(0)
    print(f"\n### GPU engines: Qwen2.5-Coder-7B-shaped model (random FP16 weights), context {ctx}\n")
    print(f"Machine: {gpu} ({gib(torch.cuda.mem_get_info()[1])} GiB), {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__} (CUDA {torch.version.cuda}), Python {platform.python_version()}; "
          f"{datetime.date.today().isoformat()}")
    print("Batch 1, greedy; each configuration in a fresh process through engines.create_engine(); medians of "
          "the short runs. decode tok/s = completion tokens / the engine's decode time. VRAM in GiB: torch = "
          "allocated by torch, device = fall in the GPU's free memory since the process set up CUDA (weights, "
          "cache, non-torch buffers, allocator reserve; not the CUDA context itself).\n")
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["engine"], r["cache"]] + ["–"] * 9 + [f"failed: {r['error'][:80]}"])
            continue
        s = r["short"]
        med = lambda k: sorted(x[k] for x in s if x[k] is not None)[len(s) // 2] if s else None  # noqa: E731
        lr = r["long"]
        note = r.get("attention") or ""
        if r["cache_note"]:
            note = (note + "; " if note else "") + "cache downgraded"
        rows.append([r["engine"], r["cache"], f"{r['load_s']:.1f}",
                     f"{gib(r['alloc_after_load'])} / {gib(r['device_after_load'])}",
                     f"{gib(r['peak_alloc'])} / {gib(r['device_end'])}",
                     f"{med('ttft_ms'):.0f}", f"{med('decode_tps'):.1f}", f"{med('wall_decode_tps'):.1f}",
                     f"{r['long_prompt'] / (lr['prefill_ms'] or lr['ttft_ms']) * 1000:.0f}",
                     f"{lr['decode_tps']:.1f}" if lr["decode_tps"] else "–", f"{lr['ttft_ms']:.0f}", note])
    print("| engine | KV cache | load s | VRAM after load torch / device | VRAM torch peak / device at end | "
          f"TTFT ms ({ok[0]['short_prompt'] if ok else 512}-tok prompt) | decode tok/s | decode tok/s (wall) | "
          f"prefill tok/s ({ok[0]['long_prompt'] if ok else 8192}-tok prompt) | decode tok/s at that depth | "
          f"TTFT ms at that depth | notes |")
    print("|" + "---|" * 12)
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
