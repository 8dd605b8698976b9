"""Real servers for the tests, each a subprocess on a free 127.0.0.1 port:
qwen_server.py on the two small models, the fake GigaChat, and the gateway."""
import os

import pytest

import fake_qwen
import helpers
import webpage
from helpers import QUIET_ENV, clean_env, start_fake_gigachat, stop_process
from tools.make_models import ensure_smollm2, ensure_smollm2_gguf, ensure_tiny_qwen, ensure_tiny_qwen_gguf

# Tests must not pick up a developer's .env or proxies (clean_env); quiet logs, one OpenMP thread.
TEST_ENV = QUIET_ENV
CLEAN_ENV = clean_env(**TEST_ENV)


def start_qwen(model_dir, *extra, env=None, engine="transformers"):
    return helpers.start_qwen(model_dir, *extra, env={**TEST_ENV, **(env or {})}, engine=engine)


@pytest.fixture(scope="session")
def smollm2_dir():
    return str(ensure_smollm2())


@pytest.fixture(scope="session")
def smollm2_gguf():
    return str(ensure_smollm2_gguf())


@pytest.fixture(scope="session")
def tiny_qwen_dir():
    return str(ensure_tiny_qwen())


@pytest.fixture(scope="session")
def qwen_smol(smollm2_dir):
    """qwen_server on the real SmolLM2-135M-Instruct (real answers)."""
    proc = start_qwen(smollm2_dir, "-l", "2048")
    proc.engine, proc.model = "transformers", "smollm2-135m-instruct"
    yield proc
    stop_process(proc)


@pytest.fixture(scope="session")
def qwen_llama(smollm2_gguf):
    """qwen_server on the same SmolLM2, straight from its GGUF: `--engine auto` on the dir holding it
    picks the llamacpp engine (q4 KV cache, the default)."""
    proc = start_qwen(os.path.dirname(smollm2_gguf), "-l", "2048", engine="auto")
    proc.engine, proc.model = "llamacpp", "SmolLM2-135M-Instruct.Q4_1"
    yield proc
    stop_process(proc)


@pytest.fixture(scope="session", params=["transformers", "llamacpp"])
def smol_server(request):
    """The same SmolLM2 on either engine: tests of behaviour every engine must have."""
    return request.getfixturevalue("qwen_smol" if request.param == "transformers" else "qwen_llama")


@pytest.fixture(scope="session")
def qwen_tiny(tiny_qwen_dir):
    """qwen_server on the tiny random Qwen2 (the Qwen architecture and template), small context."""
    proc = start_qwen(tiny_qwen_dir, "-l", "512")
    yield proc
    stop_process(proc)


@pytest.fixture(scope="session")
def qwen_tiny_2k(tiny_qwen_dir):
    """The tiny Qwen2 with room for a tool list (its toy tokenizer spends many tokens on one)."""
    proc = start_qwen(tiny_qwen_dir, "-l", "2048")
    yield proc
    stop_process(proc)


@pytest.fixture(scope="session")
def tiny_qwen_gguf():
    return str(ensure_tiny_qwen_gguf())


@pytest.fixture(scope="session")
def qwen_tiny_llama(tiny_qwen_gguf):
    """The tiny Qwen2 as a Qwen2 GGUF on the llamacpp engine: Qwen2.5's vocabulary layout and template
    on llama.cpp (tests/MODELS.md)."""
    proc = start_qwen(tiny_qwen_gguf, "-l", "2048", engine="llamacpp")
    yield proc
    stop_process(proc)


@pytest.fixture(scope="session")
def fake_gigachat():
    proc = start_fake_gigachat()
    yield proc
    stop_process(proc)


def start_gateway(qwen_url, fake, tmp_path, gunicorn_workers=None, **env_over):
    """The gateway on `qwen_url` and the fake GigaChat, its history in tmp_path/history.db."""
    return helpers.start_gateway(qwen_url, fake, str(tmp_path / "history.db"), gunicorn_workers,
                                 **{**TEST_ENV, **env_over})


@pytest.fixture(scope="session")
def gateway(qwen_smol, fake_gigachat, tmp_path_factory):
    proc = start_gateway(qwen_smol.base_url, fake_gigachat, tmp_path_factory.mktemp("gw"))
    yield proc
    stop_process(proc)


@pytest.fixture(scope="module")
def qwen():
    """A fake Qwen upstream (tests/fake_qwen.py: it can fail or answer oddly on demand), one per module."""
    server = fake_qwen.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (tests/pg_server.py) for the history tests run on both backends."""
    import pg_server
    server = pg_server.PostgresServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium for the web page tests (tests/webpage.py)."""
    yield from webpage.launch_browser()
