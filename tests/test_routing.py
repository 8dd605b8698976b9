"""Model "auto" end to end (gateway/routing.py): the gateway, the fake GigaChat driven through the real
gigachat SDK, and a fake Qwen server (tests/fake_qwen.py, which can fail on demand), each on 127.0.0.1.
Every route (code, general, private), every fallback (GigaChat not configured, unreachable, 402, 429, 5xx;
Qwen down), and that GigaChat's side never receives a secret (the fake GigaChat's request log)."""
import os
import subprocess
import time

import pytest
import requests

from conftest import CLEAN_ENV, start_gateway
from helpers import PYTHON, REPO_ROOT, free_port, http, sse_events, stop_process

CODE_Q = "How do I reverse a list in Python?"
GENERAL_Q = "Какая столица Канады?"
AWS_KEY = "AKIAZ3MQ7T5XJ2K8LP4Q"
PASSWORD = "Marina1987!"
SECRET_Q = f"Мой пароль от госуслуг {PASSWORD} — надёжный ли он?"
DEAD = f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture(scope="module")
def gw(qwen, fake_gigachat, tmp_path_factory):
    proc = start_gateway(qwen.base_url, fake_gigachat, tmp_path_factory.mktemp("auto"))
    yield proc
    stop_process(proc)


@pytest.fixture(autouse=True)
def clean(fake_gigachat, qwen):
    http("POST", fake_gigachat.base_url + "/_control", {"reset": True})
    qwen.fail_status = None
    yield
    qwen.fail_status = None


def ask(gw, q, **body):
    r = requests.post(gw.base_url + "/ask", json={"q": q, **body}, timeout=30)
    return r, r.json()


def gigachat_saw(fake):
    """Everything the fake GigaChat was sent since the last reset, as text."""
    return str(http("GET", fake.base_url + "/_debug/requests")[2])


def test_code_goes_to_qwen_and_general_to_gigachat(gw, fake_gigachat):
    r, a = ask(gw, CODE_Q)
    assert r.status_code == 200 and r.headers["X-Routed-To"] == "qwen"
    assert a["provider"] == "qwen" and a["route"] == "code" and a["answer"] == f"Эхо: {CODE_Q}"
    r, a = ask(gw, GENERAL_Q)
    assert r.headers["X-Routed-To"] == "gigachat" and (a["provider"], a["route"]) == ("gigachat", "general")
    assert a["answer"] == f"Эхо: {GENERAL_Q}" and a["model"].startswith("GigaChat")
    r = requests.get(gw.base_url + "/ask", params={"q": "Как в bash проверить, существует ли файл?"}, timeout=30)
    assert r.json()["route"] == "code" and r.headers["X-Routed-To"] == "qwen"


def test_history_keeps_provider_and_route(gw):
    _, a = ask(gw, GENERAL_Q)
    msgs = requests.get(f"{gw.base_url}/history/{a['session']}", timeout=10).json()["messages"]
    assert [(m["role"], m["provider"], m["route"]) for m in msgs] == [("user", "gigachat", "general"),
                                                                       ("assistant", "gigachat", "general")]
    _, b = ask(gw, CODE_Q, session=a["session"])  # the next turn is routed on its own
    msgs = requests.get(f"{gw.base_url}/history/{a['session']}", timeout=10).json()["messages"]
    assert (msgs[-1]["provider"], msgs[-1]["route"]) == ("qwen", "code") and b["session"] == a["session"]
    explicit = requests.post(gw.base_url + "/qwen", json={"q": GENERAL_Q}, timeout=30).json()
    assert explicit["route"] is None and explicit["provider"] == "qwen"  # the client chose: no route


def test_stream_events_carry_provider_and_route(gw):
    r = requests.post(gw.base_url + "/ask", json={"q": CODE_Q, "stream": True}, stream=True, timeout=30)
    ev = sse_events(r)
    assert r.headers["X-Routed-To"] == "qwen"
    assert (ev[0]["type"], ev[0]["provider"], ev[0]["route"]) == ("start", "qwen", "code")
    assert (ev[-1]["type"], ev[-1]["provider"], ev[-1]["route"]) == ("done", "qwen", "code")
    assert "".join(e["text"] for e in ev if e["type"] == "delta") == f"Эхо: {CODE_Q}"


