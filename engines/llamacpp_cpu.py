"""What the llamacpp engine asks of the CPU: how many cores, and whether llama.cpp's AMX kernels may run.

AMX: llama.cpp's AMX matrix kernels (ggml `AMX` buffer type, Intel Xeon Sapphire Rapids and later)
segfault on the first token on some of these CPUs (llama.cpp#20824, closed unfixed). `make install`
builds llama.cpp without them; should the loaded build have them anyway (a wheel built elsewhere), the
engine turns llama.cpp's extra buffer types off on an AMX CPU unless QWEN_LLAMA_AMX=1."""
import os
import re
import threading
from dataclasses import dataclass

_LOAD_LOCK = threading.Lock()  # open_llama patches a module attribute while one Llama loads


def cpuinfo_field(key):
    """The first CPU's `key` line in /proc/cpuinfo, or None (no such file: not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set:
    return set((cpuinfo_field("flags") or "").split())


def cpu_name() -> str:
    return cpuinfo_field("model name") or "this CPU"


def physical_cores() -> int:
    """Cores this process may run on, not counting hyperthread siblings (llama.cpp runs no faster
    on those, and slower when they share a core's FPU with another thread)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores, cpu, phys = set(), None, "0"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    phys = value
                elif key == "core id" and cpu in allowed:
                    cores.add((phys, value))
    except (OSError, ValueError):
        pass
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def build_features() -> str:
    """llama.cpp's own list of what it was compiled with ("CPU : SSE3 = 1 | ... | AMX_INT8 = 1 | ...")."""
    import llama_cpp
    return llama_cpp.llama_print_system_info().decode("utf-8", "replace")


@dataclass(frozen=True)
class AmxChoice:
    cpu: bool  # the CPU has AMX tiles with int8 (what llama.cpp's kernels use)
    build: bool  # the loaded llama.cpp was compiled with its AMX kernels
    opted_in: bool  # QWEN_LLAMA_AMX=1: the user's llama.cpp has the fix

    @property
    def extra_bufts(self) -> bool:
        """llama.cpp's extra buffer types (AMX, CPU weight repacking) stay on unless they would bring AMX."""
        return not (self.cpu and self.build and not self.opted_in)

    @property
    def used(self) -> bool:
        return self.cpu and self.build and self.opted_in

    def note(self):
        if not self.extra_bufts:
            return ("this llama.cpp was built with its AMX kernels, which crash on the first token on Intel Xeons "
                    "with AMX (llama.cpp#20824): extra buffer types are off (no AMX, no weight repacking). "
                    "`make install` builds it without them; QWEN_LLAMA_AMX=1 uses them")
        if self.used:
            return "AMX kernels on (QWEN_LLAMA_AMX=1)"
        return None

    def view(self) -> dict:
        return {"cpu": self.cpu, "llama_cpp_build": self.build, "opted_in": self.opted_in, "used": self.used,
                "extra_buffer_types": self.extra_bufts, "note": self.note()}


def amx_choice(opted_in: bool) -> AmxChoice:
    """opted_in: QWEN_LLAMA_AMX=1 (read by qwen_api/settings.py)."""
    flags = cpu_flags()
    return AmxChoice(cpu={"amx_tile", "amx_int8"} <= flags, build="AMX_INT8 = 1" in build_features(),
                     opted_in=opted_in)


def crash_advice(amx: AmxChoice) -> str:
    """What to set when llama.cpp died on its first token."""
    if amx.used:
        return "its AMX kernels crash on this CPU (llama.cpp#20824): unset QWEN_LLAMA_AMX"
    if amx.build and amx.cpu:
        return ("rebuild llama-cpp-python without AMX (`make install`, without LLAMA_AMX=1), or run "
                "--engine transformers")
    return ("rebuild llama-cpp-python for this CPU (`rm -rf .cache/llama-wheel-* && make install`), or run "
            "--engine transformers")


_BUFFER_LINE = re.compile(r"(\S+) model buffer size\s*=\s*([\d.]+) MiB")


def open_llama(path, extra_bufts: bool, **kwargs):
    """llama_cpp.Llama(path, **kwargs) with llama.cpp's extra buffer types on or off (llama-cpp-python has no
    argument for it: its model_params come from llama_model_default_params(), patched here for this one
    call), and where llama.cpp put the weights: {buffer name: MiB}, from its "model buffer size" log lines
    (e.g. CPU_Mapped, CPU_REPACK, AMX)."""
    import llama_cpp
    import llama_cpp._logger
    import llama_cpp.llama_cpp as capi
    buffers, default_params, forward = {}, capi.llama_model_default_params, llama_cpp._logger.llama_log_callback

    def params():
        p = default_params()
        p.use_extra_bufts = extra_bufts
        return p

    @llama_cpp.llama_log_callback
    def on_log(level, text, user_data):
        m = _BUFFER_LINE.search(text.decode("utf-8", "replace"))
        if m:
            buffers[m.group(1)] = buffers.get(m.group(1), 0.0) + float(m.group(2))
        forward(level, text, user_data)  # llama-cpp-python's own (errors to stderr)

    with _LOAD_LOCK:
        capi.llama_model_default_params = params
        llama_cpp.llama_log_set(on_log, None)
        try:
            llm = llama_cpp.Llama(path, **kwargs)
        finally:
            llama_cpp.llama_log_set(forward, None)
            capi.llama_model_default_params = default_params
    return llm, {name: round(mib, 1) for name, mib in buffers.items()}


WAIT_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# How llama.cpp's OpenMP threads wait at the barrier after each op (measured with bench/llamacpp_knobs.py,
# docs/performance.md). One decode thread: a short spin (this many rounds, then sleep; libgomp's default is
# 300000) for the prompt's threads. Two or more: PASSIVE (sleep at once), since a spinning thread holds the
# core that its late partner needs whenever anything else runs (a 1.5B Q4_0 at 2 threads: 1.67x
# llama_cpp.server idle but 0.67x under load with the spin).
SPIN_ROUNDS = 10000
SPIN_WHY = (f"a short spin ({SPIN_ROUNDS} rounds, then sleep) at each op's barrier: the one decode thread does not "
            f"wait at barriers, the prompt's threads are caught a few microseconds late")
PASSIVE_WHY = ("PASSIVE: decode threads sleep at each op's barrier, so that none holds a core its partner needs "
               "when something else runs on the machine")


@dataclass
class ThreadPlan:
    """llama.cpp's threads and how its OpenMP threads wait at the barrier after each op: chosen here unless
    QWEN_THREADS / -t, QWEN_THREADS_BATCH / --threads-batch, OMP_WAIT_POLICY or GOMP_SPINCOUNT say otherwise."""
    decode: int
    batch: int
    threads_why: str
    wait_why: str = ""

    def apply(self):
        """Sets the wait (libgomp reads it once, when it loads: before llama_cpp is first imported)."""
        for key in WAIT_KEYS:
            if not os.environ.get(key, "x").strip():  # empty in .env: unset (libgomp would warn about "")
                del os.environ[key]
        if any(key in os.environ for key in WAIT_KEYS):
            self.wait_why = "set in the environment"
        elif self.decode > 1:
            os.environ["OMP_WAIT_POLICY"], self.wait_why = "PASSIVE", PASSIVE_WHY
        else:
            os.environ["GOMP_SPINCOUNT"], self.wait_why = str(SPIN_ROUNDS), SPIN_WHY

    def wait(self) -> str:
        return ", ".join(f"{k}={os.environ[k]}" for k in WAIT_KEYS if os.environ.get(k)) or "libgomp's default"

    def line(self) -> str:
        return (f"{self.decode} decode / {self.batch} prompt threads ({self.threads_why}), {self.wait()} "
                f"({self.wait_why})")

    def view(self) -> dict:
        return {"decode_threads": self.decode, "prompt_threads": self.batch, "threads_why": self.threads_why,
                "wait": self.wait(), "wait_why": self.wait_why}


# Below this size a model's ops are too short to share between threads in both situations: two decode threads
# that spin at the barriers are 1.9x llama_cpp.server idle but 0.3x under load, two that sleep 0.4x idle; one
# thread is 1.1x in both (SmolLM2-135M Q4_1, 94 MiB; bench/llamacpp_knobs.py, docs/performance.md). A larger
# model (a 0.5B-shaped Q4_0, 195 MiB: 2x faster on 2 threads) gets the physical cores, waiting PASSIVE.
ONE_THREAD_BELOW_BYTES = 128 << 20


def plan_threads(model_bytes, threads=None, threads_batch=None) -> ThreadPlan:
    """Decode and prompt threads: QWEN_THREADS / -t and QWEN_THREADS_BATCH / --threads-batch win; else one
    decode thread for a small model (ONE_THREAD_BELOW_BYTES) and the physical cores for a larger one, and
    the physical cores for prompts."""
    cores, mib = physical_cores(), f"{model_bytes / 2**20:.0f} MiB"
    if threads:
        decode, why = threads, "set by QWEN_THREADS / -t"
    elif model_bytes < ONE_THREAD_BELOW_BYTES and cores > 1:
        decode, why = 1, f"a {mib} model's ops are too small to share; prompts: the {cores} physical cores"
    else:
        decode, why = cores, f"the {cores} physical cores, for a {mib} model"
    return ThreadPlan(decode, threads_batch or threads or cores, why)
