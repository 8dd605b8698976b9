"""GigaChatProvider against tests/fake_gigachat.py, through the real gigachat SDK (no mocks)."""
import os
import shutil
import subprocess
import threading
import time

import pytest
from gigachat.context import session_id_cvar

from common.api_common import ApiError
from gateway.settings import GatewaySettings
from helpers import free_port, http, start_fake_gigachat, stop_process
from providers import UpstreamRequest
from providers.gigachat import GigaChatProvider

USER = [{"role": "user", "content": "Привет, мир! Как дела?"}]


class Fake:
    def __init__(self, proc):
        self.proc, self.url = proc, proc.base_url

    def control(self, **cmd):
        return http("POST", self.url + "/_control", cmd)[2]

    def stats(self):
        return http("GET", self.url + "/_debug/stats")[2]

    def last_request(self):
        return http("GET", self.url + "/_debug/last_request")[2]


def _fake(*args):
    proc = start_fake_gigachat(*args)
    try:
        yield Fake(proc)
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def fake():
    yield from _fake()


@pytest.fixture
def provider(fake, monkeypatch):
    """provider(**env) -> a GigaChatProvider on the fake; env values override, None removes."""
    for k in list(os.environ):
        if k.startswith("GIGACHAT_") or k.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(k)
    fake.control(reset=True)

    def make(url=None, **env):
        url = url or fake.url
        values = {"GIGACHAT_CREDENTIALS": "good-key", "GIGACHAT_BASE_URL": url + "/api/v1",
                  "GIGACHAT_AUTH_URL": url + "/api/v2/oauth", "GIGACHAT_VERIFY_SSL_CERTS": "false",
                  "GIGACHAT_TIMEOUT": "5", **env}
        for k, v in values.items():
            if v is None:
                monkeypatch.delenv(k, raising=False)
            else:
                monkeypatch.setenv(k, str(v))
        return GigaChatProvider(**GatewaySettings().gigachat_options())  # (GIGACHAT_MODEL... as the gateway reads them)
    return make


def say(text, history=()):
    return [*history, {"role": "user", "content": text}]


def raises(fn, *args, **kwargs):
    with pytest.raises(ApiError) as info:
        fn(*args, **kwargs)
    return info.value


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def drain(gen):
    """(deltas text, final dict, ApiError or None) of a stream."""
    text, final = [], None
    try:
        for item in gen:
            if "delta" in item:
                text.append(item["delta"])
            else:
                final = item
    except ApiError as e:
        return "".join(text), final, e
    return "".join(text), final, None


# ---- happy paths -------------------------------------------------------------------------------
def test_complete_echoes_through_sdk(provider, fake):
    out = provider().complete(UpstreamRequest(USER, {"temperature": 0.7, "top_p": 0.9}))
    assert out["answer"] == "Эхо: Привет, мир! Как дела?"
    assert out["finish_reason"] == "stop" and out["blocked"] is False
    assert out["model"].startswith("GigaChat:")  # the versioned name GigaChat reports
    assert set(out["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens", "precached_prompt_tokens"}
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"] > 0
    req = fake.last_request()
    assert req["path"] == "/api/v1/chat/completions"
    assert req["headers"]["Authorization"].startswith("Bearer fake-")
    assert req["body"]["model"] == "GigaChat" and "stream" not in req["body"]


def test_stream_deltas_join_to_the_answer(provider, fake):
    p = provider()
    deltas, final_items = [], []
    for item in p.stream(UpstreamRequest(USER, {})):
        (deltas if "delta" in item else final_items).append(item)
    assert len(deltas) >= 4  # word by word, not one blob
    assert "".join(d["delta"] for d in deltas) == p.complete(UpstreamRequest(USER, {}))["answer"] == "Эхо: Привет, мир! Как дела?"
    [final] = final_items
    assert final["finish_reason"] == "stop" and final["blocked"] is False and final["model"].startswith("GigaChat")
    assert final["usage"]["completion_tokens"] == len(deltas)
    assert fake.stats()["stream_calls"] == 1


def test_stream_without_usage_reports_what_is_known(provider):
    text, final, err = drain(provider().stream(UpstreamRequest(say("раз два [[fault:nousage]]"), {})))
    assert err is None and text == "Эхо: раз два" and final["finish_reason"] == "stop"
    assert final["usage"] == dict.fromkeys(final["usage"], None)


def test_session_id_header_and_precached_tokens(provider, fake):
    p = provider()
    first = p.complete(UpstreamRequest(USER, {}), session_id="conv-42")
    assert fake.last_request()["headers"]["X-Session-ID"] == "conv-42"
    second = p.complete(UpstreamRequest(say("ещё", [*USER, {"role": "assistant", "content": first["answer"]}])), "conv-42")
    assert first["usage"]["precached_prompt_tokens"] == 0
    assert second["usage"]["precached_prompt_tokens"] > 0
    assert session_id_cvar.get() is None  # reset after the call
    p.complete(UpstreamRequest(USER, {}))
    assert "X-Session-ID" not in fake.last_request()["headers"]


def test_stream_session_is_set_only_during_sdk_calls(provider, fake):
    seen = []
    for _ in provider().stream(UpstreamRequest(USER, {}), session_id="conv-7"):
        seen.append(session_id_cvar.get())  # the consumer must never see our value
    assert seen and set(seen) == {None}
    assert fake.last_request()["headers"]["X-Session-ID"] == "conv-7"


def test_system_messages_merged_into_one_first(provider, fake):
    messages = [{"role": "user", "content": "первый"}, {"role": "system", "content": "Ты бот."},
                {"role": "assistant", "content": "ответ"}, {"role": "system", "content": "Отвечай кратко."},
                {"role": "user", "content": "второй [[fault:meta]]"}]
    out = provider().complete(UpstreamRequest(messages, {}))
    assert out["answer"] == "Эхо: второй [messages=4 system_first=yes session=-]"
    sent = fake.last_request()["body"]["messages"]
    assert sent[0] == {"role": "system", "content": "Ты бот.\n\nОтвечай кратко."}
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]


