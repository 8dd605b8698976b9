"""The online half: which files of a repo make up the model (GGUF quant tag, EXL2 branch, or a model
dir), downloaded into the Hugging Face cache with huggingface_hub (a connection cut mid-file resumes
with a Range request), each new file checked against the sha256 (git sha1 for small files) the hub lists."""
import hashlib
import logging
import os
import re
import time
from contextlib import contextmanager
from functools import partial

from model_hub import HubError, ResolvedModel
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


def fetch(ref: ModelRef, s: HubSettings) -> ResolvedModel:
    from huggingface_hub import HfApi
    api = HfApi(endpoint=s.endpoint, token=s.token)
    with hub_errors(ref, s):
        info = api.model_info(ref.repo, revision="main", files_metadata=True, timeout=s.timeout_s)
        siblings = {f.rfilename: f for f in info.siblings or []}
        quants = gguf_quants(siblings)
        picked = pick_gguf(quants, ref.quant) if quants else None
        if picked:
            quant, names = picked
            revision = "main"
        elif not quants and ref.quant is None:
            quant, revision, names = None, "main", [f for f in siblings if DIR_FILE.match(f)]
        else:
            quant = revision = _branch(api, ref, s, quants)
            info = api.model_info(ref.repo, revision=revision, files_metadata=True, timeout=s.timeout_s)
            siblings = {f.rfilename: f for f in info.siblings or []}
            names = [f for f in siblings if DIR_FILE.match(f)]
        if picked:  # a GGUF runs from RAM: say so before a download that could not load anyway
            warn_before_download(ref.label, sum(_size(siblings[n]) for n in names))
        paths = [_download(ref, revision, info.sha, siblings[name], s) for name in names]
    path = paths[0] if picked else os.path.dirname(paths[names.index("config.json")]) if "config.json" in names \
        else None
    if path is None:
        raise HubError(f"{ref.label} has neither GGUF files nor a config.json: it is no model this server can load")
    return ResolvedModel(path, ref.repo, quant, revision, info.sha, tuple(names), False)


def _branch(api, ref: ModelRef, s: HubSettings, quants: dict) -> str:
    """The EXL2 branch a quant names; an unknown quant is one line listing those the repo has."""
    from huggingface_hub import errors
    if ref.quant:
        try:
            api.model_info(ref.repo, revision=ref.quant, timeout=s.timeout_s)
            return ref.quant
        except errors.RevisionNotFoundError:
            pass
    branches = [] if quants else [b.name for b in api.list_repo_refs(ref.repo).branches if b.name != "main"]
    have = ", ".join(list(quants) + sorted(branches)) or "none (only its main branch)"
    what = f"no quant {ref.quant!r}" if ref.quant else "several quants and none is Q4_K_M"
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
