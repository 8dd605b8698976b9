"""UpstreamRequest: everything one upstream call is asked, as one typed value (no side channels in a
params dict). The gateway's routes build it from the client's body; providers read it; history keeps
saved_params()."""
import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class UpstreamRequest:
    messages: list = field(default_factory=list)  # chat messages, tool calls' arguments parsed (dicts)
    # temperature, top_p, top_k, repetition_penalty, max_tokens, stop, seed...: as common.openai_format parsed them
    sampling: dict = field(default_factory=dict)
    model: str | None = None  # a model the client named (GigaChat-Pro, a Qwen upstream's id); None: the provider's
    # tools, tool_choice, response_format, logprobs, top_logprobs, parallel_tool_calls: passed on as sent
    shaping: dict = field(default_factory=dict)
    completion: dict | None = None  # a text completion (/v1/completions): prompt, suffix, logprobs as sent

    def replace(self, **changes) -> "UpstreamRequest":
        return dataclasses.replace(self, **changes)

    def saved_params(self) -> dict:
        """What history's `params` column keeps: the request's parameters as the OpenAI body names them
        (the sampling, the named model, the shaping fields); never the messages or a completion's prompt,
        which are the question."""
        out = dict(self.sampling)
        if self.model:
            out["model"] = self.model
        out.update(self.shaping)
        return out
