"""Will the model fit? Memory a model needs at a context length and cache precision, the machine's
free RAM or VRAM, and the warning qwen_server logs before it loads a model that does not fit."""
import glob
import json
import logging
import os
import struct
from dataclasses import dataclass
from typing import Optional

GIB = 2**30
RUNTIME_BYTES = GIB // 2  # compute buffers, the CUDA context, the tokenizer: about half a GiB on each engine
# Bytes a cached K or V value takes: llama.cpp's f16/q8_0/q5_1/q4_0 (exllamav2's caches are within a few %).
CACHE_BYTES = {"fp16": 2.0, "q8": 34 / 32, "q6": 24 / 32, "q4": 18 / 32}
MAX_DEFAULT_CONTEXT = 16384
log = logging.getLogger("qwen_server")


@dataclass(frozen=True)
class Shape:
    layers: int
    kv_heads: int
    head_dim: int
    context: Optional[int] = None  # the model's own (trained) context length


def needed_bytes(weights: int, shape: Optional[Shape], context: int, cache: str) -> int:
    """Weights + K and V for `context` tokens at `cache` precision + runtime buffers."""
    kv = 0 if shape is None else 2 * shape.layers * shape.kv_heads * shape.head_dim * context * CACHE_BYTES[cache]
    return int(weights + kv + RUNTIME_BYTES)


def gguf_parts(gguf) -> list:
    """All the parts of a split GGUF (given any part), or [gguf]."""
    from model_hub.names import SPLIT
    if not SPLIT.search(gguf):
        return [gguf]
    return sorted(glob.glob(SPLIT.sub(lambda m: f"-[0-9]*-of-{m.group(2)}.gguf", glob.escape(gguf))))


def weights_and_shape(path):
    """(bytes of the weight files, Shape or None) of a .gguf file (all its split parts) or a model dir."""
    from engines.base import find_gguf
    gguf = None if os.path.isfile(os.path.join(path, "config.json")) else find_gguf(path)
    if gguf:
        return sum(os.path.getsize(f) for f in gguf_parts(gguf)), _gguf_shape(gguf)
    files = [f for f in glob.glob(os.path.join(glob.escape(path), "*")) if f.endswith((".safetensors", ".bin"))]
    return sum(os.path.getsize(f) for f in files), _config_shape(path)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path, wanted) -> dict:
    """The GGUF header's key/values named in `wanted` (a set of keys), read until all are found (gguf's
    GGUFReader parses every tensor's info first: seconds on a 100 MB file)."""
    out = {}
    with open(path, "rb") as f:
        def read(fmt):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def value(kind):
            if kind == 8:
                return f.read(read("<Q")).decode("utf-8", "replace")
            if kind == 9:
                item, n = read("<I"), read("<Q")
                return [value(item) for _ in range(n)]
            return read(_SCALARS[kind])
        if f.read(4) != b"GGUF":
            return out
        read("<I"), read("<Q")  # version, tensor count
        for _ in range(read("<Q")):
            key = f.read(read("<Q")).decode("utf-8", "replace")
            v = value(read("<I"))
            if key in wanted:
                out[key] = v
                if len(out) == len(wanted):
                    break
    return out


def _gguf_shape(path) -> Optional[Shape]:
    try:
        arch = gguf_metadata(path, {"general.architecture"})["general.architecture"]
        keys = ("block_count", "attention.head_count", "attention.head_count_kv", "attention.key_length",
                "embedding_length", "context_length")
        meta = gguf_metadata(path, {f"{arch}.{k}" for k in keys})
        field = {k[len(arch) + 1:]: v for k, v in meta.items()}.get
        heads = field("attention.head_count")
        head_dim = field("attention.key_length") or field("embedding_length") // heads
        return Shape(field("block_count"), field("attention.head_count_kv") or heads, head_dim,
                     field("context_length"))
    except (OSError, KeyError, TypeError, ValueError, ZeroDivisionError, struct.error):
        return None  # an estimate: a GGUF it cannot read loses only the KV part


def _config_shape(path) -> Optional[Shape]:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            c = json.load(f)
        heads = c["num_attention_heads"]
        return Shape(c["num_hidden_layers"], c.get("num_key_value_heads", heads),
                     c.get("head_dim") or c["hidden_size"] // heads, c.get("max_position_embeddings"))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def free_bytes(vram: bool) -> Optional[int]:
    """Free VRAM of the current CUDA device (call only where CUDA may be initialised), or available RAM."""
    if vram:
        import torch
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def warn_before_load(engine, max_seq_len, cache) -> Optional[str]:
    """warn_if_too_big for an engine about to load: VRAM for exllamav2 and transformers on CUDA, else RAM.
    exllamav2 without CUDA is not checked: its load() refuses it in one line that says what to do."""
    vram = False
    if engine.name in ("exllamav2", "transformers"):
        import torch
        vram = torch.cuda.is_available()
        if engine.name == "exllamav2" and not vram:
            return None
    return warn_if_too_big(engine.model_path, max_seq_len, cache, vram)


def warn_if_too_big(path, max_seq_len, cache, vram) -> Optional[str]:
    """Logs (and returns) a warning when the model at `path` needs more than the free RAM/VRAM."""
    weights, shape = weights_and_shape(path)
    context = max_seq_len or min((shape and shape.context) or MAX_DEFAULT_CONTEXT, MAX_DEFAULT_CONTEXT)
    need, free = needed_bytes(weights, shape, context, cache), free_bytes(vram)
    if free is None or need <= free:
        return None
    kind = "VRAM" if vram else "RAM"
    msg = (f"{os.path.basename(os.path.normpath(path))} needs about {need / GIB:.1f} GiB of {kind} at {context} tokens "
           f"with the {cache} cache, and {free / GIB:.1f} GiB is free: loading may fail or swap. A smaller model "
           f"(python qwen_server.py --list-models), a smaller -l or -cache q4 needs less.")
    log.warning("%s", msg)
    return msg


def warn_before_download(label, weights) -> Optional[str]:
    """A GGUF whose weights alone (plus runtime buffers) exceed the free RAM: warned before it downloads."""
    need, free = needed_bytes(weights, None, 0, "q4"), free_bytes(False)
    if free is None or need <= free:
        return None
    msg = (f"{label} needs at least {need / GIB:.1f} GiB of RAM and {free / GIB:.1f} GiB is free: it will download, "
           f"but may not load (python qwen_server.py --list-models shows what fits)")
    log.warning("%s", msg)
    return msg
