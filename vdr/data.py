"""Datasets: load (query, page image, hard negatives) rows from any source and shape them for training
and retrieval evaluation.

Sources, all returning a ``datasets.Dataset``:
- a Hub dataset id (with config and split), through ``datasets.load_dataset``;
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- parquet or JSON-lines files (a path or a glob) whose image columns hold file paths, relative to the
  file's folder or to ``image_root``;
- ``generated:pages``: document pages generated offline (``vdr.pages``), cached on disk.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Image, load_dataset, load_from_disk
from PIL import Image as PILImage

from vdr.config import DataArguments
from vdr.errors import VdrError
from vdr.pages import GENERATED_PAGES_ID, generate_rows
from vdr.tiny_model import default_cache_dir

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
GENERATED_PAGES_VERSION = 1


@dataclass(frozen=True)
class DataSource:
    """One place rows come from: a Hub id, a folder, file(s), or ``generated:pages``."""

    path: str
    config: str | None = None
    split: str = "train"

    def __str__(self) -> str:
        parts = [self.path] + ([f"config={self.config}"] if self.config else []) + [f"split={self.split}"]
        return " ".join(parts)


def load_rows(
    source: DataSource,
    image_columns: list[str],
    image_root: str | None = None,
    num_generated_rows: int = 256,
    generated_seed: int = 0,
) -> Dataset:
    """Load ``source`` as a ``Dataset`` whose ``image_columns`` are ``datasets.Image`` features."""
    if source.path == GENERATED_PAGES_ID:
        return load_from_disk(str(ensure_generated_pages(num_generated_rows, generated_seed)))
    local = Path(source.path).expanduser()
    if local.is_dir() and _is_saved_dataset(local):
        return _select_split(load_from_disk(str(local)), source)
    files = sorted(glob.glob(str(local))) if any(ch in source.path for ch in "*?[") else [str(local)]
    if files and all(Path(f).is_file() for f in files):
        return _load_files(files, source, image_columns, image_root)
    if local.is_dir():
        return _load_hub_or_folder(source)
    if _looks_like_path(source.path):
        raise VdrError(
            f"Dataset path '{source.path}' does not exist. Give a save_to_disk folder, parquet/JSON-lines "
            f"file(s), a Hub dataset id, or '{GENERATED_PAGES_ID}'."
        )
    return _load_hub_or_folder(source)


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or Path(value).suffix in FILE_BUILDERS


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").exists() or (folder / "state.json").exists()


def _select_split(dataset: Dataset | DatasetDict, source: DataSource) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    if source.split not in dataset:
        raise VdrError(
            f"Dataset '{source.path}' has no split '{source.split}' (it has: {', '.join(dataset)}). "
            "Set the split argument to one of those."
        )
    return dataset[source.split]


def _load_hub_or_folder(source: DataSource) -> Dataset:
    try:
        return load_dataset(source.path, source.config, split=source.split)
    except Exception as error:  # datasets raises many types (hub, network, config, split errors)
        raise VdrError(
            f"Could not load dataset '{source.path}' (config={source.config}, split={source.split}): "
            f"{type(error).__name__}: {error}. Check the id, config and split, your network / HF_TOKEN for "
            "Hub datasets, or pass a local folder or file instead."
        ) from None


def _load_files(files: list[str], source: DataSource, image_columns: list[str], image_root: str | None) -> Dataset:
    suffixes = {Path(f).suffix for f in files}
    builders = {FILE_BUILDERS.get(suffix) for suffix in suffixes}
    if None in builders or len(builders) != 1:
        raise VdrError(
            f"Cannot read '{source.path}': data files must all be .parquet or all .jsonl/.json, got "
            f"{', '.join(sorted(suffixes))}."
        )
    dataset = load_dataset(builders.pop(), data_files=files, split="train")
    root = Path(image_root) if image_root else Path(files[0]).parent
    # Hard-negative columns are page images by convention, whether or not this run uses them.
    negatives = [c for c in dataset.column_names if c.startswith("negative") and c not in image_columns]
    return resolve_image_paths(dataset, [*image_columns, *negatives], root, source.path)


def resolve_image_paths(dataset: Dataset, image_columns: list[str], root: Path, where: str) -> Dataset:
    """Turn image-path string columns into ``Image`` features, failing clearly on a missing/unreadable file."""
    require_columns(dataset, image_columns, where)
    for column in image_columns:
        if isinstance(dataset.features[column], Image):
            continue
        paths = [_check_image(value, root, column, row, where) for row, value in enumerate(dataset[column])]
        dataset = dataset.remove_columns(column).add_column(column, paths).cast_column(column, Image())
    return dataset


def _check_image(value: Any, root: Path, column: str, row: int, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise VdrError(f"{where}: row {row}, column '{column}' should hold an image file path, got {value!r}.")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise VdrError(
            f"{where}: row {row}, column '{column}': image file '{path}' does not exist. Paths are relative to "
            f"'{root}'; set --image_root if they are relative to another folder."
        )
    try:
        with PILImage.open(path) as image:
            image.verify()
    except Exception as error:
        raise VdrError(
            f"{where}: row {row}, column '{column}': image file '{path}' cannot be read as an image "
            f"({type(error).__name__}: {error}). Replace or remove that row."
        ) from None
    return str(path)


def require_columns(dataset: Dataset, columns: list[str], where: str) -> None:
    """Fail with the dataset's real column names when a configured column is missing."""
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise VdrError(
            f"{where} has no column {', '.join(repr(c) for c in missing)} (its columns are: "
            f"{', '.join(dataset.column_names)}). Set --query_column / --positive_column / --negative_columns "
            "(or --eval_negative_columns) to the names your data uses."
        )