def test_a_secret_stays_local_and_so_does_its_conversation(gw, fake_gigachat, qwen):
    r, a = ask(gw, SECRET_Q)
    assert (a["provider"], a["route"], r.headers["X-Routed-To"]) == ("qwen", "private", "qwen")
    # A general follow-up in that conversation would go to GigaChat on its own: it stays local.
    _, b = ask(gw, "А какая столица Канады?", session=a["session"])
    assert (b["provider"], b["route"]) == ("qwen", "private")
    # ... even when the turn with the secret is no longer sent (only a later turn is asked about)
    _, c = ask(gw, GENERAL_Q, session=a["session"], system="Отвечай кратко.")
    assert c["route"] == "private"
    s = requests.Session()
    v1 = s.post(gw.base_url + "/v1/chat/completions", timeout=30, json={"model": "auto", "messages": [
        {"role": "user", "content": f"aws_access_key_id = {AWS_KEY}"}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "Write a poem about autumn."}]})
    assert v1.status_code == 200 and v1.json()["route"] == "private" and v1.headers["X-Routed-To"] == "qwen"
    # The client sends the conversation itself, without the turn that held the secret: still local.
    v1 = s.post(gw.base_url + "/v1/chat/completions", headers={"X-Session-ID": a["session"]}, timeout=30,
                json={"model": "auto", "messages": [{"role": "user", "content": "Write a poem about autumn."}]})
    assert v1.json()["route"] == "private" and v1.json()["provider"] == "qwen"
    g = s.post(gw.base_url + "/v1/chat/completions", headers={"X-Session-ID": a["session"]}, timeout=30,
               json={"model": "gigachat", "messages": [{"role": "user", "content": "Write a poem."}]})
    assert g.status_code == 400 and g.json()["error"]["code"] == "secret_in_request"  # nor by asking GigaChat
    fresh = s.post(gw.base_url + "/v1/chat/completions", timeout=30,
                   json={"model": "auto", "messages": [{"role": "user", "content": "Write a poem about autumn."}]})
    assert fresh.json()["route"] == "general"  # (the same question in a new conversation)
    seen = gigachat_saw(fake_gigachat)
    assert PASSWORD not in seen and AWS_KEY not in seen and "Канады" not in seen  # nothing of it went out
    assert any(PASSWORD in str(req["messages"]) for req in qwen.requests)  # (the local model got it)


def test_routes_are_kept_on_postgresql_too(qwen, fake_gigachat, postgres, tmp_path):
    proc = start_gateway(qwen.base_url, fake_gigachat, tmp_path, CHAT_DB=postgres.new_database())
    try:
        _, a = ask(proc, SECRET_Q)
        _, b = ask(proc, GENERAL_Q, session=a["session"])  # kept local: the conversation was private
        _, c = ask(proc, GENERAL_Q)
        assert (a["route"], b["route"], c["route"]) == ("private", "private", "general")
        msgs = requests.get(f"{proc.base_url}/history/{a['session']}", timeout=10).json()["messages"]
        assert [m["route"] for m in msgs] == ["private"] * 4
    finally:
        stop_process(proc)


