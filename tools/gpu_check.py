#!/usr/bin/env python3
"""`make gpu-check`: prove the exllamav2 GPU path on one machine with a CUDA GPU and no network.

Steps, each printed as PASS/FAIL with its time:
  1. GPU: torch sees CUDA; names the device, its capability, torch/CUDA/nvcc versions.
  2. exllamav2's JIT build (first: it is the long step, ~2.5 min on 16 cores). TORCH_CUDA_ARCH_LIST is the
     device's capability, MAX_JOBS the core count, the build lands in .cache/torch_extensions/ and its log
     in .cache/gpu-check/. If the default (C++17) build fails, it is stopped at its first compiler error
     and built again with -std=c++20 (CUDA 13's nvcc rejects torch 2.11's ATen headers in C++17); if that
     fails too, the compiler's error lines are printed.
  3. tests/gpu (models built on the spot) with per-test PASS/FAIL, then the figures they recorded.
Exit status 0 only if every step passed. The packages the machine lacks come from .whl/ (make gpu-wheels)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / ".cache" / "gpu-check"
EXT_DIR = REPO / ".cache" / "torch_extensions"
BUILD_TIMEOUT_S = int(os.environ.get("GPU_CHECK_BUILD_TIMEOUT", "420"))
TESTS_TIMEOUT_S = int(os.environ.get("GPU_CHECK_TESTS_TIMEOUT", "300"))
BUILD = ("from engines.exllamav2_engine import import_exllamav2; from qwen_api.settings import QwenSettings; "
         "s = QwenSettings(); import_exllamav2(s.exllamav2_jit_std, s.exllamav2_jit_verbose); "
         "print('exllamav2 extension loaded')")
failures = []


def report(step, ok, seconds, detail=""):
    print(f"{'PASS' if ok else 'FAIL'}  {step} ({seconds:.0f} s){': ' + detail if detail else ''}", flush=True)
    if not ok:
        failures.append(step)


def check_gpu():
    t0 = time.perf_counter()
    try:
        import torch
    except ImportError as e:
        report("GPU", False, 0, f"torch is not importable ({e})")
        return None
    if not torch.cuda.is_available():
        report("GPU", False, time.perf_counter() - t0, f"torch {torch.__version__} sees no CUDA device")
        return None
    cap = "%d.%d" % torch.cuda.get_device_capability(0)
    nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    try:
        nvcc_v = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except (OSError, IndexError):
        nvcc_v = "nvcc not found (the JIT build needs it)"
    report("GPU", True, time.perf_counter() - t0,
           f"{torch.cuda.get_device_name(0)}, capability {cap}, {torch.cuda.mem_get_info()[1] / 2**30:.0f} GiB; "
           f"Python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}); {nvcc_v}")
    return cap


def build(std, env):
    """One JIT build in a subprocess; the default-flags try is stopped a few seconds after its first error."""
    env = dict(env, EXLLAMAV2_JIT_VERBOSE="1")
    if std:
        env["EXLLAMAV2_JIT_STD"] = std
    log_path = OUT / f"exllamav2-build-{std or 'default'}.log"
    p = subprocess.Popen([sys.executable, "-c", BUILD], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)

    def stop():
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    watchdog = threading.Timer(BUILD_TIMEOUT_S, stop)
    watchdog.start()
    with open(log_path, "w", encoding="utf-8") as log:
        for line in p.stdout:
            log.write(line)
            if not std and line.startswith("FAILED:"):
                threading.Timer(5, stop).start()  # let ninja print this compiler's errors, then retry
    p.wait()
    watchdog.cancel()
    for lock in EXT_DIR.glob("**/lock"):  # a killed build leaves torch's lock: the next one would wait forever
        lock.unlink()
    return p.returncode == 0, log_path


def compiler_errors(log_path, n=25):
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    errs = [ln for ln in lines if re.search(r"\berror\b|FAILED:", ln)]
    return "\n".join((errs or lines)[:n])


def build_exllamav2(env):
    t0 = time.perf_counter()
    tries = [env["EXLLAMAV2_JIT_STD"]] if env.get("EXLLAMAV2_JIT_STD") else [None, "c++20"]
    for std in tries:
        ok, log_path = build(std, env)
        if ok:
            if std:
                env["EXLLAMAV2_JIT_STD"] = std  # every later process must build with the same flags
            # Any change in these makes torch build the extension again: qwen_server and gpu-bench source them.
            (OUT / "exllamav2.env").write_text("".join(
                f"{k}={env.get(k, '')}\n" for k in ("TORCH_CUDA_ARCH_LIST", "TORCH_EXTENSIONS_DIR", "EXLLAMAV2_JIT_STD")))
            report("exllamav2 JIT build", True, time.perf_counter() - t0,
                   f"{'-std=' + std if std else 'default flags'}; log {log_path.relative_to(REPO)}"
                   + f"; its settings for qwen_server: {(OUT / 'exllamav2.env').relative_to(REPO)}")
            return True
        print(f"      build with {'-std=' + std if std else 'default flags'} failed; compiler says:\n"
              + compiler_errors(log_path), flush=True)
    report("exllamav2 JIT build", False, time.perf_counter() - t0, f"see {OUT.relative_to(REPO)}/exllamav2-build-*.log")
    return False


def run_tests(env):
    t0 = time.perf_counter()
    log_path = OUT / "tests.log"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests/gpu"]
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TESTS_TIMEOUT_S)
        out, code = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        code = f"timeout after {TESTS_TIMEOUT_S} s"
    log_path.write_text(out, encoding="utf-8")
    passed = 0
    for line in out.splitlines():
        m = re.match(r"(PASSED|FAILED|ERROR|SKIPPED)\s+(\S+)(.*)", line)
        if m:
            word = {"PASSED": "PASS", "SKIPPED": "SKIP"}.get(m.group(1), "FAIL")
            passed += word == "PASS"
            print(f"      {word}  {m.group(2).replace('tests/gpu/', '')}{m.group(3)[:200]}", flush=True)
    if code != 0:
        print("\n".join(out.splitlines()[-40:]))
    report("tests/gpu", code == 0 and passed > 0, time.perf_counter() - t0,
           f"{passed} passed, exit {code}; log {log_path.relative_to(REPO)}")


def show_figures(path):
    if not path.exists():
        return
    print("\nFigures (random-weight models; speed of small models, not of a 7B):")
    for line in path.read_text(encoding="utf-8").splitlines():
        fig = json.loads(line)
        print("  " + fig.pop("figure") + ": " + ", ".join(f"{k}={v}" for k, v in fig.items()))


def main():
    t0 = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    cap = check_gpu()
    if cap is None:
        print("\ngpu-check: FAIL (GPU): nothing else can be checked without CUDA")
        return 1
    figures = OUT / "figures.jsonl"
    figures.unlink(missing_ok=True)
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", cap),
               MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 8)), TORCH_EXTENSIONS_DIR=str(EXT_DIR),
               GPU_MODELS_DIR=str(REPO / ".cache" / "gpu-models"), GPU_FIGURES=str(figures), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if build_exllamav2(env):
        run_tests(env)
        show_figures(figures)
    total = time.perf_counter() - t0
    print(f"\ngpu-check: {'FAIL (' + ', '.join(failures) + ')' if failures else 'PASS'} in {total:.0f} s "
          f"(budget 480 s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
