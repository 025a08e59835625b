"""Hard negatives mined with Sentence Transformers' ``mine_hard_negatives`` (page file paths as documents), and the
training / evaluation rows files written with them.

Outputs (paths inside are relative to the file that holds them, so the folder can be moved): ``train.jsonl`` and
``eval.jsonl`` with ``query``, ``image``, ``negative_0..negative_{k-1}`` (+ ``document``, ``page``,
``query_source``), what ``train_vdr.py`` and ``evaluate_vdr.py`` read."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdr.cache import discard_damaged_arrays
from vdr.models.loading import ModelLoadingArguments, resolve_model_path
from vdr.prepare.arguments import PrepareArguments
from vdr.prepare.documents import PageRecord
from vdr.prepare.output_files import write_jsonl


@dataclass
class MiningStats:
    rows_in: int = 0
    rows_out: int = 0
    rows_without_enough_negatives: int = 0
    negatives: int = 0
    negatives_same_document: int = 0
    excluded_candidates: int = 0


def mining_cache_folder(output_dir: Path, model_name_or_path: str, loading: ModelLoadingArguments) -> Path:
    """One embedding cache folder per model and loading settings.

    mine_hard_negatives keys its cache on the model's Hub name (empty for a local folder), the prompts and the
    texts; pages are file paths, so anything else that changes the embeddings must pick another folder: the model
    path (and, for a local folder, its files' modification times), dtype and page-size bounds.
    """
    path = resolve_model_path(model_name_or_path)
    stamp: list[Any] = [path, loading.torch_dtype, loading.min_pixels, loading.max_pixels]
    if Path(path).is_dir():
        stamp += sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in Path(path).iterdir() if f.is_file())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name_or_path).strip("_")[-60:]
    digest = hashlib.sha256(repr(stamp).encode()).hexdigest()[:10]
    return output_dir / "cache" / "mining" / f"{slug}-{digest}"


def mine_negatives(
    rows: Sequence[dict],
    corpus_pages: Sequence[PageRecord],
    model: Any,
    args: PrepareArguments,
    output_dir: Path,
    cache_folder: Path,
    stats: MiningStats,
) -> list[dict]:
    """Add ``negative_0..k-1`` page paths to ``rows`` with Sentence Transformers' ``mine_hard_negatives``.

    To keep other pages of the same document (or its neighbours) out, more candidates are asked for than needed
    (they come ranked, hardest first) and the excluded ones are dropped afterwards. Rows left with fewer than
    ``num_negatives`` are dropped and counted: training needs the same number of negatives in every row.
    """
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    stats.rows_in += len(rows)
    if not rows:
        return []
    discard_damaged_arrays(cache_folder)
    absolute = {page.image: str((output_dir / page.image).resolve()) for page in corpus_pages}
    page_of = {absolute[page.image]: page for page in corpus_pages}
    slack = _exclusion_slack(corpus_pages, args)
    dataset = Dataset.from_dict({"query": [r["query"] for r in rows], "image": [absolute[r["image"]] for r in rows]})
    mined = mine_hard_negatives(
        dataset,
        model,
        anchor_column_name="query",
        positive_column_name="image",
        corpus=list(absolute.values()),
        relative_margin=args.relative_margin if args.relative_margin >= 0 else None,
        num_negatives=args.num_negatives + slack,
        sampling_strategy="top",
        output_format="labeled-list",  # ranked candidates of any number: room for the exclusions below
        batch_size=args.encode_batch_size,
        cache_folder=str(cache_folder),
    )
    candidates = {(row["query"], row["image"][0]): row["image"][1:] for row in mined}
    output = []
    for row in rows:
        positive = page_of[absolute[row["image"]]]
        ranked = [page_of[path] for path in candidates.get((row["query"], absolute[row["image"]]), [])]
        allowed = [page for page in ranked if not _excluded(page, positive, args)]
        stats.excluded_candidates += len(ranked) - len(allowed)
        if len(allowed) < args.num_negatives:
            stats.rows_without_enough_negatives += 1
            continue
        negatives = allowed[: args.num_negatives]
        stats.negatives += len(negatives)
        stats.negatives_same_document += sum(page.document == positive.document for page in negatives)
        output.append({**row, **{f"negative_{k}": page.image for k, page in enumerate(negatives)}})
    stats.rows_out += len(output)
    return output


def _exclusion_slack(pages: Sequence[PageRecord], args: PrepareArguments) -> int:
    """How many ranked candidates the exclusion can remove at most, so that enough remain."""
    if args.exclude_negatives_from == "document":
        per_document: dict[str, int] = {}
        for page in pages:
            per_document[page.document] = per_document.get(page.document, 0) + 1
        return max(per_document.values()) - 1
    if args.exclude_negatives_from == "neighbours":
        return 2 * args.neighbour_window
    return 0


def _excluded(candidate: PageRecord, positive: PageRecord, args: PrepareArguments) -> bool:
    if candidate.document != positive.document or args.exclude_negatives_from == "none":
        return False
    return args.exclude_negatives_from == "document" or abs(candidate.page - positive.page) <= args.neighbour_window


def write_rows(path: Path, rows: Sequence[dict], output_dir: Path, page_texts: dict[str, str] | None = None) -> int:
    """Rows with page paths relative to the file's own folder (what train_vdr.py and evaluate_vdr.py resolve). With
    ``page_texts`` (page image -> its text layer), each page column gets its text in ``<column>_text``, the column a
    text baseline such as BM25 reads."""
    to_output = os.path.relpath(output_dir, path.parent)
    negatives = sorted(key for key in (rows[0] if rows else {}) if key.startswith("negative_"))
    image_columns = ["image", *negatives]

    def relative(row: dict) -> dict:
        fixed = {key: os.path.normpath(f"{to_output}/{row[key]}") for key in image_columns}
        rest = {k: v for k, v in row.items() if k not in fixed and k != "query"}
        texts = {f"{key}_text": page_texts[row[key]] for key in image_columns} if page_texts is not None else {}
        return {"query": row["query"], **fixed, **rest, **texts}

    return write_jsonl(path, (relative(row) for row in rows))
