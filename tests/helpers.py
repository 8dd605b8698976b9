"""Helpers for tests that run real servers as subprocesses (fake GigaChat, the gateway, ...)."""
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HOST = "127.0.0.1"
PYTHON = sys.executable  # the venv's interpreter, so subprocesses see the same packages
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)

# How the tests (conftest.py) and the benches run qwen_server and the gateway: quiet logs, one OpenMP thread
# (a small model gains nothing from more, and spinning threads would steal the other servers' CPU).
QUIET_ENV = {"LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}

_insecure_tls = ssl.create_default_context()
_insecure_tls.check_hostname = False
_insecure_tls.verify_mode = ssl.CERT_NONE


def free_port(host=HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def live_processes():
    """(pid, ppid, pgid) of every live (not zombie) process (Linux /proc)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    state, ppid, pgid = f.read().rsplit(")", 1)[1].split()[:3]
            except OSError:
                continue
            if state != "Z":
                yield int(entry), int(ppid), int(pgid)


def http(method, url, body=None, headers=None, timeout=5.0):
    """(status, headers, parsed JSON or text) without raising on HTTP errors; JSON bodies for dicts."""
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8") if not isinstance(body, bytes) else body
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    handlers = [urllib.request.ProxyHandler({})]  # local servers only: never via a proxy from the env
    if url.startswith("https:"):
        handlers.append(urllib.request.HTTPSHandler(context=_insecure_tls))
    try:
        with urllib.request.build_opener(*handlers).open(req, timeout=timeout) as resp:
            status, resp_headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        status, resp_headers, raw = e.code, e.headers, e.read()
    text = raw.decode("utf-8", "replace")
    try:
        return status, resp_headers, json.loads(text)
    except ValueError:
        return status, resp_headers, text


def _log_tail(path, n=3000):
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


def start_process(args, env=None, port=None, ready_path="/_health", host=HOST, scheme="http",
                  timeout=20.0, cwd=REPO_ROOT, ready_body=None, poll_s=0.05):
    """Start `args` and wait until GET {scheme}://host:port{ready_path} answers 2xx (with `ready_body`:
    until POSTing that JSON there does, e.g. a 1-token chat request: ready = answering).

    env: variables laid over os.environ; a None value removes that variable.
    Output goes to a temp log file (a pipe nobody reads could fill up and hang the server);
    its path is `proc.log_path`, `proc.base_url` is the server's address, and `proc.ready_s` the
    seconds from its start to ready (to within poll_s, the pause between tries).
    Raises RuntimeError with the log tail when the process exits or never gets ready.
    Stop it with stop_process(proc)."""
    full_env = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = str(v)
    log = tempfile.NamedTemporaryFile(prefix="proc-", suffix=".log", delete=False)
    started = time.monotonic()
    proc = subprocess.Popen([str(a) for a in args], env=full_env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()
    proc.log_path = log.name
    proc.base_url = f"{scheme}://{host}:{port}" if port else None
    if port is None:
        return proc
    deadline, url = started + timeout, proc.base_url + ready_path
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[:3]} exited with {proc.returncode} before it was ready:\n"
                               f"{_log_tail(proc.log_path)}")
        try:
            status, _, _ = (http("GET", url, timeout=1.0) if ready_body is None
                            else http("POST", url, ready_body, timeout=max(1.0, deadline - time.monotonic())))
            if 200 <= status < 300:
                proc.ready_s = time.monotonic() - started
                return proc
        except OSError:  # refused / reset while it starts
            pass
        if time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{args[:3]} was not ready at {url} after {timeout:g} s:\n{_log_tail(proc.log_path)}")
        time.sleep(poll_s)


def stop_process(proc, timeout=5.0):
    """Terminate, then kill if it lingers; remove its log file."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    log_path = getattr(proc, "log_path", None)
    if log_path and os.path.exists(log_path):
        os.unlink(log_path)


def start_fake_gigachat(*extra_args, env=None):
    """Run tests/fake_gigachat.py on a free port; returns the Popen (see start_process)."""
    port = free_port()
    scheme = "https" if "--tls-cert" in extra_args else "http"
    return start_process([PYTHON, os.path.join(TESTS_DIR, "fake_gigachat.py"), "--port", port, *extra_args],
                         env=env, port=port, scheme=scheme)


def sse_events(resp):
    """Parsed `data:` payloads of a streamed requests.Response; `[DONE]` stays a string."""
    out = []
    for line in resp.iter_lines():
        if line.startswith(b"data: "):
            data = line[6:].decode("utf-8")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def clean_env(**over) -> dict:
    """Env overlay for start_process: no developer .env, no GIGACHAT_/QWEN_/CHAT_ settings, no proxies."""
    env = {k: None for k in os.environ if k.startswith(("GIGACHAT_", "QWEN_", "CHAT_", "DEFAULT_SYSTEM"))}
    env.update({"HTTP_PROXY": None, "HTTPS_PROXY": None, "http_proxy": None, "https_proxy": None,
                "ALL_PROXY": None, "all_proxy": None, "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost", "NO_DOTENV": "1", "PYTHONUNBUFFERED": "1",
                "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.update(over)
    return env


def gigachat_env(fake) -> dict:
    return {"GIGACHAT_BASE_URL": fake.base_url + "/api/v1", "GIGACHAT_AUTH_URL": fake.base_url + "/api/v2/oauth",
            "GIGACHAT_CREDENTIALS": "good-key", "GIGACHAT_VERIFY_SSL_CERTS": "false",
            "GIGACHAT_SCOPE": "GIGACHAT_API_PERS"}


def start_qwen(model_dir, *extra, env=None, repo=REPO_ROOT, engine="transformers"):
    port = free_port()
    args = [PYTHON, os.path.join(repo, "qwen_server.py"), "-m", model_dir, "--engine", engine,
            "--port", port, *extra]
    return start_process(args, env=clean_env(**(env or {})), port=port, ready_path="/health", timeout=180, cwd=repo)


def start_gateway(qwen_url, fake, db_path, gunicorn_workers=None, repo=REPO_ROOT, **env_over):
    """`python chat.py` (one embedded gunicorn worker) or gunicorn with the project's gunicorn.conf.py, from `repo`."""
    port = free_port()
    env = clean_env(**gigachat_env(fake), QWEN_URL=qwen_url, CHAT_DB=db_path)
    env.update(env_over)
    if gunicorn_workers:
        args = [PYTHON, "-m", "gunicorn", "-c", os.path.join(repo, "gunicorn.conf.py"), "--workers",
                gunicorn_workers, "--bind", f"127.0.0.1:{port}", "chat:app"]
    else:
        args = [PYTHON, os.path.join(repo, "chat.py"), "--port", port]
    return start_process(args, env=env, port=port, ready_path="/health", timeout=90, cwd=repo)


def engine_chunks(engine, messages, params, cancel=None, timeout=10.0):
    """All chunks of engine.generate() (or the exception it raised), consumed in a thread that must
    finish within `timeout` seconds: a hang fails the test instead of stalling the run."""
    import threading
    box = {}

    def consume():
        try:
            box["chunks"] = list(engine.generate(messages, params, cancel or threading.Event()))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e
    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise AssertionError(f"engine.generate() still running after {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["chunks"]


def errors_running_at_once(fn, n=4) -> list:
    """Runs fn() in n threads started together; returns the exceptions they raised."""
    import threading
    errors = []

    def run():
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - collected for the caller
            errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def openai_client(proc, timeout=120):
    """The openai SDK pointed at a server the tests started (no retries: a failure shows at once)."""
    from openai import OpenAI
    return OpenAI(base_url=proc.base_url + "/v1", api_key="unused", max_retries=0, timeout=timeout)
