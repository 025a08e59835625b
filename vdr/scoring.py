"""Metrics from any (queries x pages) score matrix: Hamming, int8, MaxSim and BM25 scores all end here.

This is the one place those scores become the metric dict the rest of the project reports, so a change in how
metrics are computed (for example through Sentence Transformers' ``InformationRetrievalEvaluator``) is made here
once. Records follow ``vdr.reporting``'s format, with the extra keys ``kind``, ``precision`` and
``bytes_per_page`` that the storage-against-quality report reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vdr.data import RetrievalData
from vdr.evaluation import corpus_tie_break, qrels_by_position
from vdr.metrics import DEFAULT_METRICS, retrieval_metrics

SINGLE_VECTOR = "single_vector"
MULTI_VECTOR = "multi_vector"
TEXT = "text"


def metrics_from_scores(
    scores: torch.Tensor, data: RetrievalData, metrics: Sequence[str] = DEFAULT_METRICS, shuffle_ties: bool = False
) -> dict[str, float]:
    """Retrieval metrics of a ``[len(data.queries), len(data.corpus)]`` score matrix (higher is better).

    Ties go to the smaller corpus id, as in Sentence Transformers' evaluator. With ``shuffle_ties`` they go in a
    fixed random page order instead: scores with many ties (Hamming distances, int8 dot products, BM25) would
    otherwise favour the rows layout's positives, whose ids (0..n-1) come before every negative's.
    """
    if shuffle_ties:
        tie_break = torch.randperm(scores.shape[1], generator=torch.Generator().manual_seed(0))
    else:
        tie_break = corpus_tie_break(list(data.corpus))
    return retrieval_metrics(scores.double(), qrels_by_position(data), metrics=metrics, tie_break=tie_break)


def result_record(
    model: str, dataset: str, dim: int | None, data: RetrievalData, values: dict[str, float], **extra: Any
) -> dict[str, Any]:
    """One result record (see ``vdr.reporting``); ``extra`` adds kind, precision, bytes_per_page and the like."""
    return {
        "model": model,
        "dataset": dataset,
        "dim": dim,
        "num_queries": int(values["num_queries"]),
        "num_documents": len(data.corpus),
        "metrics": {k: v for k, v in values.items() if k not in ("num_queries", "num_queries_without_relevant")},
        **extra,
    }
