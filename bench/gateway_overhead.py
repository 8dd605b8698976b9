#!/usr/bin/env python
"""What the gateway (chat.py) adds on top of its upstreams, for non-streamed requests.

    .venv/bin/python bench/gateway_overhead.py [--quick] [--ab OTHER_CHECKOUT]

(a) Latency, one sequential client, keep-alive: the same question straight to the upstream and
    through the gateway, interleaved request by request:
      GigaChat: POST fake_gigachat /api/v1/chat/completions (Bearer token from its OAuth endpoint)
                vs GET /gigachat?q=...
      Qwen:     POST qwen_server /v1/chat/completions (tiny-qwen2, max_tokens=1, temperature 0)
                vs GET /qwen?q=...&max_tokens=1&temperature=0
    "added" = the gateway's percentile minus the direct one. Goal: added p95 <= 3 ms.
(b) Throughput with C concurrent keep-alive clients (wrk when installed): the upstream alone vs
    through the gateway under gunicorn (project gunicorn.conf.py, 4 gthread workers) and under
    `python chat.py` (werkzeug, reference). Runs are interleaved and repeated; medians reported.
    Goal: gateway req/s >= 0.6 x upstream req/s.

--ab PATH also starts a gunicorn gateway from another checkout (e.g. a patched copy) against the
same upstreams, so an optimisation is measured side by side with the original in one run.
Everything runs on 127.0.0.1; servers are subprocesses on free ports, stopped at the end.
"""
import argparse
import base64
import os
import sys
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (REPO_ROOT, Client, Servers, clean_env, fmt, header, http, load, load_tool,  # noqa: E402
                     md_table, median, pct, rmtree, start_fake_gigachat, start_gateway, start_qwen, tmpdir)
from tools.make_models import ensure_tiny_qwen  # noqa: E402


def oauth_token(fake):
    st, _, body = http("POST", fake.base_url + "/api/v2/oauth", body=b"scope=GIGACHAT_API_PERS",
                       headers={"Authorization": "Basic good-key", "RqUID": str(uuid.uuid4()),
                                "Content-Type": "application/x-www-form-urlencoded"})
    assert st == 200, body
    return body["access_token"]


def targets_for(fake, qwen, gateways, token):
    """upstream -> [(label, base_url, method, path_fn, body_fn, headers)]"""
    q = lambda i: f"Hello, how are you? Question {i}"  # noqa: E731
    gc_direct = ("direct (fake GigaChat)", fake.base_url, "POST", lambda i: "/api/v1/chat/completions",
                 lambda i: {"model": "GigaChat", "messages": [{"role": "user", "content": q(i)}]},
                 {"Authorization": f"Bearer {token}"})
    qw_direct = ("direct (qwen_server)", qwen.base_url, "POST", lambda i: "/v1/chat/completions",
                 lambda i: {"model": "qwen", "messages": [{"role": "user", "content": q(i)}], "max_tokens": 1,
                            "temperature": 0}, {})
    out = {"gigachat": [gc_direct], "qwen": [qw_direct]}
    for label, gw in gateways:
        out["gigachat"].append((f"via {label}", gw.base_url, "GET",
                                lambda i: "/gigachat?" + urllib.parse.urlencode({"q": q(i)}), lambda i: None, {}))
        out["qwen"].append((f"via {label}", gw.base_url, "GET",
                            lambda i: "/qwen?" + urllib.parse.urlencode({"q": q(i), "max_tokens": 1,
                                                                           "temperature": 0}),
                            lambda i: None, {}))
    return out


def sequential(targets, n, warmup):
    """Interleaved: request i goes to every target in turn (rotating who goes first)."""
    clients = [Client(t[1]) for t in targets]
    lat = [[] for _ in targets]
    for i in range(-warmup, n):
        k = len(targets)
        for j in range(k):
            idx = (j + i) % k
            label, _, method, path_fn, body_fn, hdrs = targets[idx]
            st, raw, dt = clients[idx].request(method, path_fn(i), body_fn(i), hdrs)
            if st != 200:
                raise RuntimeError(f"{label}: HTTP {st}: {raw[:300]!r}")
            if i >= 0:
                lat[idx].append(dt * 1000)
    for c in clients:
        c.close()
    return lat


