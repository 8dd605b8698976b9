"""The engine interface shared by the exllamav2 (GPU), transformers (CPU/GPU) and llama.cpp (CPU, GGUF)
engines.

An engine renders chat messages with the model's own chat template, then
`generate(messages, params, cancel)` yields `Chunk`s: text deltas, then one
final chunk with `finish_reason` and `usage`. Engines know nothing of HTTP."""
import collections
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

from common.stop_strings import StopCutter

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


class Turns:
    """One request at a time, first come first served. A waiter whose `cancel` is set (its client
    left) leaves the queue at once, so a dropped request never costs a prefill."""

    POLL_S = 0.05  # how soon a cancelled waiter notices: cancel events can't wake a Condition

    def __init__(self):
        self._cond = threading.Condition()
        self._queue = collections.deque()

    def waiting(self) -> int:
        """Requests queued behind the one being served."""
        with self._cond:
            return max(0, len(self._queue) - 1)

    @contextmanager
    def turn(self, cancel: threading.Event):
        """Yields True once it is this request's turn, or False if it was cancelled while waiting."""
        me = object()
        with self._cond:
            self._queue.append(me)
            while self._queue[0] is not me and not cancel.is_set():
                self._cond.wait(self.POLL_S)
            got_turn = self._queue[0] is me and not cancel.is_set()
            if not got_turn:
                self._queue.remove(me)
                self._cond.notify_all()
        if not got_turn:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self._queue.remove(me)
                self._cond.notify_all()


def cancelled_before_start(prompt_tokens, **usage) -> Chunk:
    """The final chunk of a request whose client left while it waited for its turn (or in its prefill:
    `usage` adds what was done)."""
    return Chunk(finish_reason="cancelled", usage={"prompt_tokens": prompt_tokens, "completion_tokens": 0,
                                                   "prefill_ms": 0.0, "decode_ms": 0.0, **usage})


class TextStream:
    """Token ids -> text deltas. Waits while a token ends inside a UTF-8 character (Cyrillic,
    emoji) and holds back text that may be the start of a stop string, so a stop string is
    never sent in part. `decode(ids) -> str` is the engine's detokenizer (incomplete UTF-8 at the
    end comes out as U+FFFD, as both HF's decode and bytes.decode(errors="replace") do)."""

    def __init__(self, decode, stop_strings=()):
        self._decode = decode
        self.ids = []
        self.prefix = self.read = 0  # vLLM-style offsets: decode a small window, not the whole answer
        self.cut = StopCutter(stop_strings)  # holds back what may be the start of a stop string

    def push(self, token_id):
        """Returns (delta, hit_stop)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return "", False
        self.prefix, self.read = self.read, len(self.ids)
        out = self.cut.feed(after[len(before):])
        return out, self.cut.hit

    def flush(self):
        return self.cut.flush()


def ms_since(t0):
    return round((time.perf_counter() - t0) * 1000, 2)


def decode_loop(sample, feed, is_eos, decode, params: GenParams, cancel, usage, guide=None) -> Iterator[Chunk]:
    """The token loop of the engines that decode one token at a time, after their prefill: `sample()`
    gives the next token id, `is_eos(id)` ends the answer, `feed(id)` runs the forward pass that the
    next sample needs (never after the last token). Text goes out through TextStream (whole UTF-8
    characters, stop strings never sent in part); a cancel is seen between tokens. The last chunk
    has the finish reason and `usage` plus completion_tokens and decode_ms. `guide` (a TokenGuide, whose
    mask `sample` applies) is told each token; `sample` may return (id, logprobs entry)."""
    stream = TextStream(decode, params.stop)
    entries = [] if params.logprobs else None
    t0 = time.perf_counter()
    n, finish, hit_stop = 0, "length", False
    while n < params.max_tokens:
        if cancel.is_set():
            finish = "cancelled"
            break
        tid = sample()
        tid, entry = tid if isinstance(tid, tuple) else (tid, None)
        eos = is_eos(tid)
        if entries is not None and entry is not None and not eos:
            entries.append(entry)
        n += 1
        if eos:
            finish = "stop"
            break
        if guide is not None:
            guide.accept(tid)
        delta, hit_stop = stream.push(tid)
        if delta:
            yield Chunk(text=delta, logprobs=entries)
            entries = [] if entries is not None else None
        if hit_stop:
            finish = "stop"
            break
        if n < params.max_tokens:
            feed(tid)
    if not hit_stop:  # text held back for a stop string that never came
        tail = stream.flush()
        if tail:
            yield Chunk(text=tail, logprobs=entries)
            entries = [] if entries is not None else None
    yield Chunk(finish_reason=finish, usage={**usage, "completion_tokens": n, "decode_ms": ms_since(t0)},
                logprobs=entries or None)


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


def pick_engine(kind, model_path) -> str:
    """`auto`: llamacpp for a GGUF model (a .gguf file, or a dir with one and no config.json); for a
    Hugging Face/EXL2 dir exllamav2 when CUDA is present, else transformers. The GGUF check comes
    first: the llama.cpp path never imports torch."""
    if kind != "auto":
        return kind
    if not os.path.isfile(os.path.join(model_path, "config.json")) and find_gguf(model_path):
        return "llamacpp"
    import torch
    return "exllamav2" if torch.cuda.is_available() else "transformers"


ENGINES = ("auto", "llamacpp", "exllamav2", "transformers")


def create_engine(kind, model_path, cache_mode="q4", max_seq_len=None, threads=None, threads_batch=None) -> Engine:
    """threads, threads_batch: llama.cpp's CPU threads for decoding and for prompts (default: chosen from
    the cores and the model's size, engines/llamacpp_cpu.py); the other engines leave threading to torch."""
    kind = pick_engine(kind, model_path)
    if kind == "llamacpp":
        from engines.llamacpp_engine import LlamaCppEngine
        return LlamaCppEngine(model_path, cache_mode, max_seq_len, threads, threads_batch)
    if kind == "exllamav2":
        from engines.exllamav2_engine import ExLlamaV2Engine
        return ExLlamaV2Engine(model_path, cache_mode, max_seq_len)
    if kind == "transformers":
        from engines.transformers_engine import TransformersEngine
        return TransformersEngine(model_path, cache_mode, max_seq_len)
    raise EngineError(f"unknown engine {kind!r}: use {', '.join(ENGINES)}")
