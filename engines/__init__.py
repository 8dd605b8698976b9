"""The engines behind qwen_server: exllamav2 (GPU), transformers (CPU/GPU) and llama.cpp (CPU, GGUF).

The package's face for callers; the code lives in its modules, which import each other, never this file:
- `engines.base`: the `Engine` interface, `GenParams` (what a request asks), `Chunk` (what it yields), `EngineError`
- `engines.decoding`: `TextStream` and `decode_loop`, the token loop of the engines that decode one token at a time
- `engines.turns`: `Turns`, one request at a time, first come first served
- `engines.factory`: `create_engine` (and `pick_engine` for `--engine auto`)
- one module per engine (`llamacpp_engine`, `exllamav2_engine`, `transformers_engine`), grammars
  (`constrained`, `json_schema`) and the tool prompt of templates without tools (`tool_prompt`)."""
from engines.base import (
    CACHE_MODES,
    FIM_TOKENS,
    MAX_DEFAULT_SEQ_LEN,
    MIN_TEMPERATURE,
    Chunk,
    Engine,
    EngineError,
    GenParams,
    find_gguf,
)
from engines.decoding import TextStream, cancelled_before_start, decode_loop, ms_since
from engines.factory import ENGINES, create_engine, pick_engine
from engines.turns import Turns

__all__ = ["CACHE_MODES", "ENGINES", "FIM_TOKENS", "MAX_DEFAULT_SEQ_LEN", "MIN_TEMPERATURE", "Chunk", "Engine",
           "EngineError", "GenParams", "TextStream", "Turns", "cancelled_before_start", "create_engine",
           "decode_loop", "find_gguf", "ms_since", "pick_engine"]
