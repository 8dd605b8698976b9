#!/usr/bin/env python
"""Several Qwen upstreams behind one gateway (QWEN_URL=a,b,...).

    .venv/bin/python -m bench.upstreams [--hold 0.2] [--seconds 6]

Upstreams are tests/fake_qwen.py processes in --serial mode: one answer at a time after a fixed
--hold seconds, the others queued and reported as queue_length in /status (a GPU engine in
miniature, with none of its CPU cost, so the balancer alone is measured). The gateway is
`python chat.py` (one process: all in-flight counts in one place).

(a) Throughput with 1, 2 and 4 upstreams, 2 concurrent clients an upstream, non-streamed /qwen.
    Goal: N upstreams >= 0.9 x N x one.
(b) Failover: 2 upstreams, 2 clients; one upstream is killed (SIGKILL) mid-run. Goal: no failed
    request, and the requests in flight at the kill (the one on the dead upstream is retried on
    the other) take at most 1 s longer than the median request before the kill.
"""
import argparse
import os
import signal
import threading
import time

import requests

from bench._common import header, md_table, median, pct, rmtree, tmpdir
from helpers import PYTHON, TESTS_DIR, free_port, start_fake_gigachat, start_gateway, start_process, stop_process


def start_upstream():
    port = free_port()
    return start_process([PYTHON, os.path.join(TESTS_DIR, "fake_qwen.py"), "--port", port, "--serial"],
                         port=port, ready_path="/status")


def drive(gw, clients, seconds, hold, during=None):
    """Runs `clients` sequential clients for `seconds`; returns [(start, end, status)]. `during`
    (optional) runs in this thread once the load is going."""
    out, stop = [], threading.Event()

    def client(i):
        s = requests.Session()
        n = 0
        while not stop.is_set():
            n += 1
            t0 = time.monotonic()
            try:
                status = s.get(gw.base_url + "/qwen", params={"q": f"c{i}-{n} [[hold={hold}]]"}, timeout=30).status_code
            except requests.RequestException:
                status = 0
            out.append((t0, time.monotonic(), status))
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    t_end = time.monotonic() + seconds
    if during:
        during()
    time.sleep(max(0.0, t_end - time.monotonic()))
    stop.set()
    for t in threads:
        t.join(30)
    return out


def throughput(fake_gc, n, seconds, hold, db_dir):
    ups = [start_upstream() for _ in range(n)]
    gw = start_gateway(",".join(u.base_url for u in ups), fake_gc, os.path.join(db_dir, f"t{n}.db"))
    try:
        drive(gw, 2 * n, 1.0, hold)  # warm-up: connections, the poller's first look
        t0 = time.monotonic()
        done = drive(gw, 2 * n, seconds, hold)
        wall = max(e for _, e, _ in done) - t0
        ok = sum(s == 200 for _, _, s in done)
        return ok / wall, len(done) - ok
    finally:
        for p in [gw, *ups]:
            stop_process(p)


def failover(fake_gc, seconds, hold, db_dir):
    ups = [start_upstream() for _ in range(2)]
    gw = start_gateway(",".join(u.base_url for u in ups), fake_gc, os.path.join(db_dir, "f.db"))
    killed_at = []

    def kill_one():
        time.sleep(seconds / 3)
        killed_at.append(time.monotonic())
        os.kill(ups[0].pid, signal.SIGKILL)
    try:
        drive(gw, 2, 1.0, hold)
        done = drive(gw, 2, seconds, hold, during=kill_one)
    finally:
        for p in [gw, *ups]:
            stop_process(p)
    t_kill = killed_at[0]
    lat = [e - s for s, e, _ in done]
    before = [e - s for s, e, _ in done if e < t_kill]
    caught = [e - s for s, e, _ in done if s <= t_kill < e]
    failed = sum(st != 200 for _, _, st in done)
    return {"requests": len(done), "failed": failed, "median_before": median(before),
            "p99_before": pct(before, 99), "p99_all": pct(lat, 99), "caught": caught,
            "added_worst": (max(caught) if caught else 0.0) - median(before)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hold", type=float, default=0.2, help="seconds each upstream takes per answer")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds of load per measurement")
    args = ap.parse_args()
    header("Several upstreams behind the gateway", [f"fake upstreams, serial, {args.hold} s an answer"])
    fake_gc, db_dir = start_fake_gigachat(), tmpdir("bench-upstreams")
    try:
        rates = {n: throughput(fake_gc, n, args.seconds, args.hold, db_dir) for n in (1, 2, 4)}
        one = rates[1][0]
        rows = [[n, f"{r:.2f}", f"{r / (n * one):.3f}", failed] for n, (r, failed) in rates.items()]
        print(md_table(["upstreams", "req/s", "x (N x one)", "failed"], rows))
        f = failover(fake_gc, args.seconds, args.hold, db_dir)
        print(md_table(["requests", "failed", "median before kill (s)", "p99 before (s)", "p99 whole run (s)",
                        "in flight at the kill", "worst of those - median (s)"],
                       [[f["requests"], f["failed"], f"{f['median_before']:.3f}", f"{f['p99_before']:.3f}",
                         f"{f['p99_all']:.3f}", len(f["caught"]), f"{f['added_worst']:.3f}"]]))
    finally:
        stop_process(fake_gc)
        rmtree(db_dir)


if __name__ == "__main__":
    main()
