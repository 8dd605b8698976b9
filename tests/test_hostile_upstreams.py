"""Upstreams that answer what they should not (tests/fake_qwen.py's hostile replies): an odd /status or
/v1/models marks the upstream unhealthy with a reason and the poller goes on (it rejoins once the replies
are sane again); a 200 that is no JSON, or a tool call numbered a million, is a 502 that counts against the
upstream, never a gateway 500; a saved answer is bounded, and its row says when it was cut; a 4xx from an
upstream goes back to the client unchanged, with no retry and no count against anyone."""
import json
import sqlite3
import time

import pytest
import requests

from test_upstreams import fakes, gateway_on, upstream_view  # noqa: F401 - fixtures

JSON = "application/json"
ASK = {"model": "qwen", "messages": [{"role": "user", "content": "hello"}]}


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def chat(gw, timeout=30, **over):
    return requests.post(gw.base_url + "/v1/chat/completions", json={**ASK, **over}, timeout=timeout)


def answer_row(db_dir, sid):
    conn = sqlite3.connect(db_dir / "history.db")
    try:
        return conn.execute("SELECT content, status, error FROM messages WHERE conversation_id = ? AND "
                            "role = 'assistant'", (sid,)).fetchone()
    finally:
        conn.close()


ODD_STATUS = [b"[1, 2]", b"null", b'{"queue_length": "lots", "max_seq_len": 512}', b'{"max_seq_len": "big"}']


@pytest.mark.parametrize("body", ODD_STATUS, ids=["list", "null", "queue-lots", "context-big"])
def test_odd_status_marks_the_upstream_unhealthy_and_polling_goes_on(fakes, gateway_on, body):
    odd, good = fakes(2)
    odd.replies["/status"] = (200, JSON, body)  # from the very first poll
    gw = gateway_on(odd, good)
    t0 = time.monotonic()
    r = requests.get(gw.base_url + "/qwen/status", timeout=10)
    assert r.status_code == 200 and time.monotonic() - t0 < 3  # the first poll ended (no 5 s wait)
    view = wait_for(lambda: (v := upstream_view(gw, odd)) and not v["healthy"] and v)
    assert "odd reply" in view["down_reason"] and "/status" in view["down_reason"]
    for _ in range(3):  # requests go to the sane one meanwhile
        assert chat(gw).status_code == 200
    del odd.replies["/status"]
    wait_for(lambda: upstream_view(gw, odd)["healthy"])  # still polled: it rejoins


def test_odd_model_list_marks_the_upstream_unhealthy_until_it_is_sane(fakes, gateway_on):
    odd, good = fakes(2)
    odd.replies["/v1/models"] = (200, JSON, b'{"object": "list", "data": ["a"]}')
    gw = gateway_on(odd, good)
    view = wait_for(lambda: (v := upstream_view(gw, odd)) and not v["healthy"] and v)
    assert "/v1/models" in view["down_reason"]
    assert requests.get(gw.base_url + "/v1/models", timeout=10).status_code == 200
    del odd.replies["/v1/models"]
    view = wait_for(lambda: (v := upstream_view(gw, odd)) and v["healthy"] and v)
    assert view["models"] == ["qwen-fake"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_200_in_html_is_a_502_that_counts_against_the_upstream(fakes, gateway_on, stream):
    bad, = fakes(1)
    bad.replies["/v1/chat/completions"] = (200, "text/html", b"<html><body>502 Bad Gateway</body></html>")
    gw = gateway_on(bad)  # one upstream: the plain client
    r = chat(gw, stream=stream)
    assert r.status_code == 502, r.text[:300]
    assert r.json()["error"]["code"] == "qwen_bad_answer" and r.json()["error"]["type"] == "upstream_error"


def test_garbage_on_one_upstream_is_retried_on_the_next_and_takes_it_out(fakes, gateway_on):
    bad, good = fakes(2)
    for u in (bad, good):
        u.replies["/v1/chat/completions"] = (200, JSON, b'{"choices": "none"}')
    gw = gateway_on(bad, good)
    wait_for(lambda: all(upstream_view(gw, u)["healthy"] for u in (bad, good)))
    del good.replies["/v1/chat/completions"]
    for _ in range(2):
        assert chat(gw).status_code == 200
    assert upstream_view(gw, bad)["errors"] >= 1 and upstream_view(gw, good)["errors"] == 0


def tool_delta(index, args="{}"):
    return {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": index, "id": f"call_{index}", "type": "function", "function": {"name": "f", "arguments": args}}]}}]}


def test_a_tool_call_numbered_a_million_is_refused_quickly_and_saved_small(fakes, gateway_on, tmp_path):
    bad, = fakes(1)
    bad.stream_script = [{"choices": [{"index": 0, "delta": {"content": "Calling"}}]}, tool_delta(0),
                         tool_delta(1_000_000)]
    gw = gateway_on(bad)
    t0 = time.monotonic()
    r = chat(gw, stream=True)
    body = r.text
    assert time.monotonic() - t0 < 5
    assert r.status_code == 200 and "qwen_bad_answer" in body and "tool_calls index" in body
    content, status, error = answer_row(tmp_path, r.headers["X-Session-ID"])
    assert status == "error" and "tool_calls index" in error
    assert len(content) < 1000 and content.startswith("Calling")


def test_a_huge_answer_is_cut_in_history_and_the_row_says_so(fakes, gateway_on, tmp_path):
    bad, = fakes(1)
    piece = "я" * 100_000
    bad.stream_script = [{"choices": [{"index": 0, "delta": {"content": piece}}]} for _ in range(12)] + [
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    gw = gateway_on(bad)
    r = chat(gw, stream=True)
    assert r.status_code == 200 and r.text.count("я") == 1_200_000  # the client gets all of it
    content, status, error = answer_row(tmp_path, r.headers["X-Session-ID"])
    assert status == "ok" and len(content) == 1 << 20 and set(content) == {"я"}
    assert "cut to its first 1048576 characters of 1200000" in error


def test_an_upstream_4xx_goes_back_unchanged_without_retry_or_count(fakes, gateway_on):
    a, b = fakes(2)
    err = {"error": {"message": "'tool_choice' must be none, auto...", "type": "invalid_request_error",
                     "code": "invalid_parameter", "param": "tool_choice"}}
    for u in (a, b):
        u.replies["/v1/chat/completions"] = (400, JSON, json.dumps(err).encode())
    gw = gateway_on(a, b)
    wait_for(lambda: all(upstream_view(gw, u)["healthy"] for u in (a, b)))
    for _ in range(3):
        r = chat(gw)
        assert r.status_code == 400 and r.json() == err
    assert len(a.requests) + len(b.requests) == 3  # no retries
    assert all(upstream_view(gw, u)["healthy"] and upstream_view(gw, u)["errors"] == 0 for u in (a, b))
