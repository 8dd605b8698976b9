"""`qwen_server.py -m owner/repo[:QUANT]` and short names, for real: huggingface_hub downloads from the
fake hub (tests/fake_hub.py, HF_ENDPOINT) into a test cache, and the server answers with the model."""
import os
import socket
import time

from helpers import PYTHON, REPO_ROOT, free_port, http, start_process, stop_process
from hub_helpers import (
    QWEN_05B_FILE,
    SMOL_FILE,
    SMOL_REPO,
    hub_env,
    hub_requests,
    one_error_line,
    qwen_cli,
    repos_json,
    sha256,
    start_hub,
)

assert repos_json  # a fixture, used by name


def _serve(spec, env, *extra):
    port = free_port()
    args = [PYTHON, os.path.join(REPO_ROOT, "qwen_server.py"), "-m", spec, "--port", port, "-l", "1024", *extra]
    return start_process(args, env=env, port=port, ready_path="/health", timeout=180)


def _ask(proc):
    status, _, body = http("POST", proc.base_url + "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 12,
        "temperature": 0}, timeout=60)
    assert status == 200, body
    return body


def test_download_with_progress_then_a_real_answer_then_offline_from_the_cache(repos_json, smollm2_gguf, tmp_path):
    hub = start_hub(repos_json, "--rate", "40000000")  # ~2.5 s for the 98 MB file: progress lines to see
    cache = tmp_path / "hf"
    try:
        proc = _serve(f"{SMOL_REPO}:q4_1", hub_env(cache, hub.base_url))  # the quant tag in lower case
        try:
            body = _ask(proc)
            assert body["choices"][0]["message"]["content"].strip() and body["usage"]["completion_tokens"] > 0
            st = http("GET", proc.base_url + "/status")[2]
        finally:
            log = open(proc.log_path, encoding="utf-8").read()
            stop_process(proc)
        gets = [r for r in hub_requests(hub) if r["method"] == "GET" and r["path"].endswith(SMOL_FILE)]
    finally:
        stop_process(hub)
    assert st["source"]["repo"] == SMOL_REPO and st["source"]["quant"] == "Q4_1"
    assert st["source"]["file"] == SMOL_FILE and st["source"]["from_cache"] is False
    assert st["model"] == "SmolLM2-135M-Instruct-Q4_1"
    assert len(gets) == 1 and gets[0]["range"] is None  # one whole download, not the Q8_0 file
    for pct in (10, 50, 100):  # not a terminal: log lines, not a bar
        assert f"downloading {SMOL_FILE}: {pct}% (" in log, log
    assert f"{SMOL_FILE}: sha256 checked" in log and "\r" not in log
    assert sha256(st["source"]["path"]) == sha256(smollm2_gguf)

    # The fake is gone and HF_ENDPOINT is a dead port: the cached model starts with no network call.
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    proc = _serve(f"{SMOL_REPO}:Q4_1", hub_env(cache, dead))
    try:
        assert time.monotonic() - t0 < 60
        st2 = http("GET", proc.base_url + "/status")[2]
        assert st2["source"]["from_cache"] is True and st2["source"]["path"] == st["source"]["path"]
        assert _ask(proc)["choices"][0]["message"]["content"].strip()
        log = open(proc.log_path, encoding="utf-8").read()
        assert "downloading" not in log and "(cached)" in log
    finally:
        stop_process(proc)
    r = qwen_cli("-m", f"{SMOL_REPO}:Q4_1", "--download-only", env=hub_env(cache, dead, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0 and r.stdout.strip() == st["source"]["path"], r.stderr  # HF_HUB_OFFLINE=1 too


def test_a_connection_cut_mid_file_resumes_where_it_stopped(repos_json, smollm2_gguf, tmp_path):
    hub = start_hub(repos_json, "--cut-after", "35000000")  # huggingface_hub keeps what came in 10 MiB chunks
    try:
        r = qwen_cli("-m", f"{SMOL_REPO}:Q4_1", "--download-only", env=hub_env(tmp_path / "hf", hub.base_url))
        gets = [q for q in hub_requests(hub) if q["method"] == "GET" and q["path"].endswith(SMOL_FILE)]
    finally:
        stop_process(hub)
    assert r.returncode == 0, r.stderr
    assert len(gets) == 2 and gets[0]["range"] is None
    resumed_at = int(gets[1]["range"].removeprefix("bytes=").removesuffix("-"))  # the second GET: the rest only
    assert 30 * 2**20 <= resumed_at <= 35_000_000
    assert sha256(r.stdout.strip()) == sha256(smollm2_gguf)
    assert f"{SMOL_FILE}: sha256 checked" in r.stderr


def test_a_checksum_mismatch_is_one_clear_line_and_leaves_no_file(repos_json, tmp_path):
    cache = tmp_path / "hf"
    hub = start_hub(repos_json, "--corrupt", SMOL_FILE)
    try:
        r = qwen_cli("-m", f"{SMOL_REPO}:Q4_1", "--download-only", env=hub_env(cache, hub.base_url))
    finally:
        stop_process(hub)
    line = one_error_line(r)
    assert "checksum mismatch" in line and SMOL_FILE in line and "run again" in line
    left = [f for _, _, files in os.walk(cache) for f in files if not f.endswith(".lock")]
    assert not [f for f in left if f.endswith(".gguf") or len(f) == 64], left  # neither link nor blob kept
    hub = start_hub(repos_json)  # the next run downloads it again, whole
    try:
        r = qwen_cli("-m", f"{SMOL_REPO}:Q4_1", "--download-only", env=hub_env(cache, hub.base_url))
    finally:
        stop_process(hub)
    assert r.returncode == 0 and r.stdout.strip().endswith(SMOL_FILE), r.stderr


def test_unknown_quant_lists_the_quants_the_repo_has(repos_json, tmp_path):
    hub = start_hub(repos_json)
    try:
        env = hub_env(tmp_path / "hf", hub.base_url)
        gguf = one_error_line(qwen_cli("-m", f"{SMOL_REPO}:Q5_K_M", env=env))
        exl2 = one_error_line(qwen_cli("-m", "test-org/Tiny-exl2:3_0", env=env))
        exl2_main = one_error_line(qwen_cli("-m", "test-org/Tiny-exl2", env=env))  # main holds no model
        no_config = one_error_line(qwen_cli("-m", "test-org/Tiny-exl2:6_5", env=env))
        missing = one_error_line(qwen_cli("-m", "test-org/no-such-model", env=env))
    finally:
        stop_process(hub)
    assert "no quant 'Q5_K_M'" in gguf and "it has: Q4_1, Q8_0" in gguf
    assert "no quant '3_0'" in exl2 and "it has: 4_25, 6_5" in exl2
    assert "no model on its main branch; it has: 4_25, 6_5" in exl2_main
    assert "test-org/Tiny-exl2:6_5 has no config.json" in no_config
    assert "test-org/no-such-model: no such model repository" in missing
    assert not os.path.exists(tmp_path / "hf" / "models--test-org--SmolLM2-135M-Instruct-GGUF" / "blobs")


def test_unreachable_hub_and_nothing_cached_exits_2_within_seconds(tmp_path):
    refused = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    line = one_error_line(qwen_cli("-m", f"{SMOL_REPO}:Q4_1", env=hub_env(tmp_path / "hf", refused)))
    assert time.monotonic() - t0 < 15
    assert SMOL_REPO in line and "check the network or HF_ENDPOINT" in line
    # A hub that accepts the connection and never answers: 5 s per call (HF_HUB_ETAG_TIMEOUT when set).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        for timeout, most in ((None, 20), ("1", 12)):
            t0 = time.monotonic()
            env = hub_env(tmp_path / "hf", f"http://127.0.0.1:{silent.getsockname()[1]}", HF_HUB_ETAG_TIMEOUT=timeout)
            line = one_error_line(qwen_cli("-m", f"{SMOL_REPO}:Q4_1", env=env))
            assert time.monotonic() - t0 < most and "Timeout" in line, line
    line = one_error_line(qwen_cli("-m", f"{SMOL_REPO}:Q4_1", env=hub_env(tmp_path / "hf", refused,
                                                                          HF_HUB_OFFLINE="1")))
    assert "not in the cache" in line and "HF_HUB_OFFLINE" in line


def test_split_gguf_and_exl2_branch_download_and_start_from_the_cache(repos_json, tmp_path):
    cache = tmp_path / "hf"
    hub = start_hub(repos_json)
    try:
        split = qwen_cli("-m", "test-org/Split-GGUF:q4_k_m", "--download-only", env=hub_env(cache, hub.base_url))
        exl2 = qwen_cli("-m", "test-org/Tiny-exl2:4_25", "--download-only", env=hub_env(cache, hub.base_url))
    finally:
        stop_process(hub)
    assert split.returncode == 0 and exl2.returncode == 0, split.stderr + exl2.stderr
    first = split.stdout.strip()
    assert first.endswith("model-Q4_K_M-00001-of-00002.gguf")
    assert sorted(os.listdir(os.path.dirname(first))) == ["model-Q4_K_M-00001-of-00002.gguf",
                                                          "model-Q4_K_M-00002-of-00002.gguf"]  # not Q8_0
    snap = exl2.stdout.strip()
    assert sorted(os.listdir(snap)) == ["config.json", "model.safetensors", "tokenizer.json"]
    dead = hub_env(cache, f"http://127.0.0.1:{free_port()}")
    assert qwen_cli("-m", "test-org/Split-GGUF:Q4_K_M", "--download-only", env=dead).stdout.strip() == first
    assert qwen_cli("-m", "test-org/Tiny-exl2:4_25", "--download-only", env=dead).stdout.strip() == snap
    os.unlink(os.path.join(os.path.dirname(first), "model-Q4_K_M-00002-of-00002.gguf"))  # an incomplete split
    assert "check the network" in one_error_line(qwen_cli("-m", "test-org/Split-GGUF:Q4_K_M", env=dead))


def test_short_names_map_onto_the_catalogue(repos_json, tmp_path):
    hub = start_hub(repos_json)
    try:
        env = hub_env(tmp_path / "hf", hub.base_url)
        proc = _serve("qwen2.5-coder-0.5b", env, "--engine", "llamacpp")
        try:
            st = http("GET", proc.base_url + "/status")[2]
            assert _ask(proc)["choices"][0]["message"]["content"].strip()
        finally:
            stop_process(proc)
        gpu = one_error_line(qwen_cli("-m", "qwen2.5-coder-7b", "--engine", "exllamav2", env=env))
        big = one_error_line(qwen_cli("-m", "Qwen2.5-Coder-32B-Instruct", env=env))
    finally:
        stop_process(hub)
    assert st["source"]["repo"] == "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF" and st["source"]["quant"] == "Q4_K_M"
    assert st["source"]["file"] == QWEN_05B_FILE
    assert "bartowski/Qwen2.5-Coder-7B-Instruct-exl2: no such model repository" in gpu  # EXL2 for exllamav2
    assert "Qwen/Qwen2.5-Coder-32B-Instruct-GGUF: no such model repository" in big  # case, -instruct: same entry


def test_a_missing_local_path_is_tried_as_a_repo_only_when_it_looks_like_one(tmp_path):
    env = hub_env(tmp_path / "hf", f"http://127.0.0.1:{free_port()}")
    repo_like = one_error_line(qwen_cli("-m", "models/not-here", env=env))
    assert "models/not-here" in repo_like and "pass -m with a local path" in repo_like
    path = one_error_line(qwen_cli("-m", "./models/not-here.gguf", "--port", str(free_port()), env=env))
    assert "not-here.gguf" in path and "download" not in path


def test_hf_home_and_hf_token_are_honoured(repos_json, tmp_path):
    hub = start_hub(repos_json)
    try:
        env = hub_env(tmp_path / "unused", hub.base_url, HF_HUB_CACHE=None, HF_HOME=str(tmp_path / "home"),
                      HF_TOKEN="hf_fake_token")
        r = qwen_cli("-m", "test-org/Split-GGUF:Q8_0", "--download-only", env=env)
        seen = [q for q in hub_requests(hub) if "/Split-GGUF" in q["path"]]
    finally:
        stop_process(hub)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(tmp_path / "home" / "hub" / "models--test-org--Split-GGUF")), r.stdout
    assert seen and all(q["authorization"] == "Bearer hf_fake_token" for q in seen)  # the API call and the file


def test_a_gguf_bigger_than_the_free_ram_is_warned_about_before_it_downloads(repos_json, tmp_path):
    hub = start_hub(repos_json)
    try:
        r = qwen_cli("-m", "test-org/Huge-GGUF", "--download-only", env=hub_env(tmp_path / "hf", hub.base_url))
    finally:
        stop_process(hub)
    lines = r.stderr.splitlines()
    warned = [i for i, line in enumerate(lines) if "test-org/Huge-GGUF needs at least 4096.5 GiB of RAM" in line]
    assert warned, r.stderr
    # huggingface_hub then refuses a plain HTTP download over 50 GB: that too is one line, not a traceback
    assert "too large" in one_error_line(r)
    assert not [f for d, _, files in os.walk(tmp_path / "hf") for f in files if "/blobs" in d or "/snapshots" in d]


def test_a_hugging_face_model_repo_is_served_by_transformers(repos_json, tmp_path):
    hub = start_hub(repos_json)
    try:
        proc = _serve("test-org/SmolLM2-135M-Instruct", hub_env(tmp_path / "hf", hub.base_url), "--engine", "auto")
        try:
            st = http("GET", proc.base_url + "/status")[2]
            assert _ask(proc)["choices"][0]["message"]["content"].strip()
        finally:
            stop_process(proc)
    finally:
        stop_process(hub)
    assert st["engine"] == "transformers" and st["model"] == "SmolLM2-135M-Instruct"
    assert st["source"]["quant"] is None and st["source"]["file"] is None
    assert sorted(os.listdir(st["source"]["path"])) == sorted(st["source"]["files"])
    assert "model.safetensors" in st["source"]["files"] and "chat_template.jinja" in st["source"]["files"]
