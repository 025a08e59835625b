"""Page images: kept encoded (bytes or a path) until their pixels are needed, and resized once to a model's pixel
budget with the model's own image processor.

Decoding and resizing a full-size page costs far more CPU time than a GPU spends encoding it (about 45 ms per
150-DPI A4 page on one core, against a few ms on an H100). A page resized here with the processor's own
``resize`` is found already at its target size when the processor later sees it, so ``pixel_values`` (and
embeddings) are bit-identical to processing the original page (tests check this, transparent pages included).

Training keeps its resized pages on disk (``$VDR_CACHE/train-pages``, ``presize_page_columns``): a
``datasets.Image`` column is otherwise decoded on *every* access, by the ``no_duplicates`` sampler (to hash the
pixels), by the model card's column statistics and by the collator. With the columns holding the paths of the
resized files, the sampler hashes a short string (same page bytes, same path: duplicates are still found), the
model card skips media-path columns, and the collator decodes each small page once (about 3 ms). Later runs with
the same pages and processor settings find the files and skip the work."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import Dataset, Image
from PIL import Image as PILImage
from tqdm.auto import tqdm

from vdr.cache import default_cache_dir

if TYPE_CHECKING:  # page images are read without torch: prepare_vdr_data.py's rendering workers start fast
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PageRef:
    """A page image kept encoded (its file bytes or path) until it is used.

    Decoding a whole corpus up front would hold every full-size page in memory at once; a ``PageRef`` is decoded
    by whoever needs its pixels (a preprocessing worker), and the full-size pixels are freed right after.
    """

    data: bytes | None = None
    path: str | None = None

    def open(self) -> PILImage.Image:
        return PILImage.open(io.BytesIO(self.data) if self.data is not None else self.path)

    @property
    def size(self) -> tuple[int, int]:
        with self.open() as image:  # reads the header only
            return image.size


def page_refs(dataset: Dataset, column: str) -> list[PageRef]:
    """The pages of an image (or image-path) column, not decoded."""
    if isinstance(dataset.features[column], Image):
        encoded = dataset.cast_column(column, Image(decode=False))[column]
        return [PageRef(item["bytes"], item["path"]) for item in encoded]
    return [PageRef(path=path) for path in dataset[column]]


def open_page(page: PageRef | PILImage.Image | str) -> PILImage.Image:
    """Pixels of a page given as a ``PageRef``, a PIL image or a file path."""
    if isinstance(page, PageRef):
        return page.open()
    return PILImage.open(page) if isinstance(page, str) else page


Resize = Callable[[Any], PILImage.Image]


def page_resizer(model: SentenceTransformer) -> tuple[tuple, Resize]:
    """The model's own page resize, and a key naming its settings (pages resized alike can be shared).

    Qwen-VL image processors (``Qwen2VLImageProcessor``, which Qwen3-VL uses) resize with ``smart_resize``; other
    processors get the page as it is (decoded, nothing else), and do their own resizing when they encode it.
    """
    from transformers import Qwen2VLImageProcessor

    image_processor = getattr(getattr(model[0], "processor", None), "image_processor", None)
    if not isinstance(image_processor, Qwen2VLImageProcessor) or not getattr(image_processor, "do_resize", True):
        return ("as-is",), open_page
    import torch
    from transformers.image_transforms import convert_to_rgb

    size, resample = image_processor.size, image_processor.resample
    factor = image_processor.patch_size * image_processor.merge_size
    key = (type(image_processor).__name__, size.shortest_edge, size.longest_edge, factor, str(resample))

    def resize(page: Any) -> PILImage.Image:
        # convert_to_rgb composites transparency onto white, exactly as the processor does
        rgb = torch.from_numpy(convert_to_rgb(open_page(page), return_numpy=True))
        pixels = rgb.permute(2, 0, 1).contiguous()[None]  # (1, C, H, W), as the processor lays it out
        resized = image_processor.resize(images=pixels, size=size, resample=resample, factor=factor)[0]
        return PILImage.fromarray(resized.permute(1, 2, 0).numpy())

    return key, resize


def pixel_count(page: PageRef | PILImage.Image | Any) -> int:
    """Page area, from the image header only (no decoding); 0 when unknown."""
    if isinstance(page, PageRef):
        width, height = page.size
        return width * height
    return page.width * page.height if hasattr(page, "width") else 0


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
    as_images: bool = False,
) -> Dataset:
    """Replace every page column of ``dataset`` (or only ``columns``) with paths to its pages resized as
    ``model``'s processor would (any Sentence Transformers model: embedder, multi-vector encoder, cross-encoder).
    With ``as_images`` the columns stay ``datasets.Image`` features, pointing at the resized files: for the
    cross-encoder's losses, which preprocess pages in the training process itself.

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
            if as_images:
                dataset = dataset.cast_column(column, Image())
    logger.info(
        "Training pages: %d resized now, %d found in %s (resized once, reused by later runs)",
        presize.resized,
        presize.reused,
        folder,
    )
    return dataset.select_columns(order)  # add_column appends: restore the loss's column order


def presize_pages(
    pages: list[Any], key: tuple, resize: Resize, cache_dir: str | Path | None = None, workers: int | None = None
) -> tuple[list[Any], PagePresizer]:
    """Evaluation pages resized as a model's processor would (``page_resizer``'s ``key`` and ``resize``) into the
    same on-disk page cache as training's pages, several at a time, as ``PageRef`` s to those files; a page that is
    not a ``PageRef`` (an opened image) is returned as it is. A later model or run with the same processor settings
    finds the files and resizes nothing."""
    folder = page_cache_folder(key, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    presizer = PagePresizer(folder, resize)

    def presized(page: Any) -> Any:
        if not isinstance(page, PageRef):
            return page
        return PageRef(path=presizer.page_path({"bytes": page.data, "path": page.path}))

    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        resized = list(tqdm(pool.map(presized, pages), total=len(pages), desc="Resizing pages", unit="page"))
    logger.info("Pages: %d resized now, %d found in %s", presizer.resized, presizer.reused, folder)
    return resized, presizer


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
