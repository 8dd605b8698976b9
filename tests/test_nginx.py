"""deploy/nginx-dual-ai-chat.conf with a real nginx (Debian's package; `make test` installs it) in front of
the real gateway: SSE unbuffered, long silent answers not cut, slow clients held by nginx."""
import os
import re
import shutil
import subprocess
import threading
import time

import pytest
import requests

from helpers import REPO_ROOT, free_port, http, stop_process
from test_hardening import slow_header_clients

SITE = os.path.join(REPO_ROOT, "deploy", "nginx-dual-ai-chat.conf")
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test installs Debian's nginx)")

MAIN = """daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    include {d}/site.conf;
}}
"""


def render(site, listen_port, gateway_port):
    """The deploy file with the test's ports: the only change made to it."""
    site, n1 = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen_port};", site)
    site, n2 = re.subn(r"server 127\.0\.0\.1:5000;", f"server 127.0.0.1:{gateway_port};", site)
    assert n1 == n2 == 1, "deploy/nginx-dual-ai-chat.conf no longer has 'listen 80;' and the upstream on :5000"
    return site


@pytest.fixture(scope="module")
def nginx(gateway, tmp_path_factory):
    d = tmp_path_factory.mktemp("nginx")
    gateway_port = int(gateway.base_url.rsplit(":", 1)[1])
    port = free_port()
    with open(SITE, encoding="utf-8") as f:
        (d / "site.conf").write_text(render(f.read(), port, gateway_port))
    (d / "nginx.conf").write_text(MAIN.format(d=d))
    check = subprocess.run([NGINX, "-t", "-p", str(d), "-c", str(d / "nginx.conf")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    log = open(d / "stdout.log", "wb")
    proc = subprocess.Popen([NGINX, "-p", str(d), "-c", str(d / "nginx.conf")], stdout=log, stderr=log)
    proc.base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            if http("GET", proc.base_url + "/health", timeout=1)[0] == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (d / "error.log").read_text()
        time.sleep(0.05)
    yield proc
    stop_process(proc)
    log.close()


def first_delta_and_end(url):
    """Seconds to the first text delta and to the end of a /qwen?stream=1 answer."""
    t0 = time.monotonic()
    first = None
    with requests.post(url + "/qwen?stream=1", json={"q": "Write a long story about a robot who paints.",
                                                    "max_tokens": 60, "temperature": 0}, stream=True,
                       timeout=120) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            if first is None and line.startswith(b"data: ") and b'"delta"' in line:
                first = time.monotonic() - t0
    return first, time.monotonic() - t0


def test_sse_passes_unbuffered(nginx, gateway):
    direct_first, _ = first_delta_and_end(gateway.base_url)
    first, total = first_delta_and_end(nginx.base_url)
    assert first is not None and total > 0.5
    assert first < total / 3, f"first token after {first:.2f} s of {total:.2f} s: nginx held the stream"
    assert first < direct_first + 0.5, (first, direct_first)


def test_long_silent_answers_are_not_cut(nginx):
    with open(SITE, encoding="utf-8") as f:
        read_timeout = re.search(r"proxy_read_timeout (\d+)s;", f.read())
    qwen_timeout = 300  # the gateway's QWEN_TIMEOUT default (.env.example): the gateway must time out first
    assert read_timeout and int(read_timeout.group(1)) > qwen_timeout
    r = requests.post(nginx.base_url + "/qwen", json={"q": "Count to 100.", "max_tokens": 60}, timeout=120)
    assert r.status_code == 200 and r.json()["answer"], r.text


def test_slow_clients_are_held_by_nginx(nginx, gateway):
    def gateway_health_count():
        text = requests.get(gateway.base_url + "/metrics", timeout=5).text
        m = re.search(r'chat_http_requests_total\{endpoint="/health",method="GET",status="200"\} ([\d.]+)', text)
        return float(m.group(1)) if m else 0.0

    stop = threading.Event()
    crowd = threading.Thread(target=slow_header_clients, args=(nginx, 50, stop))
    crowd.start()
    try:
        time.sleep(1.0)
        before = gateway_health_count()
        for _ in range(5):
            t0 = time.monotonic()
            assert requests.get(nginx.base_url + "/health", timeout=3).status_code == 200
            assert time.monotonic() - t0 < 1.0
        # the five above reached the gateway; none of the 50 half-sent requests did
        assert gateway_health_count() - before == 5
    finally:
        stop.set()
        crowd.join(10)
