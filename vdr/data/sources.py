"""Training rows: (query, page image, hard negatives) from any source, loaded as a ``datasets.Dataset`` and checked.

Sources:
- a Hub dataset id (with config and split), through ``datasets.load_dataset``;
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- parquet or JSON-lines files (a path or a glob) whose image columns hold file paths, relative to the
  file's folder or to ``image_root``;
- ``generated:pages``: document pages generated offline (``vdr.offline.generated_pages``), cached on disk."""

from __future__ import annotations

import difflib
import glob
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from datasets import Dataset, DatasetDict, Image, concatenate_datasets, load_dataset, load_from_disk
from PIL import Image as PILImage

from vdr.cache import build_once, default_cache_dir
from vdr.errors import VdrError, not_utf8
from vdr.hub import looks_like_local_path
from vdr.offline.generated_pages import GENERATED_PAGES_ID, generate_rows

if TYPE_CHECKING:
    from vdr.training.arguments import DataArguments

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


GENERATED_PAGES_VERSION = 2  # 2: each page's text in <column>_text


# a page's text (PDF text layer), for text baselines such as BM25
#: Rows layout: the text of the page in column C is in column C + PAGE_TEXT_SUFFIX (image_text, negative_0_text).
PAGE_TEXT_SUFFIX = "_text"


@dataclass
class SourceArguments:
    """Options of every data source: where relative image paths point, and the generated pages' size and seed."""

    image_root: str | None = field(
        default=None,
        metadata={
            "help": "Folder that relative image paths in parquet/JSON-lines files are relative to. "
            "Default: the folder of the file."
        },
    )
    num_generated_rows: int = field(
        default=256, metadata={"help": "Rows to generate when a source is 'generated:pages' (or pages-beir)."}
    )
    generated_seed: int = field(default=0, metadata={"help": "Seed of the generated pages."})

    def __post_init__(self):
        if self.num_generated_rows < 1:
            raise ValueError(f"num_generated_rows must be 1 or more, got {self.num_generated_rows}.")


def check_image_root(options: SourceArguments) -> None:
    """``--image_root`` must be a folder (checked before anything loads: otherwise every row would be reported)."""
    if options.image_root and not Path(options.image_root).expanduser().is_dir():
        raise VdrError(
            f"--image_root '{options.image_root}' is not a folder. Give the folder the image paths are relative to."
        )


