"""qwen_server's start-up probe: the engine generates one token before the server says "ready".

An engine whose native code can kill its process (llama.cpp: its AMX kernels segfault on the first
token on some Intel Xeons) also does it in a child process, `python -m qwen_api.startup ...`, which
loads while the server loads its own copy: a child killed by a signal becomes one line naming the
engine, the signal and what to set (the caller exits with status 2), where it would otherwise crash
the server at its first question, again and again. The server's engine generates its own token (every
engine) only once the child has succeeded."""
import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from engines.base import GenParams
from engines.factory import create_engine

log = logging.getLogger("qwen_server")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE_PROMPT = "<|im_end|>"  # one special token for most chat models: no later prompt starts with it
# Test hook (tests/test_startup_probe.py): the child sends itself this signal where its token would be
# generated, so that the parent's handling of a real crash runs end to end.
FAULT_ENV = "QWEN_TEST_PROBE_SIGNAL"


class ProbeCrash(Exception):
    """The engine's native code killed the probe child: the message is the one line for the user."""


def first_token(engine) -> float:
    """One greedy token from the loaded engine; seconds it took. Raises what the engine raises."""
    t0 = time.perf_counter()
    params = GenParams(temperature=0.0, max_tokens=1, repetition_penalty=1.0)
    for _ in engine.generate_ids(engine.tokenize(PROBE_PROMPT), params, threading.Event()):
        pass
    return time.perf_counter() - t0


def start_probe(engine, model_path, args) -> subprocess.Popen:
    """`args`: qwen_server's settings (qwen_api/settings.QwenSettings). Starts loading the model and generating one token in a child process (the server loads its own copy
    meanwhile); check_probe() waits for it."""
    argv = [sys.executable, "-m", "qwen_api.startup", "--engine", engine.name, "-m", model_path, "--cache", args.cache]
    for flag, value in (("-l", args.max_seq_len), ("-t", args.threads), ("--threads-batch", args.threads_batch)):
        argv += [flag, str(value)] if value else []
    argv += ["--llama-amx"] if args.llama_amx else []
    return subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def check_probe(engine, child: subprocess.Popen):
    """ProbeCrash when a signal killed the child. A child that failed otherwise (a bad model file...) is left
    to the server's own load, which says why."""
    t0 = time.perf_counter()
    _, err = child.communicate()
    if child.returncode >= 0:
        log.debug("start-up probe: child exited with %d (waited %.1f s)", child.returncode, time.perf_counter() - t0)
        return
    log.debug("start-up probe child's stderr:\n%s", err.decode("utf-8", "replace")[-4000:])
    oom = " (SIGKILL: out of memory?)" if -child.returncode == signal.SIGKILL else ""
    raise ProbeCrash(f"the {engine.name} engine crashed with {_signal_name(-child.returncode)}{oom} generating its "
                     f"first token: {engine.crash_hint()}")


def _signal_name(num):
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _child(argv=None):
    p = argparse.ArgumentParser(description="qwen_server's start-up probe (run by qwen_server, not by hand)")
    p.add_argument("--engine", required=True)
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("-l", "--max-seq-len", type=int)
    p.add_argument("-t", "--threads", type=int)
    p.add_argument("--threads-batch", type=int)
    p.add_argument("--llama-amx", action="store_true")
    a = p.parse_args(argv)
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash here is expected news, not a core file
    engine = create_engine(a.engine, a.model, a.cache, a.max_seq_len, a.threads, a.threads_batch, a.llama_amx)
    engine.load()
    fault = os.environ.get(FAULT_ENV)
    if fault:
        signal.raise_signal(signal.Signals[fault])
    first_token(engine)
    return 0


def _run_child():
    """_child(), then out through os._exit: no interpreter teardown, during which a thread still inside
    native code (llguidance reading the vocabulary in the background) segfaulted as it took the GIL back,
    which read as a crash of the engine (1 start in 2 of a 0.5B GGUF on a busy 2-core machine)."""
    try:
        code = _child()
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 2
    except BaseException:  # noqa: BLE001 - shown, then a plain exit status (not a signal)
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _run_child()
