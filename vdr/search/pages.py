"""The pages an index holds, from any of three sources, each page with a file on disk (what the web page shows) and a
content hash (what re-indexing compares):

- a folder of PDFs and page images, rendered by ``vdr.prepare.documents`` (prepare_vdr_data.py's rendering) into the
  pages folder; a document whose file changed is rendered again, one that was removed loses its pages;
- a prepare_vdr_data.py output folder: its ``pages.jsonl`` and the page files it rendered;
- a dataset's corpus (``generated:pages``, a BEIR folder, a Hub set): each page written once as a PNG file."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vdr.data.page_images import PageRef
from vdr.data.retrieval_sets import load_retrieval_data
from vdr.data.sources import DatasetSpec, SourceArguments
from vdr.errors import VdrError
from vdr.prepare.documents import RenderSettings, find_source_files, read_pages, render_documents
from vdr.prepare.output_files import PAGES_FILE, PAGES_FOLDER

#: What the pages folder records about the rendered documents: each source file's hash when it was rendered.
RENDERED_SOURCES_FILE = "rendered_sources.json"


@dataclass(frozen=True)
class IndexPage:
    """One page to index: ``id`` is unique in the index (``document/page``), ``content_hash`` changes with the page."""

    id: str
    document: str
    page: int
    page_file: str  # absolute path of the page image
    content_hash: str


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def folder_pages(input_dir: str, pages_dir: Path, num_workers: int) -> list[IndexPage]:
    """Every page of every PDF and image under ``input_dir``, rendered into ``pages_dir`` (a re-run renders only the
    documents that are new or whose file changed; pages of removed documents are deleted)."""
    sources = find_source_files(input_dir, exclude=pages_dir.resolve())
    hashes = {source.document: file_hash(source.path) for source in sources}
    record_path = pages_dir / RENDERED_SOURCES_FILE
    rendered = json.loads(record_path.read_text()) if record_path.is_file() else {}
    for document, rendered_hash in rendered.items():
        if hashes.get(document) != rendered_hash:  # changed or removed: its old page files must not be reused
            shutil.rmtree(pages_dir / PAGES_FOLDER / document, ignore_errors=True)
    pages_dir.mkdir(parents=True, exist_ok=True)
    records, _skipped = render_documents(input_dir, pages_dir, RenderSettings(), num_workers)
    _write_json(record_path, {record.document: hashes[record.document] for record in records})
    return [
        IndexPage(
            f"{record.document}/{record.page}",
            record.source,
            record.page,
            str((pages_dir / record.image).resolve()),
            f"{hashes[record.document]}:{record.page}",
        )
        for record in records
    ]


def prepared_pages(location: str) -> list[IndexPage]:
    """The pages of a prepare_vdr_data.py output folder (``location`` is the folder or its pages.jsonl)."""
    folder = Path(location).expanduser()
    folder = folder.parent if folder.name == PAGES_FILE else folder
    if not (folder / PAGES_FILE).is_file():
        raise VdrError(
            f"--pages '{location}' has no {PAGES_FILE}. Give a prepare_vdr_data.py output folder (its pages step "
            "writes pages.jsonl), or use --input_dir for a folder of PDFs."
        )
    records, _skipped = read_pages(folder)
    pages = []
    for record in records:
        path = (folder / record.image).resolve()
        if not path.is_file():
            raise VdrError(
                f"{folder / PAGES_FILE} lists page file '{record.image}', which does not exist. Run "
                f"`python prepare_vdr_data.py --output_dir {folder} --steps pages` again to render it."
            )
        pages.append(IndexPage(f"{record.document}/{record.page}", record.source, record.page, str(path), ""))
    return [IndexPage(p.id, p.document, p.page, p.page_file, file_hash(Path(p.page_file))) for p in pages]


def dataset_pages(spec: str, options: SourceArguments, pages_dir: Path) -> list[IndexPage]:
    """A dataset's corpus, each page written (once) to ``pages_dir`` as ``<corpus id>.png``: the document is the
    corpus id, every page its page 1."""
    data = load_retrieval_data(DatasetSpec.parse(spec), options)
    pages_dir.mkdir(parents=True, exist_ok=True)
    pages = []
    for corpus_id, page in data.corpus.items():
        data_bytes = _png_bytes(page)
        content_hash = hashlib.sha256(data_bytes).hexdigest()
        target = pages_dir / f"{_safe_name(str(corpus_id))}.png"
        if not target.is_file() or file_hash(target) != content_hash:
            staging = target.with_name(f".{target.name}.{os.getpid()}")
            staging.write_bytes(data_bytes)
            os.replace(staging, target)  # a killed run never leaves half a page file
        pages.append(IndexPage(f"{corpus_id}/1", str(corpus_id), 1, str(target.resolve()), content_hash))
    return pages


def _png_bytes(page: Any) -> bytes:
    """A page's PNG file bytes: as stored when it is a PNG already, else re-encoded (lossless)."""
    if isinstance(page, PageRef):
        data = page.data if page.data is not None else Path(page.path).read_bytes()
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return data
        page = page.open()
    elif isinstance(page, str):
        page = Image.open(page)
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


def _safe_name(name: str) -> str:
    """A corpus id as a file name: kept when it is plain, else its hash (ids can hold '/' or '..')."""
    plain = name.replace("-", "").replace("_", "").replace(".", "").isalnum() and not name.startswith(".")
    return name if plain and len(name) < 100 else hashlib.sha256(name.encode()).hexdigest()[:32]


def _write_json(path: Path, value: Any) -> None:
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(staging, path)
