"""The report of a prepared dataset, and ``--validate``: the problems of any rows or BEIR dataset, by line.

Validation reads files line by line itself (rather than through ``vdr.data.sources``' loaders, which stop at the first
bad image) so that it can name every bad row, as a line number for JSON-lines files.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from vdr.data.retrieval_sets import BEIR_PARTS
from vdr.data.sources import is_negative_column
from vdr.errors import VdrError
from vdr.prepare.documents import PageRecord

ROW_FILES = ("train.jsonl", "eval.jsonl")


# Report --------------------------------------------------------------------------------------------------------


def distribution(values: Sequence[float]) -> dict[str, float]:
    """Min, 10th percentile, median, mean, 90th percentile and max (empty for no values)."""
    if not values:
        return {}
    ordered = sorted(values)

    def percentile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "min": ordered[0],
        "p10": percentile(0.1),
        "median": statistics.median(ordered),
        "mean": round(statistics.fmean(ordered), 2),
        "p90": percentile(0.9),
        "max": ordered[-1],
    }


def build_report(
    pages: Sequence[PageRecord],
    skipped: dict[str, str],
    queries: Sequence[dict],
    query_stats: dict,
    split: dict | None,
    datasets: dict[str, list[dict]],
    mining_stats: dict | None,
) -> dict[str, Any]:
    """Everything the steps produced, counted: documents, pages, queries, drops, split, negatives."""
    document_of = {page.image: page.document for page in pages}
    pages_per_document = Counter(page.document for page in pages)
    texts = Counter(row["query"].strip().lower() for row in queries)
    report: dict[str, Any] = {
        "files_found": len(pages_per_document) + len(skipped),
        "documents": len(pages_per_document),
        "pages": len(pages),
        "pages_per_document": distribution(list(pages_per_document.values())),
        "pages_with_text": sum(bool(page.text.strip()) for page in pages),
        "skipped_files": skipped,
        "page_width": distribution([page.width for page in pages]),
        "page_height": distribution([page.height for page in pages]),
        "page_megapixels": distribution([round(page.width * page.height / 1e6, 2) for page in pages]),
        "queries": len(queries),
        "queries_by_source": dict(Counter(row["query_source"] for row in queries)),
        "query_words": distribution([len(row["query"].split()) for row in queries]),
        "duplicate_queries": sum(count - 1 for count in texts.values() if count > 1),
        "duplicate_query_examples": [text for text, count in texts.most_common(5) if count > 1],
        "query_generation": query_stats,
    }
    if split is not None:
        report["split"] = {
            "seed": split["seed"],
            "train_documents": len(split["train"]),
            "eval_documents": len(split["eval"]),
        }
    for name, rows in datasets.items():
        negatives = [(row["document"], row[key]) for row in rows for key in row if is_negative_column(key)]
        same = sum(document == document_of.get(path) for document, path in negatives)
        report[name] = {
            "rows": len(rows),
            "negatives": len(negatives),
            "share_of_negatives_from_same_document": round(same / len(negatives), 4) if negatives else None,
        }
    if mining_stats is not None:
        report["mining"] = mining_stats
    return report


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable summary (report.json holds everything)."""
    lines = [
        f"Documents: {report['documents']} ({report['files_found']} files, {len(report['skipped_files'])} skipped)",
        f"Pages: {report['pages']} ({report['pages_with_text']} with a text layer); per document "
        f"{_short(report['pages_per_document'])}",
        f"Page size (px): width {_short(report['page_width'])}, height {_short(report['page_height'])}",
        f"Queries: {report['queries']} {report['queries_by_source']}; words {_short(report['query_words'])}; "
        f"{report['duplicate_queries']} duplicate(s)",
    ]
    generation = report.get("query_generation") or {}
    dropped = {
        k: v for k, v in generation.items() if k not in ("source", "pages", "kept", "extra", "filter_top_k") and v
    }
    if dropped:
        lines.append(f"Query drops and gaps: {dropped}")
    if "split" in report:
        split = report["split"]
        lines.append(
            f"Split (seed {split['seed']}): {split['train_documents']} train / {split['eval_documents']} eval documents"
        )
    for name in ("train", "eval"):
        if name in report:
            part = report[name]
            lines.append(
                f"{name}: {part['rows']} rows, {part['negatives']} negatives, "
                f"same-document share {part['share_of_negatives_from_same_document']}"
            )
    if report.get("mining", {}).get("rows_without_enough_negatives"):
        lines.append(f"Rows dropped for lack of negatives: {report['mining']['rows_without_enough_negatives']}")
    for file, reason in report["skipped_files"].items():
        lines.append(f"Skipped {file}: {reason}")
    return "\n".join(lines)


def _short(values: dict[str, float]) -> str:
    return f"min {values['min']} / median {values['median']} / max {values['max']}" if values else "-"


# Validation ----------------------------------------------------------------------------------------------------


