"""llama.cpp engine (llama-cpp-python): GGUF models on the CPU, quantized weights and KV cache.

The chat template is the GGUF's own (`tokenizer.chat_template`), rendered as transformers renders
it. Requests run one at a time in arrival order; the tokens evaluated for the last request stay in
the KV cache, so the next turn of a conversation (the same history plus a new question) evaluates
only its new suffix. The decode loop is ours (not Llama.generate) so that sampling follows the same
order as the other engines (repetition penalty over the whole context, then temperature, top-k,
top-p) and a cancel is seen between prefill batches and between tokens."""
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from engines.base import Engine, EngineError, GenParams, find_gguf
from engines.constrained import TokenGuide, Vocab
from engines.decoding import cancelled_before_start, decode_loop, ms_since
from engines.llamacpp_cpu import amx_choice, cpu_name, crash_advice, open_llama, plan_threads

# -cache -> llama.cpp KV cache type. llama.cpp has no 6-bit cache type: q6 gets q5_1 (5 bits + a
# 16-bit scale and minimum per 32 values = 6.0 bits a value, the memory of a 6-bit cache).
CACHE_TYPES = {"fp16": "f16", "q8": "q8_0", "q6": "q5_1", "q4": "q4_0"}
CHATML_STOPS = ("<|im_end|>", "<|endoftext|>")
log = logging.getLogger("qwen_server.llamacpp")


def gguf_context_length(path):
    """The model's trained context (`<arch>.context_length`), read with the vocabulary only (no weights:
    the KV cache is sized from it before the model loads)."""
    import ctypes

    import llama_cpp
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    if not model:
        raise EngineError(f"llama.cpp cannot read {path!r}: is it a complete GGUF model file?")
    try:
        buf = ctypes.create_string_buffer(256)

        def meta(key):
            n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
            return buf.value.decode() if n >= 0 else None
        value = meta(f"{meta('general.architecture')}.context_length")
        return int(value) if value and value.isdigit() else None
    finally:
        llama_cpp.llama_model_free(model)


