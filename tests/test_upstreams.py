"""Several Qwen upstreams behind the gateway (QWEN_URL=a,b): least busy first, conversation affinity,
models by name, the circuit breaker, retries before the first byte only. The upstreams are
tests/fake_qwen.py servers (faults on demand); tests/test_upstreams_kill.py kills real qwen_servers."""
import threading
import time

import pytest
import requests

import fake_qwen
from conftest import start_gateway
from helpers import sse_events, stop_process

FAST_BREAKER = {"QWEN_BREAKER_COOLDOWN": "0.5", "QWEN_STATUS_POLL": "0.1"}


@pytest.fixture
def fakes():
    started = []

    def make(n, **kw):
        for _ in range(n):
            started.append(fake_qwen.start(**kw))
        return started[-n:]
    yield make
    for f in started:
        f.stop()


@pytest.fixture
def gateway_on(fake_gigachat, tmp_path):
    procs = []

    def make(*ups):
        procs.append(start_gateway(",".join(u.base_url for u in ups), fake_gigachat, tmp_path, **FAST_BREAKER))
        return procs[-1]
    yield make
    for p in procs:
        stop_process(p)


def ask(gw, q, **params):
    return requests.get(gw.base_url + "/qwen", params={"q": q, **params}, timeout=30)


def asked(fake, marker):
    """How many requests reached `fake` whose last message contains `marker`."""
    return sum(marker in r["messages"][-1]["content"] for r in fake.requests)


def upstream_view(gw, fake):
    ups = requests.get(gw.base_url + "/qwen/status", timeout=10).json()["upstreams"]
    return next(u for u in ups if u["url"] == fake.base_url)


def in_parallel(fn, args_list):
    results = [None] * len(args_list)

    def run(i, args):
        results[i] = fn(*args)
    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_requests_spread_over_the_least_busy(fakes, gateway_on):
    a, b = fakes(2, serial=True)  # one answer at a time each, like a GPU engine
    gw = gateway_on(a, b)
    t0 = time.monotonic()
    rs = in_parallel(ask, [(gw, f"spread{i} [[hold=0.6]]") for i in range(4)])
    assert [r.status_code for r in rs] == [200] * 4
    assert asked(a, "spread") == 2 and asked(b, "spread") == 2
    assert time.monotonic() - t0 < 2.3  # two rounds of 0.6 s, not four


def test_a_conversation_stays_on_its_upstream_unless_it_is_busy(fakes, gateway_on):
    a, b = fakes(2)
    gw = gateway_on(a, b)
    sids = [ask(gw, f"first{i}").json()["session"] for i in range(2)]  # two conversations, one on each
    for i, sid in enumerate(sids):  # turns in a row: taking turns between upstreams would split them
        for turn in range(3):
            assert ask(gw, f"turn{i}", session=sid).status_code == 200
    for i in range(2):
        on_a, on_b = asked(a, f"turn{i}"), asked(b, f"turn{i}")
        assert sorted((on_a, on_b)) == [0, 3]  # all three turns where the first one was answered
        home, other = (a, b) if on_a else (b, a)
        assert asked(home, f"first{i}") == 1
    # Its upstream busy with a long answer: the next turn goes to the idle one.
    home, other = (a, b) if asked(a, "turn0") else (b, a)
    slow = threading.Thread(target=ask, args=(gw, "long [[hold=1.5]]"), kwargs={"session": sids[0]})
    slow.start()
    deadline = time.monotonic() + 5
    while not asked(home, "long") and not asked(other, "long") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert asked(home, "long") == 1
    assert ask(gw, "meanwhile", session=sids[0]).status_code == 200
    assert asked(other, "meanwhile") == 1
    slow.join(10)


