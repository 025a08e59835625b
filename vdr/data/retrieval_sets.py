"""Retrieval evaluation sets: queries, a corpus of pages and graded relevance judgements, from rows (the recipe's
layout: query i relevant to page i, every negative column in the corpus) or the BEIR layout (corpus / queries /
qrels), and each set's identity by content (what the embedding cache keys on)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, Image

from vdr.cache import build_once, default_cache_dir
from vdr.data.page_images import PageRef, open_page, page_refs
from vdr.data.sources import (
    FILE_BUILDERS,
    GENERATED_PAGES_VERSION,
    PAGE_TEXT_SUFFIX,
    DatasetSpec,
    SourceArguments,
    load_hub_dataset,
    load_rows,
    loads_whole,
    negative_columns_of,
    require_columns,
)
from vdr.errors import VdrError
from vdr.hub import looks_like_local_path
from vdr.offline.generated_pages import GENERATED_PAGES_ID

#: The generated pages in the BEIR layout (corpus / queries / qrels), for evaluate_vdr.py.
GENERATED_BEIR_ID = "generated:pages-beir"
BEIR_PARTS = ("corpus", "queries", "qrels")
# Column names used by BEIR-style datasets (ViDoRe v2 uses "corpus-id", ViDoRe v3 "corpus_id"), first match wins.
CORPUS_ID_COLUMNS = ("corpus-id", "corpus_id", "_id", "id", "doc-id", "doc_id")
QUERY_ID_COLUMNS = ("query-id", "query_id", "_id", "id", "qid")
QUERY_TEXT_COLUMNS = ("query", "text", "question")
CORPUS_IMAGE_COLUMNS = ("image", "page", "page_image")
SCORE_COLUMNS = ("score", "relevance", "grade", "label")
#: BEIR layout: the corpus column holding each page's text.
CORPUS_TEXT_COLUMNS = ("text", "markdown")


@dataclass
class RetrievalData:
    """A retrieval evaluation set: queries, a corpus of pages, and graded relevance judgements."""

    queries: dict[Any, Any]
    corpus: dict[Any, Any]
    qrels: dict[Any, dict[Any, float]]
    texts: dict[Any, str] | None = None  # each page's text (corpus id -> text), when the source has it

    def relevant_docs(self) -> dict[Any, set[Any]]:
        """Binary relevance (grade > 0), in the form ``InformationRetrievalEvaluator`` takes."""
        return {qid: {cid for cid, grade in docs.items() if grade > 0} for qid, docs in self.qrels.items()}

    def with_opened_pages(self) -> RetrievalData:
        """The same set with every page decoded to a PIL image (what Sentence Transformers' evaluator takes)."""
        corpus = {cid: open_page(page) for cid, page in self.corpus.items()}
        return RetrievalData(self.queries, corpus, self.qrels, self.texts)


def retrieval_from_rows(dataset: Dataset, query: str, positive: str, negatives: list[str], where: str) -> RetrievalData:
    """The reference recipe's evaluation set: corpus = positives plus every negative column.

    Row ``i``'s positive page has id ``i`` and its negative ``k`` has id ``n * (k + 1) + i`` (``n`` rows), as in
    the reference script; query ``i`` is relevant to page ``i`` only.
    """
    require_columns(dataset, [query, positive, *negatives], where)
    num_rows = len(dataset)
    queries = dict(enumerate(dataset[query]))
    corpus = dict(enumerate(page_refs(dataset, positive)))
    for k, column in enumerate(negatives):
        corpus.update({num_rows * (k + 1) + i: page for i, page in enumerate(page_refs(dataset, column))})
    qrels = {i: {i: 1.0} for i in range(num_rows)}
    texts = _row_page_texts(dataset, [positive, *negatives])
    return RetrievalData(queries=queries, corpus=corpus, qrels=qrels, texts=texts)


def _row_page_texts(dataset: Dataset, page_columns: list[str]) -> dict[int, str] | None:
    """Page texts in corpus-id order (as retrieval_from_rows numbers pages), when every page column has
    its text column."""
    text_columns = [f"{column}{PAGE_TEXT_SUFFIX}" for column in page_columns]
    if not all(column in dataset.column_names for column in text_columns):
        return None
    num_rows = len(dataset)
    return {num_rows * k + i: text for k, column in enumerate(text_columns) for i, text in enumerate(dataset[column])}


def load_retrieval_data(spec: DatasetSpec, options: SourceArguments | None = None) -> RetrievalData:
    """Load an evaluation set in either layout and check it (ids, empty corpus)."""
    options = options or SourceArguments()
    if spec.path == GENERATED_BEIR_ID:
        data = load_beir_folder(ensure_generated_beir(options), spec.name)
    elif _layout(spec) == "beir":
        data = load_beir_folder(Path(spec.path), spec.name) if Path(spec.path).is_dir() else _load_beir_hub(spec)
    else:
        image_columns = [spec.positive_column, *(spec.negative_columns or [])]
        rows = load_rows(spec, image_columns, options, query_column=spec.query_column)
        negatives = negative_columns_of(rows, list(spec.negative_columns) if spec.negative_columns else None)
        data = retrieval_from_rows(rows, spec.query_column, spec.positive_column, negatives, f"Dataset '{spec.name}'")
    check_retrieval_data(data, spec.name)
    return data


def ensure_generated_beir(options: SourceArguments) -> Path:
    """The generated pages written once in the BEIR layout (corpus / queries / qrels)."""
    rows = load_rows(DatasetSpec(GENERATED_PAGES_ID), ["image"], options)
    name = f"pages-beir-v{GENERATED_PAGES_VERSION}-n{options.num_generated_rows}-seed{options.generated_seed}"

    def is_valid(folder: Path) -> bool:
        return loads_whole(folder / "corpus", len(rows) * (1 + len(negative_columns_of(rows, None))))

    return build_once(
        default_cache_dir() / name, "qrels.jsonl", lambda staging: write_rows_as_beir(rows, staging), is_valid
    )


def _layout(spec: DatasetSpec) -> str:
    if spec.layout != "auto":
        return spec.layout
    folder = Path(spec.path)
    if folder.is_dir():
        return "beir" if is_beir_folder(folder) else "rows"
    if spec.path.startswith("generated:") or looks_like_local_path(spec.path):
        return "rows"
    try:
        from datasets import get_dataset_config_names

        return "beir" if set(BEIR_PARTS) <= set(get_dataset_config_names(spec.path)) else "rows"
    except Exception:
        return "rows"  # loading will report the real problem


def _beir_part_path(folder: Path, part: str) -> Path | None:
    for candidate in (folder / part, *(folder / f"{part}{suffix}" for suffix in FILE_BUILDERS)):
        if candidate.exists():
            return candidate
    return None


def is_beir_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a BEIR-layout set: a corpus, queries and qrels (folders or data files)."""
    return folder.is_dir() and all(_beir_part_path(folder, part) for part in BEIR_PARTS)


def load_beir_folder(folder: Path, name: str) -> RetrievalData:
    """A local BEIR-style set: ``corpus``, ``queries`` and ``qrels``, each a save_to_disk folder or a file."""
    parts, sources = {}, {}
    for part in BEIR_PARTS:
        path = _beir_part_path(folder, part)
        if path is None:
            raise VdrError(f"Dataset '{name}': '{folder}' has no {part} (a {part}/ folder or {part}.parquet/.jsonl).")
        # Corpus image paths are resolved (and checked) against the BEIR folder; no other part holds images.
        image_columns = list(CORPUS_IMAGE_COLUMNS) if part == "corpus" else []
        parts[part] = load_rows(
            DatasetSpec(str(path)), image_columns, SourceArguments(image_root=str(folder)), optional_images=True
        )
        sources[part] = f"Dataset '{name}', {path}"
    return beir_retrieval_data(parts["corpus"], parts["queries"], parts["qrels"], name, sources)


def _load_beir_hub(spec: DatasetSpec) -> RetrievalData:
    split = spec.split or "test"
    parts = {part: load_hub_dataset(DatasetSpec(spec.path, part, split)) for part in BEIR_PARTS}
    sources = {part: f"Dataset '{spec.name}', {spec.path} config '{part}' split '{split}'" for part in BEIR_PARTS}
    return beir_retrieval_data(parts["corpus"], parts["queries"], parts["qrels"], spec.name, sources)


def _pick(dataset: Dataset, candidates: tuple[str, ...], where: str) -> str:
    for column in candidates:
        if column in dataset.column_names:
            return column
    raise VdrError(
        f"{where} has none of the columns {', '.join(candidates)} (its columns are: {', '.join(dataset.column_names)})."
    )


def beir_retrieval_data(
    corpus: Dataset, queries: Dataset, qrels: Dataset, name: str, sources: dict[str, str] | None = None
) -> RetrievalData:
    """Build ``RetrievalData`` from BEIR-style corpus / queries / qrels tables (graded scores kept). ``sources``
    says, per part, where it came from (errors name it)."""
    where = {part: (sources or {}).get(part, f"Dataset '{name}' {part}") for part in BEIR_PARTS}
    corpus_ids = corpus[_pick(corpus, CORPUS_ID_COLUMNS, where["corpus"])]
    images = page_refs(corpus, _pick(corpus, CORPUS_IMAGE_COLUMNS, where["corpus"]))
    query_ids = queries[_pick(queries, QUERY_ID_COLUMNS, where["queries"])]
    texts = queries[_pick(queries, QUERY_TEXT_COLUMNS, where["queries"])]
    check_unique_ids(corpus_ids, "corpus", where["corpus"])
    check_unique_ids(query_ids, "queries", where["queries"])
    judged = {}
    qrel_query = qrels[_pick(qrels, QUERY_ID_COLUMNS, where["qrels"])]
    qrel_doc = qrels[_pick(qrels, CORPUS_ID_COLUMNS, where["qrels"])]
    score_column = next((c for c in SCORE_COLUMNS if c in qrels.column_names), None)
    scores = qrels[score_column] if score_column else [1.0] * len(qrels)
    for record, (qid, cid, score) in enumerate(zip(qrel_query, qrel_doc, scores), start=1):
        judged.setdefault(qid, {})[cid] = relevance_grade(score, where["qrels"], record, score_column)
    text_column = next((c for c in CORPUS_TEXT_COLUMNS if c in corpus.column_names), None)
    page_texts = dict(zip(corpus_ids, corpus[text_column])) if text_column else None
    return RetrievalData(dict(zip(query_ids, texts)), dict(zip(corpus_ids, images)), judged, page_texts)


def check_unique_ids(ids: list[Any], part: str, where: str) -> None:
    """Ids must be unique: with a repeated id the last record would silently replace the others (a page or a query
    swapped, and scores that look right)."""
    counts = Counter(ids)
    repeated = [value for value, count in counts.items() if count > 1]
    if not repeated:
        return
    first = repeated[0]
    records = [str(record) for record, value in enumerate(ids, start=1) if value == first]
    others = f" ({len(repeated) - 1} more id(s) repeat too)" if len(repeated) > 1 else ""
    raise VdrError(
        f"{where}: the id {first!r} appears {counts[first]} times in the {part} (records {', '.join(records)})"
        f"{others}. With repeated ids the last record silently replaces the others and the scores would be wrong: "
        "give each record a unique id."
    )


def relevance_grade(score: Any, where: str, record: int, column: str | None) -> float:
    """A qrels score as a number (0: not relevant; above 0: relevant, graded)."""
    try:
        return float(score)
    except (TypeError, ValueError):
        raise VdrError(
            f"{where}: record {record}, column '{column}': {score!r} is not a number. Relevance scores are numbers "
            "(0 for not relevant, 1 or more for relevant, higher for more relevant)."
        ) from None


def check_retrieval_data(data: RetrievalData, name: str) -> None:
    """Fail clearly on an empty corpus, or qrels naming ids that the queries or corpus do not have."""
    if not data.corpus:
        raise VdrError(f"Dataset '{name}' has an empty corpus: there is nothing to retrieve.")
    if not data.queries:
        raise VdrError(f"Dataset '{name}' has no queries.")
    unknown_queries = [qid for qid in data.qrels if qid not in data.queries]
    unknown_docs = sorted({cid for docs in data.qrels.values() for cid in docs if cid not in data.corpus}, key=str)
    for kind, unknown in (("query", unknown_queries), ("corpus", unknown_docs)):
        if unknown:
            raise VdrError(
                f"Dataset '{name}': the qrels name {len(unknown)} {kind} id(s) that are not in the {kind} table "
                f"(e.g. {', '.join(map(repr, unknown[:3]))}). Check that the qrels belong to this corpus and split."
            )


def write_rows_as_beir(rows: Dataset, folder: Path, query: str = "query", positive: str = "image") -> Path:
    """Write (query, page, negatives) rows in the BEIR layout: corpus/ (save_to_disk), queries.jsonl, qrels.jsonl.

    Corpus ids are strings (``page-<row>`` and ``page-<row>-neg<k>``), as BEIR sets use.
    """
    negatives = negative_columns_of(rows, None)
    corpus_ids, pages = [], []
    for column in [positive, *negatives]:
        suffix = "" if column == positive else f"-{column.replace('negative_', 'neg')}"
        corpus_ids += [f"page-{i}{suffix}" for i in range(len(rows))]
        pages += list(rows[column])
    folder.mkdir(parents=True, exist_ok=True)
    corpus = Dataset.from_dict({"corpus-id": corpus_ids, "image": pages}).cast_column("image", Image())
    page_texts = _row_page_texts(rows, [positive, *negatives])  # the pages' texts, in corpus order
    if page_texts is not None:
        corpus = corpus.add_column("text", list(page_texts.values()))
    corpus.save_to_disk(str(folder / "corpus"))
    Dataset.from_dict({"query-id": [f"q-{i}" for i in range(len(rows))], "query": rows[query]}).to_json(
        str(folder / "queries.jsonl")
    )
    qrels = {"query-id": [f"q-{i}" for i in range(len(rows))], "corpus-id": corpus_ids[: len(rows)]}
    Dataset.from_dict({**qrels, "score": [1] * len(rows)}).to_json(str(folder / "qrels.jsonl"))
    return folder


def dataset_fingerprint(data: RetrievalData) -> str:
    """Identify a dataset by what is encoded: query ids and texts, page ids and pages (their encoded bytes, the
    pixels of a decoded page, or the path, size and modification time of a page file)."""
    digest = hashlib.sha256()
    for qid, text in data.queries.items():
        digest.update(json.dumps(["query", qid, text], default=str).encode())
    for cid, page in data.corpus.items():
        digest.update(json.dumps(["page", cid], default=str).encode())
        digest.update(_page_identity(page))
    return digest.hexdigest()


def _page_identity(page: Any) -> bytes:
    if isinstance(page, PageRef) and page.data is not None:
        return hashlib.sha256(page.data).digest()
    path = page.path if isinstance(page, PageRef) else page if isinstance(page, str) else None
    if path is not None:
        stat = Path(path).stat()
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    if isinstance(page, Image.Image):
        return hashlib.sha256(f"{page.mode}{page.size}".encode() + page.tobytes()).digest()
    raise TypeError(f"Cannot fingerprint a page of type {type(page).__name__}")
