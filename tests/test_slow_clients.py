"""Slow clients against the three ways the servers run: qwen_server and `python chat.py` on the embedded
gunicorn (common/wsgi_server.py), the gateway under `gunicorn -c gunicorn.conf.py`. Real subprocess
servers, raw sockets; SLOW_CLIENT_TIMEOUT at its default (5 s)."""
import concurrent.futures
import json
import re
import socket
import threading
import time
import urllib.parse

import pytest
import requests

from conftest import start_gateway
from helpers import stop_process

TIMEOUT_S = 5.0  # request_reader.DEFAULT_TIMEOUT_S
CROWD_S = 60.0
HEAD_CLIENTS, BODY_CLIENTS = 50, 20
THREADS = "8"  # fewer threads than slow clients: a slow client that held one would show at once
QUESTION = {"q": "Привет, медленный мир", "max_tokens": 4}


def address(server):
    u = urllib.parse.urlsplit(server.base_url)
    return u.hostname, u.port


@pytest.fixture(scope="module")
def gateways(qwen_tiny, fake_gigachat, tmp_path_factory):
    """The gateway both ways, started at once, on qwen_tiny: `python chat.py` and gunicorn (2 workers)."""
    tmp = tmp_path_factory.mktemp("slow")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        embedded = pool.submit(start_gateway, qwen_tiny.base_url, fake_gigachat, tmp / "a", GUNICORN_THREADS=THREADS)
        workers = pool.submit(start_gateway, qwen_tiny.base_url, fake_gigachat, tmp / "b", gunicorn_workers="2",
                              GUNICORN_THREADS=THREADS)
        procs = {"chat.py": embedded.result(), "gunicorn": workers.result()}
    for proc in procs.values():
        proc.question = ("GET", "/qwen", QUESTION)
    yield procs
    for proc in procs.values():
        stop_process(proc)


@pytest.fixture(scope="module")
def servers(qwen_tiny, gateways):
    qwen_tiny.question = ("POST", "/v1/chat/completions",
                          {"messages": [{"role": "user", "content": "Привет"}], "max_tokens": 4})
    return {"qwen_server": qwen_tiny, **gateways}


def slow_requests(server):
    """The slow client's request for this server: (bytes sent at once, the rest sent a byte a tick, part)."""
    h, port = address(server)
    head = f"GET /health HTTP/1.1\r\nHost: {h}:{port}\r\nX-Slow: ".encode()
    method, path, _ = server.question
    body_head = (f"POST {path if method == 'POST' else '/qwen'} HTTP/1.1\r\nHost: {h}:{port}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n").encode() + b'{"q": "'
    return (head, b"z" * 10000, "head"), (body_head, b"z" * 10000, "body")


class SlowCrowd:
    """Slow clients held open against servers: each sends its request a byte every `tick` s and, when the
    server closes it, is replaced by a new one. Counts what the servers answered them."""

    def __init__(self, servers, heads, bodies, tick=0.5):
        self.specs = []
        for name, server in servers.items():
            head, body = slow_requests(server)
            self.specs += [(name, address(server), *head)] * heads + [(name, address(server), *body)] * bodies
        self.tick, self.stop = tick, threading.Event()
        self.closed = {}  # (server name, part) -> connections the server closed
        self.answers = []  # every response head a slow client got
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)

    def _open(self, spec):
        _, addr, first, _, _ = spec
        sock = socket.create_connection(addr, timeout=5)
        sock.sendall(first)
        sock.setblocking(False)
        return [sock, spec, 0]

    def _run(self):
        clients = [self._open(spec) for spec in self.specs]
        while not self.stop.wait(self.tick):
            for n, client in enumerate(clients):
                sock, spec, sent = client
                if self._server_closed(sock, spec):
                    sock.close()
                    clients[n] = self._open(spec)
                    continue
                try:
                    sock.send(spec[3][sent:sent + 1])
                    client[2] += 1
                except BlockingIOError:
                    pass
                except OSError:  # reset: seen as closed on the next tick
                    pass
        for sock, _, _ in clients:
            sock.close()

    def _server_closed(self, sock, spec):
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            self.answers.append(data.split(b"\r\n\r\n")[0])
        key = (spec[0], spec[4])
        self.closed[key] = self.closed.get(key, 0) + 1
        return True


