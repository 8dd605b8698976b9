"""The gateway's settings (gateway/settings.py): a bad value in the environment stops chat.py and gunicorn at
start, in one line that names the variable, instead of a silent default or a traceback mid-request; --help
shows the defaults that the code uses."""
import os
import subprocess

import pytest

from conftest import CLEAN_ENV
from helpers import PYTHON, REPO_ROOT, free_port

BAD = [("CHAT_SECRETS_TO_GIGACHAT", "maybe"), ("QWEN_TIMEOUT", "soon"), ("GUNICORN_THREADS", "0"),
       ("CHAT_PORT", "http"), ("GIGACHAT_MAX_CONCURRENCY", "many"), ("QWEN_TOP_P", "2"), ("LOG_LEVEL", "loud"),
       ("CHAT_DB_POOL_MAX", "-1"), ("SLOW_CLIENT_TIMEOUT", "0")]


def run(args, **env):
    env = {**CLEAN_ENV, "CHAT_PORT": str(free_port()), "CHAT_DB": os.devnull, **env}
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in env.items() if v is not None})


@pytest.mark.parametrize("name, value", BAD)
def test_a_bad_value_stops_chat_py_naming_its_variable(name, value):
    r = run([PYTHON, "chat.py"], **{name: value})
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"chat.py: error: {name}={value!r}: ")


@pytest.mark.parametrize("name, value", BAD[:3])
def test_a_bad_value_stops_gunicorn_naming_its_variable(name, value):
    r = run([os.path.join(os.path.dirname(PYTHON), "gunicorn"), "-c", "gunicorn.conf.py", "chat:app"], **{name: value})
    assert r.returncode != 0 and f"gunicorn.conf.py: error: {name}={value!r}: " in r.stderr
    assert "Traceback" not in r.stderr


def test_help_shows_the_settings_and_their_defaults():
    out = run([PYTHON, "chat.py", "--help"], QWEN_TIMEOUT="42").stdout
    assert "--port PORT  port (env CHAT_PORT, default " in out and "QWEN_TIMEOUT (default 42.0)" in out
    for name in ("CHAT_SECRETS_TO_GIGACHAT (default refuse)", "GUNICORN_THREADS (default 16)", "SLOW_CLIENT_TIMEOUT"):
        assert name in out
