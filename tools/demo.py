"""`make run` / `make start` / `make stop`: the demo (qwen_server on a model + the gateway) as two
processes with their logs in files and their pids in pid files, then one "ready" block. MODEL is what
qwen_server.py -m takes: a path, a repo id owner/repo[:QUANT] or a short name (downloaded here first).

    python tools/demo.py start -m MODEL [--engine auto] [--qwen-port 5001] [--chat-port 5000] [--detach]
    python tools/demo.py stop

In the foreground Ctrl-C stops both; --detach returns once both answer, and `stop` ends exactly the
processes (and their process groups) named in the pid files, never anything found by name."""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_DIR = os.environ.get("RUN_DIR") or os.path.join(REPO, ".run")
SERVICES = {"qwen": "qwen_server.py", "chat": "chat.py"}  # name -> the script its pid must be running
READY_TIMEOUT_S = 180


def _pid_file(name):
    return os.path.join(RUN_DIR, f"{name}.pid")


def _log_file(name):
    return os.path.join(RUN_DIR, f"{name}.log")


def _running(name):
    """The pid in name's pid file if that process still runs our script (a reused pid is not ours)."""
    try:
        with open(_pid_file(name)) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if any(arg.endswith(SERVICES[name].encode()) for arg in cmdline) else None


def _port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _get_json(url, timeout=2.0):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local servers: never via a proxy
    with opener.open(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _spawn(name, args, env):
    log = open(_log_file(name), "ab")
    # A session of its own: Ctrl-C in the terminal reaches only this script, which stops both in order,
    # and `stop` can signal the whole group (qwen_server's embedded gunicorn has a worker process).
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, SERVICES[name]), *args], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    with open(_pid_file(name), "w") as f:
        f.write(f"{proc.pid}\n")
    return proc


def _wait_ready(procs, urls):
    deadline = time.monotonic() + READY_TIMEOUT_S
    for name, url in urls.items():
        while True:
            if procs[name].poll() is not None:
                raise SystemExit(f"{SERVICES[name]} exited (code {procs[name].returncode}); its log, "
                                 f"{_log_file(name)}, ends with:\n{_tail(_log_file(name))}")
            try:
                _get_json(url + "/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{SERVICES[name]} did not answer within {READY_TIMEOUT_S} s; see "
                                     f"{_log_file(name)}")
                time.sleep(0.2)


def _tail(path, n=1500):
    with open(path, "rb") as f:
        return f.read()[-n:].decode("utf-8", "replace")


def cpu_plan_line(plan):
    """The llamacpp engine's threads and wait policy, and why (engines/llamacpp_cpu.py)."""
    return (f"{plan['decode_threads']} decode / {plan['prompt_threads']} prompt threads ({plan['threads_why']}), "
            f"{plan['wait']}")