@dataclass(frozen=True)
class DatasetSpec:
    """One data source (a Hub id, a save_to_disk folder, data file(s) or ``generated:pages``): where it is, its
    layout and column names, and the name results are reported under."""

    path: str
    config: str | None = None
    split: str | None = None  # default: "train" for rows, "test" for Hub BEIR sets
    name: str = ""  # default: from the path (and config)
    layout: str = "auto"  # "rows", "beir" or "auto"
    query_column: str = "query"
    positive_column: str = "image"
    negative_columns: tuple[str, ...] | None = None  # default: every negative* column

    @classmethod
    def parse(cls, spec: str) -> DatasetSpec:
        """Parse ``PATH`` or ``key=value,key=value`` (``negative_columns`` joined by ``+``)."""
        if "=" not in spec:
            return cls(path=spec)
        values: dict[str, Any] = {}
        for item in spec.split(","):
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in DATASET_SPEC_KEYS:
                close = difflib.get_close_matches(key, DATASET_SPEC_KEYS, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise VdrError(
                    f"Unknown key '{key}' in --dataset '{spec}'.{hint} Valid keys: {', '.join(DATASET_SPEC_KEYS)}."
                )
            values[key] = tuple(value.split("+")) if key == "negative_columns" else value.strip()
        if "path" not in values:
            raise VdrError(f"--dataset '{spec}' has no path=... entry.")
        if values.get("layout", "auto") not in ("auto", "rows", "beir"):
            raise VdrError(f"--dataset '{spec}': layout must be rows, beir or auto.")
        return cls(**values)

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", _default_name(self.path, self.config))

    def __str__(self) -> str:
        parts = [self.path] + [f"{key}={getattr(self, key)}" for key in ("config", "split") if getattr(self, key)]
        return " ".join(parts)


def _default_name(path: str, config: str | None) -> str:
    base = Path(path.rstrip("/")).name if not path.startswith("generated:") else path.split(":", 1)[1]
    return f"{base}-{config}" if config else base


DATASET_SPEC_KEYS = tuple(f.name for f in fields(DatasetSpec))


def load_rows(
    source: DatasetSpec,
    image_columns: list[str],
    options: SourceArguments | None = None,
    optional_images: bool = False,
    query_column: str | None = None,
) -> Dataset:
    """Load ``source`` as a ``Dataset`` whose ``image_columns`` are ``datasets.Image`` features.

    With ``optional_images``, image columns the source does not have are skipped instead of reported. With
    ``query_column``, every query must be a non-empty string (a bad row is named: its line in a JSON-lines file).
    """
    options = options or SourceArguments()
    if source.path == GENERATED_PAGES_ID:
        return load_from_disk(str(ensure_generated_pages(options.num_generated_rows, options.generated_seed)))
    local = Path(source.path).expanduser()
    is_pattern = any(ch in source.path for ch in "*?[")
    files = sorted(glob.glob(str(local))) if is_pattern else [str(local)]
    if is_pattern and not files:
        raise VdrError(f"Dataset pattern '{source.path}' matches no file. Check the folder and the pattern.")
    if files and all(Path(f).is_file() for f in files):
        return _load_files(files, source, image_columns, options.image_root, optional_images, query_column)
    if local.is_dir() and _is_saved_dataset(local):
        dataset = _select_split(_load_saved(local), source)
    elif local.is_dir():
        dataset = load_hub_dataset(source)
    elif source.path.startswith(("http://", "https://")):
        raise VdrError(
            f"Dataset '{source.path}' is a URL: datasets are read from local files and folders or from Hub dataset "
            "ids. Download the file first and pass its path."
        )
    elif looks_like_local_path(source.path):
        raise VdrError(
            f"Dataset path '{source.path}' does not exist. Give a save_to_disk folder, parquet/JSON-lines "
            f"file(s), a Hub dataset id, or '{GENERATED_PAGES_ID}'."
        )
    else:
        dataset = load_hub_dataset(source)
    if query_column and query_column in dataset.column_names:
        check_queries(dataset[query_column], query_column, str(source), [f"row {i}" for i in range(len(dataset))])
    return dataset


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").exists() or (folder / "state.json").exists()


def _load_saved(folder: Path) -> Dataset | DatasetDict:
    try:
        return load_from_disk(str(folder))
    except Exception as error:  # a deleted .arrow file, a damaged dataset_info.json / state.json, ...
        raise VdrError(
            f"Dataset folder '{folder}' looks like a datasets.save_to_disk folder but cannot be loaded "
            f"({type(error).__name__}: {error}). It is damaged or incomplete: save it again with save_to_disk."
        ) from None


def _select_split(dataset: Dataset | DatasetDict, source: DatasetSpec) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    split = source.split or "train"
    if split not in dataset:
        raise VdrError(
            f"Dataset '{source.path}' has no split '{split}' (it has: {', '.join(dataset)}). "
            "Set the split argument to one of those."
        )
    return dataset[split]


def load_hub_dataset(source: DatasetSpec) -> Dataset:
    try:
        return load_dataset(source.path, source.config, split=source.split or "train")
    except Exception as error:  # datasets raises many types (hub, network, config, split errors)
        raise VdrError(
            f"Could not load dataset '{source.path}' (config={source.config}, split={source.split}): "
            f"{type(error).__name__}: {error}. Check the id, config and split, your network / HF_TOKEN for "
            "Hub datasets, or pass a local folder or file instead."
        ) from None


def _load_files(
    files: list[str],
    source: DatasetSpec,
    image_columns: list[str],
    image_root: str | None,
    optional_images: bool,
    query_column: str | None,
) -> Dataset:
    suffixes = {Path(f).suffix for f in files}
    builders = {FILE_BUILDERS.get(suffix) for suffix in suffixes}
    if None in builders or len(builders) != 1:
        raise VdrError(
            f"Cannot read '{source.path}': data files must all be .parquet or all .jsonl/.json, got "
            f"{', '.join(sorted(suffixes))}."
        )
    builder = builders.pop()
    # One file at a time, so that image paths resolve against each file's own folder and errors name the file.
    parts = [_load_file(builder, file, image_columns, image_root, optional_images, query_column) for file in files]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _load_file(
    builder: str,
    file: str,
    image_columns: list[str],
    image_root: str | None,
    optional_images: bool,
    query_column: str | None,
) -> Dataset:
    lines = json_lines(file) if builder == "json" else None
    if lines == []:
        raise VdrError(f"Data file '{file}' is empty: it holds no rows. Add rows or remove the file.")
    try:
        dataset = load_dataset(builder, data_files=[file], split="train")
    except Exception as error:  # arrow / json parse errors surface as many exception types
        raise VdrError(f"Cannot read data file '{file}' as {builder}: {type(error).__name__}: {error}") from None
    row_names = _row_names(lines, len(dataset))
    if query_column and query_column in dataset.column_names:
        check_queries(dataset[query_column], query_column, file, row_names)
    if optional_images:
        image_columns = [column for column in image_columns if column in dataset.column_names]
    root = Path(image_root) if image_root else Path(file).parent
    # Hard-negative columns are page images by convention, whether or not this run uses them.
    negatives = [c for c in page_like_negative_columns(dataset) if c not in image_columns]
    return resolve_image_paths(dataset, [*image_columns, *negatives], root, file, row_names)


def json_lines(file: str) -> list[int]:
    """The numbers of a JSON-lines file's non-blank lines, one row each, after checking that each is UTF-8 text
    holding one JSON object: a bad line is named here, which the ``datasets`` JSON reader does not do."""
    numbers = []
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise not_utf8(f"{file}: line {number}", error) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise VdrError(
                    f"{file}: line {number} is not valid JSON ({error.msg} at column {error.colno}). Fix or remove "
                    "that line: each line holds one JSON object."
                ) from None
            if not isinstance(row, dict):
                raise VdrError(f"{file}: line {number} holds {type(row).__name__}, not a JSON object of columns.")
            numbers.append(number)
    return numbers


def _row_names(lines: list[int] | None, num_rows: int) -> list[str]:
    """How to name each row in an error: its line for a JSON-lines file (``lines``: its non-blank lines, one row
    each), else its 0-based row index."""
    if lines is not None and len(lines) == num_rows:
        return [f"line {number}" for number in lines]
    return [f"row {index}" for index in range(num_rows)]


def check_queries(queries: list[Any], column: str, where: str, row_names: list[str]) -> None:
    """Every query must be a non-empty string: a null or blank query would be encoded as an empty text."""
    for name, query in zip(row_names, queries):
        if not isinstance(query, str) or not query.strip():
            raise VdrError(
                f"{where}: {name}, column '{column}' should hold a non-empty query text, got {query!r}. Fix or "
                "remove that row."
            )


def resolve_image_paths(
    dataset: Dataset, image_columns: list[str], root: Path, where: str, row_names: list[str] | None = None
) -> Dataset:
    """Turn image-path string columns into ``Image`` features, failing clearly on a missing/unreadable file."""
    require_columns(dataset, image_columns, where)
    row_names = row_names or [f"row {index}" for index in range(len(dataset))]
    for column in image_columns:
        if isinstance(dataset.features[column], Image):
            continue
        paths = [_check_image(value, root, column, name, where) for name, value in zip(row_names, dataset[column])]
        dataset = dataset.remove_columns(column).add_column(column, paths).cast_column(column, Image())
    return dataset


def _check_image(value: Any, root: Path, column: str, row_name: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise VdrError(f"{where}: {row_name}, column '{column}' should hold an image file path, got {value!r}.")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise VdrError(
            f"{where}: {row_name}, column '{column}': image file '{path}' does not exist. Paths are relative to "
            f"'{root}'; set --image_root if they are relative to another folder."
        )
    try:
        with PILImage.open(path) as image:
            image.verify()
    except Exception as error:
        raise VdrError(
            f"{where}: {row_name}, column '{column}': image file '{path}' cannot be read as an image "
            f"({type(error).__name__}: {error}). Replace or remove that row."
        ) from None
    return str(path)


def is_negative_column(name: str) -> bool:
    """Whether a column named like a negative holds the negative itself, not its text (``negative_0_text``)."""
    return name.startswith("negative") and not name.endswith(PAGE_TEXT_SUFFIX)


def page_like_negative_columns(dataset: Dataset) -> list[str]:
    """Columns named ``negative*`` that can hold pages (images or path strings): a numeric ``negative_score``
    column is not a page."""
    return [name for name in dataset.column_names if is_negative_column(name) and _holds_pages(dataset, name)]


def _holds_pages(dataset: Dataset, column: str) -> bool:
    feature = dataset.features[column]
    return isinstance(feature, Image) or getattr(feature, "dtype", None) in ("string", "large_string")


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

    def build(staging: Path) -> None:
        logger.info("Generating %d rows of document pages in %s (once; later runs reuse them)", num_rows, target)
        dataset = Dataset.from_list(generate_rows(num_rows, seed=seed))
        for column in dataset.column_names:
            if column != "query" and not column.endswith(PAGE_TEXT_SUFFIX):  # texts stay strings
                dataset = dataset.cast_column(column, Image())
        dataset.save_to_disk(str(staging))

    return build_once(target, "state.json", build, lambda folder: loads_whole(folder, num_rows))


def loads_whole(folder: Path, num_rows: int) -> bool:
    """Whether a cached save_to_disk folder still loads, whole (a deleted or truncated file fails here)."""
    try:
        dataset = load_from_disk(str(folder))
        return len(dataset) == num_rows and dataset.data.num_rows == num_rows
    except Exception:
        return False


def negative_columns_of(dataset: Dataset, configured: list[str] | None) -> list[str]:
    """The configured hard-negative columns, or every column whose name starts with 'negative'."""
    if configured is not None:
        return list(configured)
    return page_like_negative_columns(dataset)


def training_columns(dataset: Dataset, query: str, positive: str, negatives: list[str], where: str) -> Dataset:
    """Keep only (query, positive, *negatives), in that order: every other column would be fed to the model."""
    columns = [query, positive, *negatives]
    require_columns(dataset, columns, where)
    return dataset.select_columns(columns)


@contextmanager
def caching_outside_the_data_folder() -> Iterator[None]:
    """``datasets`` writes the index files of a split beside the dataset's own files, i.e. into the user's data
    folder (which may be read-only or shared). With caching off it uses a temporary folder instead; the split
    itself is the same. (``keep_in_memory=True`` is refused by ``train_test_split`` for on-disk datasets.)"""
    was_enabled = datasets.is_caching_enabled()
    datasets.disable_caching()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_caching()


def carve_eval_split(dataset: Dataset, size: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold ``size`` rows (>= 1) or a ``size`` fraction (< 1) of ``dataset`` out for evaluation."""
    test_size: int | float = int(size) if size >= 1 else size
    if (isinstance(test_size, int) and test_size >= len(dataset)) or test_size <= 0:
        raise VdrError(f"eval_split_size={size} leaves no training rows out of {len(dataset)}. Use a smaller value.")
    try:
        with caching_outside_the_data_folder():
            split = dataset.train_test_split(test_size=test_size, seed=seed, shuffle=True)
    except ValueError as error:  # e.g. a fraction that rounds to no rows on one side
        raise VdrError(f"eval_split_size={size} cannot split {len(dataset)} rows: {error}") from None
    return split["train"], split["test"]


def load_training_data(args: DataArguments, seed: int) -> tuple[Dataset, Dataset | None]:
    """The training rows (only the columns the loss reads) and the evaluation rows (all columns), if any."""
    eval_image_columns = [args.positive_column, *(args.eval_negative_columns or [])]
    # The training source holds the evaluation's negatives only when the eval split is carved from it.
    carved = not args.eval_dataset and args.eval_split_size
    image_columns = [
        *dict.fromkeys([args.positive_column, *args.negative_columns, *(eval_image_columns if carved else [])])
    ]
    train_source = DatasetSpec(args.train_dataset, args.train_dataset_config, args.train_split)
    train_rows = load_rows(train_source, image_columns, args, query_column=args.query_column)
    eval_rows = None
    if args.eval_dataset:
        eval_source = DatasetSpec(args.eval_dataset, args.eval_dataset_config, args.eval_split)
        eval_rows = load_rows(eval_source, eval_image_columns, args, query_column=args.query_column)
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
