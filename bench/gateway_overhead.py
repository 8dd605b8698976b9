#!/usr/bin/env python
"""What the gateway (chat.py) adds on top of its upstreams, for non-streamed requests.

    .venv/bin/python -m bench.gateway_overhead [--quick] [--ab OTHER_CHECKOUT ...]

(a) Latency, one sequential client, keep-alive: the same question straight to the upstream and
    through the gateway, interleaved in blocks of --block requests ("warm") and request by request
    ("cold": every request finds CPU caches that the other servers' processes evicted):
      GigaChat: POST fake_gigachat /api/v1/chat/completions (Bearer token from its OAuth endpoint)
                vs GET /gigachat?q=...
      Qwen:     POST qwen_server /v1/chat/completions (tiny-qwen2, max_tokens=1, temperature 0; the
                other sampling parameters are the seed defaults on both paths)
                vs GET /qwen?q=...&max_tokens=1&temperature=0
    "added" = the gateway's percentile minus the direct one. Goal: added p95 <= 3 ms.
(b) Throughput with C concurrent keep-alive clients (wrk when installed, else Python threads):
    the upstream alone vs through the gateway under gunicorn (the project's gunicorn.conf.py,
    4 gthread workers) and under `python chat.py` (one embedded gunicorn worker, for reference), plus the CPU each
    process tree spent per request. Runs are interleaved and repeated; medians reported.
    Goal: gateway req/s >= 0.6 x upstream req/s. Against an upstream that answers in ~0.1 ms
    (the fake) that ratio only measures the gateway's own CPU cost, so rows with the fake
    answering in 16 ms (~480 req/s alone, the upstream of the LiteLLM figure) and in 50 ms
    (still faster than any real LLM API) are added.

--ab PATH also starts a gunicorn gateway from another checkout (e.g. a patched copy) against the
same upstreams, so an optimisation is measured side by side with the original in one run.
Everything runs on 127.0.0.1; servers are subprocesses on free ports, stopped at the end.
"""
import argparse
import os
import time
import urllib.parse
import uuid

from bench._common import (
    CACHE_DIR,
    Client,
    Servers,
    cpu_seconds,
    fmt,
    header,
    load,
    load_tool,
    md_table,
    median,
    pct,
    rmtree,
    start_fake,
)
from helpers import QUIET_ENV, http, start_gateway, start_qwen
from tools.make_models import ensure_tiny_qwen

# Slower fakes for the throughput runs: 16 ms answers make the fake alone serve ~480 req/s to 8
# clients, the upstream of the LiteLLM figure quoted in docs/performance.md; 50 ms is closer to a real LLM API.
SLOW_S = (0.016, 0.05)


def oauth_token(fake):
    st, _, body = http("POST", fake.base_url + "/api/v2/oauth", body=b"scope=GIGACHAT_API_PERS",
                       headers={"Authorization": "Basic good-key", "RqUID": str(uuid.uuid4()),
                                "Content-Type": "application/x-www-form-urlencoded"})
    assert st == 200, body
    return body["access_token"]


def target(label, base, method, path_fn, body_fn=lambda i: None, auth=None, gateway=None, upstream=None):
    return {"label": label, "base": base, "method": method, "path": path_fn, "body": body_fn, "auth": auth,
            "gateway": gateway, "upstream": upstream}


def targets_for(fake, qwen, gateways, token):
    """upstream name -> targets; the first of each list is the direct one."""
    def q(i, slow=0):
        return f"Hello, how are you?{f' [[fault:slow={slow:g}]]' if slow else ''} Question {i}"

    def gc_body(slow):
        return lambda i: {"model": "GigaChat", "messages": [{"role": "user", "content": q(i, slow)}]}

    out = {}
    for name, slow in [("gigachat", 0)] + [(f"gigachat, {s * 1000:g} ms answers", s) for s in SLOW_S]:
        out[name] = [target("direct (fake GigaChat)", fake.base_url, "POST", lambda i: "/api/v1/chat/completions",
                            gc_body(slow), auth=f"Bearer {token}", upstream=fake)]
        for label, gw in gateways:
            out[name].append(target(f"via {label}", gw.base_url, "GET",
                                    lambda i, s=slow: "/gigachat?" + urllib.parse.urlencode({"q": q(i, s)}),
                                    gateway=gw, upstream=fake))
    out["qwen"] = [target("direct (qwen_server)", qwen.base_url, "POST", lambda i: "/v1/chat/completions",
                          lambda i: {"model": "qwen", "messages": [{"role": "user", "content": q(i)}],
                                     "max_tokens": 1, "temperature": 0}, upstream=qwen)]
    for label, gw in gateways:
        out["qwen"].append(target(f"via {label}", gw.base_url, "GET",
                                  lambda i: "/qwen?" + urllib.parse.urlencode({"q": q(i), "max_tokens": 1,
                                                                               "temperature": 0}),
                                  gateway=gw, upstream=qwen))
    return out


