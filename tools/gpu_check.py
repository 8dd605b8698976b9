#!/usr/bin/env python3
"""`make gpu-check`: prove the exllamav2 GPU path on one machine with a CUDA GPU and no network.

Steps, each printed as PASS/FAIL with its time:
  0. preflight: what the code assumes of the machine (REQUIRES: module versions, glibc, nvcc, ninja),
     one line for each thing missing and where it comes from; nothing is built when one is.
     `python3 tools/gpu_check.py --preflight` runs this step only (no GPU needed).
  1. GPU: torch sees CUDA; names the device, its capability, torch/CUDA/nvcc versions.
  2. exllamav2's JIT build (first: it is the long step, ~2.5 min on 16 cores). TORCH_CUDA_ARCH_LIST is the
     device's capability, MAX_JOBS the core count, the build lands in .cache/torch_extensions/ and its log
     in .cache/gpu-check/. If the default (C++17) build fails, it is stopped at its first compiler error
     and built again with -std=c++20 (CUDA 13's nvcc rejects torch 2.11's ATen headers in C++17); if that
     fails too, the compiler's error lines are printed.
  3. tests/gpu (models built on the spot) with per-test PASS/FAIL, then the figures they recorded.
Exit status 0 only if every step passed. The packages the machine lacks come from .whl/ (make gpu-wheels)."""
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
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
WHEELS = "`make gpu-wheels` where the registries are reachable brings it in .whl/"
IMAGE = "the machine's image must have it (a CUDA build)"
# (module, minimum version or None, what needs it, where it comes from). Imported, not just found: a wheel that
# cannot load is missing too.
REQUIRES = [
    ("torch", None, "exllamav2 and the transformers reference", IMAGE),
    ("transformers", (4, 56), "tests/gpu's reference and the transformers engine (from_pretrained(dtype=...))",
     WHEELS),
    ("tokenizers", None, "the HF tokenizer of every engine", WHEELS),
    ("safetensors", None, "the test models' weights", WHEELS),
    ("click", None, "qwen_server's command line", WHEELS),
    ("flask", (3, 1), "qwen_server", WHEELS),
    ("pydantic_settings", None, "qwen_server's settings (qwen_api/settings.py) and the extension build's flags", WHEELS),
    ("jinja2", None, "the chat template", IMAGE),
    ("requests", None, "tests/gpu's HTTP client", IMAGE),
    ("pytest", None, "tests/gpu", IMAGE),
    ("numpy", None, "engines/constrained.py", IMAGE),
]
FIND_ONLY = [("exllamav2", "the engine (found, not imported: importing it starts the JIT build, step 2)")]
MIN_GLIBC = (2, 31)  # llguidance 1.9.1's wheel is manylinux_2_31


def version_tuple(text):
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def module_version(mod, name):
    """The version of the module imported (its __version__: the package found first on the path), else its
    distribution's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click 8.2, flask 3.1: use importlib.metadata
        found = getattr(mod, "__version__", None)
    try:
        return found or importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def module_problem(name, minimum, why, fix=WHEELS):
    """One line saying what is wrong with module `name` here, or None."""
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - ImportError, or a wheel that fails while importing
        return f"{name} is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): " \
               f"needed by {why}; {fix}"
    found = module_version(mod, name)
    if minimum and version_tuple(found) < minimum:
        return f"{name} >= {'.'.join(map(str, minimum))} needed, found {found} ({mod.__file__}): {why}; {fix}"
    return None


def glibc_problem(found):
    """`found` as os.confstr gives it ("glibc 2.35"), or None where it cannot tell."""
    if found and found.startswith("glibc") and version_tuple(found) < MIN_GLIBC:
        return f"glibc >= {'.'.join(map(str, MIN_GLIBC))} needed, found {found.split()[-1]}: llguidance 1.9.1 " \
               f"(grammars, logprobs) has no wheel for older; use an image with a newer glibc"
    return None


def current_glibc():
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return " ".join(platform.libc_ver())


def nvcc_path():
    return shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")


def preflight():
    """Every assumption checked before anything is built; returns the problems, one line each."""
    t0 = time.perf_counter()
    problems = [p for p in (module_problem(*r) for r in REQUIRES) if p]
    problems += [f"{name} is not installed: needed by {why}; {WHEELS}" for name, why in FIND_ONLY
                 if importlib.util.find_spec(name) is None]
    glibc = current_glibc()
    problems += [p for p in [glibc_problem(glibc)] if p]
    if not glibc_problem(glibc):
        problems += [p for p in [module_problem("llguidance", None, "grammars and logprobs")] if p]
    if not os.path.exists(nvcc_path()):
        problems.append(f"nvcc is not at {nvcc_path()}: the JIT build needs the CUDA toolkit's compiler; "
                        f"put it on PATH or set CUDA_HOME")
    if not shutil.which("ninja") and importlib.util.find_spec("ninja") is None:
        problems.append("ninja is not installed: torch's JIT build of exllamav2 needs it; pip install ninja")
    for p in problems:
        print(f"      MISSING  {p}", flush=True)
    report("preflight", not problems, time.perf_counter() - t0,
           f"{len(problems)} missing" if problems else f"{glibc}; " + ", ".join(
               f"{n} {module_version(sys.modules[n], n)}" for n in ("torch", "transformers", "click")))
    return problems


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
    try:
        out = subprocess.run([nvcc_path(), "--version"], capture_output=True, text=True).stdout
        nvcc_v = out.strip().splitlines()[-1]
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
    if "--glibc" in sys.argv[1:]:  # before `make gpu-check` installs .whl/: pip would refuse llguidance's wheel
        problem = glibc_problem(current_glibc())
        print(f"gpu-check: FAIL (preflight): {problem}" if problem else f"{current_glibc()}: ok")
        return 1 if problem else 0
    t0 = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    if preflight():
        print("\ngpu-check: FAIL (preflight): bring what is missing, then run it again")
        return 1
    if "--preflight" in sys.argv[1:]:
        return 0
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
