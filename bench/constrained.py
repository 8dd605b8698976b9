"""Decode speed with and without constrained decoding (llguidance masks), same run, each CPU engine.

    .venv/bin/python -m bench.constrained [--tokens 200] [--rounds 3]

In-process engines on SmolLM2-135M (transformers on the HF dir, llama.cpp on the Q4_1 GGUF), greedy.
Each round runs, back to back: free text; a JSON schema (an array of bounded strings, so the answer is
long); the same with logprobs (top 5). tok/s = completion tokens / decode time (prefill excluded); the
table has the median of the rounds and the ratio to free text. Target: constrained >= 0.90x."""
import argparse
import os
import threading

from bench._common import fmt, header, md_table, median
from engines import GenParams, create_engine
from engines.constrained import json_grammar
from tools.make_models import ensure_smollm2, ensure_smollm2_gguf

SCHEMA = {"type": "array", "minItems": 400, "items": {"type": "string", "maxLength": 24}}
MESSAGES = [{"role": "user", "content": "Write a long essay on the history of Rome, then list English words as a JSON array."}]


def tok_per_s(engine, tokens, **extra):
    params = GenParams(temperature=0.0, repetition_penalty=1.0, max_tokens=tokens, **extra)
    usage = [c.usage for c in engine.generate(MESSAGES, params, threading.Event()) if c.usage][-1]
    return usage["completion_tokens"] / usage["decode_ms"] * 1000, usage["completion_tokens"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    grammar = json_grammar(SCHEMA)
    modes = {"free text": {}, "json_schema": {"grammar": grammar},
             "json_schema + logprobs (top 5)": {"grammar": grammar, "logprobs": True, "top_logprobs": 5}}
    rows = []
    for kind, path in (("transformers", str(ensure_smollm2())), ("llamacpp", str(ensure_smollm2_gguf()))):
        engine = create_engine(kind, path, "q4", 2048, threads=1)
        engine.load()
        for extra in modes.values():  # warm-up: first calls build the llguidance vocab, caches, kernels
            tok_per_s(engine, 16, **extra)
        runs = {m: [] for m in modes}
        for _ in range(args.rounds):
            for mode, extra in modes.items():
                runs[mode].append(tok_per_s(engine, args.tokens, **extra))
        base = median([r[0] for r in runs["free text"]])
        for mode, rs in runs.items():
            tps = median([r[0] for r in rs])
            rows.append([kind, mode, fmt(tps, 1), fmt(tps / base, 3), str(median([r[1] for r in rs]))])
    header("Constrained decoding: decode tok/s, same run (bench/constrained.py)",
           [f"SmolLM2-135M, greedy, {args.tokens} tokens, median of {args.rounds} rounds, 1 thread"])
    print(md_table(["engine", "mode", "tok/s", "vs free text", "tokens"], rows))


if __name__ == "__main__":
    main()
