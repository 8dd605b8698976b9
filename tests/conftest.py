"""Real servers for the tests, each a subprocess on a free 127.0.0.1 port:
qwen_server.py on the two small models, the fake GigaChat, and the gateway."""
import os
import sys

import pytest

from helpers import PYTHON, REPO_ROOT, free_port, start_fake_gigachat, start_process, stop_process

sys.path.insert(0, REPO_ROOT)
from tools.make_models import ensure_smollm2, ensure_tiny_qwen  # noqa: E402

# Tests must not pick up a developer's .env or proxies.
CLEAN_ENV = {k: None for k in os.environ if k.startswith(("GIGACHAT_", "QWEN_", "CHAT_", "DEFAULT_SYSTEM"))}
CLEAN_ENV.update({"HTTP_PROXY": None, "HTTPS_PROXY": None, "http_proxy": None, "https_proxy": None,
                  "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING",
                  "OMP_NUM_THREADS": "1", "NO_DOTENV": "1"})


def start_qwen(model_dir, *extra, env=None):
    port = free_port()
    args = [PYTHON, os.path.join(REPO_ROOT, "qwen_server.py"), "-m", model_dir, "--engine", "transformers",
            "--port", port, *extra]
    return start_process(args, env={**CLEAN_ENV, **(env or {})}, port=port, ready_path="/health", timeout=120)


@pytest.fixture(scope="session")
def smollm2_dir():
    return str(ensure_smollm2())


@pytest.fixture(scope="session")
def tiny_qwen_dir():
    return str(ensure_tiny_qwen())


@pytest.fixture(scope="session")
def qwen_smol(smollm2_dir):
    """qwen_server on the real SmolLM2-135M-Instruct (real answers)."""
    proc = start_qwen(smollm2_dir, "-l", "2048")
    yield proc
    stop_process(proc)


@pytest.fixture(scope="session")
def qwen_tiny(tiny_qwen_dir):
    """qwen_server on the tiny random Qwen2 (the Qwen architecture and template), small context."""
    proc = start_qwen(tiny_qwen_dir, "-l", "512")
    yield proc
    stop_process(proc)


@pytest.fixture(scope="session")
def fake_gigachat():
    proc = start_fake_gigachat()
    yield proc
    stop_process(proc)


def gigachat_env(fake, **over):
    env = {"GIGACHAT_BASE_URL": fake.base_url + "/api/v1", "GIGACHAT_AUTH_URL": fake.base_url + "/api/v2/oauth",
           "GIGACHAT_CREDENTIALS": "good-key", "GIGACHAT_VERIFY_SSL_CERTS": "false", "GIGACHAT_SCOPE": "GIGACHAT_API_PERS"}
    env.update(over)
    return env


def start_gateway(qwen_url, fake, tmp_path, gunicorn_workers=None, **env_over):
    port = free_port()
    env = {**CLEAN_ENV, **gigachat_env(fake), "QWEN_URL": qwen_url, "CHAT_DB": str(tmp_path / "history.db")}
    env.update(env_over)
    if gunicorn_workers:
        args = [PYTHON, "-m", "gunicorn", "-c", os.path.join(REPO_ROOT, "gunicorn.conf.py"), "--workers",
                gunicorn_workers, "--bind", f"127.0.0.1:{port}", "chat:app"]
    else:
        args = [PYTHON, os.path.join(REPO_ROOT, "chat.py"), "--port", port]
    return start_process(args, env=env, port=port, ready_path="/health", timeout=60)


@pytest.fixture(scope="session")
def gateway(qwen_smol, fake_gigachat, tmp_path_factory):
    proc = start_gateway(qwen_smol.base_url, fake_gigachat, tmp_path_factory.mktemp("gw"))
    yield proc
    stop_process(proc)
