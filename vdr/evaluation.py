"""The training run's retrieval evaluation, and scoring every Matryoshka dimension from one encoding.

- ``build_training_evaluation`` / ``build_ir_evaluator`` give Sentence Transformers' ``InformationRetrievalEvaluator``,
  which the trainer calls during training (NDCG@10 in the logs, the model card and checkpoint selection);
- ``evaluate_dims`` encodes the queries and the corpus once, at full dimension, and ``score_dims`` scores every
  dimension by slicing those embeddings and handing them to the same evaluator (the reference recipe re-encodes the
  corpus once per dimension). Its ranking (ties to the smaller corpus id) and metric definitions are used as they
  are; only NDCG on graded relevance judgements, which it does not support, comes from trec_eval (``pytrec_eval``).
- ``score_matrix_metrics`` scores any ranking given as a query x page score matrix (a reranker's) through the
  same evaluator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from statistics import fmean
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.evaluation import information_retrieval as st_information_retrieval
from tqdm.auto import tqdm

from vdr.config import DataArguments
from vdr.data import RetrievalData, negative_columns_of, retrieval_from_rows, training_columns
from vdr.errors import VdrError
from vdr.model import check_dims, embedding_dimension, full_dimension
from vdr.preprocessing import page_resizer

logger = logging.getLogger(__name__)

#: What evaluate_vdr.py and metrics.json report, named as the evaluator names them.
DEFAULT_METRICS: tuple[str, ...] = (
    "ndcg@1",
    "ndcg@5",
    "ndcg@10",
    "mrr@10",
    "map@100",
    "recall@1",
    "recall@5",
    "recall@10",
    "recall@100",
)
#: The evaluator's argument that sets the cut-offs of each metric family.
CUTOFF_ARGUMENTS = {
    "ndcg": "ndcg_at_k",
    "mrr": "mrr_at_k",
    "map": "map_at_k",
    "recall": "precision_recall_at_k",
    "precision": "precision_recall_at_k",
    "accuracy": "accuracy_at_k",
}

Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainingEvaluation:
    """What train_vdr.py evaluates with: the retrieval set (pages resized once), the trainer's evaluator, and
    the evaluation rows in the loss's column order (for the trainer's eval loss)."""

    data: RetrievalData
    evaluator: InformationRetrievalEvaluator
    loss_dataset: Any
    negative_columns: list[str]


def build_training_evaluation(
    model: SentenceTransformer, eval_rows: Any, data_args: DataArguments, name: str, batch_size: int
) -> TrainingEvaluation:
    """The evaluation set of a training run: query ``i`` against the positives and every negative column."""
    negatives = negative_columns_of(eval_rows, data_args.eval_negative_columns)
    columns = (data_args.query_column, data_args.positive_column, negatives, "Evaluation data")
    data = presize_corpus(model, retrieval_from_rows(eval_rows, *columns))  # once per run, not per evaluation
    return TrainingEvaluation(
        data=data,
        evaluator=build_ir_evaluator(data, name, batch_size),
        loss_dataset=training_columns(eval_rows, *columns),
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


def encode_full_dim(
    model: SentenceTransformer, inputs: Sequence[Any], kind: str, batch_size: int, show_progress_bar: bool = True
) -> torch.Tensor:
    """Encode queries (``kind='query'``) or documents at the model's full dimension, as float32 on CPU."""
    encode = model.encode_query if kind == "query" else model.encode_document
    with full_dimension(model):
        embeddings = encode(
            list(inputs), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar
        )
    return embeddings.float().cpu()


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