def fetch_model(model, engine, env):
    """A hub name (`owner/repo[:QUANT]`, a short name) is downloaded here, in the foreground: its progress
    shows in this terminal, and a model that cannot be had ends `make run` with qwen_server's one line."""
    if os.path.exists(model):
        return
    r = subprocess.run([sys.executable, os.path.join(REPO, "qwen_server.py"), "-m", model, "--engine", engine,
                        "--download-only"], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    if r.returncode:
        raise SystemExit(r.returncode)


def _source_line(source):
    if not source:
        return []
    what = f"{source['repo']}:{source['quant']}" if source.get("quant") else source["repo"]
    return [f"  Source     {what}  {source.get('file') or source['path']}"]


def ready_block(qwen_url, chat_url, detached):
    st = _get_json(qwen_url + "/status")
    gigachat = _get_json(chat_url + "/config").get("providers", {}).get("gigachat", {})
    rel = os.path.relpath(RUN_DIR)
    lines = [
        "", "Dual AI Chat is ready",
        f"  Web page   {chat_url}/",
        f"  API        curl -G {chat_url}/qwen --data-urlencode 'q=Привет!'   (OpenAI base_url {chat_url}/v1)",
        f"  Terminal   {os.path.relpath(sys.executable)} chat.py ask \"Привет!\"",
        f"  Model      {st['model']} on {st['engine']} ({st['device']}), KV cache {st['cache_mode']}, "
        f"context {st['max_seq_len']} tokens",
        *_source_line(st.get("source")),
        *([f"  CPU        {cpu_plan_line(st['cpu_plan'])}"] if st.get("cpu_plan") else []),
        "  GigaChat   " + ("configured" if gigachat.get("configured") else
                           "not configured (set GIGACHAT_CREDENTIALS in .env; Qwen works without it)"),
        f"  Logs       {rel}/qwen.log, {rel}/chat.log   (pids in {rel}/*.pid)",
        "  Stop       " + ("make stop" if detached else "Ctrl-C"), ""]
    return "\n".join(lines)


def start(args):
    os.makedirs(RUN_DIR, exist_ok=True)
    if any(_running(name) for name in SERVICES):
        raise SystemExit(f"The demo is already running (pid files in {RUN_DIR}): `make stop` first.")
    for port, var in ((args.qwen_port, "QWEN_PORT"), (args.chat_port, "CHAT_PORT")):
        if not _port_free(port):
            raise SystemExit(f"Port {port} is in use: stop what listens there or pick another "
                             f"(make run {var}=...).")
    qwen_url, chat_url = f"http://127.0.0.1:{args.qwen_port}", f"http://127.0.0.1:{args.chat_port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "QWEN_URL": qwen_url}
    fetch_model(args.model, args.engine, env)
    procs = {"qwen": _spawn("qwen", ["-m", args.model, "--engine", args.engine, "--port", str(args.qwen_port)],
                            env)}
    procs["chat"] = _spawn("chat", ["--port", str(args.chat_port)], env)
    try:
        _wait_ready(procs, {"qwen": qwen_url, "chat": chat_url})
        print(ready_block(qwen_url, chat_url, args.detach), flush=True)
    except BaseException:
        stop()
        raise
    if args.detach:
        return
    # Ctrl-C, a kill or a closed terminal all stop both (set even when started with SIGINT ignored, as `&` does).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        print(f"A server exited; see the logs in {os.path.relpath(RUN_DIR)}/", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        stop()


def stop(_args=None):
    """Ends the processes in the pid files (gateway first), each with its group; removes the pid files."""
    if _args is not None and not any(_running(name) for name in SERVICES):
        print(f"Nothing to stop: no running demo in {os.path.relpath(RUN_DIR)}/")
    for name in ("chat", "qwen"):
        pid = _running(name)
        if pid:
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            _signal_group(pid, signal.SIGKILL)
            print(f"stopped {SERVICES[name]} (pid {pid})")
        try:
            os.unlink(_pid_file(name))
        except FileNotFoundError:
            pass


def _signal_group(pid, sig):
    try:
        os.killpg(pid, sig)  # the group _spawn made: the server and any worker it forked
    except ProcessLookupError:
        pass


def _alive(pid):
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it when it is our child (foreground mode)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main(argv=None):
    p = argparse.ArgumentParser(description="Start or stop the demo: qwen_server + the gateway (make run/stop).")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start both, print where they are")
    s.add_argument("-m", "--model", required=True,
                   help="qwen_server.py -m: a model path, a repo id owner/repo[:QUANT] or a short name")
    s.add_argument("--engine", default="auto", help="qwen_server --engine (default auto)")
    s.add_argument("--qwen-port", type=int, default=5001)
    s.add_argument("--chat-port", type=int, default=5000)
    s.add_argument("--detach", action="store_true", help="return once both answer; `make stop` ends them")
    sub.add_parser("stop", help="stop what `start` started (from the pid files)")
    args = p.parse_args(argv)
    start(args) if args.command == "start" else stop(args)


if __name__ == "__main__":
    main()
