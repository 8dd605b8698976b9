"""Reliability under faults, crashes, lock contention and hostile input. Real subprocess servers,
real HTTP, no mocks: qwen_server.py on the tiny Qwen2 model, the fake GigaChat with its injected
faults, and the gateway (the Flask dev server, and gunicorn where workers are killed)."""
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from urllib.parse import quote

import pytest
import requests

import db
from conftest import CLEAN_ENV, start_gateway
from helpers import PYTHON, REPO_ROOT, free_port, live_processes, start_process, stop_process


def start_qwen_on(model_dir, port):
    """qwen_server on the tiny model on a port of our choosing (so it can be restarted on it)."""
    args = [PYTHON, os.path.join(REPO_ROOT, "qwen_server.py"), "-m", model_dir, "--engine", "transformers",
            "--port", port, "-l", "512"]
    return start_process(args, env=CLEAN_ENV, port=port, ready_path="/health", timeout=120)


def dead_url():
    return f"http://127.0.0.1:{free_port()}"


def events(resp):
    """SSE `data:` payloads as they arrive (a generator, so the caller can act mid-stream)."""
    for line in resp.iter_lines():
        if line.startswith(b"data: "):
            yield json.loads(line[6:])


def history(gw, sid, **kw):
    r = requests.get(f"{gw.base_url}/history/{quote(sid, safe='')}", timeout=10, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def assert_json_error(r, status, code=None):
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["Content-Type"].startswith("application/json")
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    assert err["code"] is None or isinstance(err["code"], str)
    if code:
        assert err["code"] == code, err
    return err


# -- faults --------------------------------------------------------------------------------------

def test_qwen_killed_mid_stream_then_restarted_on_the_same_port(tiny_qwen_dir, fake_gigachat, tmp_path):
    port = free_port()
    qwen = start_qwen_on(tiny_qwen_dir, port)
    gw = start_gateway(f"http://127.0.0.1:{port}", fake_gigachat, tmp_path)
    try:
        r = requests.get(gw.base_url + "/qwen", params={"q": "Tell me a very long story.", "temperature": 0,
                                                        "max_tokens": 300, "stream": 1}, stream=True, timeout=60)
        assert r.status_code == 200, r.text
        seen, texts = [], []
        for ev in events(r):
            seen.append(ev)
            if ev["type"] == "delta":
                texts.append(ev["text"])
                if len(texts) == 5:  # the model is mid-answer: crash it
                    qwen.send_signal(signal.SIGKILL)
                    qwen.wait(10)
        assert len(texts) >= 5 and qwen.returncode == -signal.SIGKILL, "the answer ended before the kill"
        last = seen[-1]
        assert last["type"] == "error" and last["status"] == 502, last
        assert last["error"]["code"] == "qwen_stream_broken"
        assert "closed the connection before the end of the answer (did it crash?" in last["error"]["message"]
        sid = seen[0]["session"]
        saved = history(gw, sid)["messages"]
        assert [m["role"] for m in saved] == ["user", "assistant"]
        assert saved[1]["id"] == last["message_id"] and saved[1]["status"] == "error"
        assert saved[1]["content"] == "".join(texts) and saved[1]["error"] == last["error"]["message"]

        # while it is down: a clear 503 at once, and the gateway itself keeps serving
        r = requests.get(gw.base_url + "/qwen", params={"q": "hi"}, timeout=10)
        assert "not reachable" in assert_json_error(r, 503, "qwen_unreachable")["message"]
        assert requests.get(gw.base_url + "/qwen/status", timeout=10).json()["online"] is False
        assert requests.get(gw.base_url + "/gigachat", params={"q": "ещё тут"}, timeout=10).status_code == 200

        qwen = start_qwen_on(tiny_qwen_dir, port)  # same port, the gateway is not restarted
        r = requests.get(gw.base_url + "/qwen", params={"q": "hi", "max_tokens": 4, "session": sid}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["session"] == sid and r.json()["usage"]["completion_tokens"] >= 1
        r = requests.get(gw.base_url + "/qwen", params={"q": "again", "max_tokens": 4, "stream": 1}, stream=True,
                         timeout=30)
        assert [e["type"] for e in events(r)][-1] == "done"
        assert requests.get(gw.base_url + "/qwen/status", timeout=10).json()["online"] is True
    finally:
        stop_process(gw)
        stop_process(qwen)


def test_gigachat_timeouts_and_dropped_connection(fake_gigachat, tmp_path):
    gw = start_gateway(dead_url(), fake_gigachat, tmp_path, GIGACHAT_TIMEOUT="1")
    try:
        # slow before the answer: a 504 that names the setting, after ~1 s, not after the 3 s sleep
        t0 = time.monotonic()
        r = requests.get(gw.base_url + "/gigachat", params={"q": "медленно [[fault:slow=3]]"}, timeout=30)
        assert time.monotonic() - t0 < 2.5
        assert "GIGACHAT_TIMEOUT" in assert_json_error(r, 504, "gigachat_timeout")["message"]
        last = requests.get(gw.base_url + "/history", params={"limit": 1}, timeout=10).json()["messages"][0]
        assert last["status"] == "error" and "GIGACHAT_TIMEOUT" in last["error"]

        # streaming, slow before the first word: still a real 504, not a 200 stream
        r = requests.get(gw.base_url + "/gigachat", params={"q": "медленно [[fault:slow=3]]", "stream": 1},
                         timeout=30)
        assert_json_error(r, 504, "gigachat_timeout")

        # streaming, stalls after the first words: an error event, the partial answer kept once
        r = requests.get(gw.base_url + "/gigachat", params={"q": "раз два три [[fault:sleepstream=2]]",
                                                            "stream": 1}, stream=True, timeout=30)
        seen = list(events(r))
        text = "".join(e["text"] for e in seen if e["type"] == "delta")
        assert seen[-1]["type"] == "error" and seen[-1]["status"] == 504, seen[-1]
        assert seen[-1]["error"]["code"] == "gigachat_stream_interrupted" and text == "Эхо:"
        row = history(gw, seen[0]["session"])["messages"][-1]
        assert row["status"] == "error" and row["content"] == text and row["id"] == seen[-1]["message_id"]

        # the connection dropped without an answer (non-streaming; the streaming case is in test_gateway)
        r = requests.get(gw.base_url + "/gigachat", params={"q": "обрыв [[fault:drop]]"}, timeout=30)
        assert "connection to GigaChat failed" in assert_json_error(r, 502, "gigachat_connection_lost")["message"]

        r = requests.get(gw.base_url + "/gigachat", params={"q": "снова работает"}, timeout=10)
        assert r.status_code == 200 and r.json()["answer"] == "Эхо: снова работает"
    finally:
        stop_process(gw)


def hold_write_lock(db_path, seconds):
    """Another program's write transaction on the history file, held for `seconds`."""
    conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")

    def release():
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()
    t = threading.Thread(target=release)
    t.start()
    return t


def test_sqlite_locked_by_another_writer(fake_gigachat, tmp_path):
    gw = start_gateway(dead_url(), fake_gigachat, tmp_path)
    db_path = tmp_path / "history.db"
    try:
        r = requests.get(gw.base_url + "/gigachat", params={"q": "до блокировки"}, timeout=10)
        assert r.status_code == 200

        # a short lock: the write waits for it (busy timeout) and succeeds; reads never wait (WAL)
        t0 = time.monotonic()
        releaser = hold_write_lock(db_path, 1.0)
        r = requests.get(gw.base_url + "/history", timeout=10)
        assert r.status_code == 200 and time.monotonic() - t0 < 0.9
        r = requests.get(gw.base_url + "/gigachat", params={"q": "подожду"}, timeout=30)
        assert r.status_code == 200 and r.json()["answer"] == "Эхо: подожду"
        assert time.monotonic() - t0 >= 0.9
        releaser.join()

        # a lock longer than the 5 s busy timeout: a clear 503, nothing half-saved, the gateway stays up
        sessions_before = len(requests.get(gw.base_url + "/history/sessions", timeout=10).json()["sessions"])
        releaser = hold_write_lock(db_path, 7.0)
        r = requests.get(gw.base_url + "/gigachat", params={"q": "не дождусь"}, timeout=30)
        err = assert_json_error(r, 503, "database_unavailable")
        assert "lock" in err["message"] and err["type"] == "server_error"
        assert requests.get(gw.base_url + "/health", timeout=5).status_code == 200
        releaser.join()
        r = requests.get(gw.base_url + "/gigachat", params={"q": "после блокировки"}, timeout=10)
        assert r.status_code == 200
        sessions = requests.get(gw.base_url + "/history/sessions", timeout=10).json()["sessions"]
        assert len(sessions) == sessions_before + 1 and sessions[0]["title"] == "после блокировки"
    finally:
        stop_process(gw)


# -- durability ------------------------------------------------------------------------------------

def child_pids(pid):
    """Live child processes of `pid`."""
    return [child for child, ppid, _ in live_processes() if ppid == pid]


def test_gunicorn_workers_killed_under_load_lose_no_acknowledged_exchange(fake_gigachat, tmp_path):
    gw = start_gateway(dead_url(), fake_gigachat, tmp_path, gunicorn_workers=2, GIGACHAT_MAX_CONCURRENCY="8")
    acked, failures, stop = [], [], threading.Event()
    lock = threading.Lock()

    def client(n):
        s = requests.Session()
        i = 0
        while not stop.is_set():
            q = f"клиент {n} вопрос {i} «ё» 🚀"
            i += 1
            try:
                r = s.get(gw.base_url + "/gigachat", params={"q": q}, timeout=10)
            except requests.RequestException as e:  # killed mid-request: expected, nothing promised
                failures.append(type(e).__name__)
                s = requests.Session()
                time.sleep(0.05)
                continue
            if r.status_code == 200:
                a = r.json()
                with lock:
                    acked.append((q, a["answer"], a["session"], a["message_id"]))
            else:
                failures.append(r.status_code)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        workers = child_pids(gw.pid)
        assert len(workers) == 2
        for pid in workers:  # crash both workers mid-request; the master starts new ones
            os.kill(pid, signal.SIGKILL)
        before = len(acked)
        deadline = time.monotonic() + 15
        while len(acked) < before + 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(acked) >= before + 20, "the gateway did not come back after its workers were killed"
        time.sleep(0.5)
        everything = [gw.pid] + child_pids(gw.pid)
        for pid in everything:  # now the whole server at once, as a power cut would
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        stop_process(gw)
    assert len(acked) > 50 and failures

    conn = sqlite3.connect(tmp_path / "history.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, conversation_id, role, content, status FROM messages")}
    for q, answer, sid, mid in acked:
        assert answer == f"Эхо: {q}"
        assert rows.get(mid) == (sid, "assistant", answer, "ok"), (mid, rows.get(mid))
        question = conn.execute("SELECT role, content FROM messages WHERE conversation_id = ? AND id < ? "
                                "ORDER BY id DESC LIMIT 1", (sid, mid)).fetchone()
        assert question == ("user", q)
    conn.close()
    # what the crash left queued for the full-text index gets indexed, once and completely
    conn = db.connect(str(tmp_path / "history.db"))
    db.index_pending(conn)
    assert conn.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH '\"клиент\"'").fetchone()[0] \
        == conn.execute("SELECT count(*) FROM messages WHERE content LIKE '%клиент%'").fetchone()[0]
    conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")
    conn.close()

    # a fresh gateway on the crashed file serves the acknowledged history, searchable
    gw = start_gateway(dead_url(), fake_gigachat, tmp_path)
    try:
        q, answer, sid, mid = acked[-1]
        assert [m["content"] for m in history(gw, sid)["messages"]] == [q, answer]
        found = requests.get(gw.base_url + "/history", params={"q": q}, timeout=10).json()["messages"]
        assert [(m["session"], m["role"]) for m in found if m["content"] == q] == [(sid, "user")]
    finally:
        stop_process(gw)


# -- hostile input ---------------------------------------------------------------------------------

SQL = ["'; DROP TABLE messages; --", "\" OR 1=1 --", "1); DELETE FROM conversations; --", "x' UNION SELECT * --"]
HTML = ["<script>alert(1)</script>", "\"><img src=x onerror=alert(document.cookie)>", "javascript:alert(1)//"]
TEXTS = [
    "Привет, мир! Ёлка, щётка — «кавычки»",
    "emoji 🚀🔥 ZWJ 👩‍💻 flag 🇷🇺 skin 👍🏽 math 𝕳𝖊𝖑𝖑𝖔",
    "NUL in\x00the middle\x00",
    "CRLF line1\r\nline2\rline3\n\ttab  double  space",
    "combining e\u0301 a\u0308 Zalgo Z\u0351\u0352\u0353 й (и\u0306)",
    "RTL \u200fمرحبا\u200e \u202eREVERSED\u202c עברית",
    "controls \x01\x07\x08\x0b\x0c\x1b[31mred\x1b[0m\x7f\x85 \u2028\u2029 BOM\ufeff end",
    "  leading and trailing spaces  ",
    *SQL, *HTML,
]


@pytest.fixture(scope="module")
def hgw(qwen_tiny, fake_gigachat, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    proc = start_gateway(qwen_tiny.base_url, fake_gigachat, tmp)
    proc.db_path = tmp / "history.db"
    yield proc
    stop_process(proc)


def tables(db_path):
    conn = sqlite3.connect(db_path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
    finally:
        conn.close()


@pytest.mark.parametrize("text", TEXTS)
def test_hostile_text_is_stored_and_returned_byte_exact(hgw, text):
    system = "Система: " + text
    r = requests.post(hgw.base_url + "/gigachat", json={"q": text, "system": system}, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    a = r.json()
    assert a["answer"] == "Эхо: " + text.strip()  # the fake strips the echo, the gateway does not
    r = requests.get(hgw.base_url + "/gigachat", params={"q": text, "session": a["session"]}, timeout=30)
    assert r.status_code == 200

    conv = history(hgw, a["session"])
    assert conv["title"] == text.strip() and conv["system_prompt"] == system
    msgs = conv["messages"]
    assert [m["content"] for m in msgs] == [text, a["answer"], text, r.json()["answer"]]
    assert all(m["system_prompt"] == system for m in msgs)
    export = requests.get(hgw.base_url + "/history/export", params={"session": a["session"]}, timeout=10)
    assert export.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in export.content.decode("utf-8").split("\n") if line]
    assert [x["content"] for x in lines] == [text, a["answer"], text, r.json()["answer"]]
    # the search takes the same text as a query, hostile or not
    found = requests.get(hgw.base_url + "/history", params={"q": text, "session": a["session"]}, timeout=10)
    assert found.status_code == 200, found.text


def test_sql_and_html_payloads_in_every_field_execute_nothing(hgw):
    before = tables(hgw.db_path)
    assert {"messages", "conversations", "messages_fts", "messages_ai"} <= before
    for p in SQL + HTML:
        for path in ("/gigachat", "/qwen"):
            r = requests.get(hgw.base_url + path, params={"q": "x", "session": p}, timeout=30)
            err = assert_json_error(r, 404, "unknown_session")
            assert repr(p)[:100] in err["message"]  # echoed as inert JSON text
        r = requests.get(hgw.base_url + "/qwen", params={"q": p, "system": p, "max_tokens": 2}, timeout=30)
        assert r.status_code == 200, r.text
        for params in ({"q": p}, {"session": p}, {"q": p, "model": "qwen"}):
            r = requests.get(hgw.base_url + "/history", params=params, timeout=10)
            assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
        assert_json_error(requests.get(f"{hgw.base_url}/history/{quote(p, safe='')}", timeout=10), 404)
        assert_json_error(requests.delete(f"{hgw.base_url}/history/{quote(p, safe='')}", timeout=10), 404)
        r = requests.get(hgw.base_url + "/history/sessions", params={"before": p}, timeout=10)
        assert_json_error(r, 400, "invalid_parameter")
        # a client-chosen session id must be a plain token: payloads are refused, not stored
        r = requests.post(hgw.base_url + "/v1/chat/completions", headers={"X-Session-ID": p},
                          json={"model": "gigachat", "messages": [{"role": "system", "content": p},
                                                                  {"role": "user", "content": p}]}, timeout=30)
        assert_json_error(r, 400, "invalid_session_id")
        r = requests.post(hgw.base_url + "/v1/chat/completions", headers={"X-Session-ID": "payload-session"},
                          json={"model": "gigachat", "messages": [{"role": "system", "content": p},
                                                                  {"role": "user", "content": p}]}, timeout=30)
        assert r.status_code == 200 and r.headers["X-Session-ID"] == "payload-session"
        saved = history(hgw, "payload-session")["messages"]
        assert saved[-2]["content"] == p and saved[-2]["system_prompt"] == p
    assert tables(hgw.db_path) == before
    conn = sqlite3.connect(hgw.db_path)
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] >= 4 * len(SQL + HTML)
    conn.close()


def raw_request(base_url, request_bytes):
    """Send bytes no HTTP client library would (raw non-ASCII in the request line); the status line."""
    host, port = base_url.rsplit("/", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request_bytes)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def oversized_chunks():  # 2 MB with no Content-Length (chunked): the limit must hold without one
    for _ in range(20):
        yield b'{"q": "' + b"x" * 100_000


NESTED_LISTS = b'{"q": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
NESTED_OBJECTS = b'{"q": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}"
JSON_HEADERS = {"Content-Type": "application/json"}
BAD_BODIES = [  # (path, body, status, code) for both POST endpoints of the gateway and the qwen_server
    (NESTED_LISTS, 400, "invalid_json"),
    (NESTED_OBJECTS, 400, "invalid_json"),
    (b'{"q": "\xff\xfe\xc3\x28"}', 400, "invalid_utf8"),
    (b'{"q": "lone \\ud800 surrogate", "messages": [{"role": "user", "content": "\\udc00"}]}', 400, "invalid_json"),
    (b'["a", "list"]', 400, "invalid_json"),
    (b'"a string"', 400, "invalid_json"),
    (b"null", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (oversized_chunks, 413, "request_too_large"),
]


@pytest.mark.parametrize("body,status,code", BAD_BODIES, ids=["nested-lists", "nested-objects", "bad-utf8",
                                                               "lone-surrogate", "array", "string", "null",
                                                               "empty", "chunked-2MB"])
def test_malformed_bodies_are_json_4xx_on_both_servers(hgw, qwen_tiny, body, status, code):
    for url in (hgw.base_url + "/gigachat", hgw.base_url + "/qwen", hgw.base_url + "/v1/chat/completions",
                qwen_tiny.base_url + "/v1/chat/completions", qwen_tiny.base_url + "/v1/token/count"):
        r = requests.post(url, data=body() if callable(body) else body, headers=JSON_HEADERS, timeout=30)
        assert_json_error(r, status, code)
    assert requests.get(hgw.base_url + "/health", timeout=5).status_code == 200
    assert requests.get(qwen_tiny.base_url + "/health", timeout=5).status_code == 200


def test_bad_bytes_in_query_string_and_path(hgw):
    # %-encoded invalid UTF-8: Werkzeug 3 keeps the undecodable escapes as text (older ones made U+FFFD)
    r = requests.get(hgw.base_url + "/gigachat?q=%FF%FE%C3%28%00end", timeout=30)
    assert r.status_code == 200, r.text
    stored = history(hgw, r.json()["session"])["messages"][0]["content"]
    assert stored in ("%FF%FE%C3(\x00end", "\ufffd\ufffd\ufffd(\x00end") and r.json()["answer"] == "Эхо: " + stored
    # raw bytes that are not even %-encoded, straight in the request line
    status = raw_request(hgw.base_url, b"GET /gigachat?q=\xff\xfe\x01raw\xd0 HTTP/1.1\r\nHost: localhost\r\n"
                                       b"Connection: close\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), status
    status = raw_request(hgw.base_url, b"GET /history/\xff\x00\x1b HTTP/1.1\r\nHost: localhost\r\n"
                                       b"Connection: close\r\n\r\n")
    assert status.startswith((b"HTTP/1.1 404", b"HTTP/1.1 400")), status
    assert_json_error(requests.get(hgw.base_url + "/history/%FF%00", timeout=10), 404, "unknown_session")
    # NUL and FTS5 syntax in the full-text search: plain words, not a query language, never a 5xx
    for q in ("\x00", "a\x00b", "NEAR(a b)", "a* OR b -c", "\"unbalanced", "col:umn", "^start", "( )"):
        r = requests.get(hgw.base_url + "/history", params={"q": q}, timeout=10)
        assert r.status_code == 200, (q, r.text)
    # numbers that are not numbers
    for params in ({"limit": "1e3"}, {"limit": "NaN"}, {"before": "9" * 40}, {"limit": "\x00"}, {"before": "-1"}):
        assert_json_error(requests.get(hgw.base_url + "/history", params=params, timeout=10), 400,
                          "invalid_parameter")
    for value in ("nan", "inf", "-inf", "1e309", "0x10", "\x00"):
        r = requests.get(hgw.base_url + "/qwen", params={"q": "x", "temperature": value}, timeout=10)
        assert_json_error(r, 400, "invalid_parameter")
    r = requests.get(hgw.base_url + "/history/sessions", params={"before": "nan"}, timeout=10)
    assert r.status_code in (200, 400), r.text


# -- logs ------------------------------------------------------------------------------------------

KEY = "k3y-" + "S3CRET" * 4


@pytest.mark.parametrize("workers", [None, 1], ids=["dev-server", "gunicorn"])
def test_access_log_has_request_ids_and_no_secrets(fake_gigachat, tmp_path, workers):
    gw = start_gateway(dead_url(), fake_gigachat, tmp_path, gunicorn_workers=workers, LOG_LEVEL="INFO",
                       CHAT_API_KEY=KEY)
    secrets = [KEY, "WRONG-" + KEY, "SECRET-QUESTION-GET", "SECRET-QUESTION-POST", "SECRET-SEARCH",
               "SECRET-STREAM", "SECRET-OPENAI", "SECRET-SYSTEM"]
    auth = {"Authorization": f"Bearer {KEY}"}
    sent = []  # (request id we expect in the log, method, path, status)
    try:
        def call(method, path, expect, rid=None, headers=None, **kw):
            h = dict(headers if headers is not None else auth)
            if rid:
                h["X-Request-ID"] = rid
            r = requests.request(method, gw.base_url + path, headers=h, timeout=30, **kw)
            r.content  # noqa: B018 - read streams to the end
            assert r.status_code == expect, r.text[:300]
            echoed = r.headers["X-Request-ID"]
            if rid and len(rid) <= 64 and rid.isprintable():
                assert echoed == rid
            else:  # absent or unusable: a fresh id, never the client's text
                assert len(echoed) == 16 and int(echoed, 16) >= 0
            sent.append((echoed, method, path, expect))

        call("GET", "/gigachat?q=SECRET-QUESTION-GET&system=SECRET-SYSTEM", 200, rid="req-0001")
        call("POST", "/gigachat", 200, json={"q": "SECRET-QUESTION-POST"}, headers={"X-API-Key": KEY})
        call("GET", "/history?q=SECRET-SEARCH", 200, rid="req-0003")
        call("GET", "/gigachat?stream=1&q=SECRET-STREAM", 200, rid="req-0004", stream=True)
        call("POST", "/v1/chat/completions", 200, rid="req-0005",
             json={"model": "gigachat", "messages": [{"role": "user", "content": "SECRET-OPENAI"}]})
        call("GET", "/history", 401, rid="req-0006", headers={"Authorization": f"Bearer WRONG-{KEY}"})
        call("GET", "/history", 401, rid="x" * 65, headers={"X-API-Key": f"WRONG-{KEY}"})  # too long: replaced
        call("GET", "/qwen?q=SECRET-QUESTION-GET", 503, rid="req\tTAB")  # not printable: replaced
        time.sleep(0.5)  # the log line is written after the response
        with open(gw.log_path, encoding="utf-8", errors="replace") as f:
            log = f.read()
    finally:
        stop_process(gw)
    for secret in secrets:
        assert secret not in log, f"{secret!r} leaked into the log"
    access = [json.loads(line.split(" access: ", 1)[1]) for line in log.splitlines() if " access: " in line]
    logged = {(a["rid"], a["method"], a["path"], a["status"]) for a in access}
    for rid, method, path, status in sent:
        assert (rid, method, path.split("?")[0], status) in logged, (rid, path, access)
    assert all(a["service"] == "chat" and isinstance(a["ms"], (int, float)) for a in access)