def score_dims(
    model: SentenceTransformer,
    query_embeddings: torch.Tensor,
    corpus_embeddings: torch.Tensor,
    data: RetrievalData,
    dims: Sequence[int],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[int, dict[str, float]]:
    """Metrics at each dim from full-dimension embeddings, scored with the model's similarity (cosine for these
    models, which re-normalises the truncated vectors)."""
    dims = check_dims(dims, model, "Evaluation dims")
    return retrieval_scores(
        query_embeddings, corpus_embeddings, data, dims, model.similarity, model.similarity_fn_name, metrics
    )


def retrieval_scores(
    query_embeddings: torch.Tensor,
    corpus_embeddings: torch.Tensor,
    data: RetrievalData,
    dims: Sequence[int],
    similarity: Similarity,
    similarity_name: str = "cosine",
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[int, dict[str, float]]:
    """``{dim: {metric: value}}``: the first ``dim`` columns of the embeddings (rows in ``data.queries`` and
    ``data.corpus`` order) scored by Sentence Transformers' evaluator, and NDCG by trec_eval when ``data`` has
    graded judgements. Queries without a relevant page are left out, as the evaluator does."""
    cutoffs = metric_cutoffs(metrics)
    evaluator = PrecomputedEmbeddingsEvaluator(data, similarity, similarity_name, cutoffs)
    if not evaluator.queries_ids:
        raise VdrError("No query of the dataset has a relevant page (a qrels grade above 0): nothing to score.")
    rows = torch.tensor(evaluator.query_positions, dtype=torch.long)
    graded = has_graded_relevance(data)
    results = {}
    for dim in dims:
        queries, corpus = query_embeddings[rows, :dim], corpus_embeddings[:, :dim]
        values = evaluator.scores(queries, corpus)
        if graded:
            values |= graded_ndcg(similarity(queries, corpus), data, evaluator.queries_ids, cutoffs["ndcg_at_k"])
        results[dim] = {name: values[name] for name in metrics}
    return results


def score_matrix_metrics(
    scores: torch.Tensor, data: RetrievalData, metrics: Sequence[str] = DEFAULT_METRICS
) -> dict[str, float]:
    """``{metric: value}`` of a ``[len(data.queries), len(data.corpus)]`` score matrix (higher is better; rows and
    columns in ``data`` order) from any scorer (MaxSim, Hamming, BM25, ...), through ``retrieval_scores``: each
    query and page is "embedded" as its row / column index and the similarity looks its score up."""
    if tuple(scores.shape) != (len(data.queries), len(data.corpus)):
        expected = (len(data.queries), len(data.corpus))
        raise ValueError(f"scores are {tuple(scores.shape)}, not (queries, pages) = {expected}")
    scores = scores.double()
    rows, columns = (torch.arange(n).unsqueeze(1) for n in scores.shape)
    lookup: Similarity = lambda queries, pages: scores[queries[:, 0]][:, pages[:, 0]]  # noqa: E731
    return retrieval_scores(rows, columns, data, [1], lookup, "score", metrics)[1]


def metric_cutoffs(metrics: Sequence[str]) -> dict[str, list[int]]:
    """The evaluator's cut-off arguments for metric names such as ``ndcg@10`` (each family needs at least one)."""
    cutoffs: dict[str, set[int]] = {argument: set() for argument in CUTOFF_ARGUMENTS.values()}
    for name in metrics:
        family, _, k = name.partition("@")
        if family not in CUTOFF_ARGUMENTS or not k.isdigit() or int(k) < 1:
            raise ValueError(f"Unknown metric {name!r}: expected <{'|'.join(CUTOFF_ARGUMENTS)}>@<k>, e.g. 'ndcg@10'.")
        cutoffs[CUTOFF_ARGUMENTS[family]].add(int(k))
    return {argument: sorted(ks) or [1] for argument, ks in cutoffs.items()}


class PrecomputedEmbeddingsEvaluator(InformationRetrievalEvaluator):
    """Sentence Transformers' retrieval evaluator on embeddings computed beforehand. ``compute_all_metrics`` takes
    the corpus embeddings as an argument but always encodes the queries itself, through ``embed_inputs``: that is
    where the precomputed query embeddings come in."""

    def __init__(self, data: RetrievalData, similarity: Similarity, name: str, cutoffs: dict[str, list[int]]):
        super().__init__(
            queries=data.queries,
            corpus=data.corpus,
            relevant_docs=data.relevant_docs(),
            score_functions={name: similarity},
            write_csv=False,
            **cutoffs,
        )
        position = {qid: index for index, qid in enumerate(data.queries)}
        #: Row of each scored query (those with a relevant page) in ``data.queries`` order.
        self.query_positions = [position[qid] for qid in self.queries_ids]
        self._query_embeddings: torch.Tensor | None = None

    def scores(self, query_embeddings: torch.Tensor, corpus_embeddings: torch.Tensor) -> dict[str, float]:
        """Every metric, named like ``ndcg@10``, for the scored queries' embeddings against the corpus'."""
        self._query_embeddings = query_embeddings
        with _quiet(st_information_retrieval.logger):  # it logs every figure at INFO, once per call
            by_function = self.compute_all_metrics(model=None, corpus_embeddings=corpus_embeddings)
        (by_family,) = by_function.values()
        return {family.replace("@k", f"@{k}"): float(v) for family, by_k in by_family.items() for k, v in by_k.items()}

    def embed_inputs(self, model: Any, sentences: Any, encode_fn_name: str | None = None, **kwargs) -> torch.Tensor:
        if encode_fn_name != "query" or self._query_embeddings is None:
            raise RuntimeError("Corpus embeddings are passed to compute_all_metrics; only queries come from here.")
        return self._query_embeddings


@contextmanager
def _quiet(library_logger: logging.Logger) -> Iterator[None]:
    saved = library_logger.level
    library_logger.setLevel(max(saved, logging.WARNING))
    try:
        yield
    finally:
        library_logger.setLevel(saved)


def has_graded_relevance(data: RetrievalData) -> bool:
    """Whether the judgements use grades beyond relevant / not relevant (BEIR qrels may); trec_eval takes integer
    grades only, so a fractional one is an error."""
    grades = {grade for judged in data.qrels.values() for grade in judged.values()}
    fractional = sorted(grade for grade in grades if not float(grade).is_integer())
    if fractional:
        raise VdrError(
            f"The qrels hold fractional relevance grades ({', '.join(map(str, fractional[:3]))}); graded NDCG follows "
            "trec_eval, which takes integer grades. Round the qrels' score column to integers."
        )
    return any(grade > 1 for grade in grades)


def graded_ndcg(
    scores: torch.Tensor, data: RetrievalData, query_ids: Sequence[Any], cutoffs: Sequence[int]
) -> dict[str, float]:
    """NDCG@k with the grades as gains, as trec_eval's ``ndcg_cut`` computes it (BEIR and MTEB use it too), mean
    over ``query_ids`` (one score row each). trec_eval sees every page scoring at least a query's k-th best score:
    that is all it ranks within the cut-off, ties at the cut-off included."""
    import pytrec_eval

    corpus_ids = [str(cid) for cid in data.corpus]
    kth_best = scores.topk(min(max(cutoffs), scores.shape[1]), dim=1).values[:, -1:]
    run = {}
    for row, candidates in enumerate(scores >= kth_best):
        docs = candidates.nonzero().squeeze(1).tolist()
        run[str(query_ids[row])] = dict(zip((corpus_ids[doc] for doc in docs), scores[row, docs].tolist()))
    qrels = {str(qid): {str(cid): int(grade) for cid, grade in data.qrels[qid].items()} for qid in query_ids}
    measure = "ndcg_cut." + ",".join(map(str, cutoffs))
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {measure}).evaluate(run)
    return {f"ndcg@{k}": fmean(values[f"ndcg_cut_{k}"] for values in per_query.values()) for k in cutoffs}


def format_dims_table(results: dict[str, dict[int, dict[str, float]]], metric: str = "ndcg@10") -> str:
    """A small text table: one row per dim, one column per model (e.g. base / finetuned)."""
    names = list(results)
    dims = sorted({dim for by_dim in results.values() for dim in by_dim}, reverse=True)
    lines = [f"{'dim':>6}  " + "  ".join(f"{name:>10}" for name in names)]
    for dim in dims:
        cells = [f"{results[name][dim][metric]:>10.4f}" if dim in results[name] else f"{'-':>10}" for name in names]
        lines.append(f"{dim:>6}  " + "  ".join(cells))
    return f"{metric}\n" + "\n".join(lines)
