"""The online half: which files of a repo make up the model (GGUF quant tag, EXL2 branch, or a model
dir), downloaded into the Hugging Face cache with huggingface_hub (a connection cut mid-file resumes
with a Range request), each new file checked against the sha256 (git sha1 for small files) the hub lists."""
import hashlib
import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Optional

from model_hub.base import HubError, ResolvedModel
from model_hub.fit import warn_before_download
from model_hub.names import ModelRef, gguf_quants, pick_gguf
from model_hub.settings import HubSettings

log = logging.getLogger("qwen_server.hub")
# What a model dir needs: configs, tokenizer, chat template, weights (no other formats, no sub-folders).
DIR_FILE = re.compile(r"^[^/]+\.(json|safetensors|model|txt|jinja|tiktoken)$")


class LogProgress:
    """huggingface_hub's progress bar off a terminal: a log line every 10 % (tqdm's interface, the part
    http_get uses: a context manager with update(n))."""

    def __init__(self, total=None, initial=0, desc="", name=None, **_):
        self.total, self.n, self.t0, self.start = total, initial, time.monotonic(), initial
        self.desc = name or desc  # huggingface_hub's desc is the URL's tail
        self.next_step = (initial * 10 // total + 1) if total else 11
        if initial:
            log.info("%s: resuming at %.1f MB", desc, initial / 1e6)

    def update(self, n=1):
        self.n += n
        while self.total and self.n * 10 >= self.next_step * self.total and self.next_step <= 10:
            rate = (self.n - self.start) / max(time.monotonic() - self.t0, 1e-6) / 1e6
            log.info("downloading %s: %d%% (%.1f of %.1f MB, %.1f MB/s)", self.desc, self.next_step * 10,
                     self.n / 1e6, self.total / 1e6, rate)
            self.next_step += 1

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@contextmanager
def hub_errors(ref: ModelRef, s: HubSettings):
    """huggingface_hub's and the network's exceptions as one HubError line that says what to do."""
    import httpx2
    from huggingface_hub import errors
    where = f"{ref.label} from {s.endpoint}"
    try:
        yield
    except errors.GatedRepoError:
        raise HubError(f"{ref.repo} is gated: accept its terms on the hub, then set HF_TOKEN") from None
    except errors.RepositoryNotFoundError:
        raise HubError(f"{ref.repo}: no such model repository on {s.endpoint} (a private one needs HF_TOKEN); "
                       f"for a local model pass -m with its path, for the catalogue see --list-models") from None
    except (httpx2.TransportError, errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        raise HubError(f"cannot download {where} ({type(e).__name__}: {str(e).splitlines()[0][:160]}) and it is "
                       f"not in the cache ({s.cache_dir}): check the network or HF_ENDPOINT, or copy a cache that "
                       f"has it into HF_HUB_CACHE, or pass -m with a local path") from None
    except errors.HfHubHTTPError as e:
        raise HubError(f"the hub answered {e.response.status_code} for {where}: try again later") from None
    except OSError as e:  # a cut the retries did not get past, a full disk, a size mismatch
        raise HubError(f"downloading {where} failed: {str(e).splitlines()[0]}: run again to retry") from None
    except ValueError as e:  # a malformed repo id; a file over 50 GB without hf_xet
        raise HubError(f"cannot download {where}: {str(e).strip().splitlines()[0]}") from None


@dataclass
class Plan:
    """What to download: the files of one quant (GGUF) or of one branch's model dir."""
    quant: Optional[str]
    revision: str
    commit: str
    siblings: dict  # file name -> huggingface_hub's RepoSibling (size, sha256 / git sha1)
    names: list
    gguf: bool


def fetch(ref: ModelRef, s: HubSettings) -> ResolvedModel:
    from huggingface_hub import HfApi
    api = HfApi(endpoint=s.endpoint, token=s.token)
    with hub_errors(ref, s):
        plan = _plan(api, ref, s)
        if plan.gguf:  # a GGUF runs from RAM: say so before a download that could not load anyway
            warn_before_download(ref.label, sum(_size(plan.siblings[n]) for n in plan.names))
        paths = [_download(ref, plan.revision, plan.commit, plan.siblings[name], s) for name in plan.names]
    path = paths[0] if plan.gguf else os.path.dirname(paths[plan.names.index("config.json")])
    return ResolvedModel(path, ref.repo, plan.quant, plan.revision, plan.commit, tuple(plan.names), False)


def _info(api, repo, revision, s: HubSettings):
    info = api.model_info(repo, revision=revision, files_metadata=True, timeout=s.timeout_s)
    return info, {f.rfilename: f for f in info.siblings or []}


def _plan(api, ref: ModelRef, s: HubSettings) -> Plan:
    """A GGUF quant on main; else the model dir of main (no quant) or of the branch the quant names."""
    info, siblings = _info(api, ref.repo, "main", s)
    quants = gguf_quants(siblings)
    picked = pick_gguf(quants, ref.quant) if quants else None
    if picked:
        return Plan(picked[0], "main", info.sha, siblings, picked[1], True)
    if ref.quant is None and not quants and "config.json" in siblings:
        return Plan(None, "main", info.sha, siblings, [f for f in siblings if DIR_FILE.match(f)], False)
    info, siblings = _branch(api, ref, s, quants)
    if "config.json" not in siblings:
        raise HubError(f"{ref.label} has no config.json and no GGUF file: it is no model this server can load")
    return Plan(ref.quant, ref.quant, info.sha, siblings, [f for f in siblings if DIR_FILE.match(f)], False)


def _branch(api, ref: ModelRef, s: HubSettings, quants: dict):
    """(info, siblings) of the EXL2 branch a quant names; else one line listing the quants the repo has."""
    from huggingface_hub import errors
    if ref.quant:
        try:
            return _info(api, ref.repo, ref.quant, s)
        except errors.RevisionNotFoundError:
            pass
    branches = [] if quants else [b.name for b in api.list_repo_refs(ref.repo).branches if b.name != "main"]
    have = ", ".join(list(quants) + sorted(branches)) or "none (only its main branch)"
    what = f"no quant {ref.quant!r}" if ref.quant else "several quants and none is Q4_K_M" if quants else \
        "no model on its main branch"
    raise HubError(f"{ref.repo} has {what}; it has: {have} (-m {ref.repo}:QUANT)")


def _download(ref: ModelRef, revision: str, commit: str, sibling, s: HubSettings) -> str:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    name = sibling.rfilename
    cached = try_to_load_from_cache(ref.repo, name, cache_dir=s.cache_dir, revision=commit)
    if isinstance(cached, str):
        return cached
    log.info("downloading %s from %s/%s (%.1f MB) into %s", name, s.endpoint, ref.repo, _size(sibling) / 1e6,
             s.cache_dir)
    bar = None if s.progress_bar else partial(LogProgress, name=name)  # None: huggingface_hub's own tqdm bar
    path = hf_hub_download(ref.repo, name, revision=revision, cache_dir=s.cache_dir, endpoint=s.endpoint,
                           token=s.token, etag_timeout=s.timeout_s, tqdm_class=bar)
    _verify(ref, path, sibling)
    return path


def _size(sibling) -> int:
    return (sibling.lfs.size if sibling.lfs else sibling.size) or 0


def _verify(ref: ModelRef, path: str, sibling):
    """The file's sha256 (LFS) or git blob sha1 against the hub's listing; a mismatch deletes the file."""
    if sibling.lfs:
        algo, want, prefix = hashlib.sha256(), sibling.lfs.sha256, b""
    elif sibling.blob_id:
        algo, want, prefix = hashlib.sha1(), sibling.blob_id, b"blob %d\0" % os.path.getsize(path)
    else:
        return
    algo.update(prefix)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            algo.update(chunk)
    if algo.hexdigest() != want:
        blob = os.path.realpath(path)
        for p in {path, blob}:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        raise HubError(f"checksum mismatch: {sibling.rfilename} of {ref.repo} has {algo.name} {algo.hexdigest()}, "
                       f"the hub lists {want}; the file was deleted: run again to download it again (if it repeats, "
                       f"the server at HF_ENDPOINT serves a corrupt file)")
    log.info("%s: %s checked", sibling.rfilename, algo.name)
