"""The split by document, made before mining on purpose: each side's negatives are mined from that side's pages only,
so no evaluation page ever reaches training, not even as a negative. The evaluation documents' pages also
become a BEIR-layout evaluation set (``eval-beir/``: every page of those documents as the corpus)."""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

from vdr.errors import VdrError
from vdr.prepare.documents import PageRecord
from vdr.prepare.output_files import BEIR_FOLDER, SPLIT_FILE, write_jsonl

logger = logging.getLogger(__name__)


def split_documents(
    documents: Sequence[str], with_queries: set[str], eval_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Hold ``eval_fraction`` (or, if >= 1, that many) of the documents that have queries out for evaluation.

    The shuffle is seeded, so the same documents and seed give the same split. Documents without queries (scans
    when queries come from the text layer, say) go to the training side, where their pages can still be negatives.
    """
    candidates = sorted(with_queries)
    random.Random(seed).shuffle(candidates)
    wanted = int(eval_fraction) if eval_fraction >= 1 else round(eval_fraction * len(candidates))
    if len(candidates) < 2 and eval_fraction > 0:
        logger.warning("Only %d document with queries: no evaluation set can be held out.", len(candidates))
    # Both sides keep at least one document with queries whenever an evaluation set was asked for.
    num_eval = min(max(wanted, 1 if eval_fraction > 0 else 0), max(len(candidates) - 1, 0))
    evaluation = sorted(candidates[:num_eval])
    return sorted(set(documents) - set(evaluation)), evaluation


def write_split(output_dir: Path, train: list[str], evaluation: list[str], seed: int) -> None:
    (output_dir / SPLIT_FILE).write_text(json.dumps({"seed": seed, "train": train, "eval": evaluation}, indent=2))


def read_split(output_dir: Path) -> dict[str, list[str]]:
    path = output_dir / SPLIT_FILE
    if not path.is_file():
        raise VdrError(f"'{path}' does not exist: run the split step first (--steps split).")
    return json.loads(path.read_text())


def write_eval_beir(output_dir: Path, pages: Sequence[PageRecord], queries: Sequence[dict]) -> Path:
    """The evaluation set in the BEIR layout: every page of the evaluation documents (with its text layer, which a
    text baseline such as BM25 reads), its queries, binary qrels."""
    folder = output_dir / BEIR_FOLDER
    to_folder = os.path.relpath(output_dir, folder)
    corpus = [{"corpus-id": page.image, "image": f"{to_folder}/{page.image}", "text": page.text} for page in pages]
    query_ids = {text: f"q{index}" for index, text in enumerate(dict.fromkeys(row["query"] for row in queries))}
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", ({"query-id": qid, "query": text} for text, qid in query_ids.items()))
    # A query text written for two pages is relevant to both (mine_hard_negatives treats it the same way).
    qrels = {(query_ids[row["query"]], row["image"]) for row in queries}
    write_jsonl(folder / "qrels.jsonl", ({"query-id": q, "corpus-id": c, "score": 1} for q, c in sorted(qrels)))
    return folder