def test_fake_enforces_gigachat_message_rules(provider, fake):
    """The fake must refuse what GigaChat refuses, or the merge test above proves nothing."""
    token = provider()._sdk().get_token().access_token
    bad = {"model": "GigaChat", "messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}
    status, _, body = http("POST", fake.url + "/api/v1/chat/completions", bad, {"Authorization": f"Bearer {token}"})
    assert status == 422 and "system" in body["message"]
    status, _, body = http("POST", fake.url + "/api/v1/chat/completions",
                           {**bad, "messages": bad["messages"][:1], "temperature": 0},
                           {"Authorization": f"Bearer {token}"})
    assert status == 422 and "temperature" in body["message"]


def test_params_mapping(provider, fake):
    p = provider()
    p.complete(UpstreamRequest(USER, {"temperature": 0, "top_k": 40, "repetition_penalty": 1.1}))
    body = fake.last_request()["body"]
    assert 0 < body["temperature"] < 0.01  # 0 would be a 422
    assert "top_k" not in body and body["repetition_penalty"] == 1.1
    out = p.complete(UpstreamRequest(say("раз два три четыре пять"), {"max_tokens": 2}))
    assert out["finish_reason"] == "length" and out["answer"] == "Эхо: раз"


@pytest.mark.parametrize("messages,params", [([], {}), ([{"role": "tool", "content": "x"}], {}),
                                             ([{"role": "user", "content": 5}], {}), (USER, {"temperature": "hot"})])
def test_invalid_input_is_400_and_not_sent(provider, fake, messages, params):
    p = provider()
    assert raises(p.complete, UpstreamRequest(messages, params)).status == 400
    assert fake.stats()["chat_calls"] == 0


def test_models(provider, fake):
    names = provider().models()
    assert "GigaChat" in names and "GigaChat-2-Max" in names
    assert fake.stats()["models_calls"] == 1


# ---- auth ----------------------------------------------------------------------------------------
def test_missing_credentials_fails_at_request_time(provider, fake):
    p = provider(GIGACHAT_CREDENTIALS=None)  # constructing must not fail
    for call in (lambda: p.complete(UpstreamRequest(USER, {})), lambda: list(p.stream(UpstreamRequest(USER, {}))), p.models):
        err = raises(call)
        assert err.status == 503 and "set GIGACHAT_CREDENTIALS in .env" in err.message
    assert fake.stats()["auth_calls"] == 0


def test_bad_credentials_and_scope(provider, fake):
    err = raises(provider(GIGACHAT_CREDENTIALS="wrong-key").complete, UpstreamRequest(USER))
    assert err.status == 502 and err.code == "gigachat_auth_failed" and "GIGACHAT_CREDENTIALS" in err.message
    err = raises(provider(GIGACHAT_SCOPE="GIGACHAT_API_CORP").complete, UpstreamRequest(USER))
    assert err.status == 502 and "GIGACHAT_SCOPE" in err.message
    assert fake.stats()["auth_failures"] == 2


def test_invalid_setting_is_named(provider, tmp_path):
    err = raises(provider(GIGACHAT_TIMEOUT="soon").complete, UpstreamRequest(USER))
    assert err.status == 503 and "GIGACHAT_TIMEOUT" in err.message
    err = raises(provider(GIGACHAT_CA_BUNDLE_FILE=str(tmp_path / "missing.crt")).complete, UpstreamRequest(USER))
    assert err.status == 503 and "GIGACHAT_CA_BUNDLE_FILE" in err.message


def test_expired_token_is_refreshed_transparently(provider, fake):
    p = provider()
    p.complete(UpstreamRequest(USER, {}))
    fake.control(expire_tokens=True)
    assert p.complete(UpstreamRequest(USER, {}))["answer"].startswith("Эхо:")
    fake.control(expire_tokens=True)
    assert drain(p.stream(UpstreamRequest(USER, {})))[2] is None
    stats = fake.stats()
    assert stats["auth_calls"] == 3 and stats["expired_rejections"] == 2


def test_token_ttl_expiry_refresh(provider):
    for short in _fake("--token-ttl", "0.5"):
        p = provider(url=short.url)
        p.complete(UpstreamRequest(USER, {}))
        time.sleep(0.6)
        assert p.complete(UpstreamRequest(USER, {}))["finish_reason"] == "stop"
        assert short.stats()["auth_calls"] == 2 and short.stats()["expired_rejections"] == 1


def test_one_401_is_retried_with_new_token(provider, fake):
    p = provider()
    p.complete(UpstreamRequest(USER, {}))
    fake.control(next=["401"])
    assert p.complete(UpstreamRequest(USER, {}))["finish_reason"] == "stop"
    assert fake.stats()["auth_calls"] == 2


def test_persistent_401_means_bad_key(provider):
    err = raises(provider().complete, UpstreamRequest(say("x [[fault:401]]")))
    assert err.status == 502 and "GIGACHAT_CREDENTIALS" in err.message


# ---- error mapping -----------------------------------------------------------------------------
@pytest.mark.parametrize("fault,status,needle,retry_after", [
    ("402", 402, "token package", None),
    ("404", 502, "GIGACHAT_BASE_URL", None),
    ("422", 400, "Injected fault 422", None),
    ("429", 429, "rate limit", "3"),
    ("429=7", 429, "retry in 7 s", "7"),
    ("429=none", 429, "rate limit", "5"),
    ("500", 502, "GigaChat failed (status 500)", None),
    ("503", 502, "try again", None),
])
def test_http_errors_mapped(provider, fault, status, needle, retry_after):
    p = provider()
    messages = say(f"x [[fault:{fault}]]")
    for call in (lambda: p.complete(UpstreamRequest(messages, {})), lambda: list(p.stream(UpstreamRequest(messages, {})))):
        err = raises(call)
        assert err.status == status and needle in err.message
        assert err.code != "gigachat_stream_interrupted"
        assert err.headers.get("Retry-After") == retry_after


def test_unknown_model_lists_models(provider):
    err = raises(provider(GIGACHAT_MODEL="GigaChat-Ultra").complete, UpstreamRequest(USER))
    assert err.status == 502 and "Unknown model 'GigaChat-Ultra'" in err.message
    assert "GIGACHAT_MODEL" in err.message and "GigaChat-2-Max" in err.message


def test_blacklist_is_flagged(provider):
    p = provider()
    out = p.complete(UpstreamRequest(say("[[fault:blacklist]] запретная тема"), {}))
    assert out["blocked"] is True and out["finish_reason"] == "blacklist" and out["answer"]
    text, final, err = drain(p.stream(UpstreamRequest(say("[[fault:blacklist]] запретная тема"), {})))
    assert err is None and final["blocked"] is True and text == out["answer"]


def test_drop_mid_stream_raises_after_partial_text_without_replay(provider, fake):
    p = provider(GIGACHAT_MAX_RETRIES="3")  # SDK retries must stay off for streams anyway
    text, final, err = drain(p.stream(UpstreamRequest(say("один два три четыре пять [[fault:drop=3]]"), {})))
    assert text == "Эхо: один два" and final is None
    assert err.code == "gigachat_stream_interrupted" and err.status == 502 and "partial answer" in err.message
    assert fake.stats()["chat_calls"] == 1  # not restarted
    text, _, err = drain(p.stream(UpstreamRequest(say("один [[fault:drop=0]]"), {})))  # before any text: a plain error
    assert text == "" and err.status == 502 and err.code == "gigachat_connection_lost"
    assert raises(p.complete, UpstreamRequest(say("x [[fault:drop]]"))).status == 502
    assert fake.stats()["chat_calls"] == 3


def test_unreachable_is_503(provider, fake):
    dead = f"http://127.0.0.1:{free_port()}"
    err = raises(provider(url=dead).complete, UpstreamRequest(USER))
    assert err.status == 503 and "Cannot reach GigaChat" in err.message and "GIGACHAT_AUTH_URL" in err.message
    err = raises(provider(GIGACHAT_BASE_URL=dead + "/api/v1").complete, UpstreamRequest(USER))  # auth works, API does not
    assert err.status == 503 and dead in err.message and "GIGACHAT_BASE_URL" in err.message


def test_timeout_is_504(provider):
    p = provider(GIGACHAT_TIMEOUT="0.5")
    p.models()  # token first, so the timeout hits the chat call
    t0 = time.monotonic()
    err = raises(p.complete, UpstreamRequest(say("x [[fault:slow=1.5]]")))
    assert err.status == 504 and "GIGACHAT_TIMEOUT" in err.message and time.monotonic() - t0 < 1.4
    text, _, err = drain(p.stream(UpstreamRequest(say("раз два три [[fault:sleepstream=1]]"), {})))
    assert text == "Эхо:" and err.status == 504 and err.code == "gigachat_stream_interrupted"


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command")
def test_tls_failure_explains_russian_ca(provider, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    for tls in _fake("--tls-cert", str(cert), "--tls-key", str(key)):
        err = raises(provider(url=tls.url, GIGACHAT_VERIFY_SSL_CERTS="true").complete, UpstreamRequest(USER))
        assert err.status == 503 and "Russian Trusted Root CA" in err.message
        assert "GIGACHAT_CA_BUNDLE_FILE" in err.message and "GIGACHAT_VERIFY_SSL_CERTS=false" in err.message
        p = provider(url=tls.url, GIGACHAT_VERIFY_SSL_CERTS="true", GIGACHAT_CA_BUNDLE_FILE=str(cert))
        assert p.complete(UpstreamRequest(USER, {}))["finish_reason"] == "stop"


# ---- concurrency -------------------------------------------------------------------------------
def _parallel(p, n, text):
    results, threads = [None] * n, []
    for i in range(n):
        def run(i=i):
            try:
                results[i] = p.complete(UpstreamRequest(say(text)))
            except ApiError as e:
                results[i] = e
        threads.append(threading.Thread(target=run))
        threads[-1].start()
    return results, threads


def test_requests_queue_instead_of_429(provider, fake):
    p = provider(GIGACHAT_MAX_CONCURRENCY="1")
    p.models()  # token first
    t0 = time.monotonic()
    results, threads = _parallel(p, 3, "x [[fault:slow=0.3]]")
    longest_queue = longest_in_status = 0
    while any(t.is_alive() for t in threads):
        longest_queue = max(longest_queue, p.queue_length)
        longest_in_status = max(longest_in_status, p.status()["waiting"])
        time.sleep(0.01)
    assert all(isinstance(r, dict) and r["finish_reason"] == "stop" for r in results), results
    assert time.monotonic() - t0 >= 0.9 and longest_queue == 2 and p.queue_length == 0
    assert longest_in_status == 2 and p.status() == {"model": "GigaChat", "context_tokens": 32768,
                                                     "max_concurrency": 1, "waiting": 0}
    assert fake.stats()["max_active"] == 1


def test_concurrency_limit_above_one(provider, fake):
    p = provider(GIGACHAT_MAX_CONCURRENCY="3")
    results, threads = _parallel(p, 3, "x [[fault:slow=0.5]]")  # no token yet: all three need one at once
    for t in threads:
        t.join()
    # >= 2, not == 3: under load a thread may start late; overlap at all shows the limit is not 1
    assert all(isinstance(r, dict) for r in results) and fake.stats()["max_active"] >= 2
    assert fake.stats()["auth_calls"] == 1  # the SDK's token lock: one OAuth call, not one per thread


def test_queue_timeout_is_503_busy(provider, fake):
    p = provider(GIGACHAT_MAX_CONCURRENCY="1", GIGACHAT_QUEUE_TIMEOUT="0.2")
    results, threads = _parallel(p, 1, "x [[fault:slow=0.8]]")
    wait_until(lambda: fake.stats()["active"] == 1)  # the slow one holds the slot
    err = raises(p.complete, UpstreamRequest(USER))
    assert err.status == 503 and err.code == "gigachat_busy" and err.headers["Retry-After"]
    assert "GIGACHAT_QUEUE_TIMEOUT" in err.message
    threads[0].join()
    assert isinstance(results[0], dict)


def test_stream_holds_slot_until_closed(provider):
    p = provider(GIGACHAT_MAX_CONCURRENCY="1", GIGACHAT_QUEUE_TIMEOUT="0.1")
    gen = p.stream(UpstreamRequest(say("раз два три"), {}))
    assert "delta" in next(gen)
    assert raises(p.complete, UpstreamRequest(USER)).code == "gigachat_busy"
    gen.close()
    assert p.complete(UpstreamRequest(USER, {}))["finish_reason"] == "stop"
    gen = p.stream(UpstreamRequest(say("раз"), {}))
    items = [next(gen) for _ in range(3)]  # two deltas, then the final dict: the slot is free already
    assert "finish_reason" in items[-1] and p.complete(UpstreamRequest(USER, {}))["finish_reason"] == "stop"
