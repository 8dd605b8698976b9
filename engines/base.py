"""The engine interface shared by the exllamav2 (GPU), transformers (CPU/GPU) and llama.cpp (CPU, GGUF)
engines: `Engine`, what a request asks of it (`GenParams`), what it yields (`Chunk`), its errors.

An engine renders chat messages with the model's own chat template, then
`generate(messages, params, cancel)` yields `Chunk`s: text deltas, then one
final chunk with `finish_reason` and `usage`. Engines know nothing of HTTP."""
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Iterator, Optional

from engines.turns import Turns

CACHE_MODES = ("fp16", "q8", "q6", "q4")
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")  # Qwen2.5-Coder's
MAX_DEFAULT_SEQ_LEN = 16384


class EngineError(Exception):
    """Start-up problem the user can fix (bad path, missing tokenizer, out of memory...)."""


MIN_TEMPERATURE = 1e-3  # below this, logits / temperature overflow to NaN: sample greedily instead


@dataclass
class GenParams:
    # Seed defaults from the original spec.
    temperature: float = 0.4
    top_p: float = 0.9
    top_k: int = 60
    repetition_penalty: float = 1.1
    max_tokens: int = 512
    stop: list = field(default_factory=list)
    seed: Optional[int] = None
    logprobs: bool = False  # OpenAI logprobs: each token's log-probability (+ top_logprobs alternatives)
    top_logprobs: int = 0
    grammar: Optional[str] = None  # llguidance grammar the answer must match (engines/constrained.py)

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE or self.top_p == 0


@dataclass
class Chunk:
    text: str = ""
    finish_reason: Optional[str] = None  # "stop" | "length" | "cancelled"
    usage: Optional[dict] = None  # prompt_tokens, completion_tokens, prefill_ms, decode_ms
    logprobs: Optional[list] = None  # OpenAI logprobs.content entries of the tokens since the last chunk


