"""Encoding for evaluation: queries and pages at full dimension (one vector, or one matrix of token vectors, each),
pages decoded and resized one batch at a time, largest first, resized pages shared between models with the same
processor settings, and every result cached on disk (``vdr.cache.TensorCache``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from sentence_transformers import MultiVectorEncoder, SentenceTransformer
from tqdm.auto import tqdm

from vdr.cache import TensorCache
from vdr.data.page_images import Resize, open_page, page_resizer, pixel_count, presize_pages
from vdr.data.retrieval_sets import RetrievalData, dataset_fingerprint
from vdr.models.embedder import full_dimension
from vdr.models.loading import ModelLoadingArguments, model_fingerprint, resolve_model_path


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


class ResizedPageCache:
    """Resized pages kept in memory, within a budget, so that the next model with the same processor settings
    skips decoding and resizing them; beyond the budget pages are resized again. ``budget_bytes=0`` keeps none."""

    def __init__(self, budget_bytes: int = 4 << 30):
        self.budget_bytes = budget_bytes
        self.kept_bytes = 0
        self._kept: dict[tuple, Image.Image] = {}

    def resized(
        self, key: tuple, page: Any, resize: Resize, stats: EncodingStats, presized: bool = False
    ) -> Image.Image:
        """``page`` resized by ``resize``; ``key`` names the page and the resize settings. A ``presized`` page is
        only decoded (it is not counted as a preprocessing)."""
        kept = self._kept.get(key)
        if kept is not None:
            return kept
        start = time.perf_counter()
        resized = resize(page)
        stats.preprocess_seconds += time.perf_counter() - start
        stats.page_preprocessings += not presized
        size = resized.width * resized.height * len(resized.getbands())
        if self.kept_bytes + size <= self.budget_bytes:
            self._kept[key] = resized
            self.kept_bytes += size
        return resized


@dataclass
class EncodingSetup:
    """How every model encodes: batch size, resized pages shared between models, the on-disk cache."""

    batch_size: int
    page_cache: ResizedPageCache
    cache: TensorCache
    #: Where pages are also kept resized on disk, once per processor setting (``page_images.presize_pages``): the
    #: leaderboard's large pages are then decoded and resized once, for every later model and run. None: in memory.
    presize_dir: Path | None = None
    _dataset_keys: dict[str, str] = field(default_factory=dict)

    def dataset_key(self, name: str, data: RetrievalData) -> str:
        """The dataset's content hash, computed once per run (only the cache needs it)."""
        if name not in self._dataset_keys:
            self._dataset_keys[name] = dataset_fingerprint(data) if self.cache.folder else name
        return self._dataset_keys[name]

    def model_key(
        self, model_path: str, loading: ModelLoadingArguments, **settings: Any
    ) -> tuple[str | None, dict[str, Any]]:
        """A model's content hash (None without a cache: hashing a 2B model's files takes seconds), and the cache key
        of what it computes: that hash, its loading settings and any other ``settings`` that change its output."""
        fingerprint = model_fingerprint(resolve_model_path(model_path), loading.revision) if self.cache.folder else None
        return fingerprint, {"model": fingerprint, "loading": vars(loading), **settings}


@dataclass
class Embeddings:
    """A model's full-dimension query and page embeddings for one dataset: a ``[n, dim]`` tensor each, or, for a
    multi-vector model, a list of ``[tokens, dim]`` matrices (one per query, one per page)."""

    queries: Any
    corpus: Any
    stats: EncodingStats = field(default_factory=EncodingStats)

    @property
    def tokens_per_page(self) -> float:
        """Multi-vector models: the mean number of token vectors a page is stored as."""
        return sum(len(page) for page in self.corpus) / len(self.corpus)


def embed_dataset(
    model: SentenceTransformer | MultiVectorEncoder,
    name: str,
    data: RetrievalData,
    setup: EncodingSetup,
    model_key: dict[str, Any],
) -> Embeddings:
    """Queries and pages of dataset ``name`` at full dimension, from the cache when it has them."""
    stats = EncodingStats()
    token_matrices = isinstance(model, MultiVectorEncoder)
    embeddings = {}
    for part, inputs in (("queries", list(data.queries.values())), ("corpus", list(data.corpus.values()))):
        key = {**model_key, "dataset": setup.dataset_key(name, data), "kind": part}
        if token_matrices:
            key["layout"] = "token_matrices"
        rows = len(inputs)
        cached = setup.cache.load(key, is_valid=lambda stored: _stored_rows(stored) == rows)  # noqa: B023
        if cached is not None:
            stats.cache_hits += 1
            embeddings[part] = _unpack(cached)
            continue
        if part == "queries":
            embeddings[part] = encode_queries(model, inputs, setup.batch_size)
        else:
            embeddings[part] = encode_pages(
                model, inputs, setup.batch_size, setup.page_cache, name, stats, presize_dir=setup.presize_dir
            )
        setup.cache.save(key, _pack(embeddings[part]))
    return Embeddings(embeddings["queries"], embeddings["corpus"], stats)


