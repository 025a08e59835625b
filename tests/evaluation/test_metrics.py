"""Which convention each reported metric follows, checked on hand-worked cases (no model: fixed scores), and score
matrices scored exactly as the embeddings they came from."""

from __future__ import annotations

import math

import pytest
import torch
from sentence_transformers.util import cos_sim, dot_score

from tests.helpers import tiny_data
from vdr.data.retrieval_sets import RetrievalData
from vdr.errors import VdrError
from vdr.evaluation.metrics import metrics_from_scores, retrieval_scores, score_matrix_metrics

METRICS = ["ndcg@1", "ndcg@2", "ndcg@3", "ndcg@5", "ndcg@10", "mrr@10", "map@2", "map@5", "map@100", "recall@1"]


def scores_as_embeddings(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and page embeddings whose dot products are ``rows``: query i is the i-th unit vector, page j holds
    column j of the scores."""
    scores = torch.tensor(rows, dtype=torch.float64)
    return torch.eye(len(rows), dtype=torch.float64), scores.T.contiguous()


def score(rows: list[list[float]], qrels: dict, corpus_ids: list | None = None, metrics=METRICS) -> dict[str, float]:
    queries, corpus = scores_as_embeddings(rows)
    corpus_ids = corpus_ids if corpus_ids is not None else list(range(len(rows[0])))
    data = RetrievalData({q: f"query {q}" for q in range(len(rows))}, dict.fromkeys(corpus_ids, "page"), qrels)
    return retrieval_scores(queries, corpus, data, [len(rows)], dot_score, "dot", metrics)[len(rows)]


def check(result: dict[str, float], expected: dict[str, float]) -> None:
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-12), name


DESCENDING = [[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]]  # page i at (0-based) rank i


def test_binary_metrics_follow_sentence_transformers() -> None:
    # Relevant pages 0, 2, 5 at ranks 0, 2, 5.
    # DCG@5 = 1 + 1/log2(4) = 1.5; IDCG@5 = 1 + 1/log2(3) + 1/log2(4) = 2.1309297535714575 -> 0.7039180890341347
    # DCG@10 = 1.5 + 1/log2(7) = 1.8562071871080222 -> ndcg@10 = 0.8710785440003369
    # MAP@k divides by min(k, #relevant) (trec_eval would divide by #relevant): map@2 = 1/2, map@5 = (1 + 2/3) / 3
    result = score(DESCENDING, {0: {0: 1, 2: 1, 5: 1}})
    check(result, {"ndcg@1": 1, "ndcg@5": 0.7039180890341347, "ndcg@10": 0.8710785440003369, "mrr@10": 1})
    check(result, {"map@2": 0.5, "map@5": 5 / 9, "map@100": 13 / 18, "recall@1": 1 / 3})


def test_binary_ties_go_to_the_smaller_corpus_id() -> None:
    # Every page scores the same: the evaluator ranks by corpus id, so relevant page "b" comes second of three.
    result = score([[0.5, 0.5, 0.5]], {0: {"b": 1}}, corpus_ids=["c", "b", "a"])
    check(result, {"mrr@10": 0.5, "ndcg@1": 0, "ndcg@10": 1 / math.log2(3)})


def test_graded_ndcg_uses_the_grades_as_gains_as_trec_eval() -> None:
    # Grades 1, 2, 3 ranked in the worst order; page 3 (grade 0) and page 4 (grade -1) are not relevant.
    # DCG@3  = 1/log2(2) + 2/log2(3) + 3/log2(4) = 3.761859507142915
    # IDCG@3 = 3/log2(2) + 2/log2(3) + 1/log2(4) = 4.761859507142915 -> ndcg@3 = 0.7899980042460358
    # ndcg@1 = 1/3; ndcg@2 = (1 + 1.261859507142915) / (3 + 1.261859507142915) = 0.5307212739772434
    result = score(DESCENDING, {0: {0: 1, 1: 2, 2: 3, 3: 0, 4: -1}})
    check(result, {"ndcg@1": 1 / 3, "ndcg@2": 0.5307212739772434, "ndcg@3": 0.7899980042460358})
    check(result, {"ndcg@5": 0.7899980042460358, "ndcg@10": 0.7899980042460358})
    # The other metrics only see relevant (grade > 0) or not: all three relevant pages are in the top 3.
    check(result, {"map@5": 1, "mrr@10": 1, "recall@1": 1 / 3})


def test_graded_ties_follow_trec_eval_and_reach_past_the_cutoff() -> None:
    # Four pages tie; trec_eval orders ties by descending id string, so "d" comes first and "a" last. The graded
    # page "d" (grade 2) must be found even though it is not among the first k pages in the corpus' own order.
    result = score([[0.5, 0.5, 0.5, 0.5]], {0: {"d": 2, "a": 1}}, corpus_ids=["a", "b", "c", "d"])
    ideal = 2 + 1 / math.log2(3)
    check(result, {"ndcg@1": 1.0, "ndcg@3": 2 / ideal, "ndcg@5": (2 + 1 / math.log2(5)) / ideal})


def test_queries_without_a_relevant_page_are_left_out() -> None:
    # Query 1 has only a grade-0 judgement: the means are over queries 0 and 2 (relevant page at rank 0 and rank 2).
    rows = [[0.4, 0.3, 0.2, 0.1]] * 3
    result = score(rows, {0: {0: 1}, 1: {1: 0}, 2: {2: 1}}, metrics=["mrr@10", "ndcg@10"])
    check(result, {"mrr@10": (1 + 1 / 3) / 2, "ndcg@10": (1 + 0.5) / 2})
    with pytest.raises(VdrError, match="No query of the dataset has a relevant page"):
        score(rows, {1: {1: 0}}, metrics=["mrr@10"])


def test_fractional_grades_and_unknown_metrics_are_refused() -> None:
    with pytest.raises(VdrError, match=r"fractional relevance grades \(0\.5\).*Round the qrels"):
        score(DESCENDING, {0: {0: 0.5}})
    with pytest.raises(ValueError, match="Unknown metric 'f1@10'"):
        score(DESCENDING, {0: {0: 1}}, metrics=["f1@10"])


def test_metrics_from_a_score_matrix_match_a_hand_computation():
    # query 0 ranks its page first; query 1 ranks its page third
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.9, 0.5, 0.1]])
    values = metrics_from_scores(scores, tiny_data(2, 3, relevant=[1, 2]))
    assert values["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 2)
    assert values["mrr@10"] == pytest.approx((1 + 1 / 3) / 2)
    assert values["recall@1"] == pytest.approx(0.5)


def test_score_matrix_metrics_are_the_evaluators_and_shuffled_ties_do_not_favour_positives():
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=1)
    pages = torch.nn.functional.normalize(torch.randn(18, 8, generator=generator), dim=1)
    data = tiny_data(6, 18, relevant=[0, 1, 2, 3, 4, 5])
    from_embeddings = retrieval_scores(queries, pages, data, [8], lambda q, p: q @ p.T, "dot")[8]
    assert metrics_from_scores(queries @ pages.T, data) == pytest.approx(from_embeddings)
    # every page tied: the evaluator's order (smaller id first) ranks each positive (ids 0..5) near the top
    tied = torch.zeros(6, 18)
    assert metrics_from_scores(tied, data)["ndcg@10"] > metrics_from_scores(tied, data, shuffle_ties=True)["ndcg@10"]


@pytest.mark.parametrize("graded", [False, True])
def test_a_score_matrix_is_scored_exactly_as_the_embeddings_it_came_from(graded):
    generator = torch.Generator().manual_seed(0)
    queries, pages = torch.randn(6, 8, generator=generator), torch.randn(20, 8, generator=generator)
    qrels = {f"q{i}": {f"d{(3 * i) % 20}": 2 if graded and i % 2 else 1, f"d{i + 1}": 1} for i in range(5)}
    data = RetrievalData({f"q{i}": "text" for i in range(6)}, {f"d{i}": None for i in range(20)}, qrels)  # q5: none
    by_embeddings = retrieval_scores(queries, pages, data, [8], cos_sim)[8]
    assert score_matrix_metrics(cos_sim(queries, pages), data) == by_embeddings