class LlamaCppEngine(Engine):
    name = "llamacpp"
    probe_in_child = True  # llama.cpp's AMX kernels segfault on some Xeons (llamacpp_cpu.py)

    def crash_hint(self) -> str:
        amx = amx_choice(self.llama_amx)
        return (f"llama.cpp on {cpu_name()} (CPU has AMX: {'yes' if amx.cpu else 'no'}; llama.cpp built with AMX: "
                f"{'yes' if amx.build else 'no'}): {crash_advice(amx)}")

    def __init__(self, model_path, cache_mode="q4", max_seq_len=None, threads=None, threads_batch=None,
                 llama_amx=False):
        super().__init__(model_path, cache_mode, max_seq_len)
        self.llama_amx = llama_amx  # QWEN_LLAMA_AMX: the user's llama.cpp has the AMX fix
        self.gguf_path = find_gguf(model_path)
        if not self.gguf_path:
            raise EngineError(f"{model_path!r} is not a .gguf file or a dir holding one: the llamacpp engine "
                              f"serves GGUF models (use --engine transformers for a Hugging Face dir)")
        self.model_name = os.path.basename(self.gguf_path)[:-len(".gguf")]
        self.plan = plan_threads(os.path.getsize(self.gguf_path), threads, threads_batch)
        self.threads, self.threads_batch = self.plan.decode, self.plan.batch
        self.cache_mode = CACHE_TYPES[cache_mode]
        if cache_mode == "q6":
            self.cache_note = "llama.cpp has no 6-bit KV cache type: q6 uses q5_1 (6.0 bits a value, same memory)"
        self.flash_attn = cache_mode != "fp16"  # llama.cpp quantizes the V cache only with flash attention
        # Every llama.cpp computation runs on this one thread. libgomp keeps a team of threads for each thread
        # that starts a parallel region; a second live team (the server's start-up token on the main thread,
        # then requests on gunicorn's pooled threads) makes it more threads than cores, and libgomp then
        # throttles the barrier's spin: decode at 2 threads fell to half (26 vs 58 tok/s, a 0.5B Q4_0).
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama.cpp")

    def load(self):
        t0 = time.perf_counter()
        # llama.cpp's own log (model metadata, per-tensor lines) goes to this logger: errors only
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        self.plan.apply()  # OMP_WAIT_POLICY / GOMP_SPINCOUNT: read when libgomp loads, before llama_cpp is imported
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as e:
            raise EngineError(f"llama-cpp-python is not installed ({e}): pip install -r requirements.txt") from e
        self.fit_context(gguf_context_length(self.gguf_path))
        cache_type = getattr(llama_cpp, f"GGML_TYPE_{self.cache_mode.upper()}")
        self.amx = amx_choice(self.llama_amx)
        if self.amx.note():
            log.warning("llama.cpp: %s", self.amx.note())
        try:
            self.llm, self.buffers = self._compute.submit(
                open_llama, self.gguf_path, self.amx.extra_bufts, n_ctx=self.max_seq_len, n_threads=self.threads,
                n_threads_batch=self.threads_batch, type_k=cache_type, type_v=cache_type, flash_attn=self.flash_attn,
                n_gpu_layers=0, verbose=False).result()
        except (ValueError, RuntimeError) as e:  # llama-cpp-python's "Failed to load model from file" etc.
            raise EngineError(f"llama.cpp cannot load {self.gguf_path!r} with a {self.max_seq_len}-token "
                              f"{self.cache_mode} cache: {e}") from e
        meta = self.llm.metadata
        self.architecture = meta.get("general.architecture", "?")
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise EngineError(f"{self.gguf_path!r} has no chat template (GGUF key tokenizer.chat_template): "
                              f"an instruct model is needed")
        specials = self._special_token_texts(meta)
        self.formatter = Jinja2ChatFormatter(template, eos_token=specials.pop("eos_token", ""),
                                             bos_token=specials.pop("bos_token", ""))
        self.template_extras = specials  # unk_token, pad_token
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._vocab_is_eog = llama_cpp.llama_vocab_is_eog  # asked every token: no import on that path
        self.extra_stops = {ids[0] for ids in (self.tokenize(t) for t in CHATML_STOPS) if len(ids) == 1}
        self.ll_vocab = Vocab(self._ll_tokenizer)
        self.ll_vocab.start()  # in the background: the server answers meanwhile
        self.load_seconds = round(time.perf_counter() - t0, 2)
        log.info("llama.cpp: %s, K and V cache %s (asked: %s), flash attention %s, weights in %s; %s",
                 os.path.basename(self.gguf_path), self.cache_mode, self.cache_requested,
                 "on" if self.flash_attn else "off", ", ".join(f"{k} {v} MiB" for k, v in self.buffers.items()),
                 self.plan.line())

    def _special_token_texts(self, meta) -> dict:
        """bos/eos/unk/pad token texts for the template, as transformers passes its special tokens map."""
        out = {}
        for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                          ("pad_token", "padding")):
            tid = meta.get(f"tokenizer.ggml.{key}_token_id")
            if tid is not None and 0 <= int(tid) < self.llm.n_vocab():
                out[name] = self.llm.detokenize([int(tid)], special=True).decode("utf-8", "replace")
        return out

    # -- text ---------------------------------------------------------------------------------------
    def render(self, messages, tools=None) -> str:
        return self.formatter(messages=messages, tools=tools, **self.template_extras).prompt

    def template_has_tools(self) -> bool:
        return "tools" in self.formatter.template

    def tokenize(self, text) -> list:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def decode(self, ids) -> str:
        return self.llm.detokenize(ids).decode("utf-8", "replace")

    def _ll_tokenizer(self):
        """llguidance's tokenizer straight from the GGUF's vocab (no Hugging Face files needed)."""
        from llguidance.llamacpp import lltokenizer_from_vocab
        eos = sorted(t for t in range(self.llm.n_vocab()) if self._is_eos(t))
        return lltokenizer_from_vocab(self.vocab, n_vocab=self.llm.n_vocab(), eos_token=eos)

    def _is_eos(self, tid) -> bool:
        """llama.cpp's end-of-generation tokens, plus ChatML's ends as the HF engines have them."""
        return tid in self.extra_stops or self._vocab_is_eog(self.vocab, tid)

    def status(self):
        st = super().status()
        st.update(threads=self.threads, threads_batch=self.threads_batch, cpu_plan=self.plan.view(),
                  flash_attn=self.flash_attn, cache_type_k=self.cache_mode, cache_type_v=self.cache_mode,
                  gguf=os.path.abspath(self.gguf_path), model_buffers_mib=self.buffers, amx=self.amx.view())
        return st

    # -- generation ---------------------------------------------------------------------------------
    def generate_ids(self, prompt_ids, params: GenParams, cancel: threading.Event):
        with self.turns.turn(cancel) as my_turn:  # one context, one KV cache: one request at a time
            if not my_turn:
                yield cancelled_before_start(len(prompt_ids))
                return
            yield from self._generate(prompt_ids, params, cancel)

    def _eval(self, ids):
        """llama.cpp evaluates `ids` on the engine's compute thread (see __init__)."""
        return self._compute.submit(self.llm.eval, ids).result()

    def _reuse_prefix(self, ids) -> int:
        """Keep the KV cache of the longest prefix that `ids` shares with what was evaluated last (at
        least the last prompt token is evaluated again: its logits pick the first new token)."""
        import numpy as np
        llm = self.llm
        limit = max(0, min(llm.n_tokens, len(ids) - 1))
        differ = np.flatnonzero(llm.input_ids[:limit] != np.asarray(ids[:limit], dtype=llm.input_ids.dtype))
        llm.n_tokens = int(differ[0]) if len(differ) else limit  # eval() drops the cache from here on
        return llm.n_tokens

    def _sampler(self, params: GenParams, prompt_ids):
        import llama_cpp as lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if params.repetition_penalty != 1.0:  # the whole context, prompt included, as transformers does
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_penalties(
                self.llm.n_vocab(), self.max_seq_len, params.repetition_penalty, 0.0, 0.0))
        if params.greedy:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(params.temperature))
            if params.top_k:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(params.top_p, 1))
            seed = lc.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))  # DEFAULT_SEED: a random one
        if params.repetition_penalty != 1.0:
            for tid in prompt_ids:
                lc.llama_sampler_accept(chain, tid)
        return chain

    def _generate(self, prompt_ids, params, cancel):
        import llama_cpp as lc
        llm, t0 = self.llm, time.perf_counter()
        cached = self._reuse_prefix(prompt_ids)
        for at in range(cached, len(prompt_ids), llm.n_batch):
            if cancel.is_set():
                yield cancelled_before_start(len(prompt_ids), cached_tokens=cached, prefill_ms=ms_since(t0))
                return
            self._eval(prompt_ids[at:at + llm.n_batch])
        sampler = self._sampler(params, prompt_ids)
        guide = TokenGuide(params, self.ll_vocab, llm.n_vocab())
        usage = {"prompt_tokens": len(prompt_ids), "cached_tokens": cached, "prefill_ms": ms_since(t0)}
        sample = (lambda: lc.llama_sampler_sample(sampler, llm.ctx, -1)) if not guide.active else \
            (lambda: self._guided_sample(sampler, guide))
        try:
            yield from decode_loop(sample, lambda tid: self._eval([tid]), self._is_eos, self.decode, params, cancel,
                                   usage, guide)
        finally:
            lc.llama_sampler_free(sampler)

    def _guided_sample(self, sampler, guide):
        """Sampling with a grammar mask written into llama.cpp's own logits, and/or a logprobs entry."""
        import llama_cpp as lc
        import numpy as np
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.llm.n_vocab(),))
        raw = logits.copy() if guide.want_logprobs else None
        blocked = guide.blocked()
        if blocked is not None:
            logits[blocked] = -np.inf
        tid = lc.llama_sampler_sample(sampler, self.llm.ctx, -1)
        return (tid, guide.logprob(raw, tid)) if raw is not None else tid
