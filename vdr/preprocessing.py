"""Page preprocessing for evaluation: decode and resize each page once, and keep the resized pages for the next model.

Decoding and resizing a full-size page costs far more CPU time than a GPU spends encoding it (about 45 ms per
150-DPI A4 page on one core, against a few ms on an H100). Pages are resized here with the model's own image
processor ``resize``, so the processor later finds them already at their target size and the embeddings are
bit-identical to encoding the original pages (tests check this, transparent pages included). A second model with
the same processor settings then reuses the resized pages (benchmarks/bench_evaluate.py measures what that saves).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from sentence_transformers import SentenceTransformer

from vdr.data import PageRef, open_page

Resize = Callable[[Any], Image.Image]


@dataclass
class EncodingStats:
    """What an evaluation cost: page encodings and preprocessings, and where the time went."""

    page_encodings: int = 0
    page_preprocessings: int = 0
    preprocess_seconds: float = 0.0
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
    from transformers.image_transforms import convert_to_rgb

    size, resample = image_processor.size, image_processor.resample
    factor = image_processor.patch_size * image_processor.merge_size
    key = (type(image_processor).__name__, size.shortest_edge, size.longest_edge, factor, str(resample))

    def resize(page: Any) -> Image.Image:
        # convert_to_rgb composites transparency onto white, exactly as the processor does
        rgb = torch.from_numpy(convert_to_rgb(open_page(page), return_numpy=True))
        pixels = rgb.permute(2, 0, 1).contiguous()[None]  # (1, C, H, W), as the processor lays it out
        resized = image_processor.resize(images=pixels, size=size, resample=resample, factor=factor)[0]
        return Image.fromarray(resized.permute(1, 2, 0).numpy())

    return key, resize


def pixel_count(page: PageRef | Image.Image | Any) -> int:
    """Page area, from the image header only (no decoding); 0 when unknown."""
    if isinstance(page, PageRef):
        width, height = page.size
        return width * height
    return page.width * page.height if hasattr(page, "width") else 0


class ResizedPageCache:
    """Resized pages kept in memory, within a budget, so that the next model with the same processor settings
    skips decoding and resizing them; beyond the budget pages are resized again. ``budget_bytes=0`` keeps none."""

    def __init__(self, budget_bytes: int = 4 << 30):
        self.budget_bytes = budget_bytes
        self.kept_bytes = 0
        self._kept: dict[tuple, Image.Image] = {}

    def resized(self, key: tuple, page: Any, resize: Resize, stats: EncodingStats) -> Image.Image:
        """``page`` resized by ``resize``; ``key`` names the page and the resize settings."""
        kept = self._kept.get(key)
        if kept is not None:
            return kept
        start = time.perf_counter()
        resized = resize(page)
        stats.preprocess_seconds += time.perf_counter() - start
        stats.page_preprocessings += 1
        size = resized.width * resized.height * len(resized.getbands())
        if self.kept_bytes + size <= self.budget_bytes:
            self._kept[key] = resized
            self.kept_bytes += size
        return resized
