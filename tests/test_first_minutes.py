"""What a newcomer does in the first minutes, on a fresh clone of this repository's HEAD (commit first):
`make start`, the README's own curl lines and openai snippet (parsed from README.md, so the docs can't
drift from the code), `python chat.py ask` / `chat`, the page's first message in Chromium, `make stop`.

The clone reuses this venv (VENV=sys.prefix, `-o` so make does not reinstall) and the demo GGUF."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import REPO_ROOT, free_port, http, live_processes
from webpage import Web

README = os.path.join(REPO_ROOT, "README.md")
CYRILLIC = re.compile(r"[А-яЁё]")
VENV = sys.prefix
MAKE_VARS = [f"VENV={VENV}", "-o", f"{VENV}/.installed"]  # the venv is built: never reinstall in the clone


def fenced(lang):
    with open(README, encoding="utf-8") as f:
        return re.findall(rf"^```{lang}\n(.*?)^```", f.read(), re.S | re.M)


def readme_curl_lines():
    lines = []
    for block in fenced("bash"):
        lines += [ln.strip() for ln in block.replace("\\\n", " ").splitlines() if ln.strip().startswith("curl ")]
    return lines


def newcomer_env(**over):
    drop = ("GIGACHAT_", "QWEN_", "CHAT_", "DEFAULT_SYSTEM", "MAKE", "MFLAGS", "HTTP_PROXY", "HTTPS_PROXY",
            "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy", "PROMETHEUS_MULTIPROC_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", OMP_NUM_THREADS="1",
               LOG_LEVEL="WARNING", **over)
    return env


def make(clone, *args, env, timeout=240):
    return subprocess.run(["make", "--no-print-directory", "-C", clone, *args, *MAKE_VARS], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo(smollm2_gguf, tmp_path_factory):
    clone = str(tmp_path_factory.mktemp("newcomer") / "dual-ai-chat")
    subprocess.run(["git", "clone", "-q", REPO_ROOT, clone], check=True, timeout=60)
    chat_port, qwen_port = free_port(), free_port()
    # QWEN_MAX_TOKENS keeps the demo's answers short: the curl lines run unchanged, only faster.
    env = newcomer_env(QWEN_MAX_TOKENS="48")
    run = make(clone, "run", "DETACH=1", f"MODEL={smollm2_gguf}", f"CHAT_PORT={chat_port}",
               f"QWEN_PORT={qwen_port}", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    d = {"clone": clone, "env": env, "chat_port": chat_port, "qwen_port": qwen_port, "run": run,
         "url": f"http://127.0.0.1:{chat_port}", "pids": {}}
    for name in ("qwen", "chat"):
        with open(os.path.join(clone, ".run", f"{name}.pid")) as f:
            d["pids"][name] = int(f.read())
    try:
        yield d
    finally:
        stop = make(clone, "stop", env=env, timeout=60)
        left = _group_members(d["pids"].values())
        for pid in left:  # clean up anyway, then fail
            os.kill(pid, signal.SIGKILL)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert not left, f"`make stop` left processes behind: {left}"
        assert not os.path.exists(os.path.join(clone, ".run", "chat.pid"))
        for port in (chat_port, qwen_port):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers after make stop"


def _group_members(pgids):
    """Live processes in the given process groups (a server and any worker it forked)."""
    return [pid for pid, _, pgid in live_processes() if pgid in pgids]


def history(url, limit=50):
    status, _, body = http("GET", f"{url}/history?limit={limit}")
    assert status == 200, body
    return body["messages"]


def test_make_run_ends_with_one_ready_block(demo):
    out = demo["run"].stdout
    assert out.count("Dual AI Chat is ready") == 1, out
    assert f"{demo['url']}/" in out and "SmolLM2-135M-Instruct" in out and "llamacpp" in out
    assert ".run/chat.log" in out and "make stop" in out and "GigaChat   not configured" in out
    assert re.search(r"  CPU        \d+ decode / \d+ prompt threads \(.*\d+ physical cores\), GOMP_SPINCOUNT=", out), out
    assert "tools/demo.py" not in out and "development server" not in out + demo["run"].stderr  # no recipe, no banner


def test_readme_curl_lines_work_on_the_demo(demo):
    lines = readme_curl_lines()
    assert len(lines) >= 5, lines
    asked = []
    for line in lines:
        url = re.search(r"https?://\S+", line).group(0)
        assert url.isascii(), f"a URL carries only ASCII: use --data-urlencode: {line}"
        cmd = line.replace("127.0.0.1:5000", f"127.0.0.1:{demo['chat_port']}")
        cmd = cmd.replace("127.0.0.1:5001", f"127.0.0.1:{demo['qwen_port']}")
        cmd = cmd.replace("curl ", "curl -sS --fail-with-body --max-time 120 ", 1)
        r = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=150, env=demo["env"])
        out = r.stdout.decode("utf-8")
        assert r.returncode == 0 and out.strip(), f"{line}\n-> rc {r.returncode}: {out}{r.stderr.decode()}"
        assert '"error":{' not in out and '"type":"error"' not in out, f"{line}\n-> {out}"
        asked += re.findall(r"q=([^']+)'", line) + re.findall(r'"q": "([^"]+)"', line)
    questions = {m["content"] for m in history(demo["url"]) if m["role"] == "user"}
    cyrillic = [q for q in asked if CYRILLIC.search(q)]
    assert cyrillic and all(q in questions for q in cyrillic), (cyrillic, questions)


def test_raw_utf8_in_the_url_arrives_intact(demo):
    """`curl 'http://…/qwen?q=Привет!'` as typed: raw UTF-8 bytes in the request line (the dev server)."""
    def raw_get(target):
        with socket.create_connection(("127.0.0.1", demo["chat_port"]), timeout=60) as s:
            s.sendall(b"GET " + target.encode("utf-8") + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    status, body = raw_get("/qwen?q=Сырой+запрос+ёЁ!&max_tokens=4")
    assert status == 200, body
    sid = body["session"]
    assert [m["content"] for m in history(demo["url"]) if m["session"] == sid][-1] == "Сырой запрос ёЁ!"
    status, body = raw_get("/history/Сессия")  # PATH_INFO too
    assert status == 404 and "'Сессия'" in body["error"]["message"], body


def test_terminal_chat(demo):
    env = dict(demo["env"], CHAT_URL=demo["url"])
    chat_py = os.path.join(demo["clone"], "chat.py")
    r = subprocess.run([sys.executable, chat_py, "ask", "Привет! Что такое Python?"], env=env,
                       capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stdout.decode("utf-8").strip(), r.stderr.decode()
    before = {m["id"] for m in history(demo["url"])}
    r = subprocess.run([sys.executable, chat_py, "chat"], env=env, capture_output=True, timeout=120,
                       input="Меня зовут Ёжик.\nКак меня зовут?\n/quit\n".encode())
    assert r.returncode == 0, r.stderr.decode()
    new = [m for m in history(demo["url"]) if m["id"] not in before and m["role"] == "user"]
    assert sorted(m["content"] for m in new) == ["Как меня зовут?", "Меня зовут Ёжик."]
    assert len({m["session"] for m in new}) == 1 and all(m["provider"] == "qwen" for m in new)
    r = subprocess.run([sys.executable, chat_py, "ask", "-m", "gigachat", "hi"], env=env, capture_output=True,
                       timeout=60)
    assert r.returncode == 1 and "GIGACHAT_CREDENTIALS" in r.stderr.decode(), r.stderr.decode()


def test_readme_openai_snippet_runs_and_gigachat_503_is_not_retried(demo):
    (snippet,) = [b for b in fenced("python") if "from openai import OpenAI" in b]
    code = snippet.replace("127.0.0.1:5000", f"127.0.0.1:{demo['chat_port']}")
    code = code.replace("127.0.0.1:5001", f"127.0.0.1:{demo['qwen_port']}")
    r = subprocess.run([sys.executable, "-c", code], env=demo["env"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()

    from openai import APIStatusError, OpenAI
    before = len(history(demo["url"], 200))
    client = OpenAI(base_url=demo["url"] + "/v1", api_key="x", max_retries=2)
    with pytest.raises(APIStatusError) as e:
        client.chat.completions.create(model="gigachat", messages=[{"role": "user", "content": "Привет"}])
    assert e.value.status_code == 503 and "GIGACHAT_CREDENTIALS" in str(e.value)
    assert len(history(demo["url"], 200)) == before  # refused before anything was saved
    _, _, metrics = http("GET", demo["url"] + "/metrics")
    tried = [ln for ln in metrics.splitlines() if ln.startswith("chat_http_requests_total{")
             and 'endpoint="/v1/chat/completions"' in ln and 'status="503"' in ln]
    assert len(tried) == 1 and tried[0].endswith(" 1.0"), tried  # one try: the SDK obeyed x-should-retry


def test_page_first_message_on_its_default_tab(demo, browser):
    web = Web(browser, demo["url"])
    try:
        page = web.open()
        # GigaChat is not configured: the page opens on Auto, which the gateway answers with Qwen
        assert page.is_checked("input[name=model][value='auto']"), "open on Auto (it works without GigaChat)"
        assert not page.is_checked("input[name=model][value='gigachat']")
        web.ask("Привет!")
        status, text, error, _ = web.wait_answer(timeout=60_000)
        assert status == "ok" and text.strip() and not error, (status, text, error)
        rows = history(demo["url"], 2)
        assert rows and rows[0]["provider"] == "qwen", rows  # answered by the model that works
    finally:
        web.close()


def test_readme_gunicorn_command_reads_dotenv(demo, tmp_path):
    """The README's gunicorn line, run as written (the venv's path) in the clone, binds the CHAT_PORT and
    starts the GUNICORN_WORKERS that .env sets."""
    (line,) = [ln.split("#")[0].strip() for b in fenced("bash") for ln in b.splitlines() if "chat:app" in ln]
    assert line.startswith(".venv/bin/gunicorn "), line  # works without activating the venv
    port = free_port()
    dotenv = os.path.join(demo["clone"], ".env")
    with open(dotenv, "w", encoding="utf-8") as f:
        f.write(f"CHAT_PORT={port}\nGUNICORN_WORKERS=2\nQWEN_URL=http://127.0.0.1:{demo['qwen_port']}\n"
                f"CHAT_DB={tmp_path / 'gunicorn.db'}\nQWEN_MAX_TOKENS=8\n")
    proc = subprocess.Popen(["bash", "-c", "exec " + line.replace(".venv/", VENV + "/", 1)], cwd=demo["clone"],
                            env=newcomer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, status = time.monotonic() + 90, None
        while status != 200 and proc.poll() is None and time.monotonic() < deadline:
            try:  # the master listens before its workers have booted: a probe may time out meanwhile
                status = http("GET", f"http://127.0.0.1:{port}/health", timeout=1)[0] if _port_open(port) else None
            except OSError:
                status = None
            time.sleep(0.1)
        assert status == 200, proc.stderr.read1().decode() if proc.poll() is not None else "no answer"
        time.sleep(1)  # the workers start one after another: let the second one come
        assert len([pid for pid, ppid, _ in live_processes() if ppid == proc.pid]) == 2  # GUNICORN_WORKERS=2
        q = "%D0%9F%D1%80%D0%B8%D0%B2%D0%B5%D1%82"  # Привет, as curl --data-urlencode sends it
        status, _, body = http("GET", f"http://127.0.0.1:{port}/qwen?q={q}", timeout=60)
        assert status == 200 and body["provider"] == "qwen", body  # QWEN_URL from .env
    finally:
        proc.terminate()
        proc.wait(30)
        os.unlink(dotenv)


def _port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_make_run_in_the_foreground_stops_on_ctrl_c(demo, smollm2_gguf, tmp_path):
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen(["make", "--no-print-directory", "-C", demo["clone"], "run", f"MODEL={smollm2_gguf}",
                             f"CHAT_PORT={free_port()}", f"QWEN_PORT={free_port()}", *MAKE_VARS],
                            env=newcomer_env(RUN_DIR=run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own group: Ctrl-C goes to make and tools/demo.py
    try:
        out = b""
        while b"Stop       Ctrl-C" not in out:
            line = proc.stdout.readline()
            assert line, out.decode()
            out += line
        pids = []
        for name in ("qwen", "chat"):
            with open(os.path.join(run_dir, f"{name}.pid")) as f:
                pids.append(int(f.read()))
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
        assert not _group_members(pids), "servers left after Ctrl-C"
        assert sorted(os.listdir(run_dir)) == ["chat.log", "qwen.log"]  # pid files gone, logs kept
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