def probe(server, kind, results, stop):
    """GET /health or a real question, every 0.25 s, on a fresh connection; (seconds, status) each."""
    method, path, body = server.question
    while not stop.wait(0.25):
        t0 = time.monotonic()
        try:
            if kind == "health":
                r = requests.get(server.base_url + "/health", timeout=5)
            elif method == "GET":
                r = requests.get(server.base_url + path, params=body, timeout=5)
            else:
                r = requests.post(server.base_url + path, json=body, timeout=5)
            status = r.status_code
        except requests.RequestException:
            status = None
        results.append((time.monotonic() - t0, status))


def slow_closes(server):
    text = requests.get(server.base_url + "/metrics", timeout=10).text
    return {part: float(n) for part, n in re.findall(r'_slow_clients_closed_total\{part="(\w+)"\} (\S+)', text)}


def test_slow_crowd_for_a_minute_leaves_every_server_answering(servers):
    """50 slow-header and 20 slow-body clients on each of the three servers for 60 s, replaced as they are
    closed: /health and real questions keep answering within 1 s, with fewer threads than slow clients."""
    before = {name: slow_closes(s) for name, s in servers.items()}
    stop, results, probers = threading.Event(), {}, []
    with SlowCrowd(servers, HEAD_CLIENTS, BODY_CLIENTS) as crowd:
        time.sleep(1.0)  # all connected and dribbling
        for name, server in servers.items():
            for kind in ("health", "question"):
                results[name, kind] = []
                probers.append(threading.Thread(target=probe, args=(server, kind, results[name, kind], stop)))
                probers[-1].start()
        time.sleep(CROWD_S)
        stop.set()
        for t in probers:
            t.join(10)
    report = {key: f"{sum(1 for s, st in r if st == 200 and s < 1.0)}/{len(r)}" for key, r in results.items()}
    print("within 1 s:", report, "closed by the servers:", crowd.closed)
    for key, r in results.items():
        ok = sum(1 for seconds, status in r if status == 200 and seconds < 1.0)
        assert len(r) >= CROWD_S * 2 and ok >= 0.95 * len(r), (key, report)
    # every answer a slow client got was the worker's own 408 (a thread's answers carry `Server: gunicorn`)
    assert crowd.answers and all(a.startswith(b"HTTP/1.1 408 ") and b"Server:" not in a for a in crowd.answers)
    for name, server in servers.items():
        after = slow_closes(server)
        for part, clients in (("head", HEAD_CLIENTS), ("body", BODY_CLIENTS)):
            counted = after[part] - before[name][part]
            seen = crowd.closed.get((name, part), 0)
            # each client is closed every ~TIMEOUT_S (+1 s of poll); the last few may not be seen by the crowd
            assert counted >= clients * (CROWD_S / (TIMEOUT_S + 2) - 1), (name, part, counted, seen)
            assert seen - clients <= counted <= seen + clients, (name, part, counted, seen)


def trickle_until_closed(addr, first, rest, tick=0.2, limit=15.0):
    """Sends `first`, then `rest` a byte a tick until the server closes: (seconds, what it answered)."""
    s = socket.create_connection(addr)
    s.settimeout(tick)
    t0, got, i = time.monotonic(), b"", 0
    try:
        s.sendall(first)
        while time.monotonic() - t0 < limit:
            try:
                data = s.recv(65536)
                got += data
                if not data:
                    break
            except TimeoutError:
                try:
                    s.sendall(rest[i:i + 1])
                    i += 1
                except OSError:
                    break
            except OSError:
                break
        return time.monotonic() - t0, got
    finally:
        s.close()


