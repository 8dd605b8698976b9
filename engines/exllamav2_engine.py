"""exllamav2 engine: the fast GPU path (FP16/EXL2 weights, FP16/Q8/Q6/Q4 KV cache).

`import exllamav2` compiles its CUDA extension, so it happens only in load().
The dynamic generator is not thread-safe: one owner thread runs it; requests come in
through an inbox and get their chunks back through a queue of their own. The owner loop
takes any object with the generator's methods (enqueue, iterate, cancel, pending_jobs,
active_jobs), so the CPU tests drive it with a stand-in that returns 0.3.2's result dicts."""
import itertools
import logging
import queue
import threading
import time
from types import SimpleNamespace

from engines.base import Chunk, EngineError, GenParams
from engines.constrained import TokenGuide
from engines.decoding import cancelled_before_start
from engines.exllamav2_extras import grammar_filter_class, job_extras, logprob_entries
from engines.hf import HFEngine

log = logging.getLogger("qwen_server")
PAGE = 256  # exllamav2 wants cache sizes in multiples of its page size
PAGED_BATCH = 8
# Without flash-attn, prefill attention is a plain matmul whose weights are chunk x context per head:
# 2048-token chunks at 16k context are ~1.9 GB a layer for a 7B model. Keep chunk x context under this.
MATMUL_ATTN_ELEMENTS = 2048 * 4096
ALIVE_CHECK_S = 0.5  # how often a waiting generate() checks that the owner thread still runs
OWNER_DEAD = "the exllamav2 generator thread has stopped: restart qwen_server"


