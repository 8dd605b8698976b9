"""The llamacpp engine on any x86 CPU (issue 19): never llama.cpp's AMX kernels unless asked, a native
crash at start is one line and exit status 2, a worker that dies later is counted in /status, and the
gateway never answers a question sent into a crash with "start it" advice. Real llama.cpp, real HTTP."""
import json
import os
import signal
import subprocess
import threading
import time

import requests

from conftest import CLEAN_ENV, start_gateway, start_qwen
from helpers import PYTHON, REPO_ROOT, free_port, live_processes, stop_process
from test_qwen_server import FRANCE

STORY = [{"role": "user", "content": "Write a very long story about a lighthouse keeper and the sea."}]


def worker_pid(proc):
    """qwen_server's one gunicorn worker (the master's child that is not the start-up probe)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kids = [pid for pid, ppid, _ in live_processes() if ppid == proc.pid]
        if len(kids) == 1:
            return kids[0]
        time.sleep(0.05)
    raise AssertionError(f"qwen_server {proc.pid} has no single worker")


def wait_active(proc, n=1):
    deadline = time.monotonic() + 30
    while requests.get(proc.base_url + "/status", timeout=10).json()["active_requests"] < n:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.02)


def wait_status(proc, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(proc.base_url + "/status", timeout=5).json()
        except (requests.ConnectionError, requests.Timeout, ValueError):
            assert time.monotonic() < deadline, "qwen_server did not come back"
            time.sleep(0.1)


def test_llama_cpp_never_puts_weights_in_the_amx_buffer_unless_asked(qwen_llama):
    """On an AMX CPU (this project's CI has them) llama.cpp's log must not say `AMX model buffer size`; on any CPU
    the weights' buffers are read from that log (so the check can fail) and a real answer comes back."""
    st = requests.get(qwen_llama.base_url + "/status", timeout=10).json()
    amx, buffers = st["amx"], st["model_buffers_mib"]
    assert buffers and sum(buffers.values()) > 50, buffers  # SmolLM2 Q4_1: ~92 MiB of weights, all of them seen
    assert not amx["opted_in"] and not amx["used"]
    assert "AMX" not in buffers, (amx, buffers)
    if amx["llama_cpp_build"] and amx["cpu"]:  # a wheel with AMX kernels on an AMX CPU: the run-time net holds
        assert amx["extra_buffer_types"] is False and "llama.cpp#20824" in amx["note"]
    answer = requests.post(qwen_llama.base_url + "/v1/chat/completions", timeout=60,
                           json={"messages": FRANCE, "temperature": 0, "max_tokens": 20}).json()
    assert "Paris" in answer["choices"][0]["message"]["content"]


def test_a_native_crash_at_the_first_token_is_one_line_and_exit_2(smollm2_gguf):
    """The probe child dies of a real SIGSEGV (QWEN_TEST_PROBE_SIGNAL makes it raise one where its token would
    be generated): the server stops at start with one line naming the engine, the CPU and what to set."""
    env = {k: v for k, v in {**os.environ, **CLEAN_ENV, "QWEN_TEST_PROBE_SIGNAL": "SIGSEGV"}.items() if v is not None}
    t0 = time.monotonic()
    r = subprocess.run([PYTHON, os.path.join(REPO_ROOT, "qwen_server.py"), "-m", smollm2_gguf, "--port", str(free_port())],
                       capture_output=True, text=True, timeout=120, env=env, cwd="/")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, r.stderr[-2000:]
    line = errors[0]
    assert line.startswith("qwen_server: error: the llamacpp engine crashed with SIGSEGV generating its first token")
    assert "llama.cpp on " in line and "CPU has AMX: " in line and "Traceback" not in r.stderr
    assert "make install" in line or "QWEN_LLAMA_AMX" in line  # what to do
    assert time.monotonic() - t0 < 60  # it stopped: no worker restarted over and over
    assert not os.path.exists("/core") and not any(n.startswith("core") for n in os.listdir(REPO_ROOT))


def test_a_worker_that_dies_later_is_restarted_and_counted_in_status(smollm2_gguf):
    proc = start_qwen(smollm2_gguf, "-l", "1024", engine="llamacpp")
    try:
        st = requests.get(proc.base_url + "/status", timeout=10).json()
        assert st["worker"] == {"restarts": 0, "last_signal": None, "last_exit_code": None, "last_at": None}
        first = worker_pid(proc)
        os.kill(first, signal.SIGSEGV)  # what llama.cpp's AMX kernels did mid-question
        st = wait_status(proc)
        assert st["worker"]["restarts"] == 1 and st["worker"]["last_signal"] == "SIGSEGV", st["worker"]
        assert st["worker"]["last_at"] and worker_pid(proc) != first
        answer = requests.post(proc.base_url + "/v1/chat/completions", timeout=60,
                               json={"messages": FRANCE, "temperature": 0, "max_tokens": 20}).json()
        assert "Paris" in answer["choices"][0]["message"]["content"]
        with open(proc.log_path, encoding="utf-8") as f:
            assert "the worker process died (SIGSEGV) and is started again (restart 1" in f.read()
    finally:
        stop_process(proc)


def test_a_question_sent_into_a_crash_never_gets_start_it_advice(smollm2_gguf, fake_gigachat, tmp_path):
    qwen = start_qwen(smollm2_gguf, "-l", "1024", engine="llamacpp")
    gw = start_gateway(qwen.base_url, fake_gigachat, tmp_path)
    try:
        box = {}

        def ask():
            box["r"] = requests.get(gw.base_url + "/qwen", params={"q": STORY[0]["content"], "max_tokens": 600,
                                                                  "temperature": 0}, timeout=120)
        t = threading.Thread(target=ask)
        t.start()
        wait_active(qwen)
        os.kill(worker_pid(qwen), signal.SIGSEGV)
        t.join(120)
        r = box["r"]
        assert r.status_code == 502, r.text
        err = r.json()["error"]
        assert err["code"] == "qwen_connection_closed" and "closed the connection (did it crash?" in err["message"]
        assert "start it" not in err["message"] and "not reachable" not in err["message"]
        # right away, while the worker is loaded again: answered once it is back, or a 5xx without the advice
        r = requests.get(gw.base_url + "/qwen", params={"q": "Hi", "max_tokens": 4}, timeout=120)
        assert r.status_code == 200 or "start it" not in r.json()["error"]["message"], r.text

        # a streamed question: the error event after the partial answer says the same
        r = requests.get(gw.base_url + "/qwen", params={"q": STORY[0]["content"], "max_tokens": 600, "stream": 1},
                         stream=True, timeout=120)
        seen, killed = [], False
        for line in r.iter_lines():
            if line.startswith(b"data: "):
                seen.append(json.loads(line[6:]))
                if not killed and sum(e["type"] == "delta" for e in seen) == 3:
                    os.kill(worker_pid(qwen), signal.SIGSEGV)
                    killed = True
        last = seen[-1]
        assert last["type"] == "error" and last["error"]["code"] == "qwen_stream_broken", last
        assert "did it crash? see its log" in last["error"]["message"] and "start it" not in last["error"]["message"]
        st = wait_status(qwen)
        assert st["worker"]["restarts"] == 2 and st["worker"]["last_signal"] == "SIGSEGV"
    finally:
        stop_process(gw)
        stop_process(qwen)
