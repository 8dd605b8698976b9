#!/usr/bin/env python
"""qwen_server's llamacpp engine vs llama-cpp-python's own server (`python -m llama_cpp.server`),
same GGUF (SmolLM2-135M-Instruct Q4_1), same KV cache type, in one run; threads and the OpenMP wait as each
server ships them unless --threads / --omp-wait-policy set them for both.

    .venv/bin/pip install -r bench/requirements-bench.txt     # llama_cpp.server's dependencies
    .venv/bin/python -m bench.llamacpp_server [--quick] [--runs 5] [--cache q4] [--threads N]

Both servers stream over HTTP to one keep-alive client (OpenAI `stream: true`), greedy, repetition
penalty 1.1, and take strict turns (never at once: they would share the cores). Measured:
- start -> first answer: from process start to the first 200 answer to a 1-token request
  (each server started 3 times, interleaved; median);
- decode tok/s: (text deltas - 1) / (last delta - first delta) of a 128-token answer;
- TTFT: send -> first text delta; a short question, and a ~650-token one whose text is new to the
  server each run (no prefix to reuse: both servers keep the last prompt's KV cache);
- 4 concurrent streams (64 tokens each): how many finish, and their tokens / wall time;
- RSS of each server process after the runs (VmRSS) and its peak (VmHWM);
- under load (another process spinning on one core): decode tok/s and a short TTFT again.
By default each server waits at OpenMP barriers as it ships (--omp-wait-policy PASSIVE: both alike).
Ratios are qwen_server / llama_cpp.server; the goals: decode >= 0.95, TTFT <= 1.05.
"""
import argparse
import contextlib
import json
import subprocess
import threading
import time

from bench._common import Client, fmt, header, md_table, median, process_tree
from engines.llamacpp_cpu import physical_cores
from engines.llamacpp_engine import CACHE_TYPES
from helpers import PYTHON, clean_env, free_port, start_process, stop_process
from tools.make_models import ensure_smollm2_gguf

GGML_TYPE = {"f16": 1, "q8_0": 8, "q5_1": 7, "q4_0": 2}  # llama.cpp's ggml_type numbers (--type_k/--type_v)
STORY = "Write a long, detailed story about a robot who learns to paint. Use many paragraphs."
FILLER = ("The museum keeps a careful record of every painting: who made it, when, with which colours, "
          "and how the light of the room changes it during the day. ")


