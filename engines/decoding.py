"""The token loop shared by the engines that decode one token at a time: token ids -> whole UTF-8 text
deltas with stop strings cut (`TextStream`), the loop itself (`decode_loop`) and the chunk of a request
cancelled before it started."""
import time
from typing import Iterator

from common.stop_strings import StopCutter
from engines.base import Chunk, GenParams


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
