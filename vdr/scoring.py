"""Metrics from any (queries x pages) score matrix: Hamming, int8, MaxSim and BM25 scores all end here.

The metrics come from ``vdr.evaluation.score_matrix_metrics``: Sentence Transformers' ``InformationRetrievalEvaluator``
(and trec_eval's NDCG for graded judgements), as for every single-vector model. Records follow ``vdr.reporting``'s
format, with the extra keys ``kind``, ``precision`` and ``bytes_per_page`` that the storage-against-quality report
reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vdr.data import RetrievalData
from vdr.evaluation import DEFAULT_METRICS, score_matrix_metrics

SINGLE_VECTOR = "single_vector"
MULTI_VECTOR = "multi_vector"
TEXT = "text"


def metrics_from_scores(
    scores: torch.Tensor, data: RetrievalData, metrics: Sequence[str] = DEFAULT_METRICS, shuffle_ties: bool = False
) -> dict[str, float]:
    """Retrieval metrics of a ``[len(data.queries), len(data.corpus)]`` score matrix (higher is better).

    Ties go to the smaller corpus id, as in Sentence Transformers' evaluator. With ``shuffle_ties`` they go in a
    fixed random page order instead: scores with many ties (Hamming distances, int8 dot products, BM25) would
    otherwise favour the rows layout's positives, whose ids (0..n-1) come before every negative's. The pages are
    then renamed by their place in that order (the qrels with them), which is all the evaluator's tie-break sees.
    """
    if shuffle_ties:
        data = _renamed_in_random_order(data)
    return score_matrix_metrics(scores, data, metrics)


def _renamed_in_random_order(data: RetrievalData) -> RetrievalData:
    """``data`` with page ``i`` (corpus order, so the score columns still match) renamed to its place in a fixed
    random order; judged pages outside the corpus get names after all of those."""
    order = torch.randperm(len(data.corpus), generator=torch.Generator().manual_seed(0)).tolist()
    rename = dict(zip(data.corpus, order))
    for judged in data.qrels.values():
        for cid in judged:
            rename.setdefault(cid, len(rename))
    return RetrievalData(
        data.queries,
        {rename[cid]: page for cid, page in data.corpus.items()},
        {qid: {rename[cid]: grade for cid, grade in judged.items()} for qid, judged in data.qrels.items()},
        None if data.texts is None else {rename[cid]: text for cid, text in data.texts.items() if cid in rename},
    )


def num_scored_queries(data: RetrievalData) -> int:
    """The queries the metrics average over: those with a relevant page (every result record counts them so)."""
    relevant = data.relevant_docs()
    return sum(1 for qid in data.queries if relevant.get(qid))


def result_record(
    model: str, dataset: str, dim: int | None, data: RetrievalData, values: dict[str, float], **extra: Any
) -> dict[str, Any]:
    """One result record (see ``vdr.reporting``); ``extra`` adds kind, precision, bytes_per_page and the like."""
    return {
        "model": model,
        "dataset": dataset,
        "dim": dim,
        "num_queries": num_scored_queries(data),
        "num_documents": len(data.corpus),
        "metrics": values,
        **extra,
    }
