"""A text baseline: BM25 (the ``bm25s`` library) over each page's text, scored like any model (``--model bm25``).

A page's text comes from the dataset when it has one (rows layout: ``<page column>_text``, e.g. ``image_text``,
``negative_0_text``; BEIR layout: a ``text`` or ``markdown`` corpus column), which data prepared from PDFs keeps
from the text layer. Otherwise pages are read with OCR through the optional ``rapidocr-onnxruntime`` package
(``pip install rapidocr-onnxruntime``); without it that dataset's BM25 row is skipped with a message.

Bytes per page: the ``bm25s`` index files on disk (its sparse term-weight matrix and vocabulary), over the pages.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vdr.data.page_images import open_page
from vdr.data.retrieval_sets import RetrievalData
from vdr.errors import VdrError
from vdr.evaluation.metrics import ModelScores, metrics_from_scores, result_record
from vdr.evaluation.model_list import BM25_MODEL_ID, TEXT

logger = logging.getLogger(__name__)

OCR_PACKAGE = "rapidocr-onnxruntime"


def _bm25s():
    try:
        import bm25s
    except ImportError:
        raise VdrError("--model bm25 needs the bm25s package: pip install bm25s") from None
    return bm25s


def bm25_index(page_texts: list[str]) -> Any:
    """A BM25 index (bm25s defaults: Lucene's BM25, k1 1.5, b 0.75, English stopwords, no stemming)."""
    bm25s = _bm25s()
    index = bm25s.BM25()
    index.index(bm25s.tokenize(page_texts, show_progress=False), show_progress=False)
    return index


def bm25_scores(index: Any, queries: list[str]) -> torch.Tensor:
    """``[len(queries), num_pages]`` BM25 scores; query words the pages never use score nothing."""
    tokens = _bm25s().tokenize(queries, return_ids=False, show_progress=False)
    return torch.from_numpy(np.stack([index.get_scores(query_tokens) for query_tokens in tokens]))


def index_bytes(index: Any) -> int:
    """Size of the saved index files (term weights, vocabulary, parameters)."""
    with tempfile.TemporaryDirectory() as folder:
        index.save(folder)
        return sum(path.stat().st_size for path in Path(folder).iterdir())


def ocr_reader() -> Callable[[Image.Image], str] | None:
    """Page image -> its text with RapidOCR, or None when the optional package is not installed."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        return None
    engine = RapidOCR()

    def read(image: Image.Image) -> str:
        lines, _ = engine(np.asarray(image.convert("RGB")))
        return "\n".join(line[1] for line in lines or [])

    return read


def page_texts(data: RetrievalData, dataset: str) -> list[str] | None:
    """Each page's text in corpus order: the dataset's own, else OCR; None (logged) when neither is available."""
    if data.texts is not None:
        return [data.texts.get(page_id) or "" for page_id in data.corpus]
    read = ocr_reader()
    if read is None:
        logger.warning(
            "BM25 skipped on dataset '%s': it has no page text column (<page column>_text, or a BEIR corpus 'text' "
            "column) and the optional OCR package is not installed (pip install %s).",
            dataset,
            OCR_PACKAGE,
        )
        return None
    logger.info("Dataset '%s' has no page text: reading %d pages with OCR (%s)", dataset, len(data.corpus), OCR_PACKAGE)
    return [read(open_page(page)) for page in data.corpus.values()]


def score_bm25(datasets: dict[str, RetrievalData]) -> ModelScores:
    """BM25 on every dataset: its records (one per dataset, which are also its storage rows) and a note for each
    dataset skipped for lack of page text."""
    scores = ModelScores()
    for name, data in datasets.items():
        start = time.perf_counter()
        texts = page_texts(data, name)
        if texts is None:
            scores.notes.append(f"BM25 skipped on '{name}': no page text and no OCR package (see the log).")
            continue
        index = bm25_index(texts)
        bm25 = bm25_scores(index, [str(query) for query in data.queries.values()])
        page_bytes = round(index_bytes(index) / len(texts), 1)
        record = result_record(
            BM25_MODEL_ID,
            name,
            None,  # no embedding dimension
            data,
            metrics_from_scores(bm25, data, shuffle_ties=True),
            kind=TEXT,
            precision="bm25",
            bytes_per_page=page_bytes,
        )
        scores.records.append(record)
        scores.storage.append(record)
        scores.matrices[name] = bm25  # kept for every dataset: a leaderboard table reads those it needs
        scores.stats[name] = {"seconds": time.perf_counter() - start, "text_source": "dataset" if data.texts else "ocr"}
    return scores