def throughput(targets, seconds, conns, repeats):
    res = [[] for _ in targets]
    for r in range(repeats):
        order = list(range(len(targets)))
        order = order[r % len(order):] + order[:r % len(order)]
        for idx in order:
            label, base, method, path_fn, body_fn, hdrs = targets[idx]
            res[idx].append(load(base + path_fn(0), seconds, conns, method=method, body=body_fn(0),
                                 auth=hdrs.get("Authorization")))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests, shorter load runs (< 1 min)")
    ap.add_argument("--n", type=int, help="sequential requests per target (default 400, quick 100)")
    ap.add_argument("--seconds", type=float, help="length of one load run (default 5, quick 2)")
    ap.add_argument("--repeats", type=int, help="load runs per target, interleaved (default 3, quick 1)")
    ap.add_argument("--conns", type=int, default=8, help="concurrent clients for throughput (default 8)")
    ap.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    ap.add_argument("--no-werkzeug", action="store_true", help="skip the `python chat.py` reference gateway")
    ap.add_argument("--ab", metavar="PATH", help="also run a gunicorn gateway from this other checkout")
    a = ap.parse_args()
    n = a.n or (100 if a.quick else 400)
    seconds = a.seconds or (2 if a.quick else 5)
    repeats = a.repeats or (1 if a.quick else 3)

    tiny = str(ensure_tiny_qwen())
    dbdir = tmpdir("bench-gw-")
    t_start = time.time()
    try:
        with Servers() as S:
            fake = S.add(start_fake_gigachat(env=clean_env()))
            # One OpenMP thread: the tiny model gains nothing from two, and idle-spinning OpenMP
            # threads would steal CPU from the gateway on a 2-core machine.
            qwen = S.add(start_qwen(tiny, "-l", "512", env={"OMP_NUM_THREADS": "1", "LOG_LEVEL": "WARNING"}))
            # GIGACHAT_MAX_CONCURRENCY=conns: the default (1, a personal key's limit) would queue
            # the concurrent clients in the gateway and measure that limit, not the gateway.
            common = dict(GIGACHAT_MAX_CONCURRENCY=str(a.conns))
            gateways = [(f"gunicorn ({a.workers} gthread workers)",
                         S.add(start_gateway(qwen.base_url, fake, os.path.join(dbdir, "gunicorn.db"),
                                             gunicorn_workers=a.workers, **common)))]
            if not a.no_werkzeug:
                gateways.append(("`python chat.py` (werkzeug)",
                                 S.add(start_gateway(qwen.base_url, fake, os.path.join(dbdir, "werkzeug.db"),
                                                     **common))))
            if a.ab:
                gateways.append((f"gunicorn, {os.path.basename(os.path.abspath(a.ab))}",
                                 S.add(start_gateway(qwen.base_url, fake, os.path.join(dbdir, "ab.db"),
                                                     gunicorn_workers=a.workers, repo=os.path.abspath(a.ab),
                                                     **common))))
            token = oauth_token(fake)
            targets = targets_for(fake, qwen, gateways, token)

            lat_rows, tp_rows = [], []
            for up, tlist in targets.items():
                lat = sequential(tlist, n, warmup=max(10, n // 10))
                d50, d95 = pct(lat[0], 50), pct(lat[0], 95)
                for (label, *_), v in zip(tlist, lat):
                    p50, p95 = pct(v, 50), pct(v, 95)
                    direct = label.startswith("direct")
                    lat_rows.append([up, label, fmt(p50), fmt(p95), "–" if direct else fmt(p50 - d50),
                                     "–" if direct else fmt(p95 - d95)])
            for up, tlist in targets.items():
                # warm every gunicorn worker (SDK client, token, status cache) before the load runs
                load(tlist[0][1] + tlist[0][3](0), 1, a.conns, method=tlist[0][2], body=tlist[0][4](0),
                     auth=tlist[0][5].get("Authorization"))
                for t in tlist[1:]:
                    load(t[1] + t[3](0), 1, a.conns, method=t[2], body=t[4](0))
                res = throughput(tlist, seconds, a.conns, repeats)
                base = [r["rps"] for r in res[0]]
                for (label, *_), runs in zip(tlist, res):
                    rps = [r["rps"] for r in runs]
                    ratio = median([x / b for x, b in zip(rps, base)])
                    tp_rows.append([up, label, fmt(median(rps), 0), fmt(ratio),
                                    fmt(median([r["p50_ms"] for r in runs])), fmt(median([r["p99_ms"] for r in runs])),
                                    sum(r["errors"] for r in runs)])
    finally:
        rmtree(dbdir)

    header("Gateway overhead (non-streamed)", [
        f"Upstreams: tests/fake_gigachat.py (through the gigachat SDK in the gateway) and qwen_server.py on "
        f"tiny-qwen2 (CPU, OMP_NUM_THREADS=1, max_tokens=1, greedy). Each gateway request also writes the "
        f"conversation, the question and the answer to SQLite (WAL)."])
    print(f"(a) Latency, 1 sequential keep-alive client, {n} requests per row, interleaved request by request "
          f"(ms; added = via − direct; goal: added p95 ≤ 3 ms)\n")
    print(md_table(["upstream", "path", "p50", "p95", "added p50", "added p95"], lat_rows))
    print(f"\n(b) Throughput, {a.conns} concurrent keep-alive clients, {load_tool()}, {repeats} interleaved "
          f"run(s) of {seconds:g} s per row, medians (goal: ratio ≥ 0.6; GIGACHAT_MAX_CONCURRENCY={a.conns})\n")
    print(md_table(["upstream", "path", "req/s", "× direct", "p50 ms", "p99 ms", "errors"], tp_rows))
    print(f"\n(total {time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
