"""chat.py end to end: the gateway, qwen_server.py (CPU, SmolLM2) and the fake GigaChat driven
through the real gigachat SDK, each a subprocess on 127.0.0.1."""
import json
import sqlite3
import threading
import time

import openai
import pytest
import requests

from conftest import start_gateway
from helpers import free_port, sse_events, stop_process

FRANCE = "What is the capital of France?"
SYSTEM = "Ты - эксперт по Python. Пиши чистый код с комментариями."


@pytest.fixture(scope="module")
def gw(qwen_smol, fake_gigachat, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw")
    proc = start_gateway(qwen_smol.base_url, fake_gigachat, tmp, DEFAULT_SYSTEM_PROMPT=SYSTEM)
    proc.db_path = tmp / "history.db"
    yield proc
    stop_process(proc)


def get(gw, path, **params):
    return requests.get(gw.base_url + path, params=params, timeout=120)


def test_seed_endpoints_from_a_plain_query_string(gw):
    r = requests.get(gw.base_url + "/qwen?q=What+is+the+capital+of+France%3F&temperature=0&max_tokens=20")
    assert r.status_code == 200, r.text
    a = r.json()
    assert "Paris" in a["answer"] and a["provider"] == "qwen" and a["session"] and a["message_id"]
    assert a["usage"]["completion_tokens"] > 0 and a["elapsed_ms"] > 0 and a["finish_reason"] in ("stop", "length")

    r = requests.get(gw.base_url + "/gigachat?q=Привет, как дела?")
    assert r.status_code == 200
    assert "Эхо: Привет, как дела?".encode() in r.content  # raw UTF-8, not \u escapes
    g = r.json()
    assert g["model"].startswith("GigaChat") and g["usage"]["total_tokens"] > 0

    st = get(gw, "/qwen/status").json()
    assert st["online"] is True and st["model"] == "smollm2-135m-instruct" and st["max_seq_len"] == 2048

    hist = get(gw, "/history", limit=4).json()["messages"]
    assert [m["role"] for m in hist] == ["assistant", "user", "assistant", "user"]
    assert hist[0]["content"] == g["answer"] and hist[1]["content"] == "Привет, как дела?"
    assert hist[2]["content"] == a["answer"] and hist[2]["provider"] == "qwen"
    assert hist[3]["params"]["temperature"] == 0 and hist[3]["params"]["top_k"] == 60  # seed default kept


def test_post_json_body_works_too(gw):
    r = requests.post(gw.base_url + "/gigachat", json={"q": "JSON вопрос", "temperature": 0.5})
    assert r.status_code == 200 and r.json()["answer"] == "Эхо: JSON вопрос"


def test_qwen_stream_deltas_match_saved_answer(gw):
    r = requests.get(gw.base_url + "/qwen", params={"q": FRANCE, "temperature": 0, "max_tokens": 20, "stream": 1},
                     stream=True)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    ev = sse_events(r)
    assert ev[0]["type"] == "start" and ev[-1]["type"] == "done"
    deltas = [e["text"] for e in ev if e["type"] == "delta"]
    assert len(deltas) > 2 and "Paris" in "".join(deltas)
    conv = get(gw, f"/history/{ev[0]['session']}").json()
    assert conv["messages"][-1]["content"] == "".join(deltas)
    assert conv["messages"][-1]["id"] == ev[-1]["message_id"] and conv["messages"][-1]["status"] == "ok"


def test_gigachat_stream(gw):
    r = requests.get(gw.base_url + "/gigachat", params={"q": "раз два три четыре", "stream": "1"}, stream=True)
    ev = sse_events(r)
    deltas = [e["text"] for e in ev if e["type"] == "delta"]
    assert len(deltas) >= 4 and "".join(deltas) == "Эхо: раз два три четыре"
    assert ev[-1]["usage"]["total_tokens"] > 0


def test_multi_turn_context_system_prompt_and_session_header(gw, fake_gigachat):
    first = get(gw, "/gigachat", q="первый вопрос").json()
    sid = first["session"]
    second = get(gw, "/gigachat", q="второй [[fault:meta]]", session=sid).json()
    assert second["session"] == sid
    # system (from DEFAULT_SYSTEM_PROMPT) + first question + first answer + second question
    assert f"[messages=4 system_first=yes session={sid}]" in second["answer"]
    sent = requests.get(fake_gigachat.base_url + "/_debug/last_request").json()
    assert sent["body"]["messages"][0] == {"role": "system", "content": SYSTEM}
    assert sent["body"]["messages"][2]["content"] == first["answer"]
    assert second["usage"]["precached_prompt_tokens"] > 0  # X-Session-ID made the prompt cache hit
    row = get(gw, f"/history/{sid}").json()["messages"][-1]
    assert row["precached_prompt_tokens"] == second["usage"]["precached_prompt_tokens"]
    # an explicit system prompt replaces the default
    third = get(gw, "/gigachat", q="[[fault:meta]] x", system="Будь краток.").json()
    sent = requests.get(fake_gigachat.base_url + "/_debug/last_request").json()
    assert sent["body"]["messages"][0]["content"] == "Будь краток." and "messages=2" in third["answer"]


def test_qwen_conversation_continues(gw):
    a = get(gw, "/qwen", q="My name is Anna.", temperature=0, max_tokens=10).json()
    b = get(gw, "/qwen", q="What is my name?", session=a["session"], temperature=0, max_tokens=10).json()
    assert b["usage"]["prompt_tokens"] > a["usage"]["prompt_tokens"] + a["usage"]["completion_tokens"]
    msgs = get(gw, f"/history/{a['session']}").json()["messages"]
    assert [m["content"] for m in msgs[::2]] == ["My name is Anna.", "What is my name?"]


def test_history_paging_filters_search_export_delete(gw):
    get(gw, "/qwen", q="другой разговор", max_tokens=4)  # two pages of 3 need 6 messages, also when run alone
    sid = get(gw, "/gigachat", q="уникальноеслово один").json()["session"]
    get(gw, "/gigachat", q="ещё вопрос", session=sid)
    page1 = get(gw, "/history", limit=3).json()
    page2 = get(gw, "/history", limit=3, before=page1["next_before"]).json()
    ids = [m["id"] for m in page1["messages"] + page2["messages"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 6
    only_qwen = get(gw, "/history", model="qwen", limit=50).json()["messages"]
    assert only_qwen and all(m["provider"] == "qwen" for m in only_qwen)
    found = get(gw, "/history", q="уникальноеслово").json()["messages"]
    assert {m["session"] for m in found} == {sid} and len(found) == 2  # question and its echo
    assert get(gw, "/history", q='" OR 1=1 --').status_code == 200  # FTS syntax is quoted, not run
    mine = get(gw, "/history", session=sid).json()["messages"]
    assert len(mine) == 4 and all(m["session"] == sid for m in mine)
    sessions = get(gw, "/history/sessions", limit=5).json()["sessions"]
    assert sessions[0]["id"] == sid and sessions[0]["title"] == "уникальноеслово один"
    export = get(gw, "/history/export", format="jsonl", session=sid)
    lines = [json.loads(x) for x in export.text.splitlines()]
    assert [x["content"] for x in lines[::2]] == ["уникальноеслово один", "ещё вопрос"]
    full = get(gw, "/history/export").text.splitlines()
    assert len(full) >= len(lines)
    assert requests.delete(f"{gw.base_url}/history/{sid}").json() == {"deleted": sid}
    assert get(gw, f"/history/{sid}").status_code == 404
    assert get(gw, "/history", session=sid).json()["messages"] == []
    assert requests.delete(f"{gw.base_url}/history/{sid}").status_code == 404


def test_openai_sdk_through_the_gateway(gw):
    client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused")
    ids = [m.id for m in client.models.list().data]
    assert "gigachat" in ids and "qwen" in ids
    r = client.chat.completions.create(model="qwen", messages=[{"role": "user", "content": FRANCE}],
                                       temperature=0, max_tokens=20)
    assert "Paris" in r.choices[0].message.content
    r = client.chat.completions.create(model="GigaChat", messages=[{"role": "user", "content": "Привет"}])
    assert r.choices[0].message.content == "Эхо: Привет"
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="gigachat", messages=[{"role": "user", "content": "поток слов"}], stream=True) if c.choices]
    assert "".join(parts) == "Эхо: поток слов"
    saved = get(gw, "/history", limit=2).json()["messages"]
    assert saved[0]["content"] == "Эхо: поток слов" and saved[1]["content"] == "поток слов"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize("path,params,status,code", [
    ("/qwen", {}, 400, "missing_q"),
    ("/gigachat", {"q": "   "}, 400, "missing_q"),
    ("/qwen", {"q": "x", "temperature": "warm"}, 400, "invalid_parameter"),
    ("/qwen", {"q": "x", "top_p": "2"}, 400, "invalid_parameter"),
    ("/gigachat", {"q": "x", "session": "no-such-session"}, 404, "unknown_session"),
    ("/history", {"limit": "0"}, 400, "invalid_parameter"),
    ("/history", {"model": "gpt"}, 400, "invalid_parameter"),
    ("/history/export", {"format": "csv"}, 400, "invalid_parameter"),
])
def test_bad_requests(gw, path, params, status, code):
    r = get(gw, path, **params)
    assert r.status_code == status and r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_oversize_input(gw):
    r = requests.post(gw.base_url + "/qwen", json={"q": "x" * 100_001})
    assert r.status_code == 413
    r = requests.post(gw.base_url + "/qwen", data=b"{" + b" " * (1 << 20) + b"}",
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("fault,status,words", [
    ("[[fault:429=7]]", 429, "rate"),
    ("[[fault:402]]", 402, "token package"),
    ("[[fault:500]]", 502, "GigaChat"),
    ("[[fault:401]]", 502, "GIGACHAT_CREDENTIALS"),
])
def test_gigachat_errors_are_clear_and_recorded(gw, fault, status, words):
    r = get(gw, "/gigachat", q=f"вопрос {fault}")
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["error"]["message"].lower()
    if status == 429:
        assert r.headers["Retry-After"] == "7"
    last = get(gw, "/history", limit=2).json()["messages"]
    assert last[0]["role"] == "assistant" and last[0]["status"] == "error" and last[0]["error"]
    assert last[1]["content"] == f"вопрос {fault}"  # the question was saved before the call
    assert get(gw, "/health").status_code == 200


def test_blacklist_is_marked_blocked(gw):
    a = get(gw, "/gigachat", q="[[fault:blacklist]] запретное").json()
    assert a["blocked"] is True and a["finish_reason"] == "blacklist"
    assert get(gw, "/history", limit=1).json()["messages"][0]["status"] == "blocked"


def test_expired_token_is_refreshed_transparently(gw, fake_gigachat):
    get(gw, "/gigachat", q="до")
    before = requests.get(fake_gigachat.base_url + "/_debug/stats").json()["auth_calls"]
    requests.post(fake_gigachat.base_url + "/_control", json={"expire_tokens": True})
    r = get(gw, "/gigachat", q="после")
    assert r.status_code == 200 and r.json()["answer"] == "Эхо: после"
    assert requests.get(fake_gigachat.base_url + "/_debug/stats").json()["auth_calls"] > before


def test_stream_dropped_midway_keeps_partial_text_once(gw):
    r = requests.get(gw.base_url + "/gigachat", params={"q": "один два три четыре пять шесть [[fault:drop=3]]",
                                                        "stream": 1}, stream=True)
    ev = sse_events(r)
    deltas = "".join(e["text"] for e in ev if e["type"] == "delta")
    assert ev[-1]["type"] == "error" and deltas and "Эхо: один два три четыре пять шесть".startswith(deltas)
    row = get(gw, f"/history/{ev[0]['session']}").json()["messages"][-1]
    assert row["status"] == "error" and row["content"] == deltas  # saved as far as it got, not repeated


def test_qwen_context_error_passed_on(gw):
    r = get(gw, "/qwen", q="hi", max_tokens=5000)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_client_hangup_cancels_and_saves_partial(gw, qwen_smol):
    r = requests.get(gw.base_url + "/qwen", params={"q": "Count from 1 to 500, one number per line.",
                                                    "temperature": 0, "max_tokens": 1000, "stream": 1}, stream=True)
    sid, seen = None, 0
    for line in r.iter_lines():
        if line.startswith(b"data: "):
            e = json.loads(line[6:])
            sid = sid or e.get("session")
            seen += e["type"] == "delta"
            if seen >= 5:
                break
    r.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        msgs = get(gw, f"/history/{sid}").json()["messages"]
        if len(msgs) == 2:
            break
        time.sleep(0.2)
    assert msgs[-1]["status"] == "cancelled" and msgs[-1]["content"]
    while time.time() < deadline and requests.get(qwen_smol.base_url + "/status").json()["active_requests"]:
        time.sleep(0.2)
    assert requests.get(qwen_smol.base_url + "/status").json()["active_requests"] == 0


def test_qwen_down_and_gigachat_misconfigured(fake_gigachat, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = start_gateway(dead, fake_gigachat, tmp_path, GIGACHAT_CREDENTIALS=None)
    try:
        r = get(gw, "/qwen", q="hi")
        assert r.status_code == 503 and "QWEN_URL" in r.json()["error"]["message"]
        st = get(gw, "/qwen/status").json()
        assert st["online"] is False and dead in st["reason"]
        r = get(gw, "/gigachat", q="hi")
        assert r.status_code == 503 and "GIGACHAT_CREDENTIALS" in r.json()["error"]["message"]
        assert r.headers["x-should-retry"] == "false"  # the openai SDK would retry it twice
        r = get(gw, "/qwen", q="hi", stream=1)  # before any text: a real status, not a 200 stream
        assert r.status_code == 503
        rows = get(gw, "/history").json()["messages"]
        # Qwen's failures are saved (it may come back); GigaChat without a key is refused before anything is saved.
        assert [(m["provider"], m["status"]) for m in rows if m["role"] == "assistant"] == [("qwen", "error")] * 2
        assert get(gw, "/config").json()["providers"] == {"gigachat": {"configured": False},
                                                          "qwen": {"configured": True}, "auto": {"configured": True}}
    finally:
        stop_process(gw)


def test_wrong_gigachat_key_and_unknown_model(fake_gigachat, qwen_smol, tmp_path):
    gw = start_gateway(qwen_smol.base_url, fake_gigachat, tmp_path, GIGACHAT_CREDENTIALS="wrong-key")
    try:
        r = get(gw, "/gigachat", q="hi")
        assert r.status_code == 502 and "GIGACHAT_CREDENTIALS" in r.json()["error"]["message"]
    finally:
        stop_process(gw)
    gw = start_gateway(qwen_smol.base_url, fake_gigachat, tmp_path, GIGACHAT_MODEL="GigaChat-Ultra")
    try:
        r = get(gw, "/gigachat", q="hi")
        assert r.status_code in (400, 404, 502) and "GIGACHAT_MODEL" in r.json()["error"]["message"]
    finally:
        stop_process(gw)


def test_api_key_and_cors(qwen_smol, fake_gigachat, tmp_path):
    gw = start_gateway(qwen_smol.base_url, fake_gigachat, tmp_path, CHAT_API_KEY="s3cret",
                       CHAT_CORS_ORIGINS="http://app.example")
    try:
        assert get(gw, "/health").status_code == 200
        r = get(gw, "/history")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert requests.get(gw.base_url + "/history", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert requests.get(gw.base_url + "/history", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        r = requests.get(gw.base_url + "/gigachat?q=hi", headers={"X-API-Key": "s3cret",
                                                                  "Origin": "http://app.example"})
        assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "http://app.example"
        r = requests.get(gw.base_url + "/health", headers={"Origin": "http://evil.example"})
        assert "Access-Control-Allow-Origin" not in r.headers
        pre = requests.options(gw.base_url + "/qwen", headers={"Origin": "http://app.example",
                                                               "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "http://app.example"
    finally:
        stop_process(gw)


def test_long_conversation_is_trimmed_to_the_context(qwen_tiny, fake_gigachat, tmp_path):
    gw = start_gateway(qwen_tiny.base_url, fake_gigachat, tmp_path)
    try:
        sid = None
        for i in range(6):  # ~6 x 150 tokens of questions alone: far over the 512-token context
            params = {"q": f"question {i}: " + "lorem ipsum dolor sit amet " * 25, "max_tokens": 16}
            if sid:
                params["session"] = sid
            r = get(gw, "/qwen", **params)
            assert r.status_code == 200, r.text
            sid = r.json()["session"]
            assert r.json()["usage"]["prompt_tokens"] + 16 <= 512
    finally:
        stop_process(gw)


def test_gunicorn_16_clients_x_50_requests(qwen_smol, fake_gigachat, tmp_path):
    gw = start_gateway(qwen_smol.base_url, fake_gigachat, tmp_path, gunicorn_workers=4,
                       GIGACHAT_MAX_CONCURRENCY="8")
    statuses, errors = [], []

    def client(n):
        s, sid = requests.Session(), None
        try:
            for i in range(50):
                params = {"q": f"клиент {n} сообщение {i}"}
                if sid:
                    params["session"] = sid
                r = s.get(gw.base_url + "/gigachat", params=params, timeout=120)
                statuses.append(r.status_code)
                sid = r.json().get("session", sid)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert not errors and len(statuses) == 800 and set(statuses) == {200}
        for _ in range(6):  # each scrape on a new connection, so by whichever worker: all count everything
            text = requests.get(gw.base_url + "/metrics", headers={"Connection": "close"}, timeout=10).text
            lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line and not line.startswith("#")}
            assert lines['chat_http_requests_total{endpoint="/gigachat",method="GET",status="200"}'] == 800
            assert lines['chat_http_request_seconds_count{endpoint="/gigachat"}'] == 800
            assert lines["chat_active_streams"] == 0 and lines["chat_queue_length"] == 0
    finally:
        stop_process(gw)
    conn = sqlite3.connect(tmp_path / "history.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM conversations").fetchone()[0] == 16
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 1600
    for (sid,) in conn.execute("SELECT id FROM conversations"):
        rows = conn.execute("SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY id",
                            (sid,)).fetchall()
        n = rows[0][1].split()[1]
        assert [c for r, c in rows if r == "user"] == [f"клиент {n} сообщение {i}" for i in range(50)]
        assert [c for r, c in rows if r == "assistant"] == [f"Эхо: клиент {n} сообщение {i}" for i in range(50)]


def test_metrics_count_requests_tokens_and_streams(gw):
    get(gw, "/qwen", q="hi", max_tokens=3)
    sse_events(requests.get(gw.base_url + "/gigachat", params={"q": "a b", "stream": 1}, stream=True))
    text = get(gw, "/metrics").text
    assert 'chat_http_requests_total{endpoint="/qwen",method="GET",status="200"}' in text
    assert 'chat_http_request_seconds_bucket{endpoint="/gigachat"' in text
    qwen_tokens = [l for l in text.splitlines() if l.startswith('chat_tokens_generated_total{model="qwen"}')]
    assert qwen_tokens and float(qwen_tokens[0].split()[-1]) >= 3
    assert "chat_active_streams 0.0" in text and "chat_queue_length 0.0" in text
    assert 'chat_last_tokens_per_second{model="qwen"}' in text


def test_v1_model_name_selects_the_gigachat_model(gw, fake_gigachat):
    client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused")
    r = client.chat.completions.create(model="GigaChat-Pro", messages=[{"role": "user", "content": "модель"}])
    assert r.choices[0].message.content == "Эхо: модель"
    assert requests.get(fake_gigachat.base_url + "/_debug/last_request").json()["body"]["model"] == "GigaChat-Pro"


def test_v1_unknown_gigachat_model_and_bad_session_header(gw):
    client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused")
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="GigaChat-Nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    r = requests.post(gw.base_url + "/v1/chat/completions", headers={"X-Session-ID": "a/b"},
                      json={"model": "gigachat", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_session_id"


def closed_connections_to(port):
    """TCP connections to or from `port` in TIME_WAIT: one per connection that was closed, for a minute."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for r in rows if r[3] == "06" and port in (int(r[1].split(":")[1], 16), int(r[2].split(":")[1], 16)))


def test_qwen_upstream_that_keeps_connections_alive(qwen_smol, fake_gigachat, tmp_path):
    """QWEN_URL pointing at another OpenAI-compatible server, one that keeps connections alive (this
    gateway under gunicorn, in front of qwen_server): whole and streamed answers in a row reuse one
    pooled connection, each answer intact; a client that hangs up still cancels the generation."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    front = start_gateway(qwen_smol.base_url, fake_gigachat, tmp_path / "a", gunicorn_workers=1)
    gw = start_gateway(front.base_url, fake_gigachat, tmp_path / "b")
    port = int(front.base_url.rsplit(":", 1)[1])
    try:
        assert get(gw, "/qwen/status").json()["online"] is True
        closed_before = closed_connections_to(port)
        for i in range(3):
            q = {"q": f"Name a colour. Question {i}.", "temperature": 0, "max_tokens": 6}
            whole = get(gw, "/qwen", **q)
            assert whole.status_code == 200, whole.text
            ev = sse_events(requests.get(gw.base_url + "/qwen", params={**q, "stream": 1}, stream=True))
            assert ev[-1]["type"] == "done"
            assert "".join(e["text"] for e in ev if e["type"] == "delta") == whole.json()["answer"]
        assert closed_connections_to(port) - closed_before <= 1  # not one connection a request
        cut = requests.get(gw.base_url + "/qwen", params={"q": "Count from 1 to 500, one number per line.",
                                                          "temperature": 0, "max_tokens": 1000, "stream": 1},
                           stream=True)
        next(line for line in cut.iter_lines() if b'"delta"' in line)
        cut.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            last = get(front, "/history", limit=1).json()["messages"][0]
            if last["role"] == "assistant" and last["status"] != "ok":
                break
            time.sleep(0.2)
        assert last["status"] == "cancelled"  # the front server saw the hang-up pass through
    finally:
        stop_process(gw)
        stop_process(front)
