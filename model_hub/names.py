"""What `-m` names: a local path, a catalogue short name (`qwen2.5-coder-7b[:QUANT]`) or a Hugging Face
repo id (`owner/repo[:QUANT]`, llama.cpp's `-hf` convention), and which GGUF files a quant tag picks."""
import os
import re
from dataclasses import dataclass
from typing import Optional

from model_hub.base import SPLIT, SPLIT_ANY  # noqa: F401 (SPLIT: names' own, kept importable from here)

REPO_ID = re.compile(r"^(?:hf\.co/)?([A-Za-z0-9][\w.-]*/[\w.-]+?)(?::([\w.-]+))?$")
# The quant tag ends a GGUF file name: -Q4_K_M, .Q4_1, -IQ4_XS, -q8_0, -f16, -bf16 ...
QUANT = re.compile(r"[-_.]((?:I?Q\d[\w]*?)|(?:B?F16)|(?:F32)|(?:TQ\d_\d))$", re.IGNORECASE)
DEFAULT_QUANT = "Q4_K_M"  # llama.cpp's default for -hf


@dataclass(frozen=True)
class ModelRef:
    """A model on the hub: its repo and the quant asked for (None: the default)."""
    repo: str
    quant: Optional[str] = None
    short_name: Optional[str] = None  # the catalogue name it came from

    @property
    def label(self) -> str:
        return f"{self.repo}:{self.quant}" if self.quant else self.repo


def parse_spec(spec: str, engine: str, gpu: bool) -> Optional[ModelRef]:
    """None for a local path (anything that exists, or looks like no repo id); a ModelRef otherwise."""
    from model_hub.catalogue import lookup
    if os.path.exists(spec):
        return None
    name, _, quant = spec.partition(":")
    entry = lookup(name)
    if entry is not None:
        repo, default_quant = entry.variant(engine, gpu)
        return ModelRef(repo, quant or default_quant, short_name=entry.name)
    m = REPO_ID.match(spec)
    if not m or spec.startswith((".", "/", "~")):
        return None
    return ModelRef(m.group(1), m.group(2))


def gguf_quant(filename: str) -> Optional[str]:
    """The quant tag of a GGUF file name, upper case (None when the name carries none)."""
    base = os.path.basename(filename)
    if not base.lower().endswith(".gguf") or base.lower().startswith(("mmproj", "imatrix")):
        return None
    stem = SPLIT.sub("", base)
    stem = stem[:-len(".gguf")] if stem.lower().endswith(".gguf") else stem
    m = QUANT.search(stem)
    return m.group(1).upper() if m else None


def gguf_quants(filenames) -> dict:
    """{QUANT: [files of that quant, sorted]} of the GGUF files among `filenames`."""
    out = {}
    for f in filenames:
        q = gguf_quant(f)
        if q:
            out.setdefault(q, []).append(f)
    return {q: sorted(fs) for q, fs in sorted(out.items())}


def pick_gguf(quants: dict, quant: Optional[str]):
    """(QUANT, files) for the quant asked for (case-insensitive; None: Q4_K_M, or the repo's only one),
    or None when it has no such quant."""
    if quant is None:
        if DEFAULT_QUANT in quants:
            quant = DEFAULT_QUANT
        elif len(quants) == 1:
            quant = next(iter(quants))
        else:
            return None
    files = quants.get(quant.upper())
    return (quant.upper(), files) if files else None


def split_complete(files) -> bool:
    """Every split set among `files` (…-00001-of-00003.gguf/.safetensors) has all its parts."""
    sets = {}
    for f in files:
        m = SPLIT_ANY.search(f)
        if m:
            sets.setdefault((f[:m.start()], m.group(2), m.group(3)), set()).add(int(m.group(1)))
    return all(parts == set(range(1, int(total) + 1)) for (_, total, _), parts in sets.items())
