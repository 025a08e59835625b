"""Where the project keeps what it computes once and reuses, and how it is written so that an interrupted or damaged
entry is computed again instead of failing every run:

- ``build_once``: folders built whole (the tiny model, generated pages), moved into place when finished;
- ``TensorCache``: tensors keyed by what they were computed from (embeddings, page token matrices, reranker
  scores), one file per key, written atomically.

Everything lives under ``$VDR_CACHE`` (default ``~/.cache/vdr-finetune``); deleting that folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vdr.provenance import library_versions

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """The cache folder: ``$VDR_CACHE`` if set, else ``~/.cache/vdr-finetune``."""
    return Path(os.environ.get("VDR_CACHE", Path.home() / ".cache" / "vdr-finetune"))


def build_once(target: Path, marker: str, build: Callable[[Path], None], is_valid: Callable[[Path], bool]) -> Path:
    """Return ``target``, building it with ``build(staging_folder)`` first when it is missing or unusable.

    ``marker`` is the file a finished build writes last; ``is_valid`` checks that a finished build still loads
    (a file deleted or truncated by hand). A build goes to a temporary folder beside ``target`` and is moved
    into place whole, so a killed build never leaves a half-written folder for later runs to load.
    """
    if (target / marker).exists():
        if is_valid(target):
            return target
        logger.warning("The cached build in %s is damaged; rebuilding it.", target)
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        publish(staging, target, marker)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def publish(staging: Path, target: Path, marker: str) -> None:
    """Move a finished build into place. If another process (a second GPU rank, say) published the same build
    first, keep theirs; a stale, unfinished folder (no ``marker`` file) is replaced."""
    if target.exists() and not (target / marker).exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:
        if not (target / marker).exists():
            raise


class TensorCache:
    """Tensors (or dicts of tensors) on disk, one file per key: ``<folder>/<SHA-256 of the key>.pt``.

    A key is a JSON-able dict naming everything the value was computed from (a model's and a dataset's content,
    the loading settings, ...); the library versions and this cache's format version are added to every key, so
    an upgrade never serves stale values. ``folder=None`` turns caching off. A value is written to a temporary file
    renamed into place, so a killed run never leaves a half-written entry. An entry that cannot be read back, or
    that ``load``'s ``is_valid`` refuses (a truncated or foreign file), is reported with a warning and treated as
    missing: the caller computes it again and the next ``save`` replaces it.
    """

    #: Bump when what is stored, or how it is computed, changes.
    FORMAT_VERSION = 3

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None

    def path(self, key: dict[str, Any]) -> Path | None:
        if self.folder is None:
            return None
        key = {**key, "format": self.FORMAT_VERSION, "versions": library_versions()}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
        return self.folder / f"{digest}.pt"

    def load(self, key: dict[str, Any], is_valid: Callable[[Any], bool] = lambda value: True) -> Any | None:
        """The value saved under ``key``; None when there is none, or it is damaged (warned about)."""
        path = self.path(key)
        if path is None or not path.exists():
            return None
        import torch  # here, not at the top: prepare_vdr_data.py's rendering workers import this module and start fast

        try:
            value = torch.load(path, weights_only=True)
            if is_valid(value):
                return value
        except Exception:  # truncated, foreign, or a value of another shape: recompute rather than fail
            pass
        logger.warning("Ignoring the damaged cache entry %s (it will be computed again)", path)
        return None

    def save(self, key: dict[str, Any], value: Any) -> None:
        path = self.path(key)
        if path is None:
            return
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.stem}-{os.getpid()}.tmp")
        torch.save(value, temporary)
        temporary.replace(path)  # atomic: a killed run never leaves a half-written entry


def discard_damaged_arrays(folder: Path) -> None:
    """Remove the ``.npy`` files in ``folder`` that do not load whole (a run killed while writing one, a full disk),
    with a warning: the library that reads them (``mine_hard_negatives``' cache) would fail on every later run,
    while without them it computes the arrays again."""
    import numpy as np

    for path in sorted(Path(folder).glob("*.npy")):
        try:
            np.load(path, mmap_mode="r")  # reads the header and checks the file holds all the data it announces
        except (ValueError, OSError, EOFError) as error:
            logger.warning("Ignoring the damaged cache file %s (%s); it will be computed again.", path, error)
            path.unlink(missing_ok=True)