class Arm:
    """One server under test: how to start it, and its request body dialect."""

    def __init__(self, name, argv, sampling):
        self.name, self.argv, self.sampling = name, argv, sampling
        self.proc = None

    def start(self, env):
        """Starts the server as the tests start theirs (env: laid over os.environ, None unsets); returns
        seconds from process start to its first answer (a 1-token request)."""
        port = free_port()
        self.proc = start_process([str(a).replace("{port}", str(port)) for a in self.argv], env=env, port=port,
                                  ready_path="/v1/chat/completions", timeout=120, poll_s=0.02,
                                  ready_body=self.body([{"role": "user", "content": "Hi"}], 1, stream=False))
        return self.proc.ready_s

    def client(self):
        return Client(self.proc.base_url, timeout=300)

    def stop(self):
        if self.proc:
            stop_process(self.proc)
            self.proc = None

    def body(self, messages, max_tokens, stream=True):
        return {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": stream, **self.sampling}

    def stream(self, client, messages, max_tokens):
        """(TTFT s, decode tok/s, text deltas, finished) of one streamed answer."""
        status, _, events, _ = client.stream("POST", "/v1/chat/completions", self.body(messages, max_tokens))
        assert status == 200, (self.name, status)
        times, finished = [], False
        for t, data in events:
            if data == b"[DONE]":
                continue
            choice = (json.loads(data).get("choices") or [{}])[0]
            if choice.get("delta", {}).get("content"):
                times.append(t)
            finished = finished or bool(choice.get("finish_reason"))
        tps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else None
        return (times[0] if times else None), tps, len(times), finished

    def memory_mb(self):
        """(RSS, peak RSS) in MB of the server and its processes (qwen_server: gunicorn's master and the
        worker that holds the model), summed."""
        total = [0.0, 0.0]
        for pid in process_tree(self.proc.pid):
            with open(f"/proc/{pid}/status", encoding="utf-8") as f:
                fields = dict(line.split(":", 1) for line in f)
            for i, key in enumerate(("VmRSS", "VmHWM")):
                total[i] += int(fields[key].split()[0]) / 1024
        return tuple(total)


def concurrent(arm, n, max_tokens, tag):
    """n streams at once; (finished streams, aggregate text deltas per second)."""
    results = [None] * n

    def one(i):
        client = arm.client()
        msgs = [{"role": "user", "content": f"{tag}-{i}: {STORY}"}]
        try:
            results[i] = arm.stream(client, msgs, max_tokens)
        except Exception:  # noqa: BLE001 - a stream cut short (llama_cpp.server interrupts) counts as unfinished
            results[i] = (None, None, 0, False)
        finally:
            client.close()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return sum(1 for r in results if r[3]), sum(r[2] for r in results) / wall


@contextlib.contextmanager
def busy_core(on=True):
    """Another process spinning on one core meanwhile (a busy machine) while `on`."""
    burner = subprocess.Popen([PYTHON, "-c", "while True: pass"]) if on else None
    try:
        yield
    finally:
        if burner:
            burner.kill()
            burner.wait()


def under_load(arms, clients, runs, max_tokens, res):
    """Decode tok/s and a short TTFT while another process spins on one core (a busy machine)."""
    with busy_core():
        for run in range(runs):
            for arm in arms if run % 2 == 0 else arms[::-1]:
                c, r = clients[arm.name], res[arm.name]
                r["ttft_load"].append(arm.stream(c, [{"role": "user", "content": f"What is {run} plus 3?"}], 8)[0])
                r["tps_load"].append(arm.stream(c, [{"role": "user", "content": f"[{run}] {STORY}"}], max_tokens)[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 runs instead of --runs")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cache", default="q4", choices=sorted(CACHE_TYPES))
    ap.add_argument("--threads", type=int, help="decode and prompt threads for both servers (default: each its "
                                                "own choice, as shipped; the physical cores here: %d)" % physical_cores())
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--omp-wait-policy", default="default", choices=("PASSIVE", "ACTIVE", "default"),
                    help="OMP_WAIT_POLICY for both servers (default: left unset, so each runs as shipped: "
                         "qwen_server a short spin, llama_cpp.server libgomp's default)")
    args = ap.parse_args()
    runs = 2 if args.quick else args.runs
    gguf, kv = str(ensure_smollm2_gguf()), CACHE_TYPES[args.cache]
    policy = None if args.omp_wait_policy == "default" else args.omp_wait_policy
    env = clean_env(LOG_LEVEL="WARNING", OMP_WAIT_POLICY=policy)

    def threads(*flags):
        return [x for flag in flags for x in (flag, args.threads)] if args.threads else []
    ours = Arm("qwen_server", [PYTHON, "qwen_server.py", "-m", gguf, "--engine", "llamacpp", "-cache", args.cache,
                               "-l", 2048, *threads("-t", "--threads-batch"), "--port", "{port}"],
               {"repetition_penalty": 1.1})
    theirs = Arm("llama_cpp.server", [PYTHON, "-m", "llama_cpp.server", "--model", gguf, "--n_ctx", 2048,
                                      *threads("--n_threads", "--n_threads_batch"),
                                      "--type_k", GGML_TYPE[kv], "--type_v", GGML_TYPE[kv],
                                      "--flash_attn", str(kv != "f16"), "--verbose", "False",
                                      "--host", "127.0.0.1", "--port", "{port}"],
                 {"repeat_penalty": 1.1})
    arms = [ours, theirs]
    res = {a.name: {k: [] for k in ("start", "ttft_short", "ttft_long", "tps", "conc", "fin", "tps_load", "ttft_load")}
           for a in arms}
    try:
        for i in range(3):
            for arm in arms if i % 2 == 0 else arms[::-1]:
                arm.stop()
                res[arm.name]["start"].append(arm.start(env))
        clients = {a.name: a.client() for a in arms}
        for run in range(runs):
            for arm in arms if run % 2 == 0 else arms[::-1]:
                c, r = clients[arm.name], res[arm.name]
                r["ttft_short"].append(arm.stream(c, [{"role": "user", "content": f"What is {run} plus 2?"}], 8)[0])
                long_q = f"Visitor {run} asks: " + FILLER * 22 + "What does the museum record?"
                r["ttft_long"].append(arm.stream(c, [{"role": "user", "content": long_q}], 8)[0])
                r["tps"].append(arm.stream(c, [{"role": "user", "content": f"({run}) {STORY}"}], args.max_tokens)[1])
                time.sleep(0.3)
        under_load(arms, clients, runs, args.max_tokens, res)
        for run in range(2):
            for arm in arms if run % 2 == 0 else arms[::-1]:
                fin, agg = concurrent(arm, 4, 64, f"c{run}")
                res[arm.name]["fin"].append(fin)
                res[arm.name]["conc"].append(agg)
        mem = {a.name: a.memory_mb() for a in arms}
    finally:
        for a in arms:
            a.stop()
    report(args, runs, kv, res, mem)


def report(args, runs, kv, res, mem):
    a, b = res["qwen_server"], res["llama_cpp.server"]

    def row(label, key, digits=2, lower_better=False):
        x, y = median([v for v in a[key] if v is not None]), median([v for v in b[key] if v is not None])
        return [label, fmt(x, digits), fmt(y, digits), fmt(x / y if y else None) + (" (lower is better)"
                                                                                   if lower_better else "")]
    header("qwen_server (llamacpp engine) vs llama_cpp.server, same GGUF",
           [f"SmolLM2-135M-Instruct Q4_1, KV cache {kv} (K and V), threads: "
            f"{f'{args.threads} each' if args.threads else 'as each ships'}, greedy, "
            f"repetition penalty 1.1; {runs} interleaved runs, medians; "
            f"OMP_WAIT_POLICY: {args.omp_wait_policy}."])
    rows = [row(f"decode tok/s ({args.max_tokens} tokens)", "tps", 1),
            row("TTFT, short question (s)", "ttft_short", 3, True),
            row("TTFT, ~650-token question (s)", "ttft_long", 3, True),
            row(f"under load: decode tok/s ({args.max_tokens} tokens)", "tps_load", 1),
            row("under load: TTFT, short question (s)", "ttft_load", 3, True),
            row("start -> first answer (s)", "start", 2, True),
            row("4 concurrent streams: aggregate tok/s", "conc", 1),
            ["4 concurrent streams: finished (2 rounds)", f"{sum(a['fin'])} of 8", f"{sum(b['fin'])} of 8", ""],
            ["RSS after the runs / peak, all its processes (MB)", "%.0f / %.0f" % mem["qwen_server"],
             "%.0f / %.0f" % mem["llama_cpp.server"],
             fmt(mem["qwen_server"][0] / mem["llama_cpp.server"][0]) + " (lower is better)"]]
    print(md_table(["", "qwen_server", "llama_cpp.server", "ratio"], rows))


if __name__ == "__main__":
    main()