def test_explicit_gigachat_with_a_secret_is_refused(gw, fake_gigachat):
    r = requests.post(gw.base_url + "/gigachat", json={"q": SECRET_Q}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "secret_in_request"
    assert "auto" in r.json()["error"]["message"] and PASSWORD not in r.text  # says why, not the secret
    r = requests.post(gw.base_url + "/v1/chat/completions", timeout=30, json={
        "model": "gigachat", "messages": [{"role": "system", "content": f"ключ {AWS_KEY}"},
                                          {"role": "user", "content": "Привет"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "secret_in_request"
    assert PASSWORD not in gigachat_saw(fake_gigachat) and AWS_KEY not in gigachat_saw(fake_gigachat)


@pytest.mark.parametrize("fault, route", [
    ("402", "fallback: gigachat out of tokens (402)"),
    ("429=2", "fallback: gigachat rate-limited (429)"),
    ("500", "fallback: gigachat failing (5xx)"),
    ("503", "fallback: gigachat failing (5xx)"),
])
def test_gigachat_failures_fall_back_to_qwen(gw, fake_gigachat, fault, route):
    for stream in (False, True):
        http("POST", fake_gigachat.base_url + "/_control", {"next": [fault]})
        r = requests.post(gw.base_url + "/ask", json={"q": GENERAL_Q, "stream": stream}, stream=stream, timeout=30)
        assert r.status_code == 200 and r.headers["X-Routed-To"] == "qwen"
        if stream:
            ev = sse_events(r)
            assert (ev[0]["provider"], ev[0]["route"]) == ("qwen", route) and ev[-1]["type"] == "done"
            sid = ev[0]["session"]
        else:
            assert (r.json()["provider"], r.json()["route"]) == ("qwen", route)
            assert r.json()["answer"] == f"Эхо: {GENERAL_Q}"
            sid = r.json()["session"]
        msgs = requests.get(f"{gw.base_url}/history/{sid}", timeout=10).json()["messages"]
        # both rows name the model that answered and why: the question was saved before GigaChat failed
        assert [(m["role"], m["provider"], m["route"], m["status"]) for m in msgs] == [
            ("user", "qwen", route, "ok"), ("assistant", "qwen", route, "ok")]


def test_a_client_that_left_gets_no_fallback(gw, fake_gigachat, qwen):
    """GigaChat fails after the client hung up: Qwen is not asked on its behalf, and the exchange is saved
    as cancelled."""
    http("POST", fake_gigachat.base_url + "/_control", {"next": ["slow=1.5,500"]})
    asked_before = len(qwen.requests)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(gw.base_url + "/ask", json={"q": "Hung up on " + GENERAL_Q}, timeout=0.5)
    (question,) = requests.get(gw.base_url + "/history", params={"q": "Hung"}, timeout=10).json()["messages"]
    for _ in range(50):
        rows = requests.get(f"{gw.base_url}/history/{question['session']}", timeout=10).json()["messages"]
        if len(rows) == 2:
            break
        time.sleep(0.1)
    assert [(m["role"], m["status"], m["provider"]) for m in rows] == [("user", "ok", "gigachat"),
                                                                         ("assistant", "cancelled", "gigachat")]
    assert len(qwen.requests) == asked_before


def test_qwen_down_general_questions_go_to_gigachat_private_ones_get_503(gw, fake_gigachat, qwen):
    qwen.fail_status = 503
    r, a = ask(gw, CODE_Q)
    assert r.status_code == 200 and (a["provider"], a["route"]) == ("gigachat", "fallback: qwen unavailable")
    r = requests.post(gw.base_url + "/ask", json={"q": CODE_Q, "stream": 1}, stream=True, timeout=30)
    ev = sse_events(r)
    assert r.headers["X-Routed-To"] == "gigachat" and ev[0]["route"] == ev[-1]["route"] == "fallback: qwen unavailable"
    http("POST", fake_gigachat.base_url + "/_control", {"next": ["402"]})  # both fail: the fallback's error
    r, a = ask(gw, CODE_Q)
    assert r.status_code == 402 and a["error"]["code"] == "gigachat_quota_exceeded"
    r, a = ask(gw, SECRET_Q)
    assert r.status_code == 503 and a["error"]["code"] == "private_needs_local_model"
    assert "privacy" in a["error"]["message"] and "not sent to GigaChat" in a["error"]["message"]
    assert PASSWORD not in gigachat_saw(fake_gigachat)


def test_v1_auto_and_completions(gw):
    c = openai_client(gw)
    r = c.chat.completions.with_raw_response.create(model="auto", messages=[
        {"role": "user", "content": "Traceback (most recent call last):\n  File \"a.py\", line 1\nKeyError: 'x'"}])
    assert r.headers["X-Routed-To"] == "qwen" and r.parse().choices[0].message.content.startswith("Эхо:")
    r = requests.post(gw.base_url + "/v1/chat/completions", timeout=30,
                      json={"model": "auto", "messages": [{"role": "user", "content": GENERAL_Q}]})
    assert r.headers["X-Routed-To"] == "gigachat" and r.json()["route"] == "general"
    assert "auto" in [m.id for m in c.models.list().data]


def test_auto_with_the_real_model(gateway):
    """The session's gateway on the real SmolLM2: /v1/completions with model auto always asks Qwen."""
    r = requests.post(gateway.base_url + "/v1/completions", timeout=120,
                      json={"model": "auto", "prompt": "Напиши стих про осень", "max_tokens": 8})
    assert r.status_code == 200 and r.headers["X-Routed-To"] == "qwen" and r.json()["route"] == "code"
    assert r.json()["choices"][0]["text"]
    r = requests.post(gateway.base_url + "/ask", json={"q": "Write a Python function that adds two numbers.",
                                                       "max_tokens": 16, "temperature": 0}, timeout=120)
    assert r.status_code == 200 and (r.json()["provider"], r.json()["route"]) == ("qwen", "code")
    assert r.json()["model"] == "smollm2-135m-instruct" and r.json()["answer"]


def openai_client(gw):
    import openai
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key="none", max_retries=0)


def test_metrics_count_routes_and_config_offers_auto(gw, fake_gigachat):
    ask(gw, CODE_Q)
    http("POST", fake_gigachat.base_url + "/_control", {"next": ["402"]})
    ask(gw, GENERAL_Q)
    text = requests.get(gw.base_url + "/metrics", timeout=10).text
    assert 'chat_routes_total{provider="qwen",route="code"}' in text
    assert 'chat_routes_total{provider="qwen",route="fallback: gigachat out of tokens (402)"}' in text
    config = requests.get(gw.base_url + "/config", timeout=10).json()
    assert config["providers"]["auto"] == {"configured": True} and config["default_provider"] == "auto"


def test_cli_ask_without_a_model_uses_auto(gw):
    env = dict(os.environ, **{k: v for k, v in CLEAN_ENV.items() if v is not None}, CHAT_URL=gw.base_url)
    out = subprocess.run([PYTHON, os.path.join(REPO_ROOT, "chat.py"), "ask", CODE_Q], env=env, cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"Эхо: {CODE_Q}" and "[qwen: code]" in out.stderr


@pytest.fixture(scope="module")
def gw_no_gigachat(qwen, fake_gigachat, tmp_path_factory):
    proc = start_gateway(qwen.base_url, fake_gigachat, tmp_path_factory.mktemp("nogc"), GIGACHAT_CREDENTIALS=None)
    yield proc
    stop_process(proc)


def test_gigachat_not_configured_falls_back_to_qwen(gw_no_gigachat):
    r, a = ask(gw_no_gigachat, GENERAL_Q)
    assert r.status_code == 200 and (a["provider"], a["route"]) == ("qwen", "fallback: gigachat not configured")
    config = requests.get(gw_no_gigachat.base_url + "/config", timeout=10).json()
    assert config["providers"]["gigachat"]["configured"] is False and config["default_provider"] == "auto"


@pytest.fixture(scope="module")
def gw_gigachat_unreachable(qwen, fake_gigachat, tmp_path_factory):
    proc = start_gateway(qwen.base_url, fake_gigachat, tmp_path_factory.mktemp("gcdead"),
                         GIGACHAT_BASE_URL=DEAD + "/api/v1", GIGACHAT_AUTH_URL=DEAD + "/api/v2/oauth",
                         CHAT_SECRETS_TO_GIGACHAT="allow")
    yield proc
    stop_process(proc)


def test_gigachat_unreachable_falls_back_to_qwen(gw_gigachat_unreachable):
    for stream in (False, True):
        r = requests.post(gw_gigachat_unreachable.base_url + "/ask", json={"q": GENERAL_Q, "stream": stream},
                          timeout=30)
        assert r.status_code == 200 and r.headers["X-Routed-To"] == "qwen"
        assert "fallback: gigachat unreachable" in r.text
    # CHAT_SECRETS_TO_GIGACHAT=allow: an explicit request with a secret is sent (and fails on the network)
    r = requests.post(gw_gigachat_unreachable.base_url + "/gigachat", json={"q": SECRET_Q}, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "gigachat_unreachable"


@pytest.fixture(scope="module")
def gw_qwen_dead(fake_gigachat, tmp_path_factory):
    proc = start_gateway(DEAD, fake_gigachat, tmp_path_factory.mktemp("qdead"), CHAT_SECRETS_TO_GIGACHAT="redact")
    yield proc
    stop_process(proc)


def test_qwen_unreachable(gw_qwen_dead, fake_gigachat):
    r, a = ask(gw_qwen_dead, CODE_Q, stream=False)
    assert r.status_code == 200 and (a["provider"], a["route"]) == ("gigachat", "fallback: qwen unavailable")
    r, a = ask(gw_qwen_dead, SECRET_Q)
    assert r.status_code == 503 and a["error"]["code"] == "private_needs_local_model"
    assert "not reachable" in a["error"]["message"] and PASSWORD not in gigachat_saw(fake_gigachat)


def test_redact_policy_masks_secrets_for_an_explicit_gigachat_request(gw_qwen_dead, fake_gigachat):
    r = requests.post(gw_qwen_dead.base_url + "/gigachat", json={"q": SECRET_Q}, timeout=30)
    assert r.status_code == 200 and r.json()["answer"] == "Эхо: Мой пароль от госуслуг [REDACTED] — надёжный ли он?"
    assert PASSWORD not in gigachat_saw(fake_gigachat)
    sid = r.json()["session"]  # history, which is local, keeps the question as asked
    assert requests.get(f"{gw_qwen_dead.base_url}/history/{sid}", timeout=10).json()["messages"][0]["content"] \
        == SECRET_Q