def attention_plan(has_flash_attn, has_paged_flash_attn, no_flash_attn, total, max_input_len):
    """(paged, no_sdpa, max_chunk_size) from what exllamav2 found and the config, read after
    config.arch_compat_overrides() (which may set no_flash_attn)."""
    flash = has_flash_attn and not no_flash_attn
    if flash:
        return has_paged_flash_attn, False, None  # None: the generator's default, max_input_len
    # 0.3.2's SDPA path drops the causal mask in prefill for a single sequence (wrong answers);
    # its matmul path is correct.
    return False, True, max(128, min(max_input_len, MATMUL_ATTN_ELEMENTS // total))


def load_error(e, path, total, cache_mode) -> EngineError:
    """An actionable one-line EngineError for what exllamav2 raises while loading."""
    msg = str(e).strip(" #")
    if "out of memory" in msg.lower() or "Insufficient VRAM" in msg:  # load_autosplit catches OOM itself
        return EngineError(f"the model and a {total}-token {cache_mode} cache do not fit in GPU memory: "
                           f"lower -l or use -cache q4 ({msg})")
    if "safetensors" in msg:
        return EngineError(f"{path!r} has no .safetensors weights: exllamav2 reads FP16 or EXL2 safetensors "
                           f"(convert .bin/.gguf weights first) ({msg})")
    if "tokenizer" in msg.lower():
        return EngineError(f"{path!r} has no usable tokenizer.json (exllamav2 0.3 does not read tokenizer.model): "
                           f"copy the model's tokenizer.json next to the weights ({msg})")
    return EngineError(f"exllamav2 cannot load {path!r}: {type(e).__name__}: {msg}")


def import_exllamav2(std=None, verbose=False):
    """The exllamav2 classes the engine uses. Importing builds the CUDA extension (JIT, minutes the
    first time). std="c++20" (EXLLAMAV2_JIT_STD, read by qwen_api/settings.py) adds -std=c++20 to that build:
    CUDA 13's nvcc fails on torch 2.11's ATen headers in C++17. Every process must use the same flags, or
    torch builds it again. verbose (EXLLAMAV2_JIT_VERBOSE=1) prints the compiler's commands and output
    (tools/gpu_check.py keeps them)."""
    from torch.utils import cpp_extension
    if (std or verbose) and not hasattr(cpp_extension.load, "wrapped_for_exllamav2"):
        load = cpp_extension.load

        def load_with_flags(*args, **kw):
            if std:
                kw["extra_cflags"] = list(kw.get("extra_cflags") or []) + [f"-std={std}"]
                kw["extra_cuda_cflags"] = list(kw.get("extra_cuda_cflags") or []) + [f"-std={std}"]
            kw["verbose"] = kw.get("verbose") or verbose
            return load(*args, **kw)
        load_with_flags.wrapped_for_exllamav2 = True
        cpp_extension.load = load_with_flags  # exllamav2.ext does `from torch.utils.cpp_extension import load`
    import exllamav2
    from exllamav2 import attn
    from exllamav2.generator import ExLlamaV2DynamicGenerator, ExLlamaV2DynamicJob, ExLlamaV2Sampler
    from exllamav2.generator.filters import ExLlamaV2Filter
    return SimpleNamespace(lib=exllamav2, attn=attn, Generator=ExLlamaV2DynamicGenerator, Job=ExLlamaV2DynamicJob,
                           Settings=ExLlamaV2Sampler.Settings, Filter=ExLlamaV2Filter)


class _Request:
    def __init__(self, key, ids, params, max_new_tokens, cancel):
        self.key, self.ids, self.params, self.max_new_tokens, self.cancel = key, ids, params, max_new_tokens, cancel
        self.out = queue.Queue()
        self.job = None
        self.guide = None  # TokenGuide when the request has a grammar or wants logprobs
        self.logprobs = [] if params.logprobs else None  # entries not yet sent


class ExLlamaV2Engine(HFEngine):
    name = "exllamav2"
    paged = False
    attention = "not loaded"
    jit = (None, False)  # (std, verbose) of the CUDA extension's build: import_exllamav2's arguments

    def load(self):
        t0 = time.perf_counter()
        try:
            import torch
            if not torch.cuda.is_available():
                raise EngineError("the exllamav2 engine needs a CUDA GPU; use --engine transformers on CPU")
            exl = import_exllamav2(*self.jit)
        except ImportError as e:
            raise EngineError(f"exllamav2 is not usable here ({e}): pip install exllamav2, or use "
                              f"--engine transformers") from e
        except (RuntimeError, OSError) as e:  # the JIT build of its extension failed
            raise EngineError(f"exllamav2's CUDA extension did not build ({str(e).splitlines()[0]}); see the "
                              f"GPU section of docs/qwen_server.md (EXLLAMAV2_JIT_STD=c++20 for CUDA 13)") from e
        self.load_tokenizer()  # the chat template lives in the HF tokenizer config
        self.device = "cuda"
        total = -(-self.max_seq_len // PAGE) * PAGE
        try:
            generator = self._build_generator(exl, total)
        except EngineError:
            raise
        except Exception as e:  # noqa: BLE001 - exllamav2 raises ValueError/FileNotFoundError/RuntimeError here
            raise load_error(e, self.model_path, total, self.cache_mode) from e
        self.start(generator, exl.Job, exl.Settings, exl.Filter)
        # Built now, not on the first grammar/logprobs request: that would stall every running stream (~1 s).
        self.ll_vocab.get()
        self.load_seconds = round(time.perf_counter() - t0, 2)

    def _build_generator(self, exl, total):
        lib = exl.lib
        config = lib.ExLlamaV2Config(self.model_path)
        config.max_seq_len = total  # before the model is built: it sizes buffers from this
        config.arch_compat_overrides()  # may turn flash-attn off for this architecture
        self.paged, no_sdpa, chunk = attention_plan(exl.attn.has_flash_attn, exl.attn.has_flash_attn_with_paged,
                                                    config.no_flash_attn, total, min(config.max_input_len, total))
        config.no_sdpa = config.no_sdpa or no_sdpa
        self.attention = ("flash-attn, paged" if self.paged else "flash-attn, unpaged") if not no_sdpa \
            else f"matmul (no flash-attn), prefill chunks of {chunk}"
        self.model = lib.ExLlamaV2(config)
        cache_cls = {"fp16": lib.ExLlamaV2Cache, "q8": lib.ExLlamaV2Cache_Q8, "q6": lib.ExLlamaV2Cache_Q6,
                     "q4": lib.ExLlamaV2Cache_Q4}[self.cache_mode]
        self.cache = cache_cls(self.model, max_seq_len=total, lazy=True)
        self.model.load_autosplit(self.cache, progress=True)
        self.tokenizer = lib.ExLlamaV2Tokenizer(config)
        # Paged: up to PAGED_BATCH jobs share the cache; each reserves prompt + max_tokens up front, so
        # requests that ask for the whole context run alone. Unpaged (no flash-attn): one job at a time.
        return exl.Generator(model=self.model, cache=self.cache, tokenizer=self.tokenizer, paged=self.paged,
                             max_batch_size=PAGED_BATCH if self.paged else 1, max_chunk_size=chunk)

    def start(self, generator, job_cls, settings_cls, filter_base):
        """Serve requests with `generator` (ExLlamaV2DynamicGenerator or a stand-in) on an owner thread;
        `filter_base` is its ExLlamaV2Filter class."""
        self.generator, self.job_cls, self.settings_cls = generator, job_cls, settings_cls
        self.filter_cls = grammar_filter_class(filter_base)
        self.inbox = queue.Queue()
        self.active = {}  # request key -> request, for every job handed to the generator
        self.keys = itertools.count()  # job identifiers never reused (id() would be, after a request ends)
        self.owner = threading.Thread(target=self._owner_loop, name="exllamav2-generator", daemon=True)
        self.owner.start()

    def status(self):
        st = super().status()
        st.update(paged=self.paged, attention=self.attention)
        return st

    def queue_length(self):
        return self.inbox.qsize() + len(self.generator.pending_jobs)

    def generate_ids(self, ids, params: GenParams, cancel: threading.Event):
        room = self.max_seq_len - len(ids)
        if room < 1:
            raise ValueError(f"the prompt has {len(ids)} tokens and the context is {self.max_seq_len}: "
                             f"shorten the conversation")
        req = _Request(next(self.keys), ids, params, min(params.max_tokens, room), cancel)
        if not self.owner.is_alive():
            raise RuntimeError(OWNER_DEAD)
        self.inbox.put(req)
        try:
            while True:
                try:
                    item = req.out.get(timeout=ALIVE_CHECK_S)
                except queue.Empty:
                    if not self.owner.is_alive():
                        raise RuntimeError(OWNER_DEAD)
                    continue
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finish_reason:
                    return
        finally:
            cancel.set()  # the consumer left (client gone): the owner thread frees the job's cache

    # -- owner thread ---------------------------------------------------------------------------
    def _new_job(self, req):
        import torch
        p = req.params
        s = self.settings_cls()
        s.temperature = p.temperature
        s.top_k = 1 if p.greedy else p.top_k  # exllamav2 would read top_p 0 as "off", not greedy
        s.top_p = p.top_p
        s.token_repetition_penalty = p.repetition_penalty
        if p.grammar or p.logprobs:
            req.guide = TokenGuide(p, self.ll_vocab, self.model_config.get("vocab_size") or len(self.hf_tokenizer))
        extras = job_extras(p, req.guide, self.filter_cls, getattr(self, "model", None),
                            getattr(self, "tokenizer", None), self.stop_ids)
        return self.job_cls(input_ids=torch.tensor([req.ids]), max_new_tokens=req.max_new_tokens, gen_settings=s,
                            seed=p.seed, identifier=req.key, stop_conditions=list(self.stop_ids) + list(p.stop),
                            **extras)

    def _owner_loop(self):
        while True:
            try:
                self._admit(self.inbox.get() if not self.active else None)  # idle: sleep until work arrives
                self._drop_cancelled()
                if self.active:
                    self._step()
            except Exception:  # noqa: BLE001 - a bug of ours: log it and keep serving the others
                log.exception("exllamav2 owner loop")

    def _admit(self, first):
        """Hand new requests to the generator; one whose client already left costs nothing."""
        reqs = [first] if first else []
        while not self.inbox.empty():
            reqs.append(self.inbox.get_nowait())
        for req in reqs:
            if req.cancel.is_set():
                req.out.put(cancelled_before_start(len(req.ids)))
                continue
            try:
                req.job = self._new_job(req)
                self.generator.enqueue(req.job)  # asserts when the job can never fit the cache
            except Exception as e:  # noqa: BLE001 - fail this request only
                req.out.put(e)
                continue
            self.active[req.key] = req

    def _drop_cancelled(self):
        for key, req in list(self.active.items()):
            if req.cancel.is_set():
                del self.active[key]
                req.out.put(Chunk(finish_reason="cancelled"))
                self._cancel_job(req)

    def _cancel_job(self, req):
        try:
            self.generator.cancel(req.job)
        except Exception:  # noqa: BLE001 - the job is gone for us either way
            log.exception("exllamav2 cancel failed")

    def _step(self):
        try:
            results = self.generator.iterate()
        except Exception as e:  # noqa: BLE001 - fail the jobs the generator was running, keep the rest
            running = set(map(id, getattr(self.generator, "active_jobs", ()))) or None
            for key, req in list(self.active.items()):
                if running is None or id(req.job) in running:
                    del self.active[key]
                    req.out.put(e)
                    self._cancel_job(req)
            return
        for r in results:
            req = self.active.get(r.get("identifier"))
            if req is None or r["stage"] != "streaming":
                continue
            text = r.get("text", "")
            if r["eos"] and r.get("eos_reason") == "stop_token":
                text += held_text_before_stop_token(r)
            if req.logprobs is not None:
                req.logprobs += logprob_entries(r, req.guide, self.stop_ids, len(self.hf_tokenizer))
            if text:
                req.out.put(Chunk(text=text, logprobs=req.logprobs))
                req.logprobs = [] if req.logprobs is not None else None
            if r["eos"]:
                del self.active[r["identifier"]]
                finish = "length" if r.get("eos_reason") == "max_new_tokens" else "stop"
                req.out.put(Chunk(finish_reason=finish, usage={
                    "prompt_tokens": r["prompt_tokens"], "completion_tokens": r["new_tokens"],
                    "prefill_ms": round(r["time_prefill"] * 1000, 2),
                    "decode_ms": round(r["time_generate"] * 1000, 2)}, logprobs=req.logprobs or None))


def held_text_before_stop_token(r) -> str:
    """Text 0.3.2 was holding back (a partial stop-string match, an unfinished character) when a stop
    token ended the job: it comes only in r["held"], followed by the stop token's own piece
    (dynamic.py: receive_sample appends the piece to held_text before the stop-token check)."""
    held = r.get("held", {}).get("text", "")
    piece = r.get("eos_triggering_token_str") or ""
    if piece and held.endswith(piece):
        held = held[:-len(piece)]
    return held.rstrip("\ufffd")  # an unfinished UTF-8 character never completes now
