#!/usr/bin/env python
"""The llamacpp engine's CPU knobs, side by side with `llama_cpp.server` as it ships, idle and under load.

    .venv/bin/python -m bench.llamacpp_knobs [--rounds 3] [--gguf PATH] [--only LABEL,LABEL]

Each configuration is a fresh server (one at a time: a spinning one would hold a core while another is
measured), warmed with one answer, then asked for a 128-token greedy answer (decode tok/s, streamed) and
a ~220-token question (TTFT). "Under load": a second process spins on one core meanwhile (what another
server, a build or a test run does to a shared machine). Rounds interleave the configurations (rotated
order, idle and load alternating); the table holds medians. Knobs: OMP_WAIT_POLICY (PASSIVE: sleep at
once; ACTIVE: spin forever), GOMP_SPINCOUNT with the policy unset (spin that many rounds, then sleep;
libgomp's default is 300000), decode threads (-t) and prompt threads (--threads-batch).
"""
import argparse
import os
import sys

from bench._common import fmt, header, md_table, median
from bench.llamacpp_server import FILLER, GGML_TYPE, STORY, Arm, busy_core
from engines.llamacpp_cpu import physical_cores
from helpers import PYTHON, clean_env
from tools.make_models import ensure_smollm2_gguf


def configs(gguf, cores):
    """(label, Arm, env overlay); None in the overlay: left unset."""
    def ours(label, env, *flags):
        argv = [PYTHON, "qwen_server.py", "-m", gguf, "--engine", "llamacpp", "-l", 2048, *flags, "--port", "{port}"]
        return label, Arm(label, argv, {"repetition_penalty": 1.1}), env

    def theirs(label, env, *flags):
        argv = [PYTHON, "-m", "llama_cpp.server", "--model", gguf, "--n_ctx", 2048, "--type_k", GGML_TYPE["q4_0"],
                "--type_v", GGML_TYPE["q4_0"], "--flash_attn", "True", "--verbose", "False", *flags,
                "--host", "127.0.0.1", "--port", "{port}"]
        return label, Arm(label, argv, {"repeat_penalty": 1.1}), env
    unset = {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}
    c = str(cores)
    return [
        theirs("llama_cpp.server as shipped", unset),
        theirs(f"llama_cpp.server t{c}", unset, "--n_threads", c, "--n_threads_batch", c),
        ours("qwen_server default", unset),
        ours(f"qwen t{c} PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, "-t", c, "--threads-batch", c),
        ours(f"qwen t{c} ACTIVE", {"OMP_WAIT_POLICY": "ACTIVE"}, "-t", c, "--threads-batch", c),
        ours(f"qwen t{c} spin 10k", {**unset, "GOMP_SPINCOUNT": "10000"}, "-t", c, "--threads-batch", c),
        ours(f"qwen t{c} spin 300k (libgomp's)", {**unset, "GOMP_SPINCOUNT": "300000"}, "-t", c, "--threads-batch", c),
        ours(f"qwen t1/b{c} PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, "-t", "1", "--threads-batch", c),
        ours(f"qwen t1/b{c} spin 10k", {**unset, "GOMP_SPINCOUNT": "10000"}, "-t", "1", "--threads-batch", c),
        ours("qwen t1/b1", {"OMP_WAIT_POLICY": "PASSIVE"}, "-t", "1", "--threads-batch", "1"),
    ]


def measure(arm, env, run):
    """(decode tok/s, TTFT of a ~220-token question) of a fresh server."""
    arm.start(env)
    try:
        client = arm.client()
        arm.stream(client, [{"role": "user", "content": f"warm {run}"}], 8)
        tps = arm.stream(client, [{"role": "user", "content": f"({run}) {STORY}"}], 128)[1]
        long_q = f"Visitor {run} asks: " + FILLER * 7 + "What does the museum record?"
        ttft = arm.stream(client, [{"role": "user", "content": long_q}], 4)[0]
        client.close()
        return tps, ttft
    finally:
        arm.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gguf", help="default: SmolLM2-135M-Instruct Q4_1")
    ap.add_argument("--only", help="comma-separated labels (default: all)")
    args = ap.parse_args()
    gguf, cores = args.gguf or str(ensure_smollm2_gguf()), physical_cores()
    base = clean_env(LOG_LEVEL="WARNING")
    cfgs = configs(gguf, cores)
    if args.only:
        cfgs = [c for c in cfgs if c[0] in args.only.split(",")]
    res = {(label, s): ([], []) for label, _, _ in cfgs for s in ("idle", "load")}
    for rnd in range(args.rounds):
        for situation in (("idle", "load") if rnd % 2 == 0 else ("load", "idle")):
            with busy_core(situation == "load"):
                k = rnd % len(cfgs)
                for label, arm, over in cfgs[k:] + cfgs[:k]:
                    tps, ttft = measure(arm, {**base, **over}, f"{rnd}{situation}")
                    res[(label, situation)][0].append(tps)
                    res[(label, situation)][1].append(ttft)
                    print(f"round {rnd} {situation:4} {label:32} {fmt(tps, 1):>6} tok/s  TTFT {fmt(ttft, 3)} s",
                          file=sys.stderr, flush=True)
    report(args, gguf, cfgs, res)


def report(args, gguf, cfgs, res):
    ref = {s: median(res[(cfgs[0][0], s)][0]) for s in ("idle", "load")} if cfgs[0][0].endswith("shipped") else {}
    header("llamacpp engine: wait policy and threads vs llama_cpp.server as shipped",
           [f"{os.path.basename(gguf)}, KV cache q4_0, greedy, 128 decoded tokens; {args.rounds} interleaved "
            f"rounds, medians; load = one other process spinning on one core. tN/bM: N decode threads, M for "
            f"prompts. The machine was shared with other work during the run: single figures are noisy."])
    rows = []
    for label, _, _ in cfgs:
        row = [label]
        for s in ("idle", "load"):
            tps, ttft = (median([v for v in xs if v is not None]) for xs in res[(label, s)])
            row += [fmt(tps, 1), fmt(tps / ref[s]) if ref.get(s) else "–", fmt(ttft, 3)]
        rows.append(row)
    print(md_table(["", "idle tok/s", "× shipped", "idle TTFT s", "load tok/s", "× shipped", "load TTFT s"], rows))


if __name__ == "__main__":
    main()
