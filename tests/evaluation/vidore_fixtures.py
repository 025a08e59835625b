"""Small local copies of the ViDoRe datasets in their Hub layouts, from generated pages: one folder per dataset, as
its Hub repository holds it (a README.md whose YAML ``configs:`` block names each config's parquet files), which
``datasets.load_dataset(folder, config, split="test")`` reads exactly as the Hub repository.

- v1 (``mteb/*_beir``): configs corpus (corpus-id int, image), queries (query-id int, query), qrels (query-id,
  corpus-id, score float); English only.
- v2 (``vidore/*_v2``): the same id columns, and a ``language`` column on the queries (english, french, ...).
- v3 (``vidore/vidore_v3_*``): snake_case corpus_id / query_id, OCR ``markdown`` beside each page, a ``language``
  column, graded qrels (2: the page that answers, 1: a hard negative that partly does).
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, Image

from vdr.evaluation.benchmarks import V2_LANGUAGES, V3_LANGUAGES
from vdr.offline.generated_pages import generate_rows

#: Each query is written once per language (ids 100 apart), as the multilingual sets hold translations.
LANGUAGES = {"vidore-v1": [None], "vidore-v2": list(V2_LANGUAGES), "vidore-v3": list(V3_LANGUAGES)}


def write_hub_folder(folder: Path, parts: dict[str, Dataset]) -> Path:
    """``parts`` (config name -> its test split) as a Hub dataset repository."""
    lines = ["---", "configs:"]
    for config, dataset in parts.items():
        (folder / config).mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(folder / config / "test-00000-of-00001.parquet"))
        lines += [f"- config_name: {config}", "  data_files:", "  - split: test", f"    path: {config}/test-*"]
    (folder / "README.md").write_text("\n".join([*lines, "---", ""]))
    return folder


def write_vidore_fixture(version: str, folder: Path, num_rows: int = 6, seed: int = 5) -> dict:
    """One dataset of ``version`` in its Hub layout; returns what was written (for the tests to compare with)."""
    rows = generate_rows(num_rows, seed=seed, num_negatives=1)
    snake = version == "vidore-v3"
    corpus_id, query_id = ("corpus_id", "query_id") if snake else ("corpus-id", "query-id")
    pages = [row[column] for column in ("image", "negative_0") for row in rows]
    texts = [row[f"{column}_text"] for column in ("image", "negative_0") for row in rows]
    corpus = {corpus_id: list(range(len(pages))), "image": pages}
    if snake:
        corpus |= {"doc_id": [f"doc-{i // 3}" for i in range(len(pages))], "markdown": texts}
        corpus["page_number_in_doc"] = [i % 3 for i in range(len(pages))]
    queries: dict[str, list] = {query_id: [], "query": []}
    qrels: dict[str, list] = {query_id: [], corpus_id: [], "score": []}
    if version != "vidore-v1":
        queries["language"] = []
    for number, language in enumerate(LANGUAGES[version]):
        for i, row in enumerate(rows):
            qid = number * 100 + i
            queries[query_id].append(qid)
            queries["query"].append(row["query"] if number == 0 else f"[{language}] {row['query']}")
            if language is not None:
                queries["language"].append(language)
            qrels[query_id].append(qid), qrels[corpus_id].append(i), qrels["score"].append(2 if snake else 1.0)
            if snake and i % 2 == 0:  # a graded v3 judgement: the hard negative partly answers
                qrels[query_id].append(qid), qrels[corpus_id].append(num_rows + i), qrels["score"].append(1)
    parts = {
        "corpus": Dataset.from_dict(corpus).cast_column("image", Image()),
        "queries": Dataset.from_dict(queries),
        "qrels": Dataset.from_dict(qrels),
    }
    write_hub_folder(folder, parts)
    return {"corpus": corpus, "queries": queries, "qrels": qrels, "texts": texts}
