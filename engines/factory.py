"""Which engine serves a model (`--engine auto`: by the model's files and the machine) and creating it.
Each engine module is imported only when chosen: the llama.cpp path never imports torch."""
import os

from engines.base import Engine, EngineError, find_gguf


def pick_engine(kind, model_path) -> str:
    """`auto`: llamacpp for a GGUF model (a .gguf file, or a dir with one and no config.json); for a
    Hugging Face/EXL2 dir exllamav2 when CUDA is present, else transformers. The GGUF check comes
    first: the llama.cpp path never imports torch."""
    if kind != "auto":
        return kind
    if not os.path.isfile(os.path.join(model_path, "config.json")) and find_gguf(model_path):
        return "llamacpp"
    import torch
    return "exllamav2" if torch.cuda.is_available() else "transformers"


ENGINES = ("auto", "llamacpp", "exllamav2", "transformers")


def create_engine(kind, model_path, cache_mode="q4", max_seq_len=None, threads=None, threads_batch=None,
                  llama_amx=False, jit=(None, False)) -> Engine:
    """threads, threads_batch: llama.cpp's CPU threads for decoding and for prompts (default: chosen from
    the cores and the model's size, engines/llamacpp_cpu.py); the other engines leave threading to torch.
    llama_amx: llama.cpp may use its AMX kernels (QWEN_LLAMA_AMX). jit: (C++ standard, verbose) of
    exllamav2's CUDA extension build (EXLLAMAV2_JIT_*)."""
    kind = pick_engine(kind, model_path)
    if kind == "llamacpp":
        from engines.llamacpp_engine import LlamaCppEngine
        return LlamaCppEngine(model_path, cache_mode, max_seq_len, threads, threads_batch, llama_amx)
    if kind == "exllamav2":
        from engines.exllamav2_engine import ExLlamaV2Engine
        engine = ExLlamaV2Engine(model_path, cache_mode, max_seq_len)
        engine.jit = tuple(jit)
        return engine
    if kind == "transformers":
        from engines.transformers_engine import TransformersEngine
        return TransformersEngine(model_path, cache_mode, max_seq_len)
    raise EngineError(f"unknown engine {kind!r}: use {', '.join(ENGINES)}")
