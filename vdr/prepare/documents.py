"""Your own documents as page images: every page of every PDF (rendered with pypdfium2) or page image in a folder.

Each page becomes one image file under ``<output_dir>/pages/<document>/page-0001.png`` plus a record (document
id, source file, page number, size, text layer) in ``pages.jsonl``. Rendering runs in a process pool, in chunks of
pages, so every core works even when one document is much longer than the others. A page is written as soon as
it is rendered (atomically: a half-written file never looks done), and a re-run skips the pages that exist.

A file that cannot be read (encrypted, corrupt, zero pages, no permission) is skipped with one warning naming it
and is listed, with the reason, in ``skipped_files.json``; it never stops the run.

This module imports only pypdfium2 and Pillow: the worker processes import it, and must start fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from vdr.errors import VdrError
from vdr.prepare.output_files import PAGES_FILE, PAGES_FOLDER, SKIPPED_FILE, read_jsonl, write_jsonl

logger = logging.getLogger(__name__)
PDF_SUFFIXES = {".pdf"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
#: Pages per task: small enough to spread one long document over every worker, large enough that opening the
#: document again for each chunk costs little.
CHUNK_PAGES = 8
POINTS_PER_INCH = 72


@dataclass(frozen=True)
class SourceFile:
    """One input file: a PDF or a (possibly multi-page) image."""

    path: Path  # absolute
    relative: str  # to the input folder, POSIX separators: what users recognise
    document: str  # unique id, safe as a folder name

    @property
    def is_pdf(self) -> bool:
        return self.path.suffix.lower() in PDF_SUFFIXES


@dataclass(frozen=True)
class RenderSettings:
    max_page_pixels: int = 2_200_000  # A4 at 150 DPI (1240 x 1754) fits; larger pages get a lower DPI
    max_dpi: float = 150.0
    image_format: str = "png"  # "png" (lossless, text stays crisp) or "jpg" (smaller, faster)


@dataclass(frozen=True)
class RenderTask:
    source: SourceFile
    first: int  # 0-based page index, inclusive
    stop: int  # exclusive
    pages_dir: Path
    output_dir: Path
    settings: RenderSettings


@dataclass
class PageRecord:
    """One rendered page; ``image`` is relative to the output folder, ``page`` counts from 1."""

    document: str
    source: str
    page: int
    image: str
    width: int
    height: int
    dpi: float | None  # None for page images (not rendered)
    text: str


# 1. Find the documents -----------------------------------------------------------------------------------------


def find_source_files(input_dir: str | Path, exclude: Path | None = None) -> list[SourceFile]:
    """Every PDF and page image under ``input_dir`` (recursively, sorted), hidden files and ``exclude`` left out."""
    root = Path(input_dir).expanduser()
    if not root.is_dir():
        raise VdrError(f"Input folder '{root}' does not exist or is not a folder. Pass the folder of your PDFs.")
    try:
        candidates = sorted(root.rglob("*"))
    except OSError as error:
        raise VdrError(f"Cannot read input folder '{root}': {error}. Check its permissions.") from None
    exclude = exclude.resolve() if exclude else None
    files = []
    for path in candidates:
        relative = path.relative_to(root)
        hidden = any(part.startswith(".") for part in relative.parts)
        target = _target(path)
        inside_output = exclude is not None and target.is_relative_to(exclude)
        if hidden or inside_output or path.suffix.lower() not in PDF_SUFFIXES | IMAGE_SUFFIXES or path.is_dir():
            continue
        files.append(SourceFile(target, relative.as_posix(), document_id(relative.as_posix())))
    if not files:
        kinds = ", ".join(sorted(PDF_SUFFIXES | IMAGE_SUFFIXES))
        raise VdrError(f"No PDFs or page images ({kinds}) found under '{root}'. Point --input_dir at your documents.")
    return files


def _target(path: Path) -> Path:
    """The file a path stands for: a symbolic link's target; a link that leads to no file (a missing target, a loop)
    as it is, so that opening it reports the link (the file is then skipped with its reason, not the run stopped)."""
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: Python before 3.13 reports a link loop so
        return path.absolute()


def document_id(relative: str) -> str:
    """A readable, unique folder-safe id: the path's slug plus a short hash of the exact path (slugs can collide)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", relative.rsplit(".", 1)[0].replace("/", "__")).strip("_")[:80]
    return f"{slug}-{hashlib.sha1(relative.encode()).hexdigest()[:6]}"


# 2. Count pages (or find out that a file cannot be read) -------------------------------------------------------


