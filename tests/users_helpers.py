"""Users for the tests: created with the real CLI (`python chat.py users ...`) on a history database."""
import os
import subprocess

import requests

from helpers import PYTHON, REPO_ROOT, clean_env


def users_cli(target, *args, check=True):
    """Runs `python chat.py users ARGS` on the history `target`; returns the CompletedProcess."""
    r = subprocess.run([PYTHON, os.path.join(REPO_ROOT, "chat.py"), "users", *map(str, args)], cwd=REPO_ROOT,
                       env={k: v for k, v in {**os.environ, **clean_env(CHAT_DB=target)}.items() if v is not None},
                       capture_output=True, text=True, timeout=60)
    assert not check or r.returncode == 0, r.stdout + r.stderr
    return r


def add_user(target, name, *flags) -> str:
    """A new user's key: the last line of `users add`."""
    return users_cli(target, "add", name, *flags).stdout.strip().splitlines()[-1]


def ask(base, key, q="Привет", session=None, timeout=30):
    params = {"q": q, **({"session": session} if session else {})}
    return requests.get(base + "/gigachat", params=params, headers={"Authorization": f"Bearer {key}"},
                        timeout=timeout)
