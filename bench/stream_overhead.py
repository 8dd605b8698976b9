#!/usr/bin/env python
"""What HTTP streaming costs on top of the bare engine, and what the gateway adds to the first token.

    .venv/bin/python -m bench.stream_overhead [--quick] [--max-tokens 64] [--qwen-repo PATH] [--ab PATH]

(a) SmolLM2-135M-Instruct, greedy, the same prompt and max_tokens: the transformers engine
    in-process (engines.create_engine + engine.generate, in a worker process of its own) vs
    qwen_server.py streaming over HTTP (`stream: true`) to one keep-alive client. The two are loaded
    side by side but run strictly alternately (never at once: they would share the 2 cores), with
    a pause between runs so idle OpenMP threads stop spinning. Reported: time to first token,
    decode tok/s ((tokens - 1) / (last text - first text)), end-to-end tok/s (tokens / total), and
    HTTP / bare ratios of the medians. Goal: ratio >= 0.97.
(b) Time to the first byte and to the first text delta: through the gateway (`/qwen?stream=1`,
    `/gigachat?stream=1`; gunicorn and `python chat.py`) vs straight to the upstream (qwen_server
    `stream: true`; the fake GigaChat, with TCP_NODELAY, `stream: true`), interleaved.

--qwen-repo PATH adds a third arm to (a): qwen_server.py from another checkout (e.g. a patched copy).
--ab PATH adds a gunicorn gateway from another checkout to (b).
"""
import argparse
import json
import os
import subprocess
import time
import urllib.parse

from bench._common import BENCH_DIR, CACHE_DIR, Client, Servers, fmt, header, md_table, median, pct, rmtree, start_fake
from bench.gateway_overhead import oauth_token
from helpers import PYTHON, REPO_ROOT, clean_env, start_gateway, start_qwen
from tools.make_models import ensure_smollm2

PROMPT = "Write a long, detailed story about a robot who learns to paint. Use many paragraphs."
PARAMS = {"temperature": 0.0, "top_p": 0.9, "top_k": 60, "repetition_penalty": 1.1}  # qwen_server's defaults
PAUSE_S = 0.3