def count_pages(path: Path) -> int | str:
    """Number of pages, or the reason the file cannot be used."""
    try:
        if path.suffix.lower() in PDF_SUFFIXES:
            import pypdfium2 as pdfium

            document = pdfium.PdfDocument(str(path))
            try:
                num_pages = len(document)
            finally:
                document.close()
        else:
            with Image.open(path) as image:
                num_pages = getattr(image, "n_frames", 1)
    except Exception as error:  # pdfium and PIL raise many types for encrypted, corrupt or unreadable files
        return _reason(error, path)
    return num_pages if num_pages > 0 else "it has no pages"


def _reason(error: Exception, path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return "it is a symbolic link that leads to no file (its target is missing, or the link loops)"
    if isinstance(error, PermissionError):
        return "no permission to read it"
    if path.exists() and path.stat().st_size == 0:
        return "it is empty (0 bytes)"
    if path.suffix.lower() in PDF_SUFFIXES:
        # pdfium's error code is process-global and can be stale (a zero-page PDF reports the previous file's
        # error), so the reason is read from the file itself.
        data = path.read_bytes()
        if b"/Encrypt" in data:
            return "it is encrypted (password protected)"
        if re.search(rb"/Kids\s*\[\s*\]", data):
            return "it has no pages"
        return "it is corrupt or not a PDF (pdfium cannot load it)"
    return f"it cannot be read ({type(error).__name__}: {error})"


# 3. Render pages: one task = a chunk of one document's pages ---------------------------------------------------


def pdf_scale(width_pt: float, height_pt: float, settings: RenderSettings) -> float:
    """Pixels per point: the DPI cap, lowered so the page stays within the pixel budget."""
    scale = min(settings.max_dpi / POINTS_PER_INCH, math.sqrt(settings.max_page_pixels / (width_pt * height_pt)))
    # pypdfium2 rounds the bitmap size up, which can tip a page just over the budget.
    while math.ceil(width_pt * scale) * math.ceil(height_pt * scale) > settings.max_page_pixels:
        scale *= 0.999
    return scale


def page_image_path(task: RenderTask, page_index: int) -> Path:
    return task.pages_dir / task.source.document / f"page-{page_index + 1:04d}.{task.settings.image_format}"


def render_chunk(task: RenderTask) -> list[PageRecord]:
    """Render (or reuse) pages ``first..stop-1`` of one file; runs in a worker process."""
    if task.source.is_pdf:
        return list(_render_pdf_pages(task))
    return list(_image_pages(task))


def _render_pdf_pages(task: RenderTask) -> Iterator[PageRecord]:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(task.source.path))
    try:
        for index in range(task.first, task.stop):
            page = document[index]
            width_pt, height_pt = page.get_size()
            scale = pdf_scale(width_pt, height_pt, task.settings)
            target = page_image_path(task, index)
            if not target.exists():
                # rev_byteorder: pdfium writes RGB, so the PIL image needs no channel swap.
                image = page.render(scale=scale, rev_byteorder=True).to_pil()
                _save_atomically(
                    image if image.mode == "RGB" else image.convert("RGB"), target, task.settings.image_format
                )
            text_page = page.get_textpage()
            text = text_page.get_text_range()
            text_page.close()
            page.close()
            yield _record(task, index, target, clean_text(text), round(scale * POINTS_PER_INCH, 1))
    finally:
        document.close()


def clean_text(text: str) -> str:
    """pdfium marks a word hyphenated across lines with U+FFFE before the line break: join the word again."""
    return re.sub("\ufffe\\s*", "", text.replace("\r\n", "\n"))


def _image_pages(task: RenderTask) -> Iterator[PageRecord]:
    with Image.open(task.source.path) as image:
        for index in range(task.first, task.stop):
            target = page_image_path(task, index)
            if not target.exists():
                image.seek(index)  # multi-page TIFF: one frame per page
                page = _within_budget(image.convert("RGB"), task.settings)
                _save_atomically(page, target, task.settings.image_format)
            yield _record(task, index, target, text="", dpi=None)


