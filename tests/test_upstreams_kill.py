"""Two real qwen_servers (tiny Qwen2) behind the gateway; one is killed (SIGKILL) while requests run
and restarted on its port: no request that had not started streaming fails, and the restarted one
is probed back in and takes requests again."""
import os
import threading
import time

import requests

from conftest import TEST_ENV, start_gateway
from helpers import PYTHON, REPO_ROOT, clean_env, free_port, start_process, stop_process


def start_tiny(model_dir, port):
    args = [PYTHON, os.path.join(REPO_ROOT, "qwen_server.py"), "-m", model_dir, "--engine", "transformers",
            "--port", port, "-l", "512"]
    return start_process(args, env=clean_env(**TEST_ENV), port=port, ready_path="/health", timeout=180)


def status_of(gw, url):
    ups = requests.get(gw.base_url + "/qwen/status", timeout=10).json()["upstreams"]
    return next(u for u in ups if u["url"] == url)


def test_killed_upstream_fails_no_request_and_rejoins_when_restarted(tiny_qwen_dir, fake_gigachat, tmp_path):
    port_a = free_port()
    a, b = start_tiny(tiny_qwen_dir, port_a), start_tiny(tiny_qwen_dir, free_port())
    gw = start_gateway(f"{a.base_url},{b.base_url}", fake_gigachat, tmp_path, QWEN_BREAKER_COOLDOWN="0.5",
                       QWEN_STATUS_POLL="0.1")
    try:
        results, stop = [], threading.Event()

        def client(i):
            n = 0
            while not stop.is_set():
                n += 1
                r = requests.get(gw.base_url + "/qwen", params={"q": f"c{i} q{n}", "max_tokens": 8}, timeout=60)
                results.append((r.status_code, r.text[:200]))
        clients = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for t in clients:
            t.start()
        deadline = time.monotonic() + 30
        while status_of(gw, a.base_url)["served"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        a.kill()  # SIGKILL: requests on it die mid-answer, new connections are refused
        a.wait()
        time.sleep(1.0)
        stop.set()
        for t in clients:
            t.join(60)
        assert results and all(s == 200 for s, _ in results), [r for r in results if r[0] != 200][:3]
        assert not status_of(gw, a.base_url)["healthy"]

        served_before = status_of(gw, a.base_url)["served"]
        a = start_tiny(tiny_qwen_dir, port_a)  # the same address again
        deadline = time.monotonic() + 10
        while not status_of(gw, a.base_url)["healthy"]:
            assert time.monotonic() < deadline, "the restarted upstream was not probed back in"
            time.sleep(0.1)
        for n in range(6):
            assert requests.get(gw.base_url + "/qwen", params={"q": f"after {n}", "max_tokens": 4},
                                timeout=60).status_code == 200
        assert status_of(gw, a.base_url)["served"] > served_before  # it takes requests again
        # A stream that starts after the kill is not affected either.
        r = requests.get(gw.base_url + "/qwen", params={"q": "stream", "max_tokens": 4, "stream": 1}, timeout=60)
        assert r.status_code == 200 and '"type":"done"' in r.text
    finally:
        for p in (gw, a, b):
            stop_process(p)