class EngineWorker:
    def __init__(self, model, max_seq_len, env, repo=None):
        full = dict(os.environ)
        for k, v in clean_env(**env).items():  # exactly the environment qwen_server gets
            if v is None:
                full.pop(k, None)
            else:
                full[k] = v
        full["PYTHONPATH"] = os.path.abspath(repo or REPO_ROOT)  # the checkout whose engines are measured
        self.proc = subprocess.Popen([PYTHON, os.path.join(BENCH_DIR, "_engine_worker.py"), "transformers", model,
                                      "fp16", str(max_seq_len)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=full, cwd=REPO_ROOT)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the engine worker died while loading")
        self.status = json.loads(line)["status"]

    def run(self, messages, max_tokens):
        self.proc.stdin.write(json.dumps({"messages": messages, "params": dict(PARAMS, max_tokens=max_tokens)}) + "\n")
        self.proc.stdin.flush()
        r = json.loads(self.proc.stdout.readline())
        return {"ttft": r["times"][0] if r["times"] else None, "first": r["times"][0] if r["times"] else None,
                "last": r["times"][-1] if r["times"] else None, "end": r["end"],
                "tokens": r["usage"]["completion_tokens"], "text": r["text"]}

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def openai_deltas(events):
    """(times of text deltas, text, completion_tokens) from an OpenAI-style SSE stream."""
    times, text, tokens = [], [], None
    for t, data in events:
        if data == b"[DONE]":
            continue
        obj = json.loads(data)
        if obj.get("usage"):
            tokens = obj["usage"].get("completion_tokens")
        for ch in obj.get("choices") or ():
            c = (ch.get("delta") or {}).get("content")
            if c:
                times.append(t * 1000)
                text.append(c)
    return times, "".join(text), tokens


def gateway_deltas(events):
    times, text, tokens = [], [], None
    for t, data in events:
        obj = json.loads(data)
        if obj.get("type") == "delta" and obj.get("text"):
            times.append(t * 1000)
            text.append(obj["text"])
        elif obj.get("type") == "done":
            tokens = (obj.get("usage") or {}).get("completion_tokens")
        elif obj.get("type") == "error":
            raise RuntimeError(f"gateway stream error: {obj}")
    return times, "".join(text), tokens


def http_run(client, messages, max_tokens):
    body = {"model": "qwen", "messages": messages, "stream": True, "max_tokens": max_tokens,
            "stream_options": {"include_usage": True}, "temperature": PARAMS["temperature"]}
    st, tfb, events, end = client.stream("POST", "/v1/chat/completions", body)
    if st != 200:
        raise RuntimeError(f"qwen_server: HTTP {st}")
    times, text, tokens = openai_deltas(events)
    return {"ttfb": tfb * 1000, "ttft": times[0], "first": times[0], "last": times[-1], "end": end * 1000,
            "tokens": tokens, "text": text}


def long_prompt(model, n_tokens):
    """PROMPT preceded by filler text so the rendered prompt has about n_tokens tokens."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    filler = ("The server streams tokens to the client as soon as the model generates them. "
              "Модель предсказывает следующий токен по предыдущим. ")
    text = PROMPT
    while len(tok(text)["input_ids"]) < n_tokens:
        text = filler + text
    return text


def part_a(model, max_tokens, repeats, qwen_repo, env, engine_repo=None, prompt_tokens=None):
    messages = [{"role": "user", "content": long_prompt(model, prompt_tokens) if prompt_tokens else PROMPT}]
    arms = {}
    with Servers() as S:
        worker = EngineWorker(model, 2048, env)
        other = EngineWorker(model, 2048, env, engine_repo) if engine_repo else None
        try:
            servers = [("qwen_server HTTP stream", S.add(start_qwen(model, "-l", "2048", env=env)))]
            if qwen_repo:
                servers.append((f"qwen_server HTTP stream, {qwen_repo}",
                                S.add(start_qwen(model, "-l", "2048", env=env, repo=os.path.abspath(qwen_repo)))))
            clients = {label: Client(p.base_url) for label, p in servers}
            runners = [("bare engine (in-process)", lambda: worker.run(messages, max_tokens))]
            if other:
                runners.append((f"bare engine, {engine_repo}", lambda: other.run(messages, max_tokens)))
            runners += [(label, lambda c=clients[label]: http_run(c, messages, max_tokens)) for label, _ in servers]
            for label, fn in runners:  # warm-up: one short run each
                fn()
                time.sleep(PAUSE_S)
            for r in range(repeats):
                for k in range(len(runners)):
                    label, fn = runners[(k + r) % len(runners)]
                    arms.setdefault(label, []).append(fn())
                    time.sleep(PAUSE_S)
            for c in clients.values():
                c.close()
        finally:
            worker.close()
            if other:
                other.close()
    texts = {label: {run["text"] for run in runs} for label, runs in arms.items()}
    same = len(set.union(*texts.values())) == 1

    def dec(x):
        return (x["tokens"] - 1) / (x["last"] - x["first"]) * 1000 if x["last"] > x["first"] else float("nan")

    def e2e(x):
        return x["tokens"] / x["end"] * 1000

    rows, bare = [], None
    for label, runs in arms.items():
        if bare is None:
            bare = runs
        # run r of every arm ran back to back: the ratio within each pair cancels slow load drift
        pair_dec = median([dec(x) / dec(b) for x, b in zip(runs, bare)])
        pair_e2e = median([e2e(x) / e2e(b) for x, b in zip(runs, bare)])
        rows.append([label, runs[0]["tokens"], fmt(median([x["ttft"] for x in runs]), 1),
                     fmt(pct([x["ttft"] for x in runs], 95), 1), fmt(median([dec(x) for x in runs]), 1),
                     fmt(median([e2e(x) for x in runs]), 1), fmt(pair_dec, 3), fmt(pair_e2e, 3)])
    return rows, same


def part_b(model, fake, n, ab, env, max_tokens):
    dbdir = os.path.join(CACHE_DIR, f"stream-{os.getpid()}")
    os.makedirs(dbdir, exist_ok=True)
    try:
        with Servers() as S:
            qwen = S.add(start_qwen(model, "-l", "1024", env=env))
            gws = [("gunicorn (1 gthread worker)", S.add(start_gateway(qwen.base_url, fake, os.path.join(dbdir, "g.db"),
                                                                        gunicorn_workers=1))),
                   ("`python chat.py` (embedded gunicorn)", S.add(start_gateway(qwen.base_url, fake,
                                                                        os.path.join(dbdir, "w.db"))))]
            for k, other in enumerate(ab):
                gws.append((f"gunicorn, {other}", S.add(start_gateway(qwen.base_url, fake, os.path.join(dbdir, f"ab{k}.db"),
                                                                      gunicorn_workers=1, repo=os.path.abspath(other)))))
            token = oauth_token(fake)
            q = "Name three colours."
            msgs = [{"role": "user", "content": q}]
            arms = {
                "qwen": [("direct (qwen_server)", qwen.base_url, "POST", "/v1/chat/completions",
                          {"model": "qwen", "messages": msgs, "stream": True, "max_tokens": max_tokens,
                           "temperature": 0}, None, openai_deltas)],
                "gigachat": [("direct (fake GigaChat)", fake.base_url, "POST", "/api/v1/chat/completions",
                              {"model": "GigaChat", "messages": msgs, "stream": True},
                              {"Authorization": f"Bearer {token}"}, openai_deltas)],
            }
            for label, gw in gws:
                arms["qwen"].append((f"via {label}", gw.base_url, "GET", "/qwen?" + urllib.parse.urlencode(
                    {"q": q, "stream": 1, "max_tokens": max_tokens, "temperature": 0}), None, None, gateway_deltas))
                arms["gigachat"].append((f"via {label}", gw.base_url, "GET", "/gigachat?" + urllib.parse.urlencode(
                    {"q": q, "stream": 1}), None, None, gateway_deltas))
            rows = []
            for up, targets in arms.items():
                clients = [Client(t[1]) for t in targets]
                res = [[] for _ in targets]
                warm = 3
                for i in range(-warm, n):
                    for j in range(len(targets)):
                        idx = (i + j) % len(targets)
                        label, _, method, path, body, hdrs, parse = targets[idx]
                        st, tfb, events, end = clients[idx].stream(method, path, body, hdrs)
                        if st != 200:
                            raise RuntimeError(f"{up} {label}: HTTP {st}")
                        times, _, _ = parse(events)
                        if i >= 0:
                            gaps = [b - a for a, b in zip(times, times[1:])]
                            res[idx].append((tfb * 1000, times[0], end * 1000, max(gaps) if gaps else 0.0))
                for c in clients:
                    c.close()
                d_ttfd = [r[1] for r in res[0]]
                for (label, *_), rr in zip(targets, res):
                    ttfb, ttfd = [r[0] for r in rr], [r[1] for r in rr]
                    direct = label.startswith("direct")
                    rows.append([up, label, fmt(pct(ttfb, 50)), fmt(pct(ttfd, 50)), fmt(pct(ttfd, 95)),
                                 "–" if direct else fmt(pct(ttfd, 50) - pct(d_ttfd, 50)),
                                 "–" if direct else fmt(pct(ttfd, 95) - pct(d_ttfd, 95)),
                                 fmt(pct([r[2] for r in rr], 50)), fmt(max(r[3] for r in rr), 1)])
            return rows
    finally:
        rmtree(dbdir)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2",
                    help="(a) SmolLM2-135M (real text, ~60 ms/token here) or tiny-qwen2 (random, ~4 ms/token: "
                         "shows per-token HTTP cost)")
    ap.add_argument("--max-tokens", type=int, help="(a) tokens per answer (default 64, quick 32)")
    ap.add_argument("--repeats", type=int, help="(a) runs per arm, interleaved (default 7, quick 3)")
    ap.add_argument("--n", type=int, help="(b) streams per row (default 40, quick 10)")
    ap.add_argument("--threads", default="1",
                    help="OMP_NUM_THREADS for the engine and qwen_server (default 1: on a busy 2-core machine two "
                         "OpenMP threads stall each other and the spread swamps the ratio; 'auto' = torch's choice)")
    ap.add_argument("--qwen-repo", help="(a) also stream from qwen_server.py of this other checkout")
    ap.add_argument("--engine-repo", help="(a) also run the bare engine of this other checkout")
    ap.add_argument("--prompt-tokens", type=int, help="(a) pad the prompt to about this many tokens")
    ap.add_argument("--ab", action="append", default=[], help="(b) also a gunicorn gateway from this checkout")
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    a = ap.parse_args()
    max_tokens = a.max_tokens or (32 if a.quick else 64)
    repeats = a.repeats or (3 if a.quick else 7)
    n = a.n or (10 if a.quick else 40)
    from tools.make_models import ensure_tiny_qwen
    model_a = str(ensure_smollm2() if a.model == "smollm2" else ensure_tiny_qwen())
    env = {"LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": None if a.threads == "auto" else a.threads}
    t0 = time.time()
    rows_a = rows_b = None
    if not a.skip_a:
        rows_a, same = part_a(model_a, max_tokens, repeats, a.qwen_repo, env, a.engine_repo, a.prompt_tokens)
    if not a.skip_b:
        with Servers() as S:
            fake = S.add(start_fake())
            rows_b = part_b(str(ensure_tiny_qwen()), fake, n, a.ab, env, 8)

    header("Streaming overhead", [f"Engine: transformers on CPU (float32), OMP_NUM_THREADS={a.threads}, greedy."])
    if rows_a:
        name = "SmolLM2-135M-Instruct" if a.model == "smollm2" else "tiny-qwen2 (random weights)"
        print(f"(a) {name}: bare engine vs qwen_server HTTP streaming, "
              f"{'a ~%d-token prompt, ' % a.prompt_tokens if a.prompt_tokens else ''}{max_tokens} max tokens, {repeats} interleaved "
              f"runs per arm; same text from every arm: {'yes' if same else 'NO'}. Ratios are medians of the "
              f"back-to-back pairs (goal: HTTP/bare ≥ 0.97)\n")
        print(md_table(["arm", "tokens", "TTFT p50 ms", "TTFT p95 ms", "decode tok/s", "end-to-end tok/s",
                        "decode × bare (paired)", "end-to-end × bare (paired)"], rows_a))
        print()
    if rows_b:
        print(f"(b) First byte / first text delta, {n} streams per row, interleaved; qwen_server on tiny-qwen2 "
              f"(max_tokens 8) so the gateway's share is not lost in the model's time. The gateway sends its headers "
              f"only after the first upstream delta, by design (a failure before any text gets a real HTTP status)\n")
        print(md_table(["upstream", "path", "TTFB p50 ms", "first delta p50 ms", "first delta p95 ms",
                        "added p50", "added p95", "whole stream p50 ms", "max gap between deltas ms"], rows_b))
    print(f"\n(total {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
