"""Per-token work between the forward pass and sampling, shared by the engines with their own decode loop
(transformers, llama.cpp): constrained decoding with llguidance (JSON schema / Lark grammar -> a mask of
the tokens allowed next) and OpenAI logprobs.

Why llguidance: it builds its token trie from a Hugging Face tokenizer *or* straight from a llama.cpp
vocab (llguidance.llamacpp: the GGUF engine needs no HF files), computes a mask in ~0.1 ms a token for
a 49k vocabulary with no per-schema precompilation, and its masks are plain bitmasks that any logits
array takes (an exllamav2 filter could hand back the same allowed set)."""
import json
import threading
import time

import numpy as np

from engines.json_schema import SchemaError, closed  # noqa: F401 - SchemaError: for the callers

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# No free whitespace: a weak model would otherwise fill max_tokens with spaces inside valid JSON.


def json_grammar(schema, close=True) -> str:
    """llguidance grammar text for a JSON schema (dict); {"type": "object"} for json_object."""
    import llguidance
    return llguidance.LLMatcher.grammar_from_json_schema(closed(schema) if close else schema,
                                                         overrides=JSON_OPTIONS)


def lark_grammar(lark: str) -> str:
    import llguidance
    return llguidance.LLMatcher.grammar_from_lark(lark)


def grammar_error(grammar: str):
    """None if the grammar is valid, else llguidance's message (for a 400)."""
    import llguidance
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return messages[0] if is_error else None


class Vocab:
    """An engine's llguidance tokenizer. The engine calls start() when its model loads: the vocabulary is
    read in a background thread (seconds for a 150k-token one, bench/vocab_prep.py), so the server answers
    at once and the first constrained request does not pay for it; get() waits for it if it must."""

    def __init__(self, build):
        self._build = build
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = None
        self._tok = self._error = None
        self.seconds = None  # how long it took, once done

    def start(self):
        with self._lock:
            if self._thread is None:
                # Not a daemon: a process that exits meanwhile waits for it (seconds at most), where a daemon
                # thread inside llguidance segfaulted in the interpreter's teardown as it took the GIL back.
                self._thread = threading.Thread(target=self._run, name="llguidance-vocab", daemon=False)
                self._thread.start()

    def _run(self):
        t0 = time.perf_counter()
        try:
            self._tok = self._build()
        except Exception as e:  # noqa: BLE001 - reported by state() and to each request that needs it
            self._error = f"{type(e).__name__}: {e}"
        finally:
            self.seconds = round(time.perf_counter() - t0, 2)
            self._done.set()

    def get(self):
        self.start()
        self._done.wait()
        if self._error:
            raise RuntimeError(f"constrained decoding is unavailable: the vocabulary could not be read ({self._error})")
        return self._tok

    def state(self) -> str:
        """For /status: "ready", "preparing" (requests that need it wait), "not started" or "failed: ..."."""
        if self._done.is_set():
            return f"failed: {self._error}" if self._error else "ready"
        return "preparing" if self._thread is not None else "not started"


class TokenGuide:
    """One request's per-token hooks: `blocked()` before sampling (a bool array, True = not allowed,
    or None when unconstrained), `logprob(logits)` for the logprobs entry, `accept(tid)` after it."""

    def __init__(self, params, vocab: Vocab, n_logits: int):
        self.want_logprobs = bool(params.logprobs)
        self.top_n = int(params.top_logprobs or 0)
        self.n_logits = n_logits
        self.matcher = None
        self.tok = vocab.get() if (params.grammar or self.want_logprobs) else None
        if params.grammar:
            import llguidance
            self.matcher = llguidance.LLMatcher(self.tok, params.grammar, log_level=0)
            if self.matcher.is_error():
                raise ValueError(self.matcher.get_error())
            self._bits = np.full(((n_logits + 31) // 32,), -1, dtype=np.int32)

    @property
    def active(self) -> bool:
        return self.matcher is not None or self.want_logprobs

    def blocked(self):
        if self.matcher is None:
            return None
        self.matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[:self.n_logits]
        return allowed == 0

    def _entry(self, tid, logprob):
        raw = self.tok.decode_bytes([tid])
        return {"token": raw.decode("utf-8", "replace"), "logprob": float(logprob), "bytes": list(raw)}

    def logprob(self, logits: np.ndarray, tid: int):
        """The OpenAI logprobs entry of `tid` under the model's own distribution (before any mask)."""
        if not self.want_logprobs:
            return None
        x = logits.astype(np.float32, copy=False)
        m = float(x.max())
        lse = m + float(np.log(np.exp(x - m).sum()))
        out = self._entry(tid, x[tid] - lse)
        top = []
        if self.top_n:
            idx = np.argpartition(-x, self.top_n)[:self.top_n]
            top = [self._entry(int(i), x[i] - lse) for i in idx[np.argsort(-x[idx])]]
        out["top_logprobs"] = top
        return out

    def accept(self, tid: int):
        if self.matcher is not None:
            self.matcher.consume_token(tid)


TOOL_TAGS = ("<tool_call>", "</tool_call>")


def tool_call_lark(tools, name=None, tag_ids=None) -> str:
    """A Lark grammar for one Qwen-style call: <tool_call>\\n{"name": N, "arguments": {...}}\\n</tool_call>,
    arguments matching that tool's JSON schema (any of `tools` unless `name` is given). `tag_ids` maps a tag
    to its token id where the vocabulary has it as one token (Qwen2.5: 151657, 151658): the grammar then
    names that token (`<[id]>`), since llguidance takes every added token for a special one, which a
    quoted "<tool_call>" never matches."""
    rules, alts = [], []
    for i, t in enumerate(tools):
        fn = t["function"]
        if name is not None and fn["name"] != name:
            continue
        schema = closed(fn.get("parameters") or {"type": "object"})
        rules.append(f"args{i}: %json {json.dumps({**schema, 'x-guidance': JSON_OPTIONS})}")
        alts.append(f'"{{\\"name\\": " {json.dumps(json.dumps(fn["name"]))} ", \\"arguments\\": " args{i} "}}"')
    open_tag, close_tag = (f"<[{tag_ids[t]}]>" if t in (tag_ids or {}) else json.dumps(t) for t in TOOL_TAGS)
    return (f'start: {open_tag} "\\n" call "\\n" {close_tag}\n'
            f"call: {' | '.join(alts)}\n" + "\n".join(rules) + "\n")
