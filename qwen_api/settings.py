"""qwen_server's settings: every environment variable it and its engines read, read here once (after the
.env is loaded), typed and checked; the command-line flags take their defaults from this object
(common/settings_base.py). huggingface_hub reads its own HF_* variables (model_hub/settings.py)."""
from typing import Literal, Optional

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common import request_reader
from common.settings_base import LOG_LEVELS, EnvSettings, LogLevel
from engines.base import CACHE_MODES, MAX_DEFAULT_SEQ_LEN
from engines.factory import ENGINES


def flags(*names):
    return {"flags": names}


class QwenSettings(EnvSettings):
    model_config = SettingsConfigDict(env_prefix="QWEN_")

    model_path: Optional[str] = Field(None, json_schema_extra=flags("-m", "--model"), description=(
        "a .gguf file (or a dir holding one), a Hugging Face-format or EXL2 model dir, a Hugging Face repo id "
        "owner/repo[:QUANT] (GGUF quant tag or EXL2 branch; downloaded once into the HF cache, then used offline) "
        "or a short name from --list-models"))
    cache: Literal[CACHE_MODES] = Field("q4", json_schema_extra=flags("-cache", "--cache"), description=(
        "KV cache precision (q4: about 1/4 the memory of fp16; llamacpp uses f16/q8_0/q5_1/q4_0, transformers "
        "the model's dtype; /status says what is used)"))
    max_seq_len: Optional[int] = Field(None, ge=16, json_schema_extra=flags("-l", "--max-seq-len"), description=(
        f"context length in tokens, at least 16 (default: the model's own, at most {MAX_DEFAULT_SEQ_LEN}; beyond "
        "the model's own it runs with a warning: answers degrade past that length)"))
    engine: Literal[ENGINES] = Field("auto", json_schema_extra=flags("--engine"), description=(
        "auto = llamacpp for a GGUF model; for a model dir exllamav2 when CUDA is present, else transformers"))
    threads: Optional[int] = Field(None, ge=1, json_schema_extra=flags("-t", "--threads"), description=(
        "CPU threads of the llamacpp engine for decoding (default: chosen from the cores and the model's size; "
        "/status cpu_plan says why)"))
    threads_batch: Optional[int] = Field(None, ge=1, json_schema_extra=flags("--threads-batch"), description=(
        "the llamacpp engine's threads for prompts (default: -t, else the physical cores)"))
    host: str = Field("127.0.0.1", min_length=1, json_schema_extra=flags("--host"), description="bind address")
    port: int = Field(5001, ge=1, le=65535, json_schema_extra=flags("--port"), description="port")
    http_threads: int = Field(16, ge=1, json_schema_extra=flags("--http-threads"), description=(
        "requests served or queued at once, streams included; more wait for a thread"))
    max_tokens_default: int = Field(2048, ge=1, json_schema_extra=flags("--max-tokens-default"), description=(
        "max_tokens for a request that sends none, cut to the room left in the context"))
    allowed_hosts: str = Field("", description=(
        "host names the server may be reached by, beside loopback names and IP addresses (comma-separated; "
        "* allows any): a guard against DNS rebinding"))
    llama_amx: bool = Field(False, description=(
        "1: let llama.cpp use its AMX kernels (only a llama.cpp built with them, make install LLAMA_AMX=1, whose "
        "AMX bug llama.cpp#20824 is fixed); unset: never on a CPU with AMX"))
    log_level: LogLevel = Field("INFO", validation_alias="LOG_LEVEL", description=f"log level: {', '.join(LOG_LEVELS)}")
    slow_client_timeout: float = Field(
        request_reader.DEFAULT_TIMEOUT_S, gt=0, le=3600, validation_alias=request_reader.TIMEOUT_ENV, description=(
            "seconds a request's head, and then its body, may take to arrive; a slower connection gets a 408 and "
            "is closed, without ever taking a thread"))
    exllamav2_jit_std: Optional[str] = Field(None, validation_alias="EXLLAMAV2_JIT_STD", description=(
        "a C++ standard for the build of exllamav2's CUDA extension (c++20 for CUDA 13)"))
    exllamav2_jit_verbose: bool = Field(False, validation_alias="EXLLAMAV2_JIT_VERBOSE", description=(
        "1: print the compiler's commands and output of that build"))