def slow_cases(server):
    """name -> (sent at once, then trickled, the part that is late)."""
    h, port = address(server)
    post = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {h}:{port}\r\nContent-Type: application/json\r\n"
    return {
        "idle": (b"", b"", "head"),
        "head": (b"GET /health HTTP/1.1\r\nX-Slow: ", b"z" * 1000, "head"),
        "next": (f"GET /health HTTP/1.1\r\nHost: {h}:{port}\r\n\r\nGET /health HTTP/1.1\r\nX-".encode(),
                 b"z" * 1000, "head"),
        "body": ((post + "Content-Length: 100\r\n\r\n").encode(), b"{" * 100, "body"),
        "chunked": ((post + "Transfer-Encoding: chunked\r\n\r\n").encode(), b"1\r\nz\r\n" * 200, "body"),
        "expect": ((post + "Content-Length: 100\r\nExpect: 100-continue\r\n\r\n").encode(), b"{" * 100, "body"),
    }


def test_slow_requests_get_a_408_at_the_bound_and_are_counted(servers):
    """On each server at once, connections whose request head (idle, trickling, or the next one on a
    kept-alive connection) or body (Content-Length, chunked, after `Expect: 100-continue`) is not in within
    5 s: a 408 from the worker, counted in /metrics."""
    before = {name: slow_closes(server) for name, server in servers.items()}
    runs = {(name, case): (address(server), first, rest) for name, server in servers.items()
            for case, (first, rest, _) in slow_cases(server).items()}
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        futures = {key: pool.submit(trickle_until_closed, *args) for key, args in runs.items()}
        outcome = {key: future.result() for key, future in futures.items()}
    for key, (seconds, got) in outcome.items():
        assert TIMEOUT_S - 0.2 < seconds < TIMEOUT_S + 2.0, (key, seconds, got)
        final = b"HTTP/1.1 " + got.split(b"HTTP/1.1 ")[-1]
        assert final.startswith(b"HTTP/1.1 408 ") and b"Server:" not in final.split(b"\r\n\r\n")[0], (key, got)
        err = json.loads(final.split(b"\r\n\r\n", 1)[1])["error"]
        assert err["code"] == "request_timeout" and "SLOW_CLIENT_TIMEOUT" in err["message"]
        if key[1] == "next":  # the complete first request was answered
            assert got.startswith(b"HTTP/1.1 200 "), got
        if key[1] == "expect":
            assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 408 "), got
    for name, server in servers.items():
        after = slow_closes(server)
        assert after["head"] - before[name]["head"] == 3, (name, before[name], after)
        assert after["body"] - before[name]["body"] == 3, (name, before[name], after)


@pytest.mark.parametrize("name", ["qwen_server", "chat.py", "gunicorn"])
def test_clients_that_never_close_do_not_stall_the_server(servers, name):
    """50 clients send a whole request with `Connection: close`, then neither read nor close: the server's
    closing handshake with each (gunicorn's waited up to 2 s in the worker's main loop) stalls nothing."""
    server = servers[name]
    h, port = address(server)
    socks = []
    try:
        for _ in range(50):
            s = socket.create_connection((h, port))
            s.sendall(f"GET /health HTTP/1.1\r\nHost: {h}:{port}\r\nConnection: close\r\n\r\n".encode())
            socks.append(s)
        time.sleep(0.3)
        for _ in range(5):
            t0 = time.monotonic()
            r = requests.get(server.base_url + "/health", timeout=5)
            assert r.status_code == 200 and time.monotonic() - t0 < 1.0, time.monotonic() - t0
            time.sleep(0.3)
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("name", ["chat.py", "gunicorn"])
def test_raw_utf8_in_the_url_is_read_as_typed(servers, name):
    """`curl '...?q=Привет'` sends raw UTF-8 in the request line; both gateway servers read it as typed."""
    server = servers[name]
    with socket.create_connection(address(server), timeout=30) as s:
        s.sendall("GET /qwen?q=Сырой+запрос+ёЁ!&max_tokens=4 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data
    sid = json.loads(body)["session"]
    history = requests.get(server.base_url + "/history", params={"session": sid}, timeout=10).json()
    assert [m["content"] for m in history["messages"] if m["role"] == "user"] == ["Сырой запрос ёЁ!"]