def ensure_generated_pages(num_rows: int, seed: int, cache_dir: str | Path | None = None) -> Path:
    """Generate ``num_rows`` rows of document pages once, save them with ``save_to_disk``, return the folder."""
    target = Path(cache_dir or default_cache_dir()) / f"pages-v{GENERATED_PAGES_VERSION}-n{num_rows}-seed{seed}"
    if _is_saved_dataset(target):
        return target
    logger.info("Generating %d rows of document pages in %s (once; later runs reuse them)", num_rows, target)
    rows = generate_rows(num_rows, seed=seed)
    dataset = Dataset.from_list(rows)
    for column in dataset.column_names:
        if column != "query":
            dataset = dataset.cast_column(column, Image())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pages-", dir=target.parent))
    try:
        dataset.save_to_disk(str(staging / "data"))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging / "data", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def negative_columns_of(dataset: Dataset, configured: list[str] | None) -> list[str]:
    """The configured hard-negative columns, or every column whose name starts with 'negative'."""
    if configured is not None:
        return list(configured)
    return [column for column in dataset.column_names if column.startswith("negative")]


def training_columns(dataset: Dataset, query: str, positive: str, negatives: list[str], where: str) -> Dataset:
    """Keep only (query, positive, *negatives), in that order: every other column would be fed to the model."""
    columns = [query, positive, *negatives]
    require_columns(dataset, columns, where)
    return dataset.select_columns(columns)


def carve_eval_split(dataset: Dataset, size: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold ``size`` rows (>= 1) or a ``size`` fraction (< 1) of ``dataset`` out for evaluation."""
    test_size: int | float = int(size) if size >= 1 else size
    if (isinstance(test_size, int) and test_size >= len(dataset)) or test_size <= 0:
        raise VdrError(f"eval_split_size={size} leaves no training rows out of {len(dataset)}. Use a smaller value.")
    split = dataset.train_test_split(test_size=test_size, seed=seed, shuffle=True)
    return split["train"], split["test"]


@dataclass
class RetrievalData:
    """A retrieval evaluation set: queries, a corpus of pages, and graded relevance judgements."""

    queries: dict[Any, Any]
    corpus: dict[Any, Any]
    qrels: dict[Any, dict[Any, float]]

    def relevant_docs(self) -> dict[Any, set[Any]]:
        """Binary relevance (grade > 0), in the form ``InformationRetrievalEvaluator`` takes."""
        return {qid: {cid for cid, grade in docs.items() if grade > 0} for qid, docs in self.qrels.items()}


def retrieval_from_rows(dataset: Dataset, query: str, positive: str, negatives: list[str], where: str) -> RetrievalData:
    """The reference recipe's evaluation set: corpus = positives plus every negative column.

    Row ``i``'s positive page has id ``i`` and its negative ``k`` has id ``n * (k + 1) + i`` (``n`` rows), as in
    the reference script; query ``i`` is relevant to page ``i`` only.
    """
    require_columns(dataset, [query, positive, *negatives], where)
    num_rows = len(dataset)
    queries = dict(enumerate(dataset[query]))
    corpus = dict(enumerate(dataset[positive]))
    for k, column in enumerate(negatives):
        corpus.update({num_rows * (k + 1) + i: page for i, page in enumerate(dataset[column])})
    qrels = {i: {i: 1.0} for i in range(num_rows)}
    return RetrievalData(queries=queries, corpus=corpus, qrels=qrels)


def load_training_data(args: DataArguments, seed: int) -> tuple[Dataset, Dataset | None]:
    """The training rows (only the columns the loss reads) and the evaluation rows (all columns), if any."""
    image_columns = [args.positive_column, *args.negative_columns]
    load_options = {
        "image_root": args.image_root,
        "num_generated_rows": args.num_generated_rows,
        "generated_seed": args.generated_seed,
    }
    train_source = DataSource(args.train_dataset, args.train_dataset_config, args.train_split)
    train_rows = load_rows(train_source, image_columns, **load_options)
    eval_rows = None
    if args.eval_dataset:
        eval_source = DataSource(args.eval_dataset, args.eval_dataset_config, args.eval_split)
        eval_rows = load_rows(eval_source, [args.positive_column], **load_options)
    elif args.eval_split_size:
        train_rows, eval_rows = carve_eval_split(train_rows, args.eval_split_size, seed)
    train_rows = _first_rows(train_rows, args.max_train_samples)
    train_dataset = training_columns(
        train_rows, args.query_column, args.positive_column, args.negative_columns, f"Training data '{train_source}'"
    )
    return train_dataset, _first_rows(eval_rows, args.max_eval_samples)


def _first_rows(dataset: Dataset | None, limit: int | None) -> Dataset | None:
    if dataset is None or limit is None or limit >= len(dataset):
        return dataset
    return dataset.select(range(limit))
