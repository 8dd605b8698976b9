"""Which grammar library for constrained decoding: llguidance (what engines/constrained.py uses) vs
xgrammar, on the same tokenizer, schema and answer, in one run. Measures what a decode loop pays:
the schema's compile time (first request with a new schema) and the time to compute the next-token
mask, token by token, along a valid answer.

    .venv/bin/python bench/grammar_libs.py [--model models/smollm2-135m-instruct] [--repeats 5]
xgrammar is not a dependency: `pip install xgrammar` to run its arm."""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCHEMA = {"type": "object", "required": ["name", "country", "population_millions", "districts"],
          "additionalProperties": False,
          "properties": {"name": {"type": "string"}, "country": {"type": "string"},
                         "population_millions": {"type": "integer"},
                         "districts": {"type": "array", "items": {"type": "string"}}}}
ANSWER = {"name": "Paris", "country": "France", "population_millions": 2,
          "districts": ["Le Marais", "Montmartre", "Saint-Germain-des-Prés", "Belleville"]}


def llguidance_arm(tok, ids):
    import llguidance
    import llguidance.hf
    import llguidance.numpy
    from engines.constrained import JSON_OPTIONS
    lltok = llguidance.hf.from_tokenizer(tok)
    t0 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, overrides=JSON_OPTIONS)
    matcher = llguidance.LLMatcher(lltok, grammar)
    compile_ms = (time.perf_counter() - t0) * 1000
    mask = llguidance.numpy.allocate_token_bitmask(1, lltok.vocab_size)
    per_token = []
    for t in ids:
        t1 = time.perf_counter()
        llguidance.numpy.fill_next_token_bitmask(matcher, mask, 0)
        per_token.append((time.perf_counter() - t1) * 1000)
        assert matcher.consume_token(t), f"llguidance refused token {t}"
    return compile_ms, per_token


def xgrammar_arm(tok, ids):
    import xgrammar as xgr
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False,
                                            separators=(", ", ": "))
    matcher = xgr.GrammarMatcher(compiled)
    compile_ms = (time.perf_counter() - t0) * 1000
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)
    per_token = []
    for t in ids:
        t1 = time.perf_counter()
        matcher.fill_next_token_bitmask(mask)
        per_token.append((time.perf_counter() - t1) * 1000)
        assert matcher.accept_token(t), f"xgrammar refused token {t}"
    return compile_ms, per_token


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/smollm2-135m-instruct", help="an HF model dir (its tokenizer)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per arm, interleaved")
    args = ap.parse_args()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.model)
    ids = tok(json.dumps(ANSWER, ensure_ascii=False), add_special_tokens=False)["input_ids"]
    arms = {"llguidance": llguidance_arm}
    try:
        import xgrammar  # noqa: F401
        arms["xgrammar"] = xgrammar_arm
    except ImportError:
        print("xgrammar not installed: its arm is skipped")
    results = {name: ([], []) for name in arms}
    for _ in range(args.repeats):
        for name, arm in arms.items():
            compile_ms, per_token = arm(tok, ids)
            results[name][0].append(compile_ms)
            results[name][1].extend(per_token)
    print(f"\nTokenizer: {args.model} ({len(tok)} tokens); answer: {len(ids)} tokens; {args.repeats} runs per arm\n")
    print("| library | schema compile ms (median) | mask ms/token p50 | p95 | max |")
    print("|---|---|---|---|---|")
    for name, (compiles, masks) in results.items():
        masks = sorted(masks)
        print(f"| {name} | {statistics.median(compiles):.2f} | {statistics.median(masks):.3f} | "
              f"{masks[int(len(masks) * 0.95)]:.3f} | {masks[-1]:.3f} |")


if __name__ == "__main__":
    main()
