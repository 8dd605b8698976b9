"""Models by name: `-m` takes a local path, a catalogue short name or a Hugging Face repo id
`owner/repo[:QUANT]`; this package turns a name into local files (from the cache when they are there,
with no network call; else downloaded with huggingface_hub) before qwen_server loads them.

    resolve(spec, engine) -> ResolvedModel | None (None: `spec` is a local path, served as before)

Modules: names (parsing, quant tags), catalogue (Qwen 2.5 Coder sizes), cache (the offline look-up),
hub (download, progress, checksums), fit (memory needed vs free), settings (the environment, read once)."""
import os
from typing import Optional

from model_hub.base import HubError, ResolvedModel  # noqa: F401 (the package's face)


def resolve(spec: str, engine: str = "auto", download: bool = True) -> Optional[ResolvedModel]:
    """The local files of the model `spec` names, or None when `spec` is a local path. Cached files are
    used with no network call; otherwise (unless HF_HUB_OFFLINE=1) they are downloaded. Raises HubError."""
    if os.path.exists(spec):  # a local path: not even huggingface_hub is imported
        return None
    from model_hub import cache, hub
    from model_hub.names import parse_spec
    from model_hub.settings import HubSettings
    settings = HubSettings.from_env()
    ref = parse_spec(spec, engine, settings.gpu)
    if ref is None:
        return None
    found = cache.find(ref, settings)
    if found is not None:
        return found
    if settings.offline or not download:
        raise HubError(f"{ref.label} is not in the cache ({settings.cache_dir}) and HF_HUB_OFFLINE=1 forbids "
                       f"downloading it: unset HF_HUB_OFFLINE, or point HF_HUB_CACHE at a cache that has it")
    return hub.fetch(ref, settings)