def _within_budget(image: Image.Image, settings: RenderSettings) -> Image.Image:
    pixels = image.width * image.height
    if pixels <= settings.max_page_pixels:
        return image
    factor = math.sqrt(settings.max_page_pixels / pixels)
    size = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _save_atomically(image: Image.Image, target: Path, image_format: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    if image_format == "png":
        # Level 1 of 9: half the time of the default level 6 for files about 5% larger (rendered pages are mostly
        # flat colour); encoding is most of the time a page costs.
        image.save(partial, format="PNG", compress_level=1)
    else:
        image.save(partial, format="JPEG", quality=90)
    os.replace(partial, target)


def _record(task: RenderTask, index: int, target: Path, text: str, dpi: float | None) -> PageRecord:
    with Image.open(target) as image:  # the header only: the size of what is on disk, new or reused
        width, height = image.size
    return PageRecord(
        document=task.source.document,
        source=task.source.relative,
        page=index + 1,
        image=target.relative_to(task.output_dir).as_posix(),
        width=width,
        height=height,
        dpi=dpi,
        text=text,
    )


def _probe(source: SourceFile) -> tuple[SourceFile, int | str]:
    return source, count_pages(source.path)


def _safe_render(task: RenderTask) -> tuple[RenderTask, list[PageRecord] | str]:
    try:
        return task, render_chunk(task)
    except Exception as error:  # a page pdfium cannot render: the document is skipped, the run goes on
        return task, _reason(error, task.source.path)


# 4. The whole step ---------------------------------------------------------------------------------------------


def render_documents(
    input_dir: str | Path, output_dir: str | Path, settings: RenderSettings, num_workers: int
) -> tuple[list[PageRecord], dict[str, str]]:
    """Render every document under ``input_dir``; write ``pages.jsonl`` and ``skipped_files.json``.

    Returns the page records (sorted by document and page) and the skipped files with their reasons.
    """
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    sources = find_source_files(input_dir, exclude=output_dir)
    pages_dir = output_dir / PAGES_FOLDER
    skipped: dict[str, str] = {}
    records: dict[str, list[PageRecord]] = {}
    with _pool(num_workers) as pool:
        tasks = []
        for source, count in tqdm(_unordered(pool, _probe, sources), total=len(sources), desc="Opening files"):
            if isinstance(count, str):
                _skip(skipped, source, count)
                continue
            tasks += [
                RenderTask(source, first, min(first + CHUNK_PAGES, count), pages_dir, output_dir, settings)
                for first in range(0, count, CHUNK_PAGES)
            ]
        with tqdm(total=sum(task.stop - task.first for task in tasks), desc="Rendering pages", unit="page") as bar:
            for task, result in _unordered(pool, _safe_render, tasks):
                bar.update(task.stop - task.first)
                if isinstance(result, str):
                    _skip(skipped, task.source, result)
                else:
                    records.setdefault(task.source.relative, []).extend(result)
    pages = [
        page
        for source in sources
        if source.relative not in skipped
        for page in sorted(records.get(source.relative, []), key=lambda record: record.page)
    ]
    write_jsonl(output_dir / PAGES_FILE, (asdict(page) for page in pages))
    skipped = dict(sorted(skipped.items()))  # workers finish in any order; the report should not
    (output_dir / SKIPPED_FILE).write_text(json.dumps(skipped, indent=2))
    return pages, skipped


def _skip(skipped: dict[str, str], source: SourceFile, reason: str) -> None:
    if source.relative not in skipped:
        logger.warning("Skipping '%s': %s.", source.path, reason)
        skipped[source.relative] = reason


def _pool(num_workers: int):
    """A process pool (spawned: safe whatever threads torch has started in this process), or none for 1 worker.
    Its workers stop when this process dies, even by SIGKILL (the OOM killer), instead of rendering on (and holding
    memory and multiprocessing's resource tracker) for nobody."""
    if num_workers <= 1:
        return _NoPool()
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(num_workers, mp_context=context, initializer=_stop_with_parent, initargs=(os.getpid(),))


def _stop_with_parent(parent_pid: int) -> None:
    """In a worker: have Linux kill this process when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere a no-op."""
    if sys.platform != "linux":
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the call took effect
        os._exit(1)


class _NoPool:
    def __enter__(self):
        return None

    def __exit__(self, *exc_info):
        return False


def _unordered(pool: ProcessPoolExecutor | None, function, items: list) -> Iterator:
    """``function`` over ``items``, results as they finish (the progress bar moves with the work), or in-process."""
    if pool is None:
        yield from map(function, items)
        return
    futures = [pool.submit(function, item) for item in items]
    for future in as_completed(futures):
        yield future.result()


def read_pages(output_dir: str | Path) -> tuple[list[PageRecord], dict[str, str]]:
    """The pages step's output, for the later steps (each step can run on its own)."""
    output_dir = Path(output_dir)
    path = output_dir / PAGES_FILE
    if not path.is_file():
        raise VdrError(f"'{path}' does not exist: run the pages step first (--steps pages).")
    skipped_path = output_dir / SKIPPED_FILE
    skipped = json.loads(skipped_path.read_text()) if skipped_path.is_file() else {}
    return [PageRecord(**row) for row in read_jsonl(path)], skipped


def check_some_pages(pages: list[PageRecord], skipped: dict[str, str], output_dir: Path) -> None:
    """The later steps need pages: when every document was skipped, say why now, before any model loads."""
    if pages:
        return
    if not skipped:
        raise VdrError(f"'{Path(output_dir) / PAGES_FILE}' lists no page. Run the pages step (--steps pages) again.")
    reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
    raise VdrError(
        f"None of the {len(skipped)} file(s) under the input folder could be read, so there are no pages to prepare "
        f"({reasons}). The reasons are also in '{Path(output_dir) / SKIPPED_FILE}'. Fix or replace those files and run "
        "again."
    )
