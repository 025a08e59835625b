"""Building an index: the pages that are new or changed are encoded (largest first, in batches, through the
evaluation's page encoding) and written every ``write_every`` pages, so an interrupted run keeps what it wrote and the
next run encodes only the rest; pages that are gone or changed are dropped. Under torchrun / accelerate launch each
process encodes its share of the pages and appends them to the same table (LanceDB commits concurrent appends)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from sentence_transformers import MultiVectorEncoder, SentenceTransformer
from tqdm.auto import tqdm

from vdr.data.page_images import PageRef, pixel_count
from vdr.errors import VdrError
from vdr.evaluation.encoding import EncodingStats, ResizedPageCache, encode_pages
from vdr.models.embedder import embedding_dimension
from vdr.models.loading import ModelLoadingArguments, model_fingerprint, resolve_model_path
from vdr.search.arguments import IndexArguments
from vdr.search.index import IndexSettings, PageIndex, int8_calibration, page_vectors, rows_table, table_schema
from vdr.search.pages import IndexPage

logger = logging.getLogger(__name__)


@dataclass
class IndexingStats:
    pages: int = 0  # in the index at the end
    encoded: int = 0  # by this process
    kept: int = 0  # unchanged, from an earlier run
    dropped: int = 0  # removed or changed
    encode_seconds: float = 0.0  # decoding, resizing and encoding the pages
    write_seconds: float = 0.0  # quantizing and writing the rows
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        values = {key: value for key, value in vars(self).items() if key != "extra"}
        return {**values, **self.extra}


def process_rank() -> tuple[int, int]:
    """(rank, world size) under torchrun / accelerate launch (their environment variables); (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@contextmanager
def process_group() -> Iterator[None]:
    """A gloo process group for the barriers between processes (the encoding itself needs no collective)."""
    _, world = process_rank()
    started = world > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        if started:
            dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """The main process does the block first (rendering pages, writing page files), the others after it, finding
    the work done."""
    rank, _ = process_rank()
    if rank != 0:
        barrier()
    try:
        yield
    finally:
        if rank == 0:
            barrier()


def index_settings(model: SentenceTransformer, model_path: str, loading: ModelLoadingArguments, args: IndexArguments):
    full_dim = embedding_dimension(model)
    dim = args.dim or full_dim
    if dim > full_dim:
        raise VdrError(f"--dim {dim} is above the model's embedding dimension ({full_dim}). Choose 1 to {full_dim}.")
    fingerprint = model_fingerprint(resolve_model_path(model_path), loading.revision)
    return IndexSettings(model_path, fingerprint, vars(loading), dim, full_dim, args.precision)


def check_same_settings(index: PageIndex, wanted: IndexSettings) -> None:
    """An index keeps one model, dim and precision: a run with others would mix vectors that cannot be compared."""
    stored = index.settings
    differences = [
        f"{name} {getattr(stored, name)!r} -> {getattr(wanted, name)!r}"
        for name in ("model_fingerprint", "loading", "dim", "precision")
        if getattr(stored, name) != getattr(wanted, name)
    ]
    if differences:
        raise VdrError(
            f"The index at '{index.uri}' was built with other settings ({'; '.join(differences)}; model "
            f"'{stored.model}'). Give another --index, or pass --overwrite true to rebuild this one."
        )


def pages_to_encode(index: PageIndex | None, pages: list[IndexPage]) -> tuple[list[IndexPage], list[str], int]:
    """(pages to encode, stored ids to drop, pages kept): a page is kept when its id is stored with the same
    content hash."""
    stored = index.stored_pages() if index is not None else {}
    wanted = {page.id: page for page in pages}
    if len(wanted) != len(pages):
        raise VdrError("Two pages share an id (document/page): give each document a distinct name.")
    drop = [
        page_id for page_id, content in stored.items() if getattr(wanted.get(page_id), "content_hash", None) != content
    ]
    todo = [page for page in pages if stored.get(page.id) != page.content_hash]
    return todo, drop, len(pages) - len(todo)


def largest_first(pages: list[IndexPage]) -> list[IndexPage]:
    """Big pages first, so batches pad little (as the evaluation orders them), from the image headers only."""
    sizes = {page.id: pixel_count(PageRef(path=page.page_file)) for page in pages}
    return sorted(pages, key=lambda page: (-sizes[page.id], page.id))


def build_index(
    model: SentenceTransformer,
    settings: IndexSettings,
    pages: list[IndexPage],
    args: IndexArguments,
) -> tuple[PageIndex, IndexingStats]:
    """Bring the index at ``args.index`` up to date with ``pages`` (see the module docstring)."""
    if isinstance(model, MultiVectorEncoder):
        raise VdrError("search_vdr.py indexes single-vector models; multi-vector (late-interaction) ones are not yet.")
    rank, world = process_rank()
    stats = IndexingStats()
    index = _open_for_writing(args, settings, rank)
    if index is not None:
        check_same_settings(index, settings)
    todo, drop, stats.kept = pages_to_encode(index, pages)
    if rank == 0 and drop:
        index.delete(drop)
        stats.dropped = len(drop)
    barrier()  # every process sees the drops before anyone appends
    share = largest_first(todo)[rank::world]
    chunks = _chunks(share, args.write_every, _first_chunk(index, settings, args))
    with tqdm(total=len(share), desc="Indexing pages", unit="page", disable=rank != 0) as progress:
        if index is None:  # the main process's first write creates the table (int8: calibrated on those pages)
            if rank == 0 and chunks:
                index = _create(model, settings, chunks.pop(0), args, stats, progress)
            barrier()  # the others wait for the table (and its calibration) to exist
            index = index or PageIndex.open(args.index, must_exist=False)
        for chunk in chunks:
            embeddings = _encode(model, chunk, args.batch_size, stats)
            started = time.perf_counter()
            index.add(rows_table(chunk, page_vectors(embeddings, index.settings), table_schema(index.settings)))
            stats.write_seconds += time.perf_counter() - started
            stats.encoded += len(chunk)
            progress.update(len(chunk))
    barrier()
    if index is None:
        raise VdrError("There are no pages to index: the source gave none (see the warnings above).")
    stats.pages = len(index)
    return index, stats


def _open_for_writing(args: IndexArguments, settings: IndexSettings, rank: int) -> PageIndex | None:
    """The index as it is, or None when there is none yet; ``--overwrite`` drops an existing one (main process)."""
    if args.overwrite and rank == 0:
        import lancedb

        database = lancedb.connect(args.index)
        if "pages" in database.list_tables().tables:
            database.drop_table("pages")
    barrier()
    return PageIndex.open(args.index, must_exist=False)


def _first_chunk(index: PageIndex | None, settings: IndexSettings, args: IndexArguments) -> int:
    """int8 calibrates on the first pages a new index writes: that write waits for ``calibration_pages`` pages."""
    if index is None and settings.precision == "int8":
        return max(args.write_every, args.calibration_pages)
    return args.write_every


def _chunks(pages: list[IndexPage], size: int, first: int) -> list[list[IndexPage]]:
    chunks = [pages[:first]] if pages else []
    return chunks + [pages[start : start + size] for start in range(first, len(pages), size)]


def _create(
    model: SentenceTransformer,
    settings: IndexSettings,
    chunk: list[IndexPage],
    args: IndexArguments,
    stats: IndexingStats,
    progress: tqdm,
) -> PageIndex:
    embeddings = _encode(model, chunk, args.batch_size, stats)
    started = time.perf_counter()
    if settings.precision == "int8":
        settings.calibration = int8_calibration(embeddings, settings.dim)
    index = PageIndex.create(
        args.index, settings, rows_table(chunk, page_vectors(embeddings, settings), table_schema(settings))
    )
    stats.write_seconds += time.perf_counter() - started
    stats.encoded += len(chunk)
    progress.update(len(chunk))
    return index


def _encode(model: SentenceTransformer, chunk: list[IndexPage], batch_size: int, stats: IndexingStats) -> torch.Tensor:
    started = time.perf_counter()
    encoding = EncodingStats()
    refs = [PageRef(path=page.page_file) for page in chunk]
    # budget 0: pages are resized once each here, nothing is kept for another model
    embeddings = encode_pages(model, refs, batch_size, ResizedPageCache(0), "index", encoding, show_progress_bar=False)
    stats.encode_seconds += time.perf_counter() - started
    return embeddings


def index_summary(index: PageIndex, stats: IndexingStats, source: str) -> str:
    settings = index.settings
    total = stats.encode_seconds + stats.write_seconds
    rate = f", {stats.encoded / total:.1f} pages/s" if total and stats.encoded else ""
    return (
        f"Index {index.uri}: {stats.pages} pages from {source} ({stats.encoded} encoded now{rate}: encoding "
        f"{stats.encode_seconds:.1f} s, writing {stats.write_seconds:.1f} s; {stats.kept} unchanged; {stats.dropped} "
        f"dropped), model {settings.model}, dim {settings.dim} of {settings.full_dim}, {settings.precision}."
    )


def page_folder_default(index: str, pages_dir: str | None) -> Path:
    """Where page files are written: ``--pages_dir``, else beside a local index's table."""
    if pages_dir:
        return Path(pages_dir).expanduser()
    if "://" in index:
        raise VdrError(
            f"--index '{index}' is a URI: give --pages_dir, a local folder (or shared disk) for the page images "
            "that the index's rows point to."
        )
    return Path(index).expanduser() / "page-files"
