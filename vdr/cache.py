"""Where the project keeps what it builds once and reuses (tiny model, generated pages, embeddings), and how a
finished build is put in place so that an interrupted or corrupted one is rebuilt instead of failing every run.

Everything lives under ``$VDR_CACHE`` (default ``~/.cache/vdr-finetune``); deleting that folder is always safe.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

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
