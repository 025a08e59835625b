"""Retrieval metrics, one way for every scorer: Sentence Transformers' ``InformationRetrievalEvaluator`` on embeddings
or on any (queries x pages) score matrix (MaxSim, Hamming, int8, BM25, a reranker's), and trec_eval's NDCG when
the judgements are graded.

- ``score_dims`` scores every dimension by slicing full-dimension embeddings and handing them to the evaluator;
  its ranking (ties to the smaller corpus id) and metric definitions are used as they are. Only NDCG on graded
  relevance judgements, which it does not support, comes from trec_eval (``pytrec_eval``).
- ``score_matrix_metrics`` / ``metrics_from_scores`` score a ranking given as a score matrix through the same
  evaluator.
- ``result_record`` is the one record format of evaluate_vdr.py's results (see ``vdr.evaluation.report``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.evaluation import information_retrieval as st_information_retrieval

from vdr.data.retrieval_sets import RetrievalData
from vdr.errors import VdrError
from vdr.models.embedder import check_dims

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


@dataclass
class ModelScores:
    """What scoring one model on every dataset gives evaluate_vdr.py: its result records, its storage-against-quality
    rows, what results.json says about it, and (for a reranker to start from) its query x page scores."""

    records: list[dict[str, Any]] = field(default_factory=list)  # the main results: one per dataset x dim
    storage: list[dict[str, Any]] = field(default_factory=list)  # one per dataset x dim x storage precision
    dims: list[int] = field(default_factory=list)
    fingerprint: str | None = None  # the model's content hash, when the cache computed it
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # per dataset: encodings, cache hits, seconds
    notes: list[str] = field(default_factory=list)  # e.g. a dataset BM25 had to skip
    first_stage: dict[str, torch.Tensor] = field(default_factory=dict)  # per dataset, at the largest dim
    #: Per leaderboard task: the query x page scores (at the largest dim) its MTEB figures come from.
    matrices: dict[str, torch.Tensor] = field(default_factory=dict)
    protocol: dict[str, Any] | None = None  # the leaderboard protocol it was scored at (--benchmark)

    def summary(self, path: str) -> dict[str, Any]:
        """The model's entry in results.json."""
        summary = {"path": path, "dims": self.dims, "fingerprint": self.fingerprint, "stats": self.stats}
        return summary | ({"protocol": self.protocol} if self.protocol else {})

    def extend(self, other: ModelScores) -> None:
        """Add another part of the same model's scores (other datasets, scored with other prompts)."""
        self.records += other.records
        self.storage += other.storage
        self.notes += other.notes
        self.dims = self.dims or other.dims
        self.fingerprint = self.fingerprint or other.fingerprint
        for mine, theirs in ((self.stats, other.stats), (self.first_stage, other.first_stage)):
            mine.update(theirs)
        self.matrices.update(other.matrices)


#: The k values MTEB's retrieval tasks report (``AbsTaskRetrieval.k_values``).
MTEB_K_VALUES = (1, 3, 5, 10, 20, 100, 1000)


def mteb_retrieval_scores(
    scores: torch.Tensor, data: RetrievalData, query_ids: Sequence[Any], k_values: Sequence[int] = MTEB_K_VALUES
) -> dict[str, float]:
    """The figures of an MTEB retrieval result (``ndcg_at_10``, ``map_at_5``, ``recall_at_1``, ``accuracy``,
    ``precision_at_k``, ``mrr_at_k``, ``hit_rate_at_k``) for ``query_ids``, computed as mteb's
    ``calculate_retrieval_scores`` does: each query's top max(k) pages by score, trec_eval's measures through
    ``pytrec_eval`` (graded NDCG, ties broken by page id), means over the queries rounded to 5 decimals, MRR with
    ties broken by page id descending (not rounded). A test checks every figure against mteb's own code.

    ``scores``: ``[len(data.queries), len(data.corpus)]``, rows and columns in ``data`` order."""
    import pytrec_eval

    rows = {qid: row for row, qid in enumerate(data.queries)}
    corpus_ids = list(data.corpus)
    top = min(max(k_values), scores.shape[1])
    run = {}
    for qid in query_ids:
        values, pages = scores[rows[qid]].float().topk(top)
        run[str(qid)] = {str(corpus_ids[page]): value for value, page in zip(values.tolist(), pages.tolist())}
    qrels = {str(qid): {str(cid): int(grade) for cid, grade in data.qrels[qid].items()} for qid in query_ids}
    cutoffs = ",".join(map(str, k_values))
    measures = {f"{measure}.{cutoffs}" for measure in ("map_cut", "ndcg_cut", "recall", "P", "success")}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)

    def mean(measure: str, k: int) -> float:
        return round(fmean(values[f"{measure}_{k}"] for values in per_query.values()), 5)

    result = {f"ndcg_at_{k}": mean("ndcg_cut", k) for k in k_values}
    result |= {f"map_at_{k}": mean("map_cut", k) for k in k_values}
    result |= {f"recall_at_{k}": mean("recall", k) for k in k_values}
    result["accuracy"] = result[f"recall_at_{min(k_values)}"]
    result |= {f"precision_at_{k}": mean("P", k) for k in k_values}
    result |= {f"mrr_at_{k}": value for k, value in _mteb_mrr(run, qrels, k_values).items()}
    result |= {f"hit_rate_at_{k}": mean("success", k) for k in k_values}
    return result


def _mteb_mrr(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], k_values: Sequence[int]) -> dict:
    """Mean reciprocal rank of the first relevant page in the top k, ranked by (score, page id) descending."""
    reciprocal_ranks: dict[int, list[float]] = {k: [] for k in k_values}
    for qid, pages in run.items():
        ranked = [page for page, _ in sorted(pages.items(), key=lambda item: (item[1], item[0]), reverse=True)]
        relevant = {page for page, grade in qrels[qid].items() if grade > 0}
        first = next((rank for rank, page in enumerate(ranked, start=1) if page in relevant), None)
        for k in k_values:
            reciprocal_ranks[k].append(1.0 / first if first is not None and first <= k else 0.0)
    return {k: sum(values) / len(values) for k, values in reciprocal_ranks.items()}
