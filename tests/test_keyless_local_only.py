"""Keyless means local only. A page on another site cannot make the gateway ask a model or save
(browsers mark its requests `Sec-Fetch-Site: cross-site`/`same-site`, or send its `Origin`): 403
`cross_site_request`, nothing sent upstream, nothing saved; a URL typed in the address bar, curl,
SDKs, the page itself and an origin listed in CHAT_CORS_ORIGINS go through, and reads stay open.
With a key, /config needs it like every endpoint but /health and the page shell.
(The same attack from a real page in Chromium: tests/test_web_page.py.)"""
import pytest
import requests

from conftest import start_gateway
from helpers import stop_process

ALLOWED_ORIGIN = "http://app.example"
IMG = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}


@pytest.fixture(scope="module")
def gw(qwen, fake_gigachat, tmp_path_factory):
    proc = start_gateway(qwen.base_url, fake_gigachat, tmp_path_factory.mktemp("keyless"),
                         CHAT_CORS_ORIGINS=ALLOWED_ORIGIN)
    yield proc
    stop_process(proc)


def gigachat_calls(fake):
    return requests.get(fake.base_url + "/_debug/stats", timeout=5).json()["chat_calls"]


def saved(gw):
    return [m["content"] for m in requests.get(gw.base_url + "/history", timeout=10).json()["messages"]]


@pytest.mark.parametrize("method, path, headers, body", [
    ("GET", "/gigachat?q=img", IMG, None),  # <img src=".../gigachat?q=...">
    ("GET", "/qwen?q=nocors", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}, None),
    ("HEAD", "/gigachat?q=head", IMG, None),
    ("GET", "/ask?q=auto", IMG, None),  # model "auto"
    ("GET", "/qwen?q=sibling", {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate"}, None),  # a link
    ("POST", "/v1/chat/completions", {"Origin": "http://evil.example"},
     {"model": "gigachat", "messages": [{"role": "user", "content": "post"}]}),
    ("POST", "/gigachat", {"Origin": "null", "Sec-Fetch-Site": "cross-site"}, {"q": "sandboxed"}),
    ("POST", "/v1/completions", {"Origin": "http://127.0.0.1:1"}, {"model": "qwen", "prompt": "other port"}),
])
def test_another_sites_page_cannot_make_it_ask_or_save(gw, qwen, fake_gigachat, method, path, headers, body):
    calls, asked, before = gigachat_calls(fake_gigachat), len(qwen.requests), saved(gw)
    r = requests.request(method, gw.base_url + path, headers=headers, json=body, timeout=30)
    assert r.status_code == 403, r.text
    if method != "HEAD":
        err = r.json()["error"]
        assert err["code"] == "cross_site_request" and "CHAT_CORS_ORIGINS" in err["message"]
    assert gigachat_calls(fake_gigachat) == calls and len(qwen.requests) == asked
    assert saved(gw) == before


def test_another_sites_page_cannot_delete_history(gw):
    sid = requests.get(gw.base_url + "/gigachat", params={"q": "моё"}, timeout=30).json()["session"]
    r = requests.delete(gw.base_url + f"/history/{sid}", headers={"Origin": "http://evil.example"}, timeout=10)
    assert r.status_code == 403, r.text
    assert requests.get(gw.base_url + f"/history/{sid}", timeout=10).status_code == 200


@pytest.mark.parametrize("headers", [
    {},  # curl, SDKs
    {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"},  # a URL typed in the address bar
    {"Sec-Fetch-Site": "same-origin", "Origin": "SELF"},  # the page itself
    {"Sec-Fetch-Site": "same-origin", "Origin": "https://chat.example:8443"},  # it, behind a proxy
    {"Origin": "SELF"},  # a browser without Sec-Fetch-*
    {"Sec-Fetch-Site": "cross-site", "Origin": ALLOWED_ORIGIN},  # an app listed in CHAT_CORS_ORIGINS
])
def test_local_clients_the_page_and_listed_origins_still_ask(gw, headers):
    headers = {k: gw.base_url if v == "SELF" else v for k, v in headers.items()}
    r = requests.get(gw.base_url + "/gigachat", params={"q": "привет"}, headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["answer"] == "Эхо: привет", r.text
    r = requests.post(gw.base_url + "/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": "gigachat", "messages": [{"role": "user", "content": "и ещё"}]})
    assert r.status_code == 200, r.text


def test_reads_from_another_site_are_not_refused(gw):
    # (the browser keeps their bodies from that page: no CORS header for an origin not listed)
    for path in ("/history", "/health", "/"):
        r = requests.get(gw.base_url + path, headers=IMG, timeout=10)
        assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


def test_config_needs_the_key_when_one_is_set(qwen, fake_gigachat, tmp_path):
    gw = start_gateway(qwen.base_url, fake_gigachat, tmp_path, CHAT_API_KEY="s3cret",
                       DEFAULT_SYSTEM_PROMPT="Ты помощник Ивана из бухгалтерии.")
    try:
        r = requests.get(gw.base_url + "/config", timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
        assert "Ивана" not in r.text
        r = requests.get(gw.base_url + "/config", headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert r.status_code == 200 and r.json()["default_system_prompt"] == "Ты помощник Ивана из бухгалтерии."
        for public in ("/health", "/"):
            assert requests.get(gw.base_url + public, timeout=10).status_code == 200
    finally:
        stop_process(gw)
