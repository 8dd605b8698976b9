"""The fake hub (tests/fake_hub.py) and qwen_server runs against it, for the model_hub tests."""
import hashlib
import json
import os
import subprocess

import pytest

from helpers import PYTHON, REPO_ROOT, TESTS_DIR, clean_env, free_port, http, start_process

SMOL_REPO = "test-org/SmolLM2-135M-Instruct-GGUF"
SMOL_FILE = "SmolLM2-135M-Instruct-Q4_1.gguf"
QWEN_05B_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_repos(path, gguf, hf_dir, tmp):
    """The repos the fake serves: SmolLM2's GGUF under two quant tags, the same file as the catalogue's
    Qwen 0.5B (so a short name ends in a real answer), SmolLM2's Hugging Face dir, a split GGUF, an
    EXL2-style repo (branch = quant) and a GGUF too big for any machine."""
    parts = []
    for i in (1, 2):
        part = os.path.join(tmp, f"part{i}.bin")
        with open(part, "wb") as f:
            f.write(os.urandom(40_000))
        parts.append(part)
    weights = os.path.join(tmp, "weights.bin")
    with open(weights, "wb") as f:
        f.write(os.urandom(30_000))
    repos = {
        SMOL_REPO: {"main": {SMOL_FILE: gguf, "smollm2-135m-instruct-q8_0.gguf": gguf,
                             "README.md": {"text": "# SmolLM2 (fake hub)"}}},
        "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF": {"main": {QWEN_05B_FILE: gguf}},
        "test-org/Huge-GGUF": {"main": {"huge-Q4_K_M.gguf": {"zeros": 4 * 2**40}}},  # 4 TiB: more than any RAM
        "test-org/Split-GGUF": {"main": {"model-Q4_K_M-00001-of-00002.gguf": parts[0],
                                         "model-Q4_K_M-00002-of-00002.gguf": parts[1], "model-Q8_0.gguf": parts[0]}},
        "test-org/Tiny-exl2": {"main": {"README.md": {"text": "branches: 4_25, 6_5"}},
                               "4_25": {"config.json": {"text": '{"architectures": ["Qwen2ForCausalLM"]}'},
                                        "tokenizer.json": {"text": "{}"}, "model.safetensors": weights},
                               "6_5": {"README.md": {"text": "not uploaded yet"}}},
        "test-org/SmolLM2-135M-Instruct": {"main": {name: os.path.join(hf_dir, name) for name in os.listdir(hf_dir)}},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(repos, f)


@pytest.fixture(scope="session")
def repos_json(smollm2_gguf, smollm2_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fake-hub")
    path = str(tmp / "repos.json")
    write_repos(path, smollm2_gguf, smollm2_dir, str(tmp))
    return path


def start_hub(repos_json, *flags):
    port = free_port()
    return start_process([PYTHON, os.path.join(TESTS_DIR, "fake_hub.py"), "--port", port, "--repos", repos_json,
                          *flags], port=port, ready_path="/_health", timeout=60)


def hub_requests(hub) -> list:
    return http("GET", hub.base_url + "/_requests")[2]


def hub_env(cache, endpoint, **over) -> dict:
    """qwen_server's environment: the fake (or a dead port) as HF_ENDPOINT, the test's own cache."""
    return clean_env(**{"HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache) + "-home",
                        "HF_HUB_OFFLINE": "0", "HF_TOKEN": None, "HF_HUB_DISABLE_TELEMETRY": "1", "LOG_LEVEL": "INFO",
                        "OMP_NUM_THREADS": "1", **over})


def merged_env(overlay) -> dict:
    """os.environ with an overlay laid on it (a None value removes that variable), as start_process does."""
    full = {k: v for k, v in os.environ.items() if overlay.get(k, "") is not None}
    full.update({k: v for k, v in overlay.items() if v is not None})
    return full


def qwen_cli(*args, env, timeout=120):
    """qwen_server.py run to its end (--download-only, --list-models, a start that fails)."""
    return subprocess.run([PYTHON, os.path.join(REPO_ROOT, "qwen_server.py"), *args], env=merged_env(env),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(r) -> str:
    """The `qwen_server: error: ...` line of a failed run: exit code 2, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("qwen_server: error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]
