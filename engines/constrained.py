"""Per-token work between the forward pass and sampling, shared by the engines with their own decode loop
(transformers, llama.cpp): constrained decoding with llguidance (JSON schema / Lark grammar -> a mask of
the tokens allowed next) and OpenAI logprobs.

Why llguidance: it builds its token trie from a Hugging Face tokenizer *or* straight from a llama.cpp
vocab (llguidance.llamacpp: the GGUF engine needs no HF files), computes a mask in ~0.1 ms a token for
a 49k vocabulary with no per-schema precompilation, and its masks are plain bitmasks that any logits
array takes (an exllamav2 filter could hand back the same allowed set)."""
import json
import threading

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
    """An engine's llguidance tokenizer, built on first use (about a second for a 150k-token vocab)."""

    def __init__(self, build):
        self._build = build
        self._lock = threading.Lock()
        self._tok = None

    def get(self):
        with self._lock:
            if self._tok is None:
                self._tok = self._build()
            return self._tok


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


def tool_call_lark(tools, name=None) -> str:
    """A Lark grammar for one Qwen-style call: <tool_call>\\n{"name": N, "arguments": {...}}\\n</tool_call>,
    arguments matching that tool's JSON schema (any of `tools` unless `name` is given)."""
    rules, alts = [], []
    for i, t in enumerate(tools):
        fn = t["function"]
        if name is not None and fn["name"] != name:
            continue
        schema = closed(fn.get("parameters") or {"type": "object"})
        rules.append(f"args{i}: %json {json.dumps({**schema, 'x-guidance': JSON_OPTIONS})}")
        alts.append(f'"{{\\"name\\": " {json.dumps(json.dumps(fn["name"]))} ", \\"arguments\\": " args{i} "}}"')
    return ("start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\n"
            f"call: {' | '.join(alts)}\n" + "\n".join(rules) + "\n")
