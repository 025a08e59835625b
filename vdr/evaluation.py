"""Evaluation: retrieval metrics for a model on a ``RetrievalData`` set, at every Matryoshka dimension.

Two paths, one set of numbers:
- ``build_ir_evaluator`` gives Sentence Transformers' ``InformationRetrievalEvaluator``, which the trainer
  calls during training (NDCG@10 in the logs, the model card and checkpoint selection);
- ``evaluate_dims`` encodes the queries and the corpus once, at full dimension, and scores every
  Matryoshka dimension by truncating those embeddings: the reference recipe instead re-encodes the whole
  corpus once per dimension. The metrics agree with the evaluator's (tests check it to 1e-6).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from vdr.data import RetrievalData
from vdr.errors import VdrError
from vdr.metrics import DEFAULT_METRICS, retrieval_metrics
from vdr.model import embedding_dimension

logger = logging.getLogger(__name__)


def build_ir_evaluator(
    data: RetrievalData, name: str, batch_size: int, truncate_dim: int | None = None, show_progress_bar: bool = True
) -> InformationRetrievalEvaluator:
    """Sentence Transformers' retrieval evaluator over ``data`` (binary relevance: grade > 0)."""
    return InformationRetrievalEvaluator(
        queries=data.queries,
        corpus=data.corpus,
        relevant_docs=data.relevant_docs(),
        batch_size=batch_size,
        truncate_dim=truncate_dim,
        show_progress_bar=show_progress_bar,
        name=name,
    )


def encode_full_dim(
    model: SentenceTransformer, inputs: Sequence[Any], kind: str, batch_size: int, show_progress_bar: bool = True
) -> torch.Tensor:
    """Encode queries (``kind='query'``) or documents at the model's full dimension, as float32 on CPU."""
    encode = model.encode_query if kind == "query" else model.encode_document
    saved_truncate_dim, model.truncate_dim = model.truncate_dim, None  # a saved default would truncate
    try:
        embeddings = encode(
            list(inputs), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar
        )
    finally:
        model.truncate_dim = saved_truncate_dim
    return embeddings.float().cpu()


def check_dims(dims: Sequence[int], full_dim: int) -> list[int]:
    """Validate evaluation dims against the embedding size, largest first, without duplicates."""
    too_large = [dim for dim in dims if dim > full_dim or dim < 1]
    if too_large:
        raise VdrError(
            f"Cannot evaluate at dimension(s) {too_large}: the model's embeddings have {full_dim} dimensions. "
            f"Choose truncate dims between 1 and {full_dim}."
        )
    return sorted(set(dims), reverse=True)


def score_dims(
    model: SentenceTransformer,
    query_embeddings: torch.Tensor,
    corpus_embeddings: torch.Tensor,
    data: RetrievalData,
    dims: Sequence[int],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[int, dict[str, float]]:
    """Metrics at each dim from full-dimension embeddings, truncated (and re-normalised by cosine)."""
    qrels = qrels_by_position(data)
    tie_break = corpus_tie_break(list(data.corpus))
    results = {}
    for dim in check_dims(dims, query_embeddings.shape[1]):
        scores = model.similarity(query_embeddings[:, :dim], corpus_embeddings[:, :dim])
        results[dim] = retrieval_metrics(scores, qrels, metrics=metrics, tie_break=tie_break)
    return results


def evaluate_dims(
    model: SentenceTransformer,
    data: RetrievalData,
    dims: Sequence[int] | None = None,
    batch_size: int = 16,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[int, dict[str, float]]:
    """Encode ``data`` once and return ``{dim: {metric: value}}`` for every dim (default: full only)."""
    dims = check_dims(dims or [embedding_dimension(model)], embedding_dimension(model))
    query_embeddings = encode_full_dim(model, list(data.queries.values()), "query", batch_size)
    corpus_embeddings = encode_full_dim(model, list(data.corpus.values()), "document", batch_size)
    return score_dims(model, query_embeddings, corpus_embeddings, data, dims, metrics)


def qrels_by_position(data: RetrievalData) -> list[dict[int, float]]:
    """Relevance judgements keyed by corpus position, one dict per query in ``data.queries`` order."""
    position = {cid: index for index, cid in enumerate(data.corpus)}
    return [{position[cid]: grade for cid, grade in data.qrels.get(qid, {}).items()} for qid in data.queries]


def corpus_tie_break(corpus_ids: list[Any]) -> torch.Tensor:
    """Rank of each corpus id in ascending id order: equal scores go to the smaller id, as in Sentence
    Transformers' evaluator, so both report the same numbers even on ties."""
    order = sorted(range(len(corpus_ids)), key=corpus_ids.__getitem__)
    ranks = torch.empty(len(corpus_ids), dtype=torch.long)
    ranks[torch.tensor(order, dtype=torch.long)] = torch.arange(len(corpus_ids))
    return ranks


def format_dims_table(results: dict[str, dict[int, dict[str, float]]], metric: str = "ndcg@10") -> str:
    """A small text table: one row per dim, one column per model (e.g. base / finetuned)."""
    names = list(results)
    dims = sorted({dim for by_dim in results.values() for dim in by_dim}, reverse=True)
    lines = [f"{'dim':>6}  " + "  ".join(f"{name:>10}" for name in names)]
    for dim in dims:
        cells = [f"{results[name][dim][metric]:>10.4f}" if dim in results[name] else f"{'-':>10}" for name in names]
        lines.append(f"{dim:>6}  " + "  ".join(cells))
    return f"{metric}\n" + "\n".join(lines)
