"""Every setting the model resolver reads, read here once. huggingface_hub parses its own variables
(HF_ENDPOINT, HF_HOME/HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN, HF_HUB_ETAG_TIMEOUT) when it is first
imported, so `HubSettings.from_env()` must run after the .env is loaded (qwen_server's parse_args
does that first); the values are then passed to every hub call explicitly."""
import os
import sys
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class HubSettings:
    endpoint: str  # HF_ENDPOINT (a mirror), default the public hub
    cache_dir: str  # HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
    offline: bool  # HF_HUB_OFFLINE=1: the cache only, never a network call
    token: Optional[str]  # HF_TOKEN (or the token `hf auth login` stored), for gated/private repos
    timeout_s: float  # HF_HUB_ETAG_TIMEOUT, else 5 s: how long a metadata call may wait (a silent hub fails in this)
    progress_bar: bool  # a progress bar on a terminal; log lines (every 10 %) otherwise
    gpu: bool  # an NVIDIA GPU is present (short names pick EXL2 with --engine auto); no CUDA call: it
    #            must not be initialised before qwen_server's worker forks

    @classmethod
    def from_env(cls) -> "HubSettings":
        from huggingface_hub import constants
        from huggingface_hub.utils import get_token
        return cls(endpoint=constants.ENDPOINT, cache_dir=constants.HF_HUB_CACHE, offline=constants.HF_HUB_OFFLINE,
                   token=get_token(),
                   timeout_s=float(constants.HF_HUB_ETAG_TIMEOUT) if os.environ.get("HF_HUB_ETAG_TIMEOUT") else 5.0,
                   progress_bar=sys.stderr.isatty(), gpu=cls.gpu_present())

    @staticmethod
    def gpu_present() -> bool:
        return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")