def test_a_named_model_goes_only_to_the_upstreams_that_serve_it(fakes, gateway_on):
    a, = fakes(1, model_id="qwen-alpha")
    b, = fakes(1, model_id="coder-beta")  # not named qwen-*: routable because an upstream lists it
    gw = gateway_on(a, b)
    models = requests.get(gw.base_url + "/qwen/status", timeout=10).json()["upstreams"]
    assert sorted(m for u in models for m in u["models"]) == ["coder-beta", "qwen-alpha"]
    listed = [m["id"] for m in requests.get(gw.base_url + "/v1/models", timeout=10).json()["data"]]
    assert {"coder-beta", "qwen-alpha", "qwen", "gigachat"} <= set(listed) and len(listed) == len(set(listed))
    for model, home in (("coder-beta", b), ("qwen-alpha", a)):
        for i in range(3):
            r = requests.post(gw.base_url + "/v1/chat/completions", timeout=30, json={
                "model": model, "messages": [{"role": "user", "content": f"{model}-{i}"}]})
            assert r.status_code == 200, r.text
        assert asked(home, model) == 3 and asked(a if home is b else b, model) == 0
        assert {q["model"] for q in home.requests if model in q["messages"][-1]["content"]} == {model}
    for i in range(2):  # "qwen": any of them
        requests.post(gw.base_url + "/v1/chat/completions", timeout=30, json={
            "model": "qwen", "messages": [{"role": "user", "content": f"any{i}"}]})
    assert asked(a, "any") == 1 and asked(b, "any") == 1
    r = requests.post(gw.base_url + "/v1/chat/completions", timeout=30, json={
        "model": "nobody-serves-this", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_a_failing_upstream_is_taken_out_then_probed_back_in(fakes, gateway_on):
    a, b = fakes(2)
    gw = gateway_on(a, b)
    a.fail_status = 500
    for i in range(4):
        r = ask(gw, f"out{i}", stream=1 if i % 2 else 0)
        assert r.status_code == 200 and f"out{i}" in r.text and "error" not in r.text  # retried on b
    assert asked(a, "out") == 1 and asked(b, "out") == 4  # a got one try, then was out
    view = upstream_view(gw, a)
    assert not view["healthy"] and view["errors"] == 1 and "fake failure" in view["down_reason"]
    metrics = requests.get(gw.base_url + "/metrics", timeout=10).text
    assert f'chat_upstream_healthy{{upstream="{a.base_url}"}} 0.0' in metrics
    assert f'chat_upstream_errors_total{{upstream="{a.base_url}"}} 1.0' in metrics
    a.fail_status = None
    deadline = time.monotonic() + 5
    while not upstream_view(gw, a)["healthy"]:  # the poller probes it after the cooldown
        assert time.monotonic() < deadline, "the upstream was not probed back in"
        time.sleep(0.1)
    in_parallel(ask, [(gw, f"back{i} [[hold=0.3]]") for i in range(2)])
    assert asked(a, "back") == 1 and asked(b, "back") == 1


def test_all_upstreams_down_is_a_clear_503(fakes, gateway_on):
    a, b = fakes(2)
    gw = gateway_on(a, b)
    a.fail_status = b.fail_status = 502
    r = ask(gw, "nobody")
    assert r.status_code == 502 and r.json()["error"]["code"] in ("fake", "qwen_error")
    r = ask(gw, "nobody again")
    assert r.status_code == 503 and "QWEN_URL" in r.json()["error"]["message"]
    assert requests.get(gw.base_url + "/qwen/status", timeout=10).json()["online"] is False


def test_a_stream_cut_after_its_first_words_is_not_retried(fakes, gateway_on):
    a, b = fakes(2)
    gw = gateway_on(a, b)
    r = requests.get(gw.base_url + "/qwen", params={"q": "один два три четыре [[cut=2]]", "stream": 1},
                     stream=True, timeout=30)
    ev = sse_events(r)
    deltas = "".join(e["text"] for e in ev if e["type"] == "delta")
    assert deltas == "Эхо: один" and ev[-1]["type"] == "error"
    assert asked(a, "один") + asked(b, "один") == 1  # not asked again: the client would get the text twice
    row = requests.get(gw.base_url + f"/history/{ev[0]['session']}", timeout=10).json()["messages"][-1]
    assert row["status"] == "error" and row["content"] == deltas


def test_a_client_that_hangs_up_is_not_retried_and_takes_nothing_out(fakes, gateway_on):
    a, b = fakes(2)
    gw = gateway_on(a, b)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(gw.base_url + "/qwen", params={"q": "leaving [[hold=3]]"}, timeout=0.5)
    deadline = time.monotonic() + 5
    while not (a.hangups or b.hangups):  # the gateway aborted the upstream call
        assert time.monotonic() < deadline, "the upstream call was not aborted"
        time.sleep(0.05)
    time.sleep(0.3)
    assert asked(a, "leaving") + asked(b, "leaving") == 1  # not tried again elsewhere
    for fake in (a, b):
        view = upstream_view(gw, fake)
        assert view["healthy"] and view["errors"] == 0 and view["in_flight"] == 0
