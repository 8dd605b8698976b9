"""What constrained decoding costs before its first token: reading the vocabulary for llguidance, on a
vocabulary of Qwen2.5's size, and the first forced tool call on a fresh qwen_server, this tree against
another checkout (--before, e.g. main before issue 21), started side by side in one run.

    .venv/bin/python -m bench.vocab_prep [--before /path/to/other/checkout] [--rounds 3]

Part 1 builds (once, under .cache/bench/) a byte-level BPE tokenizer with Qwen2.5's shape: 151,643
BPE tokens (random merges, deterministic) + Qwen2.5's 22 added tokens, then times the steps of
engines/hf.py's load_tokenizer: AutoTokenizer.from_pretrained, llguidance.hf.from_tokenizer, and the
first matcher + mask for a tool-call grammar on it.
Part 2 starts qwen_server (transformers, SmolLM2-135M, a 49k vocabulary) and times, from the moment
/health answers: the first forced tool call, then a second one; each tree in turn, `--rounds` times."""
import argparse
import json
import os
import random
import time

from bench._common import CACHE_DIR, fmt, header, md_table, median
from helpers import QUIET_ENV, REPO_ROOT, http, start_qwen, stop_process
from tools.make_models import QWEN_ADDED, QWEN_SPLIT, QWEN_TEMPLATE, ensure_smollm2

N_BPE = 151_643  # Qwen2.5's BPE tokens; its added tokens start at this id
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "required": ["city", "unit"],
    "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["celsius", "fahrenheit"]}}}}}


def qwen_sized_tokenizer() -> str:
    """A tokenizer dir shaped like Qwen2.5's (pipeline, size, added tokens and flags); random merges."""
    out = os.path.join(CACHE_DIR, "qwen151k-tokenizer")
    if os.path.isfile(os.path.join(out, "tokenizer.json")):
        return out
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    rng = random.Random(0)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab, merges, toks = {c: i for i, c in enumerate(alphabet)}, [], list(alphabet)
    while len(vocab) < N_BPE:
        a, b = rng.choice(toks[-5000:] if rng.random() < 0.5 else toks), rng.choice(toks)
        if len(a) + len(b) <= 12 and a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append((a, b))
            toks.append(a + b)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_ADDED])
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            chat_template=QWEN_TEMPLATE).save_pretrained(out)
    return out


def vocab_cost(path):
    import llguidance
    import llguidance.hf
    import numpy as np
    from transformers import AutoTokenizer

    from engines.constrained import lark_grammar, tool_call_lark
    t0 = time.perf_counter()
    hf = AutoTokenizer.from_pretrained(path)
    t1 = time.perf_counter()
    tok = llguidance.hf.from_tokenizer(hf, n_vocab=151_936, eos_token=hf.convert_tokens_to_ids("<|im_end|>"))
    t2 = time.perf_counter()
    tags = {t: hf.convert_tokens_to_ids(t) for t in ("<tool_call>", "</tool_call>")}
    matcher = llguidance.LLMatcher(tok, lark_grammar(tool_call_lark([WEATHER], None, tags)), log_level=0)
    bits = np.full(((151_936 + 31) // 32,), -1, dtype=np.int32)
    matcher.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
    t3 = time.perf_counter()
    return len(hf), t1 - t0, t2 - t1, t3 - t2


def forced_call(proc):
    body = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER],
            "tool_choice": "required", "max_tokens": 60, "temperature": 0.0}
    t0 = time.perf_counter()
    status, _, res = http("POST", proc.base_url + "/v1/chat/completions", body, timeout=600)
    assert status == 200, res
    return time.perf_counter() - t0, res["choices"][0]["finish_reason"]


def first_requests(repo, model):
    proc = start_qwen(model, "-l", "2048", env=QUIET_ENV, repo=repo)
    try:
        first, finish1 = forced_call(proc)
        second, finish2 = forced_call(proc)
        state = http("GET", proc.base_url + "/status")[2].get("constrained_decoding", "(not reported)")
    finally:
        stop_process(proc)
    return first, second, f"{finish1}/{finish2}", state


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="another checkout to compare with (its qwen_server.py)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    n, load_s, vocab_s, first_s = vocab_cost(qwen_sized_tokenizer())
    header("Constrained decoding before its first token (bench/vocab_prep.py)",
           [f"1) a Qwen2.5-sized vocabulary: {n} tokens (+ padding to 151936)"])
    print(md_table(["step", "seconds"], [["AutoTokenizer.from_pretrained", fmt(load_s, 2)],
                                        ["llguidance.hf.from_tokenizer (engines/constrained.Vocab)", fmt(vocab_s, 2)],
                                        ["first tool-call matcher + mask", fmt(first_s, 3)]]))
    trees = ([("before", args.before)] if args.before else []) + [("this tree", REPO_ROOT)]
    model, runs = str(ensure_smollm2()), {name: [] for name, _ in trees}
    for _ in range(args.rounds):
        for name, repo in trees:
            runs[name].append(first_requests(repo, model))
    print(f"\n2) qwen_server, transformers, SmolLM2-135M (49k vocabulary), forced tool call, greedy, 60 tokens max; "
          f"median of {args.rounds} fresh servers each, alternating\n")
    print(md_table(["tree", "first call s", "second call s", "finish", "/status constrained_decoding"],
                   [[name, fmt(median([r[0] for r in rs]), 2), fmt(median([r[1] for r in rs]), 2), rs[-1][2],
                     rs[-1][3]] for name, rs in runs.items()]))
    print(json.dumps({name: [[round(x, 2) for x in r[:2]] for r in rs] for name, rs in runs.items()}))


if __name__ == "__main__":
    main()
