"""Both servers against clients that leave, dawdle or come from a hostile web page: real subprocess
servers, raw sockets."""
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse

import pytest
import requests

from conftest import TEST_ENV, start_gateway, start_qwen
from helpers import PYTHON, REPO_ROOT, free_port, start_process, stop_process

LONG = [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]


def address(server):
    u = urllib.parse.urlsplit(server.base_url)
    return u.hostname, u.port


def raw_post(server, path, body, content_type="application/json", host=None):
    """A socket that has sent a whole POST and is left open (the caller reads or hangs up)."""
    h, port = address(server)
    data = json.dumps(body).encode()
    s = socket.create_connection((h, port))
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host or f'{h}:{port}'}\r\nContent-Type: {content_type}\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def status(server):
    return requests.get(server.base_url + "/status", timeout=5).json()


def wait_for(predicate, timeout, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def hang_up(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST, at once
    sock.close()


# -- no work outlives its client ---------------------------------------------------------------------

def test_hangup_during_a_non_streamed_answer_stops_the_generation(qwen_smol):
    served = status(qwen_smol)["requests_served"]
    s = raw_post(qwen_smol, "/v1/chat/completions", {"messages": LONG, "max_tokens": 1500, "temperature": 0})
    assert wait_for(lambda: status(qwen_smol)["active_requests"] == 1, 10)
    time.sleep(1.0)  # well into its decode: 1500 tokens take a minute here
    hang_up(s)
    t0 = time.monotonic()
    assert wait_for(lambda: status(qwen_smol)["active_requests"] == 0, 5), "the generation went on"
    stopped_after = time.monotonic() - t0
    st = status(qwen_smol)
    assert stopped_after < 1.0, f"stopped {stopped_after:.2f} s after the client left"
    assert st["requests_served"] == served + 1 and st["queue_length"] == 0


def test_hangups_while_queued_leave_before_their_prefill(qwen_smol):
    """Streams and non-streamed requests queued behind a long answer: their clients leave, the queue
    empties at once (the long answer still holds the model, so none of them was prefilled)."""
    front = raw_post(qwen_smol, "/v1/chat/completions", {"messages": LONG, "max_tokens": 1500, "temperature": 0})
    assert wait_for(lambda: status(qwen_smol)["active_requests"] == 1, 10)
    queued = [raw_post(qwen_smol, "/v1/chat/completions", {"messages": LONG, "max_tokens": 50, "stream": n % 2 == 0})
              for n in range(6)]
    assert wait_for(lambda: status(qwen_smol)["queue_length"] == 6, 10), status(qwen_smol)
    for s in queued[:3]:
        hang_up(s)
    for s in queued[3:]:  # a polite close (FIN) is noticed as well
        s.close()
    t0 = time.monotonic()
    assert wait_for(lambda: status(qwen_smol)["queue_length"] == 0, 5), status(qwen_smol)
    drained_after = time.monotonic() - t0
    st = status(qwen_smol)
    assert drained_after < 1.0 and st["active_requests"] == 1  # the front request is still being answered
    hang_up(front)
    assert wait_for(lambda: status(qwen_smol)["active_requests"] == 0, 5)


@pytest.fixture(scope="module")
def qwen_exposed(tiny_qwen_dir):
    """qwen_server on every interface (a warning is due), a 7-token default answer, a configured host name."""
    proc = start_qwen(tiny_qwen_dir, "-l", "85", "--host", "0.0.0.0",
                      env={"QWEN_MAX_TOKENS_DEFAULT": "7", "QWEN_ALLOWED_HOSTS": "qwen.example, other.example"})
    yield proc
    stop_process(proc)


def test_default_max_tokens_cap_clamped_to_the_room_left(qwen_exposed):
    url = qwen_exposed.base_url + "/v1/chat/completions"
    r = requests.post(url, json={"messages": [{"role": "user", "content": "hi"}], "seed": 1}, timeout=60)
    assert r.status_code == 200, r.text
    assert 1 <= r.json()["usage"]["completion_tokens"] <= 7
    n = requests.post(qwen_exposed.base_url + "/v1/token/count", json={"messages": LONG}).json()["count"]
    room = 85 - n
    assert 0 < room < 7, room  # less room than the default asks for: clamped, not refused
    r = requests.post(url, json={"messages": LONG, "seed": 1}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= room


def test_help_documents_the_new_settings():
    out = subprocess.run([PYTHON, os.path.join(REPO_ROOT, "qwen_server.py"), "--help"],
                                       capture_output=True, text=True, timeout=60).stdout
    for flag in ("--max-tokens-default", "QWEN_MAX_TOKENS_DEFAULT", "--http-threads", "QWEN_HTTP_THREADS"):
        assert flag in out


# -- browser-origin safety ---------------------------------------------------------------------------

def get_with_host(server, path, host):
    h, port = address(server)
    return requests.get(f"http://{h}:{port}{path}", headers={"Host": host}, timeout=10)


def test_qwen_server_warns_and_checks_host(qwen_exposed):
    with open(qwen_exposed.log_path, encoding="utf-8") as f:
        assert "NO API KEY" in f.read()
    _, port = address(qwen_exposed)
    r = get_with_host(qwen_exposed, "/v1/models", f"evil.example:{port}")
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
    assert "QWEN_ALLOWED_HOSTS" in r.json()["error"]["message"]
    for ok in (f"qwen.example:{port}", "OTHER.example", f"localhost:{port}", f"[::1]:{port}", "10.1.2.3:80"):
        assert get_with_host(qwen_exposed, "/v1/models", ok).status_code == 200, ok


@pytest.fixture(scope="module")
def gunicorn_gateway(qwen_tiny, fake_gigachat, tmp_path_factory):
    """The gateway under gunicorn with few threads: 2 workers x 8, fewer than the slow clients below."""
    proc = start_gateway(qwen_tiny.base_url, fake_gigachat, tmp_path_factory.mktemp("hard"), gunicorn_workers=2,
                         GUNICORN_THREADS="8", CHAT_ALLOWED_HOSTS="chat.example")
    yield proc
    stop_process(proc)


def test_gateway_refuses_a_rebinding_host(gunicorn_gateway):
    _, port = address(gunicorn_gateway)
    r = get_with_host(gunicorn_gateway, "/history", f"attacker.example:{port}")
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
    assert "CHAT_ALLOWED_HOSTS" in r.json()["error"]["message"]
    for ok in (f"chat.example:{port}", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert get_with_host(gunicorn_gateway, "/history", ok).status_code == 200, ok


@pytest.mark.parametrize("server_name,path", [("gunicorn_gateway", "/qwen"),
                                              ("gunicorn_gateway", "/v1/chat/completions"),
                                              ("qwen_tiny", "/v1/chat/completions")])
def test_post_bodies_only_as_json(request, server_name, path):
    server = request.getfixturevalue(server_name)
    body = {"messages": [{"role": "user", "content": "hi"}], "q": "hi", "max_tokens": 2, "model": "qwen"}
    data = json.dumps(body)
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = requests.post(server.base_url + path, data=data, headers={"Content-Type": ctype}, timeout=30)
        assert r.status_code == 415, (ctype, r.text)
        err = r.json()["error"]
        assert err["code"] == "unsupported_media_type" and "application/json" in err["message"]
    r = requests.post(server.base_url + path, data=data.encode(), timeout=60,
                      headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


# -- slow clients ------------------------------------------------------------------------------------

def slow_header_clients(server, n, stop, slow_part="headers"):
    """n sockets that send a request's headers (or its JSON body) a byte every 0.1 s, until `stop` is set."""
    h, port = address(server)
    head = f"GET /health HTTP/1.1\r\nHost: {h}:{port}\r\nX-Slow: " + "z" * 10000
    if slow_part == "body":
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {h}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: 10000\r\n\r\n" + '{"messages": "' + "z" * 10000)
    socks = []
    start = head.index("\r\n\r\n") + 5 if slow_part == "body" else 5
    for _ in range(n):
        s = socket.create_connection((h, port))
        s.sendall(head[:start].encode())
        socks.append(s)
    i = start
    while not stop.wait(0.1):
        for s in socks:
            try:
                s.sendall(head[i].encode())
            except OSError:
                pass
        i += 1
    for s in socks:
        s.close()


# test_slow_clients.py: a minute of them against the three servers at once


# -- bounded metric labels -------------------------------------------------------------------------

@pytest.mark.parametrize("server_name", ["gunicorn_gateway", "qwen_tiny"])
def test_unknown_methods_do_not_grow_metric_series(request, server_name):
    server = request.getfixturevalue(server_name)
    h, port = address(server)
    for n in "ABCDE":
        with socket.create_connection((h, port)) as s:
            s.sendall(f"WEIRD{n} /health HTTP/1.1\r\nHost: {h}:{port}\r\nConnection: close\r\n\r\n".encode())
            assert s.recv(100).startswith(b"HTTP/1.1 ")
    text = requests.get(server.base_url + "/metrics", timeout=10).text
    assert "WEIRD" not in text
    assert re.search(r'_http_requests_total\{endpoint="unmatched",method="other",status="405"\} 5\.0', text), text
    methods = set(re.findall(r'_http_requests_total\{[^}]*method="([^"]*)"', text))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods


# -- start and stop ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_qwen_server_stops_cleanly(tiny_qwen_dir, sig):
    proc = start_qwen(tiny_qwen_dir, "-l", "128")
    try:
        assert requests.get(proc.base_url + "/health", timeout=5).status_code == 200
        proc.send_signal(sig)
        assert proc.wait(15) == 0
        with open(proc.log_path, encoding="utf-8") as f:
            log = f.read()
        assert "Traceback" not in log, log
        with pytest.raises(requests.ConnectionError):
            requests.get(proc.base_url + "/health", timeout=2)
    finally:
        stop_process(proc)


def test_gateway_warns_when_exposed_without_a_key(qwen_tiny, fake_gigachat, tmp_path):
    from helpers import clean_env, gigachat_env
    port = free_port()
    env = clean_env(**TEST_ENV, **gigachat_env(fake_gigachat), QWEN_URL=qwen_tiny.base_url,
                    CHAT_DB=str(tmp_path / "h.db"), CHAT_HOST="0.0.0.0", CHAT_PORT=str(port))
    proc = start_process([PYTHON, "-m", "gunicorn", "-c", os.path.join(REPO_ROOT, "gunicorn.conf.py"), "--workers",
                          "1", "chat:app"], env=env, port=port, ready_path="/health", timeout=60)
    try:
        with open(proc.log_path, encoding="utf-8") as f:
            assert wait_for(lambda: "NO API KEY" in open(proc.log_path, encoding="utf-8").read(), 5), f.read()
    finally:
        stop_process(proc)
    # once users exist every request needs a key (theirs): no warning, as `python chat.py` says it too
    added = subprocess.run([PYTHON, os.path.join(REPO_ROOT, "chat.py"), "users", "add", "anna"],
                           env={k: v for k, v in env.items() if v is not None},
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    proc = start_process([PYTHON, "-m", "gunicorn", "-c", os.path.join(REPO_ROOT, "gunicorn.conf.py"), "--workers",
                          "1", "chat:app"], env=env, port=port, ready_path="/health", timeout=60)
    try:
        assert requests.post(proc.base_url + "/v1/chat/completions", json={}, timeout=10).status_code == 401
        time.sleep(0.5)  # (when_ready has run before /health answers; the log is flushed per line)
        with open(proc.log_path, encoding="utf-8") as f:
            assert "NO API KEY" not in f.read()
    finally:
        stop_process(proc)


@pytest.mark.parametrize("use_epoll", [True, False], ids=["epoll", "polling"])
def test_client_watch_sees_a_hangup_on_a_descriptor_above_1024(use_epoll, monkeypatch):
    """select() refuses descriptors >= 1024, which a server with many connections reaches: both the
    epoll watcher (Linux) and the polling fallback (elsewhere) must see such a socket's hang-up."""
    import resource

    from common import client_watch
    monkeypatch.setattr(client_watch, "USE_EPOLL", use_epoll)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("cannot open descriptors above 1024 here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    a, b = socket.socketpair()
    high = socket.socket(fileno=os.dup2(a.fileno(), 1500))
    try:
        with client_watch.watching({"gunicorn.socket": high}) as left:
            time.sleep(0.1)
            b.close()
            assert left.wait(2), "the hang-up went unnoticed"
    finally:
        high.close()
        a.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
