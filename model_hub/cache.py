"""The offline half: a model already in the Hugging Face cache is found there with no network call
(refs/<branch> -> snapshots/<commit>/...), the same layout huggingface_hub writes."""
import json
import os
from typing import Optional

from model_hub.base import ResolvedModel
from model_hub.names import ModelRef, gguf_quants, pick_gguf, split_complete
from model_hub.settings import HubSettings


def repo_dir(settings: HubSettings, repo: str) -> str:
    return os.path.join(settings.cache_dir, "models--" + repo.replace("/", "--"))


def _snapshot(repo_cache: str, revision: str):
    """(commit, snapshot dir) of a branch as last downloaded, or None."""
    try:
        with open(os.path.join(repo_cache, "refs", revision), encoding="ascii") as f:
            commit = f.read().strip()
    except (OSError, ValueError):
        return None
    snap = os.path.join(repo_cache, "snapshots", commit)
    return (commit, snap) if os.path.isdir(snap) else None


def _files(snap: str) -> list:
    """Repo-relative names of the files in a snapshot whose blob is there (a dangling link is no file)."""
    out = []
    for root, _, names in os.walk(snap):
        out += [os.path.relpath(os.path.join(root, n), snap) for n in names if os.path.isfile(os.path.join(root, n))]
    return sorted(out)


def dir_complete(snap: str, files: list) -> bool:
    """A model dir is usable when it has config.json, a tokenizer and all of its weights."""
    if "config.json" not in files or not any(f in files for f in ("tokenizer.json", "tokenizer.model")):
        return False
    weights = [f for f in files if f.endswith((".safetensors", ".bin"))]
    for index in (f for f in files if f.endswith(".index.json")):
        try:
            with open(os.path.join(snap, index), encoding="utf-8") as fh:
                if not set(json.load(fh).get("weight_map", {}).values()) <= set(files):
                    return False
        except (OSError, ValueError, AttributeError):
            return False
    return bool(weights) and split_complete(weights)


def find(ref: ModelRef, settings: HubSettings) -> Optional[ResolvedModel]:
    """The cached model `ref` names, complete, or None."""
    cache = repo_dir(settings, ref.repo)
    if ref.quant:  # an EXL2 quant is a branch
        branch = _snapshot(cache, ref.quant)
        if branch and dir_complete(branch[1], _files(branch[1])):
            commit, snap = branch
            return ResolvedModel(snap, ref.repo, ref.quant, ref.quant, commit, tuple(_files(snap)), True)
    main = _snapshot(cache, "main")
    if main is None:
        return None
    commit, snap = main
    files = _files(snap)
    quants = gguf_quants(files)
    if quants:
        picked = pick_gguf(quants, ref.quant)
        if picked and split_complete(picked[1]):
            quant, parts = picked
            return ResolvedModel(os.path.join(snap, parts[0]), ref.repo, quant, "main", commit, tuple(parts), True)
        return None
    if ref.quant is None and dir_complete(snap, files):
        return ResolvedModel(snap, ref.repo, None, "main", commit, tuple(files), True)
    return None