def sequential(targets, n, warmup, block=1):
    """Interleaved: `block` requests to each target in turn (rotating who goes first), so slow
    drifts of a shared machine hit every target alike. block=1 switches process on every request:
    each request then finds its servers' CPU caches cold (the other servers ran in between);
    a larger block measures servers that are busy with this one client, as in service."""
    clients = [Client(t["base"]) for t in targets]
    lat = [[] for _ in targets]
    k = len(targets)
    for r, start in enumerate(range(-warmup, n, block)):
        for j in range(k):
            idx = (j + r) % k
            t = targets[idx]
            for i in range(start, min(start + block, n)):
                st, raw, dt = clients[idx].request(t["method"], t["path"](i), t["body"](i),
                                                   {"Authorization": t["auth"]} if t["auth"] else None)
                if st != 200:
                    raise RuntimeError(f"{t['label']}: HTTP {st}: {raw[:300]!r}")
                if i >= 0:
                    lat[idx].append(dt * 1000)
    for c in clients:
        c.close()
    return lat


def one_load(t, seconds, conns):
    procs = [p for p in (t["gateway"], t["upstream"]) if p is not None]
    before = [cpu_seconds(p.pid) for p in procs]
    r = load(t["base"] + t["path"](0), seconds, conns, method=t["method"], body=t["body"](0), auth=t["auth"])
    used = [cpu_seconds(p.pid) - b for p, b in zip(procs, before)]
    n = max(r["requests"], 1)
    r["gw_cpu_ms"] = used[0] * 1000 / n if t["gateway"] is not None else None
    r["up_cpu_ms"] = used[-1] * 1000 / n
    return r


def throughput(targets, seconds, conns, repeats):
    res = [[] for _ in targets]
    for r in range(repeats):
        order = list(range(len(targets)))
        order = order[r % len(order):] + order[:r % len(order)]
        for idx in order:
            res[idx].append(one_load(targets[idx], seconds, conns))
    return res


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests, shorter load runs (< 1 min)")
    ap.add_argument("--n", type=int, help="sequential requests per target and run (default 400, quick 100)")
    ap.add_argument("--runs", type=int, help="latency runs, medians reported (default 3, quick 1)")
    ap.add_argument("--seconds", type=float, help="length of one load run, whole seconds (default 4, quick 1)")
    ap.add_argument("--repeats", type=int, help="load runs per target, interleaved (default 3, quick 1)")
    ap.add_argument("--block", type=int, default=20,
                    help="requests in a row to one target in the warm latency run (default 20)")
    ap.add_argument("--conns", type=int, default=8, help="concurrent clients for throughput (default 8)")
    ap.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    ap.add_argument("--latency-only", action="store_true", help="skip the throughput runs (b)")
    ap.add_argument("--no-werkzeug", action="store_true", help="skip the `python chat.py` reference gateway")
    ap.add_argument("--ab", metavar="PATH", action="append", default=[],
                    help="also run a gunicorn gateway from this other checkout (repeatable)")
    a = ap.parse_args()
    a.n = a.n or (100 if a.quick else 400)
    a.runs = a.runs or (1 if a.quick else 3)
    a.seconds = a.seconds or (1 if a.quick else 4)
    a.repeats = a.repeats or (1 if a.quick else 3)
    return a


def start_gateways(S, a, qwen, fake, dbdir):
    """(label, server) of the gateways measured: gunicorn, `python chat.py`, and the --ab checkouts."""
    # GIGACHAT_MAX_CONCURRENCY=conns: the default (1, a personal key's limit) would queue
    # the concurrent clients in the gateway and measure that limit, not the gateway.
    common = dict(GIGACHAT_MAX_CONCURRENCY=str(a.conns))
    gateways = [(f"gunicorn ({a.workers} gthread workers)",
                 S.add(start_gateway(qwen.base_url, fake, os.path.join(dbdir, "gunicorn.db"),
                                     gunicorn_workers=a.workers, **common)))]
    if not a.no_werkzeug:
        gateways.append(("`python chat.py` (embedded gunicorn)",
                         S.add(start_gateway(qwen.base_url, fake, os.path.join(dbdir, "werkzeug.db"), **common))))
    for k, other in enumerate(a.ab):
        gateways.append((f"gunicorn, {other}",
                         S.add(start_gateway(qwen.base_url, fake, os.path.join(dbdir, f"ab{k}.db"),
                                             gunicorn_workers=a.workers, repo=os.path.abspath(other), **common))))
    return gateways


