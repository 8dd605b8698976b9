"""exllamav2 engine: the fast GPU path (FP16/EXL2 weights, FP16/Q8/Q6/Q4 KV cache).

`import exllamav2` compiles its CUDA extension, so it happens only in load().
The dynamic generator is not thread-safe: one owner thread runs it; requests come
in through a queue and get their chunks back through a queue of their own."""
import queue
import threading
import time

from engines import Chunk, EngineError, GenParams
from engines.hf import HFEngine

PAGE = 256  # exllamav2 wants cache sizes in multiples of its page size
PAGED_BATCH = 8


class _Request:
    def __init__(self, ids, params, cancel):
        self.ids, self.params, self.cancel = ids, params, cancel
        self.out = queue.Queue()
        self.job = None


class ExLlamaV2Engine(HFEngine):
    name = "exllamav2"

    def load(self):
        t0 = time.perf_counter()
        try:
            import torch
            if not torch.cuda.is_available():
                raise EngineError("the exllamav2 engine needs a CUDA GPU; use --engine transformers on CPU")
            from exllamav2 import (ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Cache_Q4, ExLlamaV2Cache_Q6,
                                   ExLlamaV2Cache_Q8, ExLlamaV2Config, ExLlamaV2Tokenizer)
            from exllamav2 import attn as exl_attn
            from exllamav2.generator import ExLlamaV2DynamicGenerator
        except ImportError as e:
            raise EngineError(f"exllamav2 is not usable here ({e}): pip install exllamav2, or use "
                              f"--engine transformers") from e
        self.load_tokenizer()  # the chat template lives in the HF tokenizer config
        self.device = "cuda"
        total = -(-self.max_seq_len // PAGE) * PAGE
        config = ExLlamaV2Config(self.model_path)
        config.max_seq_len = total  # before the model is built: it sizes buffers from this
        # Paged attention needs flash-attn >= 2.5.7; without it the generator runs unpaged (batch 1).
        self.paged = bool(exl_attn.has_flash_attn_with_paged)
        if not exl_attn.has_flash_attn:
            # 0.3.2's SDPA path drops the causal mask in prefill for a single sequence (wrong
            # answers); its matmul path is correct.
            config.no_sdpa = True
        config.arch_compat_overrides()
        self.model = ExLlamaV2(config)
        cache_cls = {"fp16": ExLlamaV2Cache, "q8": ExLlamaV2Cache_Q8, "q6": ExLlamaV2Cache_Q6,
                     "q4": ExLlamaV2Cache_Q4}[self.cache_mode]
        self.cache = cache_cls(self.model, max_seq_len=total, lazy=True)
        try:
            self.model.load_autosplit(self.cache, progress=True)
        except torch.cuda.OutOfMemoryError as e:
            raise EngineError(f"the model and a {total}-token {self.cache_mode} cache do not fit in GPU memory; "
                              f"lower -l or use -cache q4 ({e})") from e
        self.tokenizer = ExLlamaV2Tokenizer(config)
        self.generator = ExLlamaV2DynamicGenerator(model=self.model, cache=self.cache, tokenizer=self.tokenizer,
                                                   paged=self.paged,
                                                   max_batch_size=PAGED_BATCH if self.paged else 1)
        self.stop_ids = self.stop_token_ids()
        self.inbox = queue.Queue()
        self.active = {}
        threading.Thread(target=self._owner_loop, name="exllamav2-generator", daemon=True).start()
        self.load_seconds = round(time.perf_counter() - t0, 2)

    def status(self):
        st = super().status()
        st.update(paged=self.paged, attention="flash-attn" if self.paged else "matmul (no flash-attn)")
        return st

    def queue_length(self):
        return self.inbox.qsize() + len(self.generator.pending_jobs)

    def generate(self, messages, params: GenParams, cancel: threading.Event):
        req = _Request(self.encode(messages), params, cancel)
        self.inbox.put(req)
        try:
            while True:
                item = req.out.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finish_reason:
                    return
        finally:
            cancel.set()  # the consumer left (client gone): the owner thread frees the job's cache

    # -- owner thread ---------------------------------------------------------------------------
    def _start(self, req):
        import torch
        from exllamav2.generator import ExLlamaV2DynamicJob, ExLlamaV2Sampler
        p = req.params
        s = ExLlamaV2Sampler.Settings()
        s.temperature = p.temperature
        s.top_k = 1 if p.greedy else p.top_k  # exllamav2 would read top_p 0 as "off", not greedy
        s.top_p = p.top_p
        s.token_repetition_penalty = p.repetition_penalty
        req.job = ExLlamaV2DynamicJob(input_ids=torch.tensor([req.ids]), max_new_tokens=p.max_tokens,
                                      gen_settings=s, seed=p.seed, identifier=id(req),
                                      stop_conditions=list(self.stop_ids) + list(p.stop))
        self.active[id(req)] = req
        self.generator.enqueue(req.job)

    def _owner_loop(self):
        while True:
            if not self.active:
                self._start(self.inbox.get())  # idle: sleep until work arrives
            while not self.inbox.empty():
                self._start(self.inbox.get_nowait())
            for key, req in list(self.active.items()):
                if req.cancel.is_set():
                    self.generator.cancel(req.job)
                    del self.active[key]
                    req.out.put(Chunk(finish_reason="cancelled"))
            if not self.active:
                continue
            try:
                results = self.generator.iterate()
            except Exception as e:  # noqa: BLE001 - fail the jobs, keep the server alive
                for key, req in list(self.active.items()):
                    self.generator.cancel(req.job)
                    req.out.put(e)
                self.active.clear()
                continue
            for r in results:
                req = self.active.get(r["identifier"])
                if req is None or r["stage"] != "streaming":
                    continue
                if r.get("text"):
                    req.out.put(Chunk(text=r["text"]))
                if r["eos"]:
                    del self.active[r["identifier"]]
                    finish = "length" if r.get("eos_reason") == "max_new_tokens" else "stop"
                    req.out.put(Chunk(finish_reason=finish, usage={
                        "prompt_tokens": r["prompt_tokens"], "completion_tokens": r["new_tokens"],
                        "prefill_ms": round(r["time_prefill"] * 1000, 2),
                        "decode_ms": round(r["time_generate"] * 1000, 2)}))
