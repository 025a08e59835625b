"""Retrieval metrics computed from a query x document score matrix.

The definitions follow sentence-transformers' ``InformationRetrievalEvaluator`` (v6.2, ``compute_metrics``) exactly
for binary relevance, including its ranking order (descending score, ties broken by ascending corpus id), and extend
it to graded relevance the way BEIR / pytrec_eval's ``ndcg_cut`` does (linear gain). Everything is vectorised with
torch so a 1,000 x 50,000 matrix is cheap: each query is ranked once, down to the largest cut-off asked for.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_NAMES",
    "rank_documents",
    "retrieval_metrics",
]

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

METRIC_NAMES: tuple[str, ...] = ("ndcg", "mrr", "map", "recall", "precision", "accuracy")

_METRIC_PATTERN = re.compile(r"^([a-z]+)@([0-9]+)$")


# --------------------------------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------------------------------


def _tie_ranks(tie_break: torch.Tensor | None, num_docs: int, device: torch.device) -> torch.Tensor:
    """Dense ranks 0..num_docs-1 of the docs under the tie-break order (ascending ``tie_break``, then doc index).

    Converting to dense ranks lets any sortable tie-break key (e.g. corpus ids that are not 0..n-1) be packed into
    the integer selection key used by ``rank_documents``.
    """
    if tie_break is None:
        return torch.arange(num_docs, device=device)
    tie_break = torch.as_tensor(tie_break, device=device)
    if tie_break.shape != (num_docs,):
        raise ValueError(f"tie_break must have shape ({num_docs},) (one key per doc), got {tuple(tie_break.shape)}")
    # Stable, so docs sharing a tie_break value fall back to ascending doc index.
    order = torch.argsort(tie_break, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(num_docs, device=device)
    return ranks


def _select_top_k(scores: torch.Tensor, ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [num_queries, k] of the k best docs per query under (-score, rank), in no particular order."""
    num_queries, num_docs = scores.shape
    if k == num_docs:
        return ranks.argsort().expand(num_queries, num_docs)
    # One extra value tells whether a tie straddles the cut-off: it does exactly when the (k+1)-th best score equals
    # the k-th. This avoids a full pass over the matrix to count ties.
    values, selected = torch.topk(scores, k + 1, dim=1, largest=True, sorted=True)
    rows = (values[:, k] == values[:, k - 1]).nonzero().squeeze(1)
    values, selected = values[:, :k], selected[:, :k]
    if rows.numel() > 0:
        selected = selected.clone()
        selected[rows] = _reselect_boundary_ties(scores[rows], ranks, values[rows], selected[rows])
    return selected


def _reselect_boundary_ties(
    scores: torch.Tensor, ranks: torch.Tensor, values: torch.Tensor, selected: torch.Tensor
) -> torch.Tensor:
    """Fix rows whose k-th best score is shared with docs beyond the cut-off, where topk chose arbitrarily.

    The docs strictly above the k-th score are right (they are the first ``num_above`` topk hits, values being sorted);
    the remaining slots go to the docs tied at the k-th score with the lowest tie ranks, which is the set ST keeps.
    """
    k = values.shape[1]
    threshold = values[:, k - 1 :]
    # Integer key: the tie rank for tied docs, a sentinel above every rank for the others. int32 halves the memory and
    # time of this [rows, num_docs] pass whenever it can hold the sentinel.
    key_dtype = torch.int32 if scores.shape[1] < 2**31 - 1 else torch.int64
    sentinel = torch.tensor(scores.shape[1], dtype=key_dtype, device=scores.device)
    tied_keys = torch.where(scores == threshold, ranks.to(key_dtype), sentinel)
    tied = tied_keys.topk(k, dim=1, largest=False, sorted=True).indices  # lowest tie ranks first
    num_above = (values > threshold).sum(dim=1, keepdim=True)
    slot = torch.arange(k, device=scores.device)
    from_ties = tied.gather(1, (slot - num_above).clamp(min=0))
    return torch.where(slot < num_above, selected, from_ties)


