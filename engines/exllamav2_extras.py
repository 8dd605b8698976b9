"""Constrained decoding and logprobs for the exllamav2 engine, on exllamav2 0.3.2's own hooks:

- a grammar is an ExLlamaV2Filter driven by the llguidance matcher of engines/constrained.py (TokenGuide).
  It takes 0.3.2's logit-mask path (sampler.py: can_mask_logits + prepare_logit_mask, run by the
  generator's filter pool while the GPU computes the next forward pass, then mask_logits), not the
  allowed-token-list path, which builds and sorts a Python list of up to 150k ids a token;
- logprobs come from the job's `return_logits` (the model's logits of each sampled token, in
  "logits" / "held"["logits"] of iterate()'s results), through TokenGuide.logprob like the other engines.
  Not `return_top_tokens`: 0.3.2's top_k_probs are taken after temperature, top-k/top-p and the mask
  (a greedy job reports probability 1 for a single candidate), not the model's distribution. One difference
  remains: 0.3.2 applies a repetition penalty in place to the logits it then keeps (sampler.py 406-416), so
  with repetition_penalty != 1 the logprobs are of the penalized logits (the other engines report before it).

The filter's base class is a parameter: ExLlamaV2Filter on the GPU, tests/exl_standin.py's on CPU, so
exllamav2 is never imported here."""
import numpy as np

from engines.constrained import TokenGuide


def grammar_filter_class(base):
    """An ExLlamaV2Filter subclass (of `base`) that lets through only what the request's grammar allows."""

    class GrammarFilter(base):
        def __init__(self, model, tokenizer, guide: TokenGuide, stop_ids):
            super().__init__(model, tokenizer)
            self.guide, self.stop_ids, self.blocked = guide, frozenset(stop_ids), None

        def begin(self, prefix_str):
            pass  # the matcher starts at the grammar's start; a job begins its filters once, before token 1

        def feed(self, token):
            tid = int(token)  # 0.3.2 passes the sampled token as a (1, 1) tensor
            if tid not in self.stop_ids:  # the stop token ends the job: nothing follows it
                self.guide.accept(tid)

        def use_background_worker(self):
            return True

        def can_mask_logits(self):
            return True

        def prepare_logit_mask(self):
            self.blocked = self.guide.blocked()
            return True

        def mask_logits(self, logits):
            import torch
            n = min(len(self.blocked), logits.shape[-1])
            keep = torch.zeros(logits.shape[-1], dtype=torch.bool)
            keep[:n] = torch.from_numpy(~self.blocked[:n])
            # A new tensor: the job's return_logits keeps the model's own logits, unmasked.
            return logits.masked_fill(~keep.to(logits.device), float("-inf"))

        def next(self):  # the allowed-list path, for a stack with a filter that cannot mask
            return set(np.flatnonzero(~self.guide.blocked()).tolist()), set()

    return GrammarFilter


def job_extras(params, guide, filter_cls, model, tokenizer, stop_ids) -> dict:
    """The ExLlamaV2DynamicJob arguments for a request's grammar and logprobs."""
    kw = {}
    if params.grammar:
        kw["filters"] = [filter_cls(model, tokenizer, guide, stop_ids)]
    if params.logprobs:
        kw["return_logits"] = True
    return kw


def logprob_entries(r: dict, guide, stop_ids, n_vocab: int) -> list:
    """OpenAI logprobs entries of the tokens a streaming result carries (the held ones too, when a stop
    token ended the job); the stop token itself has none, as on the other engines. Normalised over the
    real vocabulary (the first n_vocab ids): 0.3.2 sets the head's padding rows to -inf in place in the
    kept logits only when no filter made a masked copy (sampler.py 514-517), so with a grammar they would
    still hold the model's values and shift every logprob."""
    src = r if "token_ids" in r else r.get("held", {})
    ids, logits = src.get("token_ids"), src.get("logits")
    if ids is None or logits is None:
        return []
    ids = ids.reshape(-1).tolist() if hasattr(ids, "reshape") else list(ids)
    rows = logits.reshape(len(ids), -1)[:, :n_vocab].float().cpu().numpy()
    return [guide.logprob(row, tid) for tid, row in zip(ids, rows) if tid not in stop_ids]