def latency_rows(targets, a):
    """(a): per run mode, upstream and path, medians over the runs of p50/p95 and of what the gateway adds."""
    rows = []
    for mode, block in (("warm", a.block), ("cold", 1)):
        for up in ("gigachat", "qwen"):
            tlist = targets[up]
            per_run = []  # per run: [(p50, p95)] by target
            for _ in range(a.runs):
                lat = sequential(tlist, a.n, warmup=max(block, a.n // 10), block=block)
                per_run.append([(pct(v, 50), pct(v, 95)) for v in lat])
            for k, t in enumerate(tlist):
                p50, p95 = (median([r[k][j] for r in per_run]) for j in (0, 1))
                if t["gateway"] is None:
                    rows.append([mode, up, t["label"], fmt(p50), fmt(p95), "–", "–", "–"])
                    continue
                add50 = [r[k][0] - r[0][0] for r in per_run]
                add95 = [r[k][1] - r[0][1] for r in per_run]
                rows.append([mode, up, t["label"], fmt(p50), fmt(p95), fmt(median(add50)),
                             fmt(median(add95)), f"{fmt(min(add95))}–{fmt(max(add95))}"])
    return rows


def throughput_rows(targets, a):
    """(b): per upstream and path, req/s and its ratio to direct, latency, CPU per request, errors."""
    rows = []
    for up, tlist in targets.items():
        for t in tlist:  # warm every gunicorn worker (SDK client, token, status cache)
            load(t["base"] + t["path"](0), 1, a.conns, method=t["method"], body=t["body"](0), auth=t["auth"])
        res = throughput(tlist, a.seconds, a.conns, a.repeats)
        base = [r["rps"] for r in res[0]]
        for t, runs in zip(tlist, res):
            rps = [r["rps"] for r in runs]
            ratio = median([x / b for x, b in zip(rps, base)])
            gw_cpu = [r["gw_cpu_ms"] for r in runs if r["gw_cpu_ms"] is not None]
            rows.append([up, t["label"], fmt(median(rps), 0), fmt(ratio),
                         fmt(median([r["p50_ms"] for r in runs])), fmt(median([r["p99_ms"] for r in runs])),
                         fmt(median(gw_cpu)) if gw_cpu else "–",
                         fmt(median([r["up_cpu_ms"] for r in runs])), sum(r["errors"] for r in runs)])
    return rows


def main():
    a = parse_args()
    tiny = str(ensure_tiny_qwen())
    # History files on the repo's disk (not a tmpfs): SQLite's fsyncs cost what they cost there.
    dbdir = os.path.join(CACHE_DIR, f"gateway-{os.getpid()}")
    os.makedirs(dbdir, exist_ok=True)
    t_start = time.time()
    try:
        with Servers() as S:
            fake = S.add(start_fake())
            # One OpenMP thread: the tiny model gains nothing from two, and idle-spinning OpenMP
            # threads would steal CPU from the gateway on a 2-core machine.
            qwen = S.add(start_qwen(tiny, "-l", "512", env=QUIET_ENV))
            targets = targets_for(fake, qwen, start_gateways(S, a, qwen, fake, dbdir), oauth_token(fake))
            lat_rows = latency_rows(targets, a)
            tp_rows = [] if a.latency_only else throughput_rows(targets, a)
    finally:
        rmtree(dbdir)

    header("Gateway overhead (non-streamed)", [
        "Upstreams: tests/fake_gigachat.py (reached through the "
        "gigachat SDK by the gateway) and qwen_server.py on tiny-qwen2 (CPU, OMP_NUM_THREADS=1, max_tokens=1, "
        "greedy). Each gateway request also writes the conversation, the question and the answer to SQLite "
        "(WAL, history file on the repo's disk)."])
    print(f"(a) Latency, 1 sequential keep-alive client, {a.runs} run(s) of {a.n} requests per row, medians over the "
          f"runs (ms; added = via − direct, within a run; goal: added p95 ≤ 3 ms). warm: the targets take turns in "
          f"blocks of {a.block} requests; cold: they take turns request by request, so every request meets CPU "
          f"caches the other servers' processes evicted\n")
    print(md_table(["run", "upstream", "path", "p50", "p95", "added p50", "added p95", "added p95, min–max"],
                   lat_rows))
    print(f"\n(b) Throughput, {a.conns} concurrent keep-alive clients, {load_tool()}, {a.repeats} interleaved "
          f"run(s) of {a.seconds:g} s per row, medians; CPU = user+system time of the process tree per request "
          f"(goal: × direct ≥ 0.6; GIGACHAT_MAX_CONCURRENCY={a.conns})\n")
    print(md_table(["upstream", "path", "req/s", "× direct", "p50 ms", "p99 ms", "gateway CPU ms/req",
                    "upstream CPU ms/req", "errors"], tp_rows))
    print(f"\n(total {time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