def validate_dataset(path: str | Path) -> list[str]:
    """Every problem of a rows file, a BEIR folder, or an output folder of prepare_vdr_data.py, one line each."""
    path = Path(path)
    if path.is_file():
        return validate_rows_file(path)
    if not path.is_dir():
        raise VdrError(f"'{path}' does not exist. Give a JSON-lines or parquet rows file, or a dataset folder.")
    if _is_beir(path):
        return validate_beir(path)
    rows_files = [path / name for name in ROW_FILES if (path / name).is_file()]
    beir = [folder for folder in sorted(path.iterdir()) if folder.is_dir() and _is_beir(folder)]
    if not rows_files and not beir:
        raise VdrError(f"'{path}' holds no train.jsonl / eval.jsonl and no BEIR folder (corpus, queries, qrels).")
    return [problem for file in rows_files for problem in validate_rows_file(file)] + [
        problem for folder in beir for problem in validate_beir(folder)
    ]


def _is_beir(folder: Path) -> bool:
    return all((folder / f"{part}.jsonl").is_file() for part in BEIR_PARTS)


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) for each row: ``line N`` for JSON-lines, ``row N`` (from 0) for parquet."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for index, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"row {index}", row
        return
    if path.suffix not in (".jsonl", ".json"):
        raise VdrError(f"Cannot validate '{path}': give a .jsonl or .parquet file.")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as error:
                yield f"line {number}", f"not valid JSON ({error})"


class _ImageChecker:
    """Whether a page file exists and decodes; each file is checked once however many rows use it."""

    def __init__(self, root: Path):
        self.root = root
        self.seen: dict[Path, str | None] = {}

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            return f"not a file path ({value!r})"
        path = (self.root / value).resolve()
        if path not in self.seen:
            self.seen[path] = _image_problem(path)
        return self.seen[path]


def _image_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"missing image '{path}'"
    try:
        with Image.open(path) as image:
            image.load()  # decodes fully: a truncated file passes verify() yet fails here
    except Exception as error:  # PIL raises many types for a bad file
        return f"unreadable image '{path}' ({type(error).__name__})"
    return None


def validate_rows_file(path: Path) -> list[str]:
    """Rows of query, image, negative_*: missing or unreadable images, empty queries, duplicate rows, a negative
    equal to its positive, and a number of negatives that differs from most rows'."""
    checker = _ImageChecker(path.parent)
    problems: list[tuple[str, str]] = []
    first_seen: dict[str, str] = {}
    negative_counts: dict[str, int] = {}
    for where, row in _records(path):
        if not isinstance(row, dict):
            problems.append((where, row if isinstance(row, str) else "not a JSON object"))
            continue
        query = row.get("query")
        if not isinstance(query, str) or not query.strip():
            problems.append((where, "empty query"))
        negatives = {key: value for key, value in row.items() if is_negative_column(key) and value is not None}
        for column, value in {"image": row.get("image"), **negatives}.items():
            problem = checker.problem(value)
            if problem:
                problems.append((where, f"column '{column}': {problem}"))
        equal = [key for key, value in negatives.items() if value == row.get("image")]
        if equal:
            problems.append((where, f"negative equal to its positive ({', '.join(equal)})"))
        key = json.dumps([query, row.get("image"), sorted(negatives.items())])
        if key in first_seen:
            problems.append((where, f"duplicate of {first_seen[key]}"))
        first_seen.setdefault(key, where)
        negative_counts[where] = len(negatives)
    if negative_counts:
        usual = Counter(negative_counts.values()).most_common(1)[0][0]
        problems += [
            (w, f"{n} negatives where most rows have {usual}") for w, n in negative_counts.items() if n != usual
        ]
    return [f"{path}: {where}: {problem}" for where, problem in problems]


def validate_beir(folder: Path) -> list[str]:
    """A BEIR folder of JSON-lines files: corpus images, empty or repeated ids and queries, qrels naming unknown ids."""
    checker = _ImageChecker(folder)
    problems = []
    ids: dict[str, set] = {"corpus": set(), "queries": set()}
    for part, id_column in (("corpus", "corpus-id"), ("queries", "query-id")):
        file = folder / f"{part}.jsonl"
        for where, row in _records(file):
            if not isinstance(row, dict):
                problems.append(f"{file}: {where}: not a JSON object")
                continue
            identifier = row.get(id_column)
            if identifier in ids[part]:
                problems.append(f"{file}: {where}: repeated {id_column} {identifier!r}")
            ids[part].add(identifier)
            problem = checker.problem(row.get("image")) if part == "corpus" else None
            if part == "queries" and not str(row.get("query") or "").strip():
                problem = "empty query"
            if problem:
                problems.append(f"{file}: {where}: {problem}")
    qrels = folder / "qrels.jsonl"
    for where, row in _records(qrels):
        if not isinstance(row, dict):
            problems.append(f"{qrels}: {where}: not a JSON object")
            continue
        for column, part in (("query-id", "queries"), ("corpus-id", "corpus")):
            if row.get(column) not in ids[part]:
                problems.append(f"{qrels}: {where}: {column} {row.get(column)!r} is not in {part}.jsonl")
    return problems
