"""The package's shared types: what a resolved model is, the error that ends a start with one line, and the
split-file pattern (names, fit and the types all need it; kept here so that no module imports back up)."""
import os
import re
from dataclasses import dataclass
from typing import Optional

SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
SPLIT_ANY = re.compile(r"-(\d{5})-of-(\d{5})\.(gguf|safetensors)$", re.IGNORECASE)


class HubError(Exception):
    """A model that cannot be had (unknown quant, hub unreachable, bad checksum...): one line, exit code 2."""


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # what the engine loads: the .gguf file (a split model's first part) or the snapshot dir
    repo: str
    quant: Optional[str]  # the GGUF quant tag or the EXL2 branch; None for a repo's main branch
    revision: str  # the branch the files came from
    commit: str
    files: tuple  # the repo's files that make up the model (GGUF parts, or a dir's weights and configs)
    from_cache: bool  # True when no network call was made

    @property
    def model_name(self) -> str:
        """The name /v1/models reports: the GGUF file's stem, or the repo's name for a dir."""
        if self.path.lower().endswith(".gguf"):
            return SPLIT.sub(".gguf", os.path.basename(self.path))[:-len(".gguf")]
        return self.repo.split("/")[-1] + (f"-{self.quant}" if self.quant else "")

    def status(self) -> dict:
        return {"repo": self.repo, "quant": self.quant, "revision": self.revision, "commit": self.commit,
                "file": self.files[0] if self.path.lower().endswith(".gguf") else None, "files": list(self.files),
                "path": self.path, "from_cache": self.from_cache}
