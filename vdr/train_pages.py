"""The training data path: pages resized once to the model's pixel budget, cached on disk, and kept as file paths
until the collator.

What the plain path costs (an A4 page at 150 DPI, one core): a PNG decode is 35-44 ms and the processor's resize
another 14-28 ms, and a ``datasets.Image`` column is decoded on *every* access: by the ``no_duplicates`` sampler
(to hash the pixels), by the model card's column statistics (before the first step) and by the collator. Here
each page is decoded and resized once, with the model's own processor ``resize`` (``vdr.preprocessing``, the
evaluation's presizing), and written losslessly to ``$VDR_CACHE/train-pages``. The image columns then hold
the paths of those files, so:

- the sampler hashes a short string (same page bytes, same path: duplicates are still found);
- the model card skips media-path columns (Sentence Transformers does not load them for statistics);
- the collator hands the paths to ``model.preprocess``, which decodes each small page once (about 3 ms) and
  finds it already at its target size: ``pixel_values`` are bit-identical to processing the original page.

Later runs with the same pages and processor settings find the files and skip the work.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from datasets import Dataset, Image
from PIL import Image as PILImage
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from vdr.cache import default_cache_dir
from vdr.data import PageRef
from vdr.preprocessing import page_resizer

logger = logging.getLogger(__name__)

#: Bump when the stored format changes: older cached pages are then never read again.
PAGE_CACHE_VERSION = 1
#: PNG is lossless (the pixels come back exactly) and level 1 writes it 2x faster than the default at about the
#: same size for document pages (~70 KB for an A4 page at 600*600 pixels).
PNG_COMPRESS_LEVEL = 1
#: Rows read at a time: bounds the page bytes held in memory (a whole dataset's would be gigabytes).
ROWS_PER_CHUNK = 256


def image_columns(dataset: Dataset) -> list[str]:
    """The dataset's ``datasets.Image`` columns (pages), in column order."""
    return [name for name, feature in dataset.features.items() if isinstance(feature, Image)]


def presize_page_columns(
    model: SentenceTransformer,
    dataset: Dataset,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    columns: list[str] | None = None,
) -> Dataset:
    """Replace every page column of ``dataset`` (or only ``columns``) with paths to its pages resized as
    ``model``'s processor would (any Sentence Transformers model: embedder, multi-vector encoder, cross-encoder).

    Returns ``dataset`` unchanged when it has no page columns or the model's processor does not resize with a
    known pixel budget (only Qwen-VL image processors are presized, as in the evaluation).
    """
    columns = image_columns(dataset) if columns is None else columns
    key, resize = page_resizer(model)
    if not columns or key == ("as-is",):
        return dataset
    folder = page_cache_folder(key, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    presize = PagePresizer(folder, resize)
    workers = workers or min(8, os.cpu_count() or 1)
    order = dataset.column_names
    with ThreadPoolExecutor(workers) as pool:
        for column in columns:
            paths = presize.column(dataset, column, pool)
            dataset = replace_column(dataset, column, paths)
    logger.info(
        "Training pages: %d resized now, %d found in %s (resized once, reused by later runs)",
        presize.resized, presize.reused, folder,
    )  # fmt: skip
    return dataset.select_columns(order)  # add_column appends: restore the loss's column order


def replace_column(dataset: Dataset, column: str, values: list[Any]) -> Dataset:
    """``dataset`` with ``column`` holding ``values`` (added before the old one is dropped: a dataset left with no
    column would have no rows to add to)."""
    staged = f"__new__{column}"
    return dataset.add_column(staged, values).remove_columns(column).rename_column(staged, column)


def page_cache_folder(key: tuple, cache_dir: str | Path | None = None) -> Path:
    """One folder per processor setting (class, min/max pixels, patch factor, resample): a page resized for one
    pixel budget is never served for another."""
    digest = hashlib.sha256(repr((PAGE_CACHE_VERSION, key)).encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / "train-pages" / digest


class PagePresizer:
    """Resizes pages into ``folder``, one file per distinct page content (named by the SHA-256 of its bytes)."""

    def __init__(self, folder: Path, resize: Callable[[Any], PILImage.Image]):
        self.folder = folder
        self.resize = resize
        self.resized = 0
        self.reused = 0

    def column(self, dataset: Dataset, column: str, pool: ThreadPoolExecutor) -> list[str]:
        """The presized page paths of one column, read ``ROWS_PER_CHUNK`` rows at a time without decoding."""
        # Only this column, undecoded: reading a row slice decodes every other Image column in it.
        encoded = dataset.select_columns([column]).cast_column(column, Image(decode=False))
        paths: list[str] = []
        with tqdm(total=len(encoded), desc=f"Resizing '{column}' pages", unit="page") as progress:
            for start in range(0, len(encoded), ROWS_PER_CHUNK):
                items = encoded[start : start + ROWS_PER_CHUNK][column]
                paths += pool.map(self.page_path, items)
                progress.update(len(items))
        return paths

    def page_path(self, item: dict[str, Any]) -> str:
        """The path of one page's resized copy, made now if no earlier run made it."""
        data = item["bytes"] if item["bytes"] is not None else Path(item["path"]).read_bytes()
        target = self.folder / f"{hashlib.sha256(data).hexdigest()}.png"
        if target.exists():
            self.reused += 1
            return str(target)
        page = self.resize(PageRef(data=data))
        # Written beside the target and renamed into place: a killed run never leaves a half-written page.
        staging = target.with_name(f".{target.stem}-{os.getpid()}-{id(item)}.png")
        page.save(staging, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        os.replace(staging, target)
        self.resized += 1
        return str(target)
