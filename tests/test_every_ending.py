"""History you can trust (issue 11): whatever moment a client leaves, its question and one answer row
naming it are saved and borrowed connections go back; a client that leaves takes its upstream call
with it; concurrent exchanges on one session keep their pairs; a delete during an answer ends cleanly.

Real servers: the gateway under gunicorn (2 workers), the fake GigaChat (subprocess) and a fake Qwen
server (tests/fake_qwen.py) that holds answers as long as asked and records when the gateway hangs
up on it. Clients are raw sockets that hang up at the chosen moment; the history (an SQLite file, or a
real PostgreSQL database: every test runs on both) is read after."""
import json
import random
import socket
import threading
import time
import uuid
from urllib.parse import quote, urlsplit

import pytest
import requests

import db
import fake_qwen
from conftest import start_gateway
from helpers import stop_process

SETTLE_S = 5.0


@pytest.fixture(scope="module")
def upstream():
    server = fake_qwen.start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(request, upstream, fake_gigachat, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("endings")
    target = str(tmp / "history.db") if request.param == "sqlite" else \
        request.getfixturevalue("postgres").new_database()
    proc = start_gateway(upstream.base_url, fake_gigachat, tmp, gunicorn_workers=2, GIGACHAT_MAX_CONCURRENCY="16",
                         CHAT_DB=target)
    proc.db_path = target
    yield proc
    stop_process(proc)


def raw_request(base_url, method, path, body=None, headers=None):
    """Sends one request on a new socket and returns the socket, nothing read yet."""
    u = urlsplit(base_url)
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    data = json.dumps(body, ensure_ascii=False).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Length: {len(data)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    s.sendall(head.encode() + b"\r\n" + data)
    return s


def read_until(sock, needle, timeout=10):
    buf, deadline = b"", time.monotonic() + timeout
    while needle not in buf:
        assert time.monotonic() < deadline, f"no {needle!r} in {buf[-300:]!r}"
        chunk = sock.recv(65536)
        assert chunk, f"closed before {needle!r}: {buf[-300:]!r}"
        buf += chunk
    return buf


def request_for(route, text):
    """(method, path, body, headers) of a request asking `text` on one of the gateway's routes."""
    if route.startswith("/v1"):
        model = "gigachat" if "gigachat" in route else "qwen"
        return ("POST", "/v1/chat/completions", {"model": model, "stream": route.endswith("stream"),
                                                 "messages": [{"role": "user", "content": text}]}, None)
    name, _, mode = route.strip("/").partition("?")
    return ("GET", f"/{name}?q={quote(text)}" + ("&stream=1" if mode == "stream" else ""), None, None)


ROUTES = ["/qwen?stream", "/qwen", "/v1 qwen stream", "/v1 qwen", "/gigachat?stream", "/gigachat",
          "/v1 gigachat stream"]


def exchange(db_path, marker, timeout=SETTLE_S):
    """(question row, [answer rows]) of the question containing `marker`, once its answer is saved."""
    conn = db.open_connection(db_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            q = conn.execute("SELECT * FROM messages WHERE role = 'user' AND content LIKE ?",
                             (f"%{marker}%",)).fetchone()
            answers = conn.execute("SELECT * FROM messages WHERE question_id = ?", (q["id"],)).fetchall() if q \
                else []
            if answers or time.monotonic() > deadline:
                return q, answers
            time.sleep(0.05)
    finally:
        conn.close()


def metric(gw, name):
    text = requests.get(gw.base_url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def assert_pool_intact(gw):
    deadline = time.monotonic() + SETTLE_S
    while metric(gw, "chat_history_connections_in_use") or metric(gw, "chat_active_streams"):
        assert time.monotonic() < deadline, "a borrowed history connection (or a stream) was never given back"
        time.sleep(0.1)


def assert_every_question_answered_once(db_path):
    conn = db.open_connection(db_path)
    try:
        unanswered = conn.execute("SELECT q.id, q.content FROM messages q WHERE q.role = 'user' AND NOT EXISTS "
                                  "(SELECT 1 FROM messages a WHERE a.question_id = q.id)").fetchall()
        orphans = conn.execute("SELECT count(*) FROM messages WHERE role = 'assistant' AND question_id IS NULL")
        assert unanswered == [] and orphans.fetchone()[0] == 0, unanswered
    finally:
        conn.close()


def hang_up_at(gw, route, moment, marker):
    """One client that leaves at `moment`; returns the time it left."""
    hold = {"before_headers": 1.0, "before_first_write": 1.0, "mid_stream": 0}[moment]
    text = f"{marker} раз два три четыре пять шесть семь восемь [[hold={hold}]] [[gap=0.1]]"
    if "gigachat" in route:  # the fake GigaChat's own knobs
        text = f"{marker} раз два три четыре пять шесть семь восемь " + \
            ("[[fault:slow=1]]" if hold else "[[fault:sleepstream=0.1]]")
    method, path, body, headers = request_for(route, text)
    s = raw_request(gw.base_url, method, path, body, headers)
    if moment == "mid_stream":
        read_until(s, "Эхо:".encode())
    else:
        time.sleep(0.3)  # the gateway holds the request now, waiting for the first token
        if moment == "before_first_write":
            # More bytes (a pipelined request) ahead of the hang-up hide it from a peek: the gateway
            # learns that the client left only when its first write fails.
            s.sendall(b"GET /health HTTP/1.1\r\n")
    left = time.monotonic()
    s.close()
    return left


@pytest.mark.parametrize("moment", ["before_headers", "before_first_write", "mid_stream"])
def test_a_client_that_leaves_at_any_moment_leaves_a_saved_pair(gw, upstream, moment):
    routes = [r for r in ROUTES if moment != "mid_stream" or "stream" in r]
    markers = {route: f"m{uuid.uuid4().hex[:10]}" for route in routes}
    threads = [threading.Thread(target=hang_up_at, args=(gw, route, moment, markers[route])) for route in routes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for route, marker in markers.items():
        q, answers = exchange(gw.db_path, marker)
        assert q is not None, (route, "the question was not saved")
        assert len(answers) == 1, (route, moment, "no answer row")
        a = answers[0]
        finished_anyway = moment != "mid_stream" and "stream" not in route  # a whole answer is saved as it came
        if finished_anyway and a["status"] == "ok":
            assert a["content"].startswith("Эхо:"), (route, dict(a))
        else:
            assert a["status"] == "cancelled" and a["error"] == "client disconnected", (route, dict(a))
        if moment == "mid_stream":
            assert a["content"].startswith("Эхо:") and "восемь" not in a["content"], (route, a["content"])
        assert a["conversation_id"] == q["conversation_id"]
    assert_every_question_answered_once(gw.db_path)
    assert_pool_intact(gw)


def test_the_upstream_call_ends_when_its_client_leaves(gw, upstream):
    """Non-streamed and before the first token: the gateway closes its upstream connection within
    a fraction of a second (so qwen_server cancels the generation), and saves the answer as cancelled."""
    for route in ("/qwen", "/v1 qwen", "/qwen?stream", "/v1 qwen stream"):
        marker = f"u{uuid.uuid4().hex[:10]}"
        method, path, body, headers = request_for(route, f"{marker} [[hold=5]]")
        s = raw_request(gw.base_url, method, path, body, headers)
        time.sleep(0.4)
        left = time.monotonic()
        s.close()
        deadline = left + 2
        while not [t for text, t in upstream.hangups if marker in text] and time.monotonic() < deadline:
            time.sleep(0.02)
        hung = [t for text, t in upstream.hangups if marker in text]
        assert hung, (route, "the gateway kept its upstream call after the client left")
        assert hung[0] - left < 0.5, (route, hung[0] - left)
        q, answers = exchange(gw.db_path, marker)
        assert [a["status"] for a in answers] == ["cancelled"], route
    assert_pool_intact(gw)


def test_a_client_that_leaves_the_gigachat_queue_is_never_sent(fake_gigachat, tmp_path):
    gw = start_gateway("http://127.0.0.1:9", fake_gigachat, tmp_path, gunicorn_workers=1,
                       GIGACHAT_MAX_CONCURRENCY="1")
    db_path = str(tmp_path / "history.db")
    try:
        blocker = threading.Thread(target=requests.get, args=(gw.base_url + "/gigachat",),
                                   kwargs={"params": {"q": "занимаю очередь [[fault:slow=2]]"}, "timeout": 30})
        blocker.start()
        time.sleep(0.3)
        calls = requests.get(fake_gigachat.base_url + "/_debug/stats", timeout=5).json()["chat_calls"]
        markers = {}
        for route in ("/gigachat", "/gigachat?stream", "/v1 gigachat stream"):
            markers[route] = f"g{uuid.uuid4().hex[:10]}"
            method, path, body, headers = request_for(route, markers[route] + " в очереди")
            s = raw_request(gw.base_url, method, path, body, headers)
            time.sleep(0.3)
            s.close()
        for route, marker in markers.items():
            q, answers = exchange(db_path, marker, timeout=1.0)  # well before the blocker's 2 s are over
            assert [a["status"] for a in answers] == ["cancelled"], (route, [dict(a) for a in answers])
        blocker.join()
        time.sleep(0.3)
        assert requests.get(fake_gigachat.base_url + "/_debug/stats", timeout=5).json()["chat_calls"] == calls
        assert_every_question_answered_once(db_path)
        assert_pool_intact(gw)
    finally:
        stop_process(gw)


def test_eight_concurrent_writers_on_one_session_keep_their_pairs(gw, upstream):
    sid = f"shared-{uuid.uuid4().hex[:8]}"
    r = requests.post(gw.base_url + "/v1/chat/completions", headers={"X-Session-ID": sid}, timeout=10,
                      json={"model": "qwen", "messages": [{"role": "user", "content": "начало"}]})
    assert r.status_code == 200, r.text
    before = len(upstream.requests)
    errors = []

    def writer(n):
        rnd = random.Random(n)
        for i in range(5):
            text = f"w{n} q{i} [[hold={rnd.choice([0, 0.05, 0.15])}]]"
            try:
                if n % 2:  # the seed's endpoint, streamed
                    r = requests.get(gw.base_url + "/qwen", params={"q": text, "session": sid, "stream": 1},
                                     timeout=30)
                    ok = r.status_code == 200 and '"type":"done"' in r.text
                else:
                    r = requests.post(gw.base_url + "/qwen", json={"q": text, "session": sid}, timeout=30)
                    ok = r.status_code == 200 and r.json()["answer"] == "Эхо: " + text.split(" [[")[0]
                if not ok:
                    errors.append((n, i, r.status_code, r.text[:200]))
            except requests.RequestException as e:
                errors.append((n, i, repr(e)))
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    # the file: 41 questions, each with its own answer
    conn = db.open_connection(gw.db_path)
    rows = conn.execute("SELECT q.id, q.content, a.content, a.status FROM messages q JOIN messages a "
                        "ON a.question_id = q.id WHERE q.conversation_id = ? ORDER BY q.id", (sid,)).fetchall()
    conn.close()
    assert len(rows) == 41
    for qid, question, answer, status in rows:
        assert status == "ok" and answer == "Эхо: " + question.split(" [[")[0], (qid, question, answer)
    order = [question for _, question, _, _ in rows]

    # every context sent upstream: (question, its own answer) pairs, in the order of the questions' ids
    sent = [req["messages"] for req in upstream.requests[before:]]
    assert len(sent) == 40
    interleaved = 0
    for messages in sent:
        turns = messages[:-1]
        assert [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2), turns
        questions = [m["content"] for m in turns[::2]]
        for q, a in zip(turns[::2], turns[1::2]):
            assert a["content"] == "Эхо: " + q["content"].split(" [[")[0], (q, a)
        assert [order.index(q) for q in questions] == sorted(order.index(q) for q in questions)
        interleaved += len(questions) < order.index(messages[-1]["content"])  # a question still in flight
    assert interleaved, "the writers never overlapped: the test proves nothing"
    assert_pool_intact(gw)


def sse_lines(resp):
    for line in resp.iter_lines():
        if line.startswith(b"data: "):
            data = line[6:].decode()
            yield data if data == "[DONE]" else json.loads(data)


def assert_nothing_left(db_path, sid, marker):
    conn = db.open_connection(db_path)
    try:
        assert conn.execute("SELECT count(*) FROM messages WHERE conversation_id = ?", (sid,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM conversations WHERE id = ?", (sid,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM messages WHERE content LIKE ?", (f"%{marker}%",)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM messages m WHERE m.question_id IS NOT NULL AND NOT EXISTS "
                            "(SELECT 1 FROM messages q WHERE q.id = m.question_id)").fetchone()[0] == 0
        if conn.backend == "postgres":  # the search column goes with its row
            assert conn.execute("SELECT count(*) FROM messages WHERE search @@ plainto_tsquery('simple', ?)",
                                (marker,)).fetchone()[0] == 0
        else:
            conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")
            assert conn.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?",
                                (f'"{marker}"',)).fetchone()[0] == 0
    finally:
        conn.close()


@pytest.mark.parametrize("route", ["/qwen?stream", "/v1 qwen stream", "/gigachat?stream", "/qwen", "/v1 qwen"])
def test_delete_during_an_answer_ends_cleanly_and_leaves_nothing(gw, route):
    marker = f"d{uuid.uuid4().hex[:10]}"
    sid = f"del-{marker}"
    requests.post(gw.base_url + "/v1/chat/completions", headers={"X-Session-ID": sid}, timeout=10,
                  json={"model": "qwen", "messages": [{"role": "user", "content": f"{marker} первый"}]})
    text = f"{marker} раз два три четыре [[gap=0.2]] [[hold=0.5]]"
    if "gigachat" in route:
        text = f"{marker} раз два три четыре [[fault:sleepstream=0.2]]"
    method, path, body, headers = request_for(route, text)
    if route.startswith("/v1"):
        headers = {"X-Session-ID": sid}
    else:
        path += "&session=" + sid
    deleter = threading.Timer(0.3, lambda: requests.delete(f"{gw.base_url}/history/{sid}", timeout=10))
    deleter.start()
    r = requests.request(method, gw.base_url + path, json=body, headers=headers, stream=True, timeout=30)
    if "stream" in route:
        assert r.status_code == 200
        events = list(sse_lines(r))
        last = events[-2] if route.startswith("/v1") else events[-1]
        if route.startswith("/v1"):
            assert events[-1] == "[DONE]"
        assert last["error"]["code"] == "session_deleted", events[-3:]
        assert "deleted" in last["error"]["message"]
    else:
        assert r.status_code == 409 and r.json()["error"]["code"] == "session_deleted", r.text
    deleter.join()
    time.sleep(1.2)  # the maintenance thread indexes whatever was queued
    assert_nothing_left(gw.db_path, sid, marker)
    assert_pool_intact(gw)


def test_responses_never_read_settle_too(gw):
    """HEAD: the server closes the response without pulling a single frame from it."""
    for _ in range(3):
        assert requests.head(gw.base_url + "/history/export", timeout=10).status_code == 200
    marker = f"h{uuid.uuid4().hex[:10]}"
    r = requests.head(gw.base_url + "/gigachat", params={"q": marker, "stream": 1}, timeout=10)
    assert r.status_code == 200
    q, answers = exchange(gw.db_path, marker)
    assert [a["status"] for a in answers] == ["cancelled"]
    assert_pool_intact(gw)


@pytest.mark.parametrize("bad", [".", "..", "...", "a/b", "a b", "x" * 101, "сессия"])
def test_session_ids_the_page_cannot_open_are_refused(gw, bad):
    r = requests.post(gw.base_url + "/v1/chat/completions", headers={"X-Session-ID": quote(bad, safe="./")},
                      json={"model": "qwen", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_session_id", r.text
    assert "X-Session-ID" in r.json()["error"]["message"]


def test_a_session_id_with_dots_opens_like_any_other(gw):
    sid = f"agent.{uuid.uuid4().hex[:6]}_run-1"
    r = requests.post(gw.base_url + "/v1/chat/completions", headers={"X-Session-ID": sid},
                      json={"model": "qwen", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 200 and r.headers["X-Session-ID"] == sid
    conv = requests.get(f"{gw.base_url}/history/{sid}", timeout=10).json()
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["messages"][1]["question_id"] == conv["messages"][0]["id"]
