"""An on-disk cache of full-dimension embeddings, so re-running an evaluation or adding a model computes only
what is new.

An entry's key covers everything that changes the embeddings: the model's content (the bytes of the files that
define a local model, the commit for a Hub id), the dataset's content (query ids and texts, page ids and page
bytes, or the size and modification time of page files referenced by path), the loading settings (dtype, pixels,
prompts, attention), the library versions and this cache's format version.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vdr.data import PageRef, RetrievalData
from vdr.provenance import library_versions

logger = logging.getLogger(__name__)

#: Bump when what is stored, or how it is computed, changes.
CACHE_FORMAT_VERSION = 2
#: Files of a checkpoint folder that only resume training (the trainer's state) or describe the model (its card):
#: they do not change the embeddings. Anything else is hashed: hashing an extra file costs seconds, while
#: skipping a file that defines the model would serve stale embeddings.
NOT_MODEL_FILES = (
    "optimizer.*",
    "scheduler.*",
    "scaler.*",
    "rng_state*",
    "trainer_state.json",
    "training_args.bin",
    "README.md",
)


class EmbeddingCache:
    """Embedding tensors stored as ``<folder>/<hash of the key>.pt``; ``folder=None`` turns caching off."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None

    def path(self, key: dict[str, Any]) -> Path | None:
        if self.folder is None:
            return None
        key = {**key, "format": CACHE_FORMAT_VERSION, "versions": library_versions()}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
        return self.folder / f"{digest}.pt"

    def load(self, key: dict[str, Any], rows: int) -> torch.Tensor | None:
        """The cached embeddings for ``key``, if present, readable and of ``rows`` rows."""
        path = self.path(key)
        if path is None or not path.exists():
            return None
        try:
            embeddings = torch.load(path, weights_only=True)
        except Exception:  # a truncated or foreign file: recompute rather than fail
            logger.warning("Ignoring unreadable cached embeddings %s", path)
            return None
        return embeddings if embeddings.ndim == 2 and embeddings.shape[0] == rows else None

    def save(self, key: dict[str, Any], embeddings: torch.Tensor) -> None:
        path = self.path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        torch.save(embeddings, temporary)
        temporary.replace(path)  # atomic: a killed run never leaves a half-written entry


def model_fingerprint(model_path: str, revision: str | None = None) -> str:
    """Identify a model by content: for a folder, the hash of the files that define the model (weights, configs,
    tokenizer and processor files, modules.json and the module subfolders; not the optimizer or other trainer
    state of a checkpoint); for a Hub id, the id and the commit its revision points to."""
    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        return f"hub:{model_path}@{_hub_commit(model_path, revision)}"
    digest = hashlib.sha256()
    for path in model_files(folder):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as handle:
            while chunk := handle.read(8 << 20):
                digest.update(chunk)
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():  # a LoRA adapter alone: its embeddings depend on the base model's weights too
        base = json.loads(adapter_config.read_text())
        digest.update(model_fingerprint(base["base_model_name_or_path"], base.get("revision")).encode())
    return digest.hexdigest()


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder that define the model, sorted (hidden files and trainer state left out)."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and not any(fnmatch.fnmatch(path.name, pattern) for pattern in NOT_MODEL_FILES)
    )


def _hub_commit(model_id: str, revision: str | None) -> str:
    """The commit a Hub revision points to now, so an updated Hub model is not served stale embeddings."""
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(model_id, revision=revision).sha or (revision or "main")
    except Exception:  # offline, or a private model without a token: fall back to the revision's name
        return revision or "main"


def dataset_fingerprint(data: RetrievalData) -> str:
    """Identify a dataset by what is encoded: query ids and texts, page ids and pages (their encoded bytes, the
    pixels of a decoded page, or the path, size and modification time of a page file)."""
    digest = hashlib.sha256()
    for qid, text in data.queries.items():
        digest.update(json.dumps(["query", qid, text], default=str).encode())
    for cid, page in data.corpus.items():
        digest.update(json.dumps(["page", cid], default=str).encode())
        digest.update(_page_identity(page))
    return digest.hexdigest()


def _page_identity(page: Any) -> bytes:
    if isinstance(page, PageRef) and page.data is not None:
        return hashlib.sha256(page.data).digest()
    path = page.path if isinstance(page, PageRef) else page if isinstance(page, str) else None
    if path is not None:
        stat = Path(path).stat()
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    if isinstance(page, Image.Image):
        return hashlib.sha256(f"{page.mode}{page.size}".encode() + page.tobytes()).digest()
    raise TypeError(f"Cannot fingerprint a page of type {type(page).__name__}")
