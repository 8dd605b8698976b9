"""A request that gets a 400 saves nothing: neither the gateway's own refusals (checked before the
question is saved) nor an upstream's refusal of the request before any answer (the question saved
for it is removed again, with a conversation it started), streamed or not, on /gigachat, /v1 chat
and /v1/completions (a prompt past the Qwen model's context)."""
import sqlite3

import pytest
import requests

from conftest import start_gateway
from helpers import stop_process


@pytest.fixture(scope="module")
def gw(qwen_tiny, fake_gigachat, tmp_path_factory):
    path = tmp_path_factory.mktemp("refused")
    proc = start_gateway(qwen_tiny.base_url, fake_gigachat, path)
    proc.db_path = str(path / "history.db")
    yield proc
    stop_process(proc)


def counts(path):
    conn = sqlite3.connect(path)
    try:
        return [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("conversations", "messages", "fts_pending")]
    finally:
        conn.close()


def test_a_prompt_past_the_context_on_v1_completions_saves_nothing(gw):
    before = counts(gw.db_path)
    for stream in (False, True):
        r = requests.post(gw.base_url + "/v1/completions", timeout=120,
                          json={"model": "qwen", "prompt": "word " * 204_000, "stream": stream})  # 1,020,000 chars
        assert r.status_code == 400, r.text
        assert counts(gw.db_path) == before


def test_an_upstream_refusal_saves_nothing_but_keeps_the_conversation_it_joined(gw):
    before = counts(gw.db_path)
    for stream in ("0", "1"):
        r = requests.get(gw.base_url + "/gigachat", params={"q": "[[fault:400]] плохо", "stream": stream}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "gigachat_invalid_request", r.text
    assert counts(gw.db_path) == before
    r = requests.get(gw.base_url + "/gigachat", params={"q": "хорошо"}, timeout=30)
    sid = r.json()["session"]
    kept = counts(gw.db_path)
    r = requests.post(gw.base_url + "/v1/chat/completions", headers={"X-Session-ID": sid}, timeout=30,
                      json={"model": "gigachat", "messages": [{"role": "user", "content": "[[fault:422]] нет"}]})
    assert r.status_code == 400, r.text
    assert counts(gw.db_path) == kept
    history = requests.get(gw.base_url + f"/history/{sid}", timeout=10).json()
    assert [m["content"] for m in history["messages"]] == ["хорошо", "Эхо: хорошо"]


def test_the_gateways_own_refusal_saves_nothing(gw):
    before = counts(gw.db_path)
    r = requests.post(gw.base_url + "/v1/completions", json={"model": "qwen", "prompt": "x", "max_tokens": -1},
                      timeout=30)
    assert r.status_code == 400, r.text
    r = requests.post(gw.base_url + "/v1/chat/completions", timeout=30,
                      json={"model": "qwen", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"})
    assert r.status_code == 400, r.text
    assert counts(gw.db_path) == before