def rank_documents(
    scores: torch.Tensor, tie_break: torch.Tensor | None = None, top_k: int | None = None
) -> torch.Tensor:
    """Rank the documents of every query, best first.

    Args:
        scores: [num_queries, num_docs] float scores (higher is better). NaN is rejected because it has no order.
        tie_break: optional [num_docs] tensor; equal scores are broken by ascending ``tie_break`` (an int rank per
            doc; equal ``tie_break`` values fall back to doc index). Default: doc index.
        top_k: how many docs to return per query; ``None`` or a value above ``num_docs`` means all docs.

    Returns:
        [num_queries, min(top_k, num_docs)] long tensor of doc indices, best first. The order is the total order
        (-score, tie_break), which is the (-score, corpus_id) order ST's ``InformationRetrievalEvaluator`` uses.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [num_queries, num_docs], got shape {tuple(scores.shape)}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    if scores.is_floating_point() and torch.isnan(scores).any():
        raise ValueError("scores contain NaN; a ranking needs totally ordered scores")
    num_queries, num_docs = scores.shape
    k = num_docs if top_k is None else min(top_k, num_docs)
    if k == 0:
        return torch.empty(num_queries, 0, dtype=torch.long, device=scores.device)
    ranks = _tie_ranks(tie_break, num_docs, scores.device)
    selected = _select_top_k(scores, ranks, k)
    # Exact order of the k selected docs: sort by tie rank, then a *stable* sort by descending score keeps the
    # tie-rank order among equal scores. Both sorts only touch k columns. "+ 0.0" turns -0.0 into +0.0 so a radix
    # sort (CUDA) cannot order them apart; they compare equal in ST's Python sort.
    selected = selected.gather(1, ranks[selected].argsort(dim=1))
    by_score = (scores.gather(1, selected) + 0.0).argsort(dim=1, descending=True, stable=True)
    return selected.gather(1, by_score)


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


def _parse_metrics(metrics: Sequence[str]) -> list[tuple[str, str, int]]:
    """Turn names like ``"ndcg@10"`` into (original name, metric, k); raise ValueError on anything else."""
    if isinstance(metrics, str):  # a lone "ndcg@10" would otherwise be iterated character by character
        metrics = [metrics]
    parsed = []
    for metric in metrics:
        match = _METRIC_PATTERN.match(metric) if isinstance(metric, str) else None
        if match is None or match.group(1) not in METRIC_NAMES or int(match.group(2)) < 1:
            raise ValueError(
                f"Unknown metric {metric!r}: expected '<name>@<k>' with name in {', '.join(METRIC_NAMES)} "
                f"and k a positive integer, e.g. 'ndcg@10'"
            )
        parsed.append((metric, match.group(1), int(match.group(2))))
    return parsed


@dataclass
class _Judged:
    """Relevance of the ranked docs of the queries that have at least one relevant doc (one row per such query)."""

    gains: torch.Tensor  # [Q, K] float64 grade of the doc at each rank (0 when not relevant)
    hits: torch.Tensor  # [Q, K] float64 1.0 where the doc at that rank is relevant
    found: torch.Tensor  # [Q, K] float64 number of relevant docs within ranks 0..r
    num_relevant: torch.Tensor  # [Q] float64 number of relevant docs of the query
    ideal_gains: torch.Tensor  # [Q, R] float64 the query's positive grades, descending, zero-padded

    def at(self, k: int) -> int:
        """Number of ranked columns a cut-off k covers: all docs when k exceeds them (ST's min(top_k, num_docs))."""
        return min(k, self.gains.shape[1])


def _collect_qrels(
    qrels: Sequence[Mapping[int, float]], num_docs: int
) -> tuple[list[int], list[list[int]], list[list[float]]]:
    """Per query with a positive grade: its row, its relevant doc indices (ascending) and their grades."""
    rows, docs, grades = [], [], []
    for query, judgements in enumerate(qrels):
        positive = {}
        for doc, grade in judgements.items():
            doc = operator.index(doc)  # a float doc index is a bug upstream, not something to round
            if not 0 <= doc < num_docs:
                raise ValueError(f"qrels[{query}] refers to doc {doc}, outside the {num_docs} scored docs")
            if grade > 0:  # grade <= 0 means judged non-relevant (BEIR / TREC convention)
                positive[doc] = float(grade)
        if positive:
            rows.append(query)
            docs.append(sorted(positive))
            grades.append([positive[doc] for doc in docs[-1]])
    return rows, docs, grades


def _judge(ranked: torch.Tensor, num_docs: int, docs: list[list[int]], grades: list[list[float]]) -> _Judged:
    """Look up the grade of every ranked doc without a dense [Q, num_docs] relevance matrix (too big at 50k docs)."""
    device = ranked.device
    # Each (query row, doc) pair becomes one int64 key; keys are built ascending, so searchsorted finds them.
    keys = torch.tensor(
        [row * num_docs + doc for row, row_docs in enumerate(docs) for doc in row_docs], dtype=torch.long, device=device
    )
    key_grades = torch.tensor([g for row_grades in grades for g in row_grades], dtype=torch.float64, device=device)
    wanted = torch.arange(len(docs), device=device).unsqueeze(1) * num_docs + ranked
    position = torch.searchsorted(keys, wanted).clamp_(max=keys.numel() - 1)
    is_relevant = keys[position] == wanted
    gains = torch.where(is_relevant, key_grades[position], torch.zeros((), dtype=torch.float64, device=device))
    hits = is_relevant.to(torch.float64)

    max_relevant = max(len(row_grades) for row_grades in grades)
    ideal = [sorted(row_grades, reverse=True) + [0.0] * (max_relevant - len(row_grades)) for row_grades in grades]
    return _Judged(
        gains=gains,
        hits=hits,
        found=hits.cumsum(dim=1),
        num_relevant=torch.tensor([len(d) for d in docs], dtype=torch.float64, device=device),
        ideal_gains=torch.tensor(ideal, dtype=torch.float64, device=device),
    )


def _dcg(gains: torch.Tensor) -> torch.Tensor:
    """Sum over ranks r of gain / log2(r + 2), as ST's ``compute_dcg_at_k``."""
    discounts = torch.log2(torch.arange(gains.shape[1], dtype=torch.float64, device=gains.device) + 2)
    return (gains / discounts).sum(dim=1)


def _ndcg(judged: _Judged, k: int) -> torch.Tensor:
    # The ideal ordering covers all the query's relevant docs, not only those that were retrieved.
    return _dcg(judged.gains[:, : judged.at(k)]) / _dcg(judged.ideal_gains[:, :k])


def _mrr(judged: _Judged, k: int) -> torch.Tensor:
    reciprocal_ranks = judged.hits[:, : judged.at(k)] / torch.arange(1, judged.at(k) + 1, device=judged.hits.device)
    # The largest 1/(rank+1) among relevant docs is the first one's; 0 when none is in the top k.
    return reciprocal_ranks.max(dim=1).values


def _map(judged: _Judged, k: int) -> torch.Tensor:
    hits, found = judged.hits[:, : judged.at(k)], judged.found[:, : judged.at(k)]
    precisions = hits * found / torch.arange(1, judged.at(k) + 1, device=hits.device)
    # Normalised by min(k, #relevant) as ST does (the requested k; same as the clamped one since #relevant <= docs).
    return precisions.sum(dim=1) / judged.num_relevant.clamp(max=k)


def _recall(judged: _Judged, k: int) -> torch.Tensor:
    return judged.found[:, judged.at(k) - 1] / judged.num_relevant


def _precision(judged: _Judged, k: int) -> torch.Tensor:
    # ST divides by k, not by the number of docs actually returned, when k exceeds the corpus.
    return judged.found[:, judged.at(k) - 1] / k


def _accuracy(judged: _Judged, k: int) -> torch.Tensor:
    return (judged.found[:, judged.at(k) - 1] > 0).to(torch.float64)


_METRIC_FUNCTIONS: dict[str, Callable[[_Judged, int], torch.Tensor]] = {
    "ndcg": _ndcg,
    "mrr": _mrr,
    "map": _map,
    "recall": _recall,
    "precision": _precision,
    "accuracy": _accuracy,
}


def retrieval_metrics(
    scores: torch.Tensor,
    qrels: list[dict[int, float]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    tie_break: torch.Tensor | None = None,
) -> dict[str, float]:
    """Mean retrieval metrics over the queries of a score matrix.

    Args:
        scores: [num_queries, num_docs] scores, higher is better.
        qrels: ``qrels[i]`` maps doc index -> relevance grade for query i. Grades > 0 are relevant (a grade is the
            gain in NDCG); entries with grade <= 0 are ignored. Doc indices must lie in [0, num_docs).
        metrics: names ``"{name}@{k}"`` with name in ndcg, mrr, map, recall, precision, accuracy (hit@k).
        tie_break: per-doc key breaking score ties (ascending); default doc index. See ``rank_documents``.

    Returns:
        ``{metric name: mean over scored queries}`` as Python floats, plus ``"num_queries"`` (queries scored) and
        ``"num_queries_without_relevant"`` (queries left out because they have no relevant doc, as ST and BEIR do).
        When no query has a relevant doc every metric is NaN.
    """
    parsed = _parse_metrics(metrics)
    if scores.ndim != 2 or len(qrels) != scores.shape[0]:
        raise ValueError(f"need one qrels entry per score row: got {len(qrels)} qrels for scores {tuple(scores.shape)}")
    rows, docs, grades = _collect_qrels(qrels, scores.shape[1])
    counts = {"num_queries": len(rows), "num_queries_without_relevant": len(qrels) - len(rows)}
    if not rows:
        return {name: math.nan for name, _, _ in parsed} | counts

    if len(rows) < len(qrels):  # only copy the score rows when some queries are left out
        scores = scores[torch.tensor(rows, device=scores.device)]
    max_k = max((k for _, _, k in parsed), default=1)
    ranked = rank_documents(scores, tie_break=tie_break, top_k=max_k)
    judged = _judge(ranked, scores.shape[1], docs, grades)
    results = {name: _METRIC_FUNCTIONS[metric](judged, k).mean().item() for name, metric, k in parsed}
    return results | counts


# --------------------------------------------------------------------------------------------------------------------
# Matryoshka truncation
# --------------------------------------------------------------------------------------------------------------------