def _pack(embeddings: torch.Tensor | list[torch.Tensor]) -> Any:
    """What the cache stores: a tensor as it is; variable-length token matrices as one ``[total_tokens, dim]``
    tensor plus each matrix's length."""
    if isinstance(embeddings, torch.Tensor):
        return embeddings
    return {"values": torch.cat(embeddings), "lengths": torch.tensor([len(matrix) for matrix in embeddings])}


def _unpack(stored: Any) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(stored, torch.Tensor):
        return stored
    return list(torch.split(stored["values"], stored["lengths"].tolist()))


def _stored_rows(stored: Any) -> int | None:
    """How many queries or pages a stored value holds; None when it is not whole (a damaged entry)."""
    if isinstance(stored, torch.Tensor):
        return stored.shape[0] if stored.ndim == 2 else None
    values, lengths = stored["values"], stored["lengths"]
    return len(lengths) if int(lengths.sum()) == len(values) else None


def encode_full_dim(
    model: SentenceTransformer, inputs: Sequence[Any], kind: str, batch_size: int, show_progress_bar: bool = True
) -> torch.Tensor:
    """Encode queries (``kind='query'``) or documents at the model's full dimension, as float32 on CPU."""
    encode = model.encode_query if kind == "query" else model.encode_document
    with full_dimension(model):
        embeddings = encode(
            list(inputs), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar
        )
    return embeddings.float().cpu()


def encode_batch(
    model: SentenceTransformer | MultiVectorEncoder,
    inputs: Sequence[Any],
    kind: str,
    batch_size: int,
    show_progress_bar: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """Queries (``kind='query'``) or pages at full dimension (float32, CPU): a ``[n, dim]`` tensor, or, for a
    multi-vector model, one token matrix each."""
    if not isinstance(model, MultiVectorEncoder):
        return encode_full_dim(model, inputs, kind, batch_size, show_progress_bar)
    encode = model.encode_query if kind == "query" else model.encode_document
    return [matrix.float().cpu() for matrix in encode(list(inputs), batch_size=batch_size, show_progress_bar=False)]


def encode_queries(
    model: SentenceTransformer | MultiVectorEncoder, queries: Sequence[str], batch_size: int
) -> torch.Tensor | list[torch.Tensor]:
    return encode_batch(model, queries, "query", batch_size, show_progress_bar=True)


def encode_pages(
    model: SentenceTransformer | MultiVectorEncoder,
    pages: Sequence[Any],
    batch_size: int,
    page_cache: ResizedPageCache,
    dataset_name: str,
    stats: EncodingStats,
    show_progress_bar: bool = True,
    presize_dir: Path | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Pages at full dimension (as ``encode_batch``), in the pages' order, encoded largest first so batches pad
    little. Pages are decoded and resized one batch at a time (or taken from the resized pages another model left
    in ``page_cache``), so full-size pages are never all in memory at once. With ``presize_dir`` they are first
    resized into that on-disk page cache (or found there), several at a time, and read back from it."""
    key, resize = page_resizer(model)
    order = sorted(range(len(pages)), key=lambda i: -pixel_count(pages[i]))  # by the original pages' sizes
    presized = presize_dir is not None and key != ("as-is",)
    if presized:
        started = time.perf_counter()
        pages, presizer = presize_pages(pages, key, resize, presize_dir)
        stats.preprocess_seconds += time.perf_counter() - started
        stats.page_preprocessings += presizer.resized
        resize = open_page  # already at the processor's size: its own resize leaves them as they are
    encoded_pages: list[torch.Tensor | None] = [None] * len(pages)
    with tqdm(total=len(pages), desc="Encoding pages", unit="page", disable=not show_progress_bar) as progress:
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = [page_cache.resized((dataset_name, *key, i), pages[i], resize, stats, presized) for i in indices]
            started = time.perf_counter()
            encoded = encode_batch(model, batch, "document", batch_size)
            stats.encode_seconds += time.perf_counter() - started
            stats.page_encodings += len(batch)
            for index, tensor in zip(indices, encoded):
                encoded_pages[index] = tensor
            progress.update(len(batch))
    return encoded_pages if isinstance(model, MultiVectorEncoder) else torch.stack(encoded_pages)
