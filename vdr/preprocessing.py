"""Page preprocessing for evaluation: decode and resize each page once, in worker threads, ahead of the encoder.

Decoding and resizing a full-size page costs far more CPU time than a GPU spends encoding it (about 45 ms per
150-DPI A4 page on one core, against a few ms on an H100). Pages are resized here with the model's own image
processor ``resize``, so the processor later finds them already at their target size and the embeddings are
bit-identical to encoding the original pages (tests check this, transparent pages included).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sentence_transformers import SentenceTransformer

from vdr.data import PageRef, open_page

logger = logging.getLogger(__name__)

#: Batches resized ahead of the encoder: enough to hide preprocessing behind encoding, with bounded memory.
BATCHES_AHEAD = 4

Resize = Callable[[Any], Image.Image]


@dataclass
class EncodingStats:
    """What an evaluation cost: page encodings and preprocessings, and where the time went."""

    page_encodings: int = 0
    page_preprocessings: int = 0
    preprocess_seconds: float = 0.0  # summed over worker threads
    encode_seconds: float = 0.0
    cache_hits: int = 0

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))


def page_resizer(model: SentenceTransformer) -> tuple[tuple, Resize]:
    """The model's own page resize, and a key naming its settings (pages resized alike can be shared).

    Qwen-VL image processors (``Qwen2VLImageProcessor``, which Qwen3-VL uses) resize with ``smart_resize``; other
    processors get the page as it is (decoded, nothing else), and do their own resizing when they encode it.
    """
    from transformers import Qwen2VLImageProcessor

    image_processor = getattr(getattr(model[0], "processor", None), "image_processor", None)
    if not isinstance(image_processor, Qwen2VLImageProcessor) or not getattr(image_processor, "do_resize", True):
        return ("as-is",), open_page
    from torchvision.transforms.v2 import functional as tvF
    from transformers.image_transforms import convert_to_rgb

    size, resample = image_processor.size, image_processor.resample
    factor = image_processor.patch_size * image_processor.merge_size
    key = (type(image_processor).__name__, size.shortest_edge, size.longest_edge, factor, str(resample))

    def resize(page: Any) -> Image.Image:
        # convert_to_rgb composites transparency onto white, exactly as the processor does
        pixels = tvF.pil_to_tensor(convert_to_rgb(open_page(page)))[None]
        resized = image_processor.resize(images=pixels, size=size, resample=resample, factor=factor)[0]
        return Image.fromarray(resized.permute(1, 2, 0).numpy())

    return key, resize


def pixel_count(page: PageRef | Image.Image | Any) -> int:
    """Page area, from the image header only (no decoding); 0 when unknown."""
    if isinstance(page, PageRef):
        width, height = page.size
        return width * height
    return page.width * page.height if hasattr(page, "width") else 0


class PagePreprocessor:
    """Resizes pages in worker threads, ahead of the encoder, and keeps resized pages within a memory budget so
    the next model with the same processor settings skips the work."""

    def __init__(self, workers: int = 2, budget_bytes: int = 4 << 30):
        self.workers = workers
        self.budget_bytes = budget_bytes
        self.kept_bytes = 0
        self._kept: dict[tuple, Image.Image] = {}

    def batches(
        self,
        pages: Sequence[Any],
        order: Sequence[int],
        batch_size: int,
        key: tuple,
        resize: Resize,
        stats: EncodingStats,
    ) -> Iterator[tuple[list[int], list[Image.Image]]]:
        """Yield ``(indices, resized pages)`` batches in ``order``, up to ``BATCHES_AHEAD`` batches in advance."""

        def prepare(index: int) -> Image.Image:
            kept = self._kept.get((*key, index))
            if kept is not None:
                return kept
            start = time.perf_counter()
            page = resize(pages[index])
            stats.preprocess_seconds += time.perf_counter() - start
            stats.page_preprocessings += 1
            self._keep((*key, index), page)
            return page

        chunks = [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
        if self.workers == 0:
            for chunk in chunks:
                yield chunk, [prepare(i) for i in chunk]
            return
        with ThreadPoolExecutor(self.workers) as pool:
            pending = [[pool.submit(prepare, i) for i in chunk] for chunk in chunks[:BATCHES_AHEAD]]
            for number, chunk in enumerate(chunks):
                if number + BATCHES_AHEAD < len(chunks):
                    pending.append([pool.submit(prepare, i) for i in chunks[number + BATCHES_AHEAD]])
                yield chunk, [future.result() for future in pending[number]]
                pending[number] = []  # release the batch

    def _keep(self, key: tuple, page: Image.Image) -> None:
        size = page.width * page.height * 3
        if self.kept_bytes + size <= self.budget_bytes:
            self._kept[key] = page
            self.kept_bytes += size
