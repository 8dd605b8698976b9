"""`stop` strings, cut the same way wherever text streams out: by the engines' decode loop (qwen_server)
and by the gateway for GigaChat, whose API has none."""


def partial_tail(text, markers) -> int:
    """Length of the longest end of `text` that is the start, not the whole, of one of `markers`: the
    part to hold back, since the next text may complete that marker."""
    return max((k for s in markers for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class StopCutter:
    """Cuts streamed text at the first stop string. feed() returns what may go out now, holding back
    a tail that could be the start of a stop string; `hit` is set once one was found."""

    def __init__(self, stops):
        self.stops, self.held, self.hit = [s for s in stops or () if s], "", False

    def feed(self, text):
        if not self.stops:
            return text
        self.held += text
        cut = min((i for i in (self.held.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.held, self.hit = self.held[:cut], "", True
            return out
        keep = partial_tail(self.held, self.stops)
        out, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return out

    def flush(self):
        out, self.held = self.held, ""
        return out