class Engine:
    """Base engine: prompt encoding (cached), context fitting and common status fields. An engine
    provides load, generate, render (messages -> prompt text) and tokenize (text -> ids)."""

    name = "base"
    probe_in_child = False  # native code that may kill its process: qwen_server tries a first token in a child

    def crash_hint(self) -> str:
        """What to try when the engine's native code crashed on its first token (qwen_api/startup.py)."""
        return "run qwen_server with LOG_LEVEL=DEBUG to see the engine's output, or try another --engine"

    def __init__(self, model_path, cache_mode="q4", max_seq_len=None):
        if cache_mode not in CACHE_MODES:
            raise EngineError(f"unknown cache mode {cache_mode!r}: use one of {', '.join(CACHE_MODES)}")
        self.model_path = model_path
        self.model_name = os.path.basename(os.path.normpath(model_path))
        self.architecture = "?"
        self.requested_seq_len = max_seq_len
        self.max_seq_len = int(max_seq_len or MAX_DEFAULT_SEQ_LEN)
        self.cache_requested = cache_mode
        self.cache_mode = cache_mode  # what is really used; an engine may change it and say why in cache_note
        self.cache_note = None
        self.context_note = None  # set when -l is beyond what the model was trained for
        self.device = "cpu"
        self.load_seconds = None
        self.turns = Turns()  # engines that run one request at a time queue them here
        self.ll_vocab = None  # engines/constrained.Vocab, set by load(): the vocabulary for grammars
        self._tag_ids = None
        self._last_prompt = threading.local()

    def fit_context(self, own_limit):
        """-l if given, else the model's own context length, at most MAX_DEFAULT_SEQ_LEN.
        An -l beyond the model's own length is a warning, not a refusal, on every engine: transformers,
        llama.cpp and exllamav2 all run it (RoPE positions extrapolate), but answers degrade once the
        conversation passes the trained length, and the KV cache is sized (and paid for) in full."""
        self.max_seq_len = int(self.requested_seq_len or min(own_limit or MAX_DEFAULT_SEQ_LEN, MAX_DEFAULT_SEQ_LEN))
        if own_limit and self.max_seq_len > own_limit:
            self.context_note = (f"-l {self.max_seq_len} is beyond the {own_limit} tokens {self.model_name} was "
                                 f"trained for: it runs, but answers degrade once a conversation passes {own_limit} "
                                 f"tokens. Use -l {own_limit} or less, or a model built for a longer context.")

    # -- to be provided by engines ------------------------------------------------------------
    def load(self):
        raise NotImplementedError

    def generate_ids(self, prompt_ids, params: GenParams, cancel: threading.Event) -> Iterator[Chunk]:
        """Chunks of the answer to a prompt given as token ids (a chat prompt, a completion, a FIM)."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def generate(self, messages, params: GenParams, cancel: threading.Event, tools=None) -> Iterator[Chunk]:
        return self.generate_ids(self.encode(messages, tools), params, cancel)

    def fim_ids(self):
        """(prefix, suffix, middle) token ids of the model's fill-in-the-middle tokens, or None."""
        ids = [self.tokenize(t) for t in FIM_TOKENS]
        return tuple(i[0] for i in ids) if all(len(i) == 1 for i in ids) else None

    def tool_tag_ids(self) -> dict:
        """{tag: token id} of <tool_call> and </tool_call> where the vocabulary has the tag as one token
        (Qwen2.5's added tokens); a tag spelled in several tokens (SmolLM2) is left out."""
        if self._tag_ids is None:
            from engines.constrained import TOOL_TAGS
            ids = {t: self.tokenize(t) for t in TOOL_TAGS}
            self._tag_ids = {t: i[0] for t, i in ids.items() if len(i) == 1}
        return self._tag_ids

    def render(self, messages, tools=None) -> str:
        """The prompt text: messages (and tools) through the model's own chat template, generation prompt
        added."""
        raise NotImplementedError

    def tokenize(self, text) -> list:
        """Token ids of `text`, special tokens written as text included, no BOS added."""
        raise NotImplementedError

    def memory(self) -> dict:
        if self.device == "cuda":
            import torch
            free, total = torch.cuda.mem_get_info()
            return {"kind": "vram", "used_bytes": total - free, "total_bytes": total,
                    "allocated_by_torch_bytes": torch.cuda.memory_allocated()}
        import resource
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"kind": "ram", "used_bytes": rss_peak,
                "total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}

    def queue_length(self) -> int:
        return self.turns.waiting()

    # -- shared ---------------------------------------------------------------------------------
    def encode(self, messages, tools=None) -> list:
        """Prompt token ids. The last prompt is remembered per thread: the server counts a prompt (does it
        fit?) and then generates from it, and tokenizing a long conversation twice costs milliseconds."""
        key = json.dumps([messages, tools], ensure_ascii=False, sort_keys=True)
        last = getattr(self._last_prompt, "value", None)
        if last is None or last[0] != key:
            # The template already holds any BOS/special tokens as text.
            last = self._last_prompt.value = (key, self.tokenize(self.render_with_tools(messages, tools)))
        return list(last[1])

    def count_tokens(self, messages, tools=None) -> int:
        return len(self.encode(messages, tools))

    def template_has_tools(self) -> bool:
        return False

    def render_with_tools(self, messages, tools=None) -> str:
        """Tools and tool turns through the template if it knows them, else written as plain messages."""
        from engines.tool_prompt import plain_messages, uses_tools
        if not uses_tools(messages, tools):
            return self.render(messages)
        if self.template_has_tools():
            return self.render(messages, tools or None)
        return self.render(plain_messages(messages, tools))

    def status(self) -> dict:
        return {"engine": self.name, "model": self.model_name, "model_path": os.path.abspath(self.model_path),
                "architecture": self.architecture, "cache_mode": self.cache_mode,
                "cache_requested": self.cache_requested, "cache_note": self.cache_note,
                "context_note": self.context_note,
                "max_seq_len": self.max_seq_len, "device": self.device, "memory": self.memory(),
                "load_seconds": self.load_seconds,
                # response_format, forced tools and logprobs need the vocabulary read (in the background
                # after the load): "ready", or "preparing" while such requests wait for it
                "constrained_decoding": self.ll_vocab.state() if self.ll_vocab else "not started",
                "constrained_vocab_seconds": self.ll_vocab.seconds if self.ll_vocab else None}


def find_gguf(path):
    """The .gguf file at `path` (a file, or a dir holding exactly one), else None."""
    if os.path.isfile(path):
        return path if path.lower().endswith(".gguf") else None
    if not os.path.isdir(path):
        return None
    found = sorted(f for f in os.listdir(path) if f.lower().endswith(".gguf"))
    if len(found) > 1:
        raise EngineError(f"{path!r} holds several GGUF files ({', '.join(found)}): pass -m with the one to serve")
    return os.path.join(path, found[0]) if found else None
