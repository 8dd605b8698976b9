"""Qwen 2.5 Coder Instruct in its six sizes: short names, the repo and quant each one downloads, its size
and the memory it needs (`python qwen_server.py --list-models`).

Sizes are those of the published files (approximate: ± a few %); memory is estimated by model_hub.fit
the same way as the warning before a model loads: weights + KV cache at the default context (16384
tokens) with the Q4 cache + runtime buffers."""
from dataclasses import dataclass
from typing import Optional

from model_hub.fit import Shape, free_bytes, needed_bytes

GB = 10**9
DEFAULT_CONTEXT = 16384


@dataclass(frozen=True)
class Entry:
    name: str  # the short name: qwen2.5-coder-7b
    params: str  # "7B"
    shape: Shape  # layers, KV heads, head dim: the KV cache's size
    gguf_bytes: int  # Qwen's own GGUF at Q4_K_M (CPU, llama.cpp)
    exl2_bytes: int  # bartowski's EXL2 at 4.25 bits a weight (GPU, exllamav2)

    @property
    def gguf_repo(self) -> str:
        return f"Qwen/Qwen2.5-Coder-{self.params}-Instruct-GGUF"

    @property
    def exl2_repo(self) -> str:
        return f"bartowski/Qwen2.5-Coder-{self.params}-Instruct-exl2"

    @property
    def hf_repo(self) -> str:
        return f"Qwen/Qwen2.5-Coder-{self.params}-Instruct"

    def variant(self, engine: str, gpu: bool):
        """(repo, default quant) for the engine: GGUF for llamacpp, EXL2 for exllamav2, the original
        weights for transformers; `auto` takes EXL2 when an NVIDIA GPU is present, else GGUF."""
        if engine == "exllamav2" or (engine == "auto" and gpu):
            return self.exl2_repo, "4_25"
        if engine == "transformers":
            return self.hf_repo, None
        return self.gguf_repo, "Q4_K_M"


CATALOGUE = (
    Entry("qwen2.5-coder-0.5b", "0.5B", Shape(24, 2, 64), int(0.40 * GB), int(0.45 * GB)),
    Entry("qwen2.5-coder-1.5b", "1.5B", Shape(28, 2, 128), int(0.99 * GB), int(1.15 * GB)),
    Entry("qwen2.5-coder-3b", "3B", Shape(36, 2, 128), int(1.93 * GB), int(2.05 * GB)),
    Entry("qwen2.5-coder-7b", "7B", Shape(28, 4, 128), int(4.68 * GB), int(4.60 * GB)),
    Entry("qwen2.5-coder-14b", "14B", Shape(48, 8, 128), int(8.99 * GB), int(8.50 * GB)),
    Entry("qwen2.5-coder-32b", "32B", Shape(64, 8, 128), int(19.9 * GB), int(18.2 * GB)),
)


def lookup(name: str) -> Optional[Entry]:
    """The entry of a short name (case-insensitive; `qwen2.5-coder-7b-instruct` works too)."""
    key = name.lower().removesuffix("-instruct")
    return next((e for e in CATALOGUE if e.name == key), None)


def _gb(n: int) -> str:
    return f"{n / GB:.1f} GB"


def _free(vram: bool):
    """Free RAM, or free VRAM when an NVIDIA GPU is present (--list-models exits: CUDA may start here)."""
    if not vram:
        return free_bytes(False)
    from model_hub.settings import HubSettings
    if not HubSettings.gpu_present():
        return None
    try:
        return free_bytes(True)
    except Exception:  # noqa: BLE001 - no torch with CUDA: the column says "?"
        return None


def table() -> str:
    """The catalogue as `--list-models` prints it, with whether each one fits this machine's free memory."""
    free = {False: _free(False), True: _free(True)}
    rows = [("NAME", "REPO:QUANT", "FILE", "NEEDS", "FITS HERE", "ENGINE")]
    for e in CATALOGUE:
        for vram, repo, size, engine in ((False, f"{e.gguf_repo}:Q4_K_M", e.gguf_bytes, "llamacpp (CPU)"),
                                         (True, f"{e.exl2_repo}:4_25", e.exl2_bytes, "exllamav2 (GPU)")):
            need = needed_bytes(size, e.shape, DEFAULT_CONTEXT, "q4")
            fits = "?" if free[vram] is None else "yes" if need <= free[vram] else "no"
            rows.append(("" if vram else e.name, repo, _gb(size), _gb(need) + (" VRAM" if vram else " RAM"), fits,
                         engine))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += ["", f"NEEDS: weights + KV cache at {DEFAULT_CONTEXT} tokens with the q4 cache (-cache q4, the default) "
              "+ runtime buffers; FITS HERE: within the free RAM/VRAM now (? = no NVIDIA GPU seen).",
              "Serve one: python qwen_server.py -m NAME  (GGUF on the CPU; EXL2 with --engine auto on an NVIDIA "
              "GPU, or --engine exllamav2;",
              "  --engine transformers takes the original Qwen/Qwen2.5-Coder-<size>-Instruct), or "
              "make run MODEL=NAME. NAME:QUANT picks another quant."]
    return "\n".join(lines)
