"""transformers engine: any Hugging Face causal LM, on CPU (float32) or CUDA (float16).

A plain token-by-token decode loop over the KV cache, so every token can be streamed,
cancelled and timed. Requests run one at a time (engine lock)."""
import threading
import time

import torch

from engines.base import EngineError, GenParams
from engines.constrained import TokenGuide
from engines.decoding import cancelled_before_start, decode_loop, ms_since
from engines.hf import HFEngine


class TransformersEngine(HFEngine):
    name = "transformers"

    def load(self):
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging
        t0 = time.perf_counter()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if self.device == "cuda" else torch.float32  # CPU matmuls are fast in fp32 only
        # The KV cache has the model's dtype. HF's quantized caches need optimum-quanto/HQQ: not used.
        self.cache_mode = "fp16" if dtype == torch.float16 else "fp32"
        if self.cache_requested != self.cache_mode:
            self.cache_note = (f"the transformers engine keeps the KV cache in the model's dtype, {self.cache_mode} "
                               f"on {self.device} (asked: {self.cache_requested}); a quantized cache needs "
                               f"--engine exllamav2 on a GPU, or a GGUF model (--engine llamacpp)")
        self.load_tokenizer()
        hf_logging.enable_progress_bar()
        try:
            self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype).to(self.device).eval()
        except torch.cuda.OutOfMemoryError as e:
            raise EngineError(f"the model does not fit in GPU memory: {e}") from e
        except (OSError, ValueError) as e:
            raise EngineError(f"cannot load weights from {self.model_path!r}: {e}") from e
        self.dtype = dtype
        self.eos_ids = set(self.stop_ids)
        self.load_seconds = round(time.perf_counter() - t0, 2)

    def _processors(self, p: GenParams):
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )
        procs = LogitsProcessorList()
        if p.repetition_penalty and p.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
        if not p.greedy:  # same order as transformers' generate()
            procs.append(TemperatureLogitsWarper(p.temperature))
            if p.top_k:
                procs.append(TopKLogitsWarper(p.top_k))
            if p.top_p < 1.0:
                procs.append(TopPLogitsWarper(p.top_p))
        return procs

    @torch.inference_mode()
    def generate_ids(self, prompt_ids, params: GenParams, cancel: threading.Event):
        with self.turns.turn(cancel) as my_turn:  # the model and its cache are not shared
            if not my_turn:
                yield cancelled_before_start(len(prompt_ids))
                return
            yield from self._generate(prompt_ids, params, cancel)

    def _generate(self, prompt_ids, params, cancel):
        t0 = time.perf_counter()
        rng = torch.Generator(device=self.device)
        if params.seed is not None:
            rng.manual_seed(params.seed)
        else:  # this generator only: torch.seed() would reseed the global RNG of every device, each request
            rng.seed()
        procs = self._processors(params)
        guide = TokenGuide(params, self.ll_vocab, self.model.config.vocab_size)
        state = {"ids": torch.tensor([prompt_ids], device=self.device)}
        # logits_to_keep=1: the head runs on the last position only, not the whole prompt (for SmolLM2 the
        # 49k-word head is ~20% of prefill compute; the other rows were thrown away).
        out = self.model(input_ids=state["ids"], use_cache=True, logits_to_keep=1)
        state.update(past=out.past_key_values, logits=out.logits[:, -1, :])
        usage = {"prompt_tokens": len(prompt_ids), "prefill_ms": ms_since(t0)}

        def sample():
            scores = state["logits"].float()
            blocked = guide.blocked()
            if blocked is not None:  # before top-k/top-p: they must choose among the allowed tokens
                scores = scores.masked_fill(torch.from_numpy(blocked).to(scores.device), float("-inf"))
            scores = procs(state["ids"], scores)
            if not params.greedy:
                state["token"] = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=rng)
            else:
                state["token"] = scores.argmax(dim=-1, keepdim=True)
            tid = int(state["token"])
            if guide.want_logprobs:
                return tid, guide.logprob(state["logits"][0].float().cpu().numpy(), tid)
            return tid

        def feed(_tid):
            token = state["token"]
            state["ids"] = torch.cat([state["ids"], token], dim=-1)
            out = self.model(input_ids=token, past_key_values=state["past"], use_cache=True)
            state.update(past=out.past_key_values, logits=out.logits[:, -1, :])

        yield from decode_loop(sample, feed, self.eos_ids.__contains__, self.decode, params, cancel, usage, guide)
