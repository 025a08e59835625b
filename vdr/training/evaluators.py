"""What a training run evaluates with, before, during and after training.

The held-out rows become a retrieval set (query ``i`` against the positives and every negative column, pages
resized once per run), scored by Sentence Transformers' evaluators: ``InformationRetrievalEvaluator`` for the
embedding model (NDCG@10 in the logs, the model card and checkpoint selection), its multi-vector counterpart, and
``CrossEncoderRerankingEvaluator`` for the reranker. Before and after training every Matryoshka dim is scored from
one encoding of the corpus (the reference recipe re-encodes it once per dim)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from datasets import Dataset
from sentence_transformers import MultiVectorEncoder, SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder
from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
from sentence_transformers.multi_vector_encoder.evaluation import MultiVectorInformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from tqdm.auto import tqdm

from vdr.cache import TensorCache
from vdr.data.page_images import page_resizer
from vdr.data.retrieval_sets import RetrievalData, retrieval_from_rows
from vdr.data.sources import negative_columns_of, training_columns
from vdr.evaluation.encoding import EncodingSetup, ResizedPageCache, embed_dataset, encode_full_dim
from vdr.evaluation.maxsim import maxsim_scores, token_dimension
from vdr.evaluation.metrics import DEFAULT_METRICS, metrics_from_scores, score_dims
from vdr.models.embedder import check_dims, embedding_dimension
from vdr.training.arguments import DataArguments

logger = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """A training run's evaluation data: the held-out rows as a retrieval set (query ``i`` against the positives
    and every negative column, pages resized once per run, not at each evaluation), and the same rows in the
    loss's column order (for the trainer's eval loss)."""

    data: RetrievalData
    loss_rows: Dataset
    negative_columns: list[str]


def build_eval_set(model: Any, eval_rows: Dataset, data_args: DataArguments) -> EvalSet:
    """The evaluation set of a training run (any Sentence Transformers model: the pages are resized as its
    processor would)."""
    negatives = negative_columns_of(eval_rows, data_args.eval_negative_columns)
    columns = (data_args.query_column, data_args.positive_column, negatives, "Evaluation data")
    return EvalSet(
        data=presize_corpus(model, retrieval_from_rows(eval_rows, *columns)),
        loss_rows=training_columns(eval_rows, *columns),
        negative_columns=negatives,
    )


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


def presize_corpus(model: SentenceTransformer, data: RetrievalData) -> RetrievalData:
    """Decode and resize every page once, as the model's processor would, and keep the results: the trainer
    calls its evaluator at every eval step, which then skips that work. The embeddings are unchanged. Memory:
    the resized pages (about 1 MB each at 600*600 pixels). One thread: two were no faster on 2 CPU cores
    (benchmarks/bench_evaluate.py)."""
    _, resize = page_resizer(model)
    pages = tqdm(data.corpus.values(), total=len(data.corpus), desc="Resizing pages", unit="page")
    return replace(data, corpus=dict(zip(data.corpus, map(resize, pages))))  # queries, qrels and page texts kept


def evaluate_dims(
    model: SentenceTransformer,
    data: RetrievalData,
    dims: Sequence[int] | None = None,
    batch_size: int = 16,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[int, dict[str, float]]:
    """Encode ``data`` once and return ``{dim: {metric: value}}`` for every dim (default: full only)."""
    dims = check_dims(dims or [embedding_dimension(model)], model, "Evaluation dims")
    queries = encode_full_dim(model, list(data.queries.values()), "query", batch_size)
    corpus = encode_full_dim(model, list(data.corpus.values()), "document", batch_size)
    return score_dims(model, queries, corpus, data, dims, metrics)


def format_dims_table(results: dict[str, dict[int, dict[str, float]]], metric: str = "ndcg@10") -> str:
    """A small text table: one row per dim, one column per model (e.g. base / finetuned)."""
    names = list(results)
    dims = sorted({dim for by_dim in results.values() for dim in by_dim}, reverse=True)
    lines = [f"{'dim':>6}  " + "  ".join(f"{name:>10}" for name in names)]
    for dim in dims:
        cells = [f"{results[name][dim][metric]:>10.4f}" if dim in results[name] else f"{'-':>10}" for name in names]
        lines.append(f"{dim:>6}  " + "  ".join(cells))
    return f"{metric}\n" + "\n".join(lines)


def build_multi_vector_evaluator(
    data: RetrievalData, name: str, batch_size: int
) -> MultiVectorInformationRetrievalEvaluator:
    """The trainer's retrieval evaluator (MaxSim; no truncate_dim: token vectors have no Matryoshka dims)."""
    return MultiVectorInformationRetrievalEvaluator(
        queries=data.queries,
        corpus=data.corpus,
        relevant_docs=data.relevant_docs(),
        batch_size=batch_size,
        show_progress_bar=True,
        name=name,
    )


def evaluate_multi_vector(model: MultiVectorEncoder, data: RetrievalData, batch_size: int) -> dict[int, dict]:
    """``{token dim: metrics}`` of a multi-vector model on ``data`` (the before / after figures), encoded once."""
    setup = EncodingSetup(batch_size, ResizedPageCache(budget_bytes=0), TensorCache(None))
    embeddings = embed_dataset(model, "eval", data, setup, model_key={})
    scores = maxsim_scores(embeddings.queries, embeddings.corpus)
    return {token_dimension(embeddings): metrics_from_scores(scores, data)}


def build_rerank_evaluator(eval_set: EvalSet, name: str, batch_size: int) -> CrossEncoderRerankingEvaluator:
    """Sentence Transformers' ``CrossEncoderRerankingEvaluator`` over each evaluation row's positive and every
    negative column (the embedding scripts' evaluation pages, reranked per query instead of retrieved)."""
    samples = rerank_samples(eval_set.data, num_negatives=len(eval_set.negative_columns))
    return CrossEncoderRerankingEvaluator(samples=samples, name=name, batch_size=batch_size)


def evaluate_reranker(evaluator: CrossEncoderRerankingEvaluator, model: CrossEncoder) -> dict[str, float]:
    """NDCG@10, MRR@10 and MAP of reranking, without the evaluator's name prefix."""
    prefix = f"{evaluator.name}_" if evaluator.name else ""
    scores = evaluator(model)
    return {name.removeprefix(prefix): float(value) for name, value in scores.items() if "base_" not in name}


def rerank_samples(data: RetrievalData, num_negatives: int) -> list[dict[str, Any]]:
    """One evaluator sample per row: its query, its positive, its own negatives (ids as ``retrieval_from_rows``)."""
    num_rows = len(data.queries)
    return [
        {
            "query": data.queries[row],
            "positive": [data.corpus[row]],
            "negative": [data.corpus[num_rows * (k + 1) + row] for k in range(num_negatives)],
        }
        for row in range(num_rows)
    ]
