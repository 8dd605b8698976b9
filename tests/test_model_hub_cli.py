"""The catalogue (--list-models), the progress bar on a terminal, the memory warning, quant tags, and the
demo's ready block for a model named by its short name (tools/demo.py against the fake hub)."""
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

import pytest

from helpers import PYTHON, REPO_ROOT, free_port, stop_process
from hub_helpers import QWEN_05B_FILE, SMOL_FILE, SMOL_REPO, hub_env, merged_env, qwen_cli, repos_json, start_hub
from model_hub.names import gguf_quant, gguf_quants, pick_gguf, split_complete

assert repos_json  # a fixture, used by name
SIZES = ("0.5B", "1.5B", "3B", "7B", "14B", "32B")


def test_list_models_prints_each_size_with_repo_size_memory_and_engine(tmp_path):
    r = qwen_cli("--list-models", env=hub_env(tmp_path / "hf", "http://127.0.0.1:9"))
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if re.search(r"/Qwen2.5-Coder-[\d.]+B-Instruct-", line)]
    assert len(rows) == 2 * len(SIZES)
    for size in SIZES:  # NAME REPO:QUANT FILE GB NEEDS GB RAM FITS ENGINE, then REPO:QUANT FILE GB NEEDS GB VRAM ...
        gguf = next(row for row in rows if row[0] == f"qwen2.5-coder-{size.lower()}")
        assert gguf[1] == f"Qwen/Qwen2.5-Coder-{size}-Instruct-GGUF:Q4_K_M"
        assert gguf[3] == gguf[5] == "GB" and gguf[6] == "RAM" and gguf[8:] == ["llamacpp", "(CPU)"]
        file_gb, need_gb = float(gguf[2]), float(gguf[4])
        assert 0.3 < file_gb < need_gb < file_gb * 1.5 + 1  # weights + the KV cache + buffers
        exl2 = rows[rows.index(gguf) + 1]
        assert exl2[0] == f"bartowski/Qwen2.5-Coder-{size}-Instruct-exl2:4_25"
        assert exl2[5] == "VRAM" and exl2[7:] == ["exllamav2", "(GPU)"]
    assert rows[0][7] == "yes"  # 0.5B needs ~1 GB of RAM: it fits here
    assert "16384 tokens" in r.stdout and "q4" in r.stdout


def test_progress_bar_on_a_terminal(repos_json, tmp_path):
    hub = start_hub(repos_json, "--rate", "60000000")
    env = merged_env(hub_env(tmp_path / "hf", hub.base_url))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 0-column pty gets an empty bar
    try:
        proc = subprocess.Popen([PYTHON, os.path.join(REPO_ROOT, "qwen_server.py"), "-m", f"{SMOL_REPO}:Q4_1",
                                 "--download-only"], env=env, cwd=REPO_ROOT, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        out, deadline = b"", time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(10) == 0, out.decode("utf-8", "replace")
    finally:
        os.close(master)
        stop_process(hub)
    text = out.decode("utf-8", "replace")
    assert "100%|" in text and "\r" in text, text  # tqdm's bar, redrawn in place
    assert f"downloading {SMOL_FILE}: 10%" not in text  # no log lines on a terminal


def test_memory_warning_comes_before_loading_a_model_that_does_not_fit(smollm2_gguf, tmp_path):
    # 10 M tokens of q4 KV cache for SmolLM2 is ~60 GiB: more than this machine has free.
    r = qwen_cli("-m", smollm2_gguf, "-l", "10000000", "--port", str(free_port()),
                 env=hub_env(tmp_path / "hf", "http://127.0.0.1:9"), timeout=180)
    lines = r.stderr.splitlines()
    warn = [i for i, line in enumerate(lines) if "needs about" in line]
    assert warn, r.stderr
    m = re.search(r"needs about ([\d.]+) GiB of RAM at 10000000 tokens with the q4 cache, and ([\d.]+) GiB is free",
                  lines[warn[0]])
    assert m and float(m.group(1)) > float(m.group(2)) and 55 < float(m.group(1)) < 70, lines[warn[0]]
    loaded = [i for i, line in enumerate(lines) if "llama.cpp: " in line or "cannot load" in line]
    assert loaded and warn[0] < loaded[0]  # warned before llama.cpp tried


@pytest.mark.parametrize("name, quant", [
    ("qwen2.5-coder-7b-instruct-q4_k_m.gguf", "Q4_K_M"), ("Qwen2.5-Coder-7B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"), ("qwen2.5-coder-32b-instruct-q4_k_m-00002-of-00005.gguf", "Q4_K_M"),
    ("Q8_0/model-Q8_0-00001-of-00002.gguf", "Q8_0"), ("model-f16.gguf", "F16"), ("model-BF16.gguf", "BF16"),
    ("mmproj-model-f16.gguf", None), ("README.md", None), ("model.gguf", None)])
def test_quant_tag_of_a_gguf_file_name(name, quant):
    assert gguf_quant(name) == quant


def test_quant_choice_is_case_insensitive_with_q4_k_m_the_default():
    files = ["a-Q8_0.gguf", "a-q4_k_m-00001-of-00002.gguf", "a-q4_k_m-00002-of-00002.gguf", "README.md"]
    quants = gguf_quants(files)
    assert list(quants) == ["Q4_K_M", "Q8_0"]
    assert pick_gguf(quants, None) == ("Q4_K_M", files[1:3]) == pick_gguf(quants, "q4_K_m")
    assert pick_gguf(quants, "q8_0") == ("Q8_0", ["a-Q8_0.gguf"]) and pick_gguf(quants, "Q5_K_M") is None
    assert pick_gguf(gguf_quants(["a-Q8_0.gguf", "a-Q6_K.gguf"]), None) is None  # no default: the user picks
    assert split_complete(files[1:3]) and not split_complete(files[1:2]) and split_complete(["a-Q8_0.gguf"])


def test_demo_ready_block_names_repo_quant_and_file(repos_json, tmp_path):
    hub = start_hub(repos_json)
    run_dir = tmp_path / "run"
    env = merged_env(hub_env(tmp_path / "hf", hub.base_url, RUN_DIR=str(run_dir),
                             CHAT_DB=str(tmp_path / "history.db")))
    demo = [PYTHON, os.path.join(REPO_ROOT, "tools", "demo.py")]
    try:
        r = subprocess.run([*demo, "start", "-m", "qwen2.5-coder-0.5b", "--engine", "llamacpp", "--qwen-port",
                            str(free_port()), "--chat-port", str(free_port()), "--detach"], env=env, cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    finally:
        stopped = subprocess.run([*demo, "stop"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        stop_process(hub)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"downloading {QWEN_05B_FILE}: 100%" in r.stderr  # the download ran in the foreground, before the start
    assert f"  Source     Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF:Q4_K_M  {QWEN_05B_FILE}" in r.stdout, r.stdout
    assert "Dual AI Chat is ready" in r.stdout and stopped.returncode == 0
