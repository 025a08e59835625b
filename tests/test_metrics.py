"""Tests for vdr.metrics: hand-worked cases, a pure-Python reference, and sentence-transformers' own evaluator."""

from __future__ import annotations

import math
import random

import pytest
import torch

from vdr.metrics import DEFAULT_METRICS, rank_documents, retrieval_metrics

ALL_METRICS = [
    f"{name}@{k}" for name in ("ndcg", "mrr", "map", "recall", "precision", "accuracy") for k in (1, 2, 3, 5, 10, 100)
]

# One decreasing score row: doc i is ranked at (0-based) rank i.
DESCENDING = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]


def scores_of(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def check(result: dict[str, float], expected: dict[str, float]) -> None:
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-12), name


# ---------------------------------------------------------------------------------------------------------------------
# Hand-worked cases
# ---------------------------------------------------------------------------------------------------------------------


def test_perfect_ranking() -> None:
    # The only relevant doc (0) is ranked first: every metric is 1 except precision@5 = 1 hit / 5.
    result = retrieval_metrics(scores_of(DESCENDING[:5]), [{0: 1}], ALL_METRICS)
    check(result, {"ndcg@1": 1, "ndcg@5": 1, "mrr@10": 1, "map@100": 1, "recall@1": 1, "accuracy@1": 1})
    check(result, {"precision@1": 1, "precision@5": 0.2})
    assert result["num_queries"] == 1 and result["num_queries_without_relevant"] == 0


def test_relevant_doc_at_rank_three() -> None:
    # Relevant doc 2 sits at 1-based rank 3 (0-based rank 2).
    # ndcg@3 = (1 / log2(2 + 2)) / (1 / log2(0 + 2)) = 0.5 / 1 = 0.5; unchanged at k = 5.
    # mrr@10 = 1/3; map@100 = (1 hit / rank 3) / min(100, 1 relevant) = 1/3; precision@3 = 1/3.
    result = retrieval_metrics(scores_of(DESCENDING[:5]), [{2: 1}], ALL_METRICS)
    check(result, {"ndcg@1": 0, "ndcg@2": 0, "ndcg@3": 0.5, "ndcg@5": 0.5})
    check(result, {"mrr@1": 0, "mrr@2": 0, "mrr@3": 1 / 3, "mrr@10": 1 / 3, "map@100": 1 / 3})
    check(result, {"recall@1": 0, "recall@2": 0, "recall@3": 1, "precision@3": 1 / 3, "precision@5": 0.2})
    check(result, {"accuracy@1": 0, "accuracy@2": 0, "accuracy@3": 1})


def test_several_relevant_documents() -> None:
    # 6 docs ranked 0..5; relevant docs 0, 2, 5 sit at 0-based ranks 0, 2, 5.
    # DCG@5 = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5
    # IDCG@5 = 1/log2(2) + 1/log2(3) + 1/log2(4) = 1 + 0.6309297535714575 + 0.5 = 2.1309297535714575
    # ndcg@5 = 1.5 / 2.1309297535714575 = 0.7039180890341347
    # DCG@10 = 1.5 + 1/log2(7) = 1.5 + 0.3562071871080222 = 1.8562071871080222 -> ndcg@10 = 0.8710785440003369
    # map@2 = (1/1) / min(2, 3) = 0.5
    # map@5 = (1/1 + 2/3) / min(5, 3) = 5/9
    # map@100 = (1/1 + 2/3 + 3/6) / 3 = 13/18
    result = retrieval_metrics(scores_of(DESCENDING), [{0: 1, 2: 1, 5: 1}], ALL_METRICS)
    check(result, {"ndcg@1": 1, "ndcg@5": 0.7039180890341347, "ndcg@10": 0.8710785440003369})
    check(result, {"map@2": 0.5, "map@5": 5 / 9, "map@100": 13 / 18, "mrr@10": 1})
    check(result, {"recall@1": 1 / 3, "recall@3": 2 / 3, "recall@5": 2 / 3, "recall@10": 1})
    check(result, {"precision@1": 1, "precision@2": 0.5, "precision@5": 0.4})


def test_graded_relevance_uses_linear_gain() -> None:
    # Grades 1, 2, 3 ranked in the worst order (docs 0, 1, 2 at ranks 0, 1, 2); doc 3 (grade 0) and doc 4
    # (grade -1) are judged non-relevant and ignored.
    # DCG@3  = 1/log2(2) + 2/log2(3) + 3/log2(4) = 1 + 1.261859507142915 + 1.5 = 3.761859507142915
    # IDCG@3 = 3/log2(2) + 2/log2(3) + 1/log2(4) = 3 + 1.261859507142915 + 0.5 = 4.761859507142915
    # ndcg@3 = 3.761859507142915 / 4.761859507142915 = 0.7899980042460358; ndcg@1 = (1/1) / (3/1) = 1/3
    # ndcg@2 = (1 + 1.261859507142915) / (3 + 1.261859507142915) = 0.5307212739772434
    qrels = [{0: 1, 1: 2, 2: 3, 3: 0, 4: -1}]
    result = retrieval_metrics(scores_of(DESCENDING[:5]), qrels, ALL_METRICS)
    check(result, {"ndcg@1": 1 / 3, "ndcg@2": 0.5307212739772434})
    check(result, {"ndcg@3": 0.7899980042460358, "ndcg@5": 0.7899980042460358})
    # The other metrics only see relevant / not relevant: 3 relevant docs, all in the top 3.
    check(result, {"recall@1": 1 / 3, "recall@3": 1, "precision@5": 0.6, "map@3": 1, "mrr@10": 1})
    # With binary grades the same ranking would be perfect.
    assert retrieval_metrics(scores_of(DESCENDING[:5]), [{0: 1, 1: 1, 2: 1}], ["ndcg@3"])["ndcg@3"] == 1


def test_rank_documents_breaks_ties_by_doc_index_then_tie_break() -> None:
    scores = scores_of([0.5, 0.9, 0.5, 0.1, 0.5])
    # Docs 0, 2, 4 tie at 0.5: by doc index they come as 0, 2, 4.
    assert rank_documents(scores).tolist() == [[1, 0, 2, 4, 3]]
    assert rank_documents(scores, top_k=2).tolist() == [[1, 0]]
    # tie_break ranks doc 4 (key 2) before doc 2 (key 4) before doc 0 (key 5); it never overrides a score.
    tie_break = torch.tensor([5, 0, 4, 1, 2])
    assert rank_documents(scores, tie_break=tie_break).tolist() == [[1, 4, 2, 0, 3]]
    # A cut-off inside the tie keeps the tied docs with the lowest tie_break.
    assert rank_documents(scores, tie_break=tie_break, top_k=2).tolist() == [[1, 4]]
    assert rank_documents(scores, tie_break=tie_break, top_k=3).tolist() == [[1, 4, 2]]


def test_ties_in_metrics() -> None:
    scores = scores_of([0.5, 0.5, 0.5, 0.5])
    # By doc index the relevant doc 3 comes last: mrr = 1/4, ndcg@10 = 1/log2(5) = 0.43067655807339306.
    result = retrieval_metrics(scores, [{3: 1}], ["mrr@10", "ndcg@10", "recall@1"])
    check(result, {"mrr@10": 0.25, "ndcg@10": 0.43067655807339306, "recall@1": 0})
    # Reversed tie_break puts doc 3 first.
    result = retrieval_metrics(scores, [{3: 1}], ["mrr@10", "recall@1"], tie_break=torch.tensor([3, 2, 1, 0]))
    check(result, {"mrr@10": 1, "recall@1": 1})
    # Equal tie_break values fall back to doc index: keys [1, 0, 0, 1] give the order 1, 2, 0, 3.
    result = retrieval_metrics(scores, [{2: 1}], ["mrr@10"], tie_break=torch.tensor([1, 0, 0, 1]))
    check(result, {"mrr@10": 0.5})


def test_query_without_relevant_document_is_left_out() -> None:
    scores = scores_of([0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1])
    # Query 1 only has a grade-0 judgement. Queries 0 and 2 have their relevant doc at rank 0 and rank 2:
    # mrr@10 = (1 + 1/3) / 2 = 2/3 (it would be 4/9 if query 1 counted); ndcg@10 = (1 + 0.5) / 2 = 0.75.
    result = retrieval_metrics(scores, [{0: 1}, {1: 0}, {2: 1}], ["mrr@10", "ndcg@10", "accuracy@1"])
    check(result, {"mrr@10": 2 / 3, "ndcg@10": 0.75, "accuracy@1": 0.5})
    assert result["num_queries"] == 2 and result["num_queries_without_relevant"] == 1


def test_no_query_with_relevant_document_gives_nan() -> None:
    result = retrieval_metrics(scores_of([0.4, 0.3]), [{}], ["ndcg@10"])
    assert math.isnan(result["ndcg@10"]) and result["num_queries_without_relevant"] == 1


def test_k_larger_than_corpus() -> None:
    # 3 docs, relevant doc 2 at rank 2: cut-offs past the corpus use all 3 docs.
    # ndcg@10 = 1/log2(4) = 0.5; map@100 = (1/3) / min(100, 1) = 1/3; precision@10 = 1 hit / 10 (ST divides by k).
    result = retrieval_metrics(scores_of([0.3, 0.2, 0.1]), [{2: 1}], ["ndcg@10", "map@100", "precision@10"])
    check(result, {"ndcg@10": 0.5, "map@100": 1 / 3, "precision@10": 0.1})
    check(retrieval_metrics(scores_of([0.3, 0.2, 0.1]), [{2: 1}]), {"recall@100": 1, "mrr@10": 1 / 3})
    assert rank_documents(scores_of([0.3, 0.2, 0.1]), top_k=10).tolist() == [[0, 1, 2]]


def test_default_metrics_are_returned() -> None:
    result = retrieval_metrics(scores_of(DESCENDING), [{1: 1}])
    assert set(result) == {*DEFAULT_METRICS, "num_queries", "num_queries_without_relevant"}
    assert all(isinstance(result[name], float) for name in DEFAULT_METRICS)


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["f1@10", "ndcg", "ndcg@0", "ndcg@x", "NDCG@10"])
def test_unknown_metric_raises(bad: str) -> None:
    with pytest.raises(ValueError, match=rf"Unknown metric '{bad}'.*ndcg, mrr, map, recall, precision, accuracy"):
        retrieval_metrics(scores_of(DESCENDING), [{0: 1}], ["ndcg@10", bad])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="one qrels entry per score row"):
        retrieval_metrics(scores_of(DESCENDING), [{0: 1}, {1: 1}])
    with pytest.raises(ValueError, match="outside the 6 scored docs"):
        retrieval_metrics(scores_of(DESCENDING), [{6: 1}])
    with pytest.raises(ValueError, match="NaN"):
        rank_documents(scores_of([0.1, math.nan]))
    with pytest.raises(ValueError, match="tie_break must have shape"):
        rank_documents(scores_of(DESCENDING), tie_break=torch.arange(5))


# ---------------------------------------------------------------------------------------------------------------------
# Against a plain-Python reference (graded relevance, ties, every cut-off)
# ---------------------------------------------------------------------------------------------------------------------


def reference_metrics(
    scores: list[list[float]], qrels: list[dict[int, float]], metrics: list[str], tie_break: list[int]
) -> dict[str, float]:
    """Textbook definitions, one query and one doc at a time."""
    per_metric: dict[str, list[float]] = {name: [] for name in metrics}
    for row, judgements in zip(scores, qrels):
        relevant = {doc: grade for doc, grade in judgements.items() if grade > 0}
        if not relevant:
            continue
        ranking = sorted(range(len(row)), key=lambda doc: (-row[doc], tie_break[doc], doc))
        for name in metrics:
            metric, k = name.split("@")[0], int(name.split("@")[1])
            top = ranking[:k]
            hit_ranks = [rank for rank, doc in enumerate(top) if doc in relevant]
            if metric == "ndcg":
                dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(top))
                ideal = sorted(relevant.values(), reverse=True)[:k]
                value = dcg / sum(grade / math.log2(rank + 2) for rank, grade in enumerate(ideal))
            elif metric == "mrr":
                value = 1 / (hit_ranks[0] + 1) if hit_ranks else 0.0
            elif metric == "map":
                value = sum((i + 1) / (rank + 1) for i, rank in enumerate(hit_ranks)) / min(k, len(relevant))
            elif metric == "recall":
                value = len(hit_ranks) / len(relevant)
            elif metric == "precision":
                value = len(hit_ranks) / k
            else:
                value = float(bool(hit_ranks))
            per_metric[name].append(value)
    return {name: sum(values) / len(values) for name, values in per_metric.items()}


def test_matches_reference_on_random_graded_data_with_ties() -> None:
    rng = random.Random(0)
    torch.manual_seed(0)
    num_queries, num_docs = 30, 120
    scores = (torch.rand(num_queries, num_docs) * 20).round() / 20  # 21 distinct values: many ties
    qrels = [{rng.randrange(num_docs): rng.choice([-1, 0, 1, 2, 3]) for _ in range(rng.randint(0, 5))} for _ in scores]
    tie_break = list(range(num_docs))
    rng.shuffle(tie_break)
    metrics = ALL_METRICS + ["ndcg@150", "map@150", "precision@150"]

    result = retrieval_metrics(scores, qrels, metrics, tie_break=torch.tensor(tie_break))
    expected = reference_metrics(scores.tolist(), qrels, metrics, tie_break)
    check(result, expected)
    assert result["num_queries"] + result["num_queries_without_relevant"] == num_queries
    assert result["num_queries"] == sum(any(grade > 0 for grade in q.values()) for q in qrels)


@pytest.mark.parametrize("top_k", [1, 7, 50, 120, None])
def test_rank_documents_matches_python_sort(top_k: int | None) -> None:
    torch.manual_seed(1)
    scores = (torch.rand(20, 120) * 5).round()  # 6 distinct values: ties straddle every cut-off
    tie_break = torch.randperm(120)
    ranked = rank_documents(scores, tie_break=tie_break, top_k=top_k)
    for row, got in zip(scores.tolist(), ranked.tolist()):
        expected = sorted(range(120), key=lambda doc: (-row[doc], tie_break[doc].item()))
        assert got == expected[:top_k]


# ---------------------------------------------------------------------------------------------------------------------
# Against sentence-transformers' InformationRetrievalEvaluator
# ---------------------------------------------------------------------------------------------------------------------

# Cut-offs up to 250 (> the 200 docs) test the clamping at the corpus size; but then ST keeps whole chunks, so the
# small set (max k = 10 < chunk size) is needed to drive ST's reselection of ties straddling its top-k cut-off.
ST_CUTOFFS = {
    "large": {
        "accuracy_at_k": [1, 3, 5, 10],
        "precision_recall_at_k": [1, 3, 5, 10, 100, 250],
        "mrr_at_k": [1, 5, 10, 250],
        "ndcg_at_k": [1, 3, 5, 10, 250],
        "map_at_k": [5, 100, 250],
    },
    "small": {
        "accuracy_at_k": [1, 3, 5, 10],
        "precision_recall_at_k": [1, 3, 5, 10],
        "mrr_at_k": [1, 5, 10],
        "ndcg_at_k": [1, 3, 5, 10],
        "map_at_k": [1, 5, 10],
    },
}


def st_metrics(
    scores: torch.Tensor, corpus_ids: list, relevant: list[set], corpus_chunk_size: int, cutoffs: str
) -> dict:
    """Run ST's full ``compute_all_metrics`` (chunked top-k, tie handling, ``compute_metrics``) on fixed scores.

    The "texts" handed to the evaluator are the row / column indices of ``scores``; the overridden ``embed_inputs``
    returns them as tensors and the score function looks the scores up, so no model is needed.
    """
    evaluation = pytest.importorskip("sentence_transformers.sentence_transformer.evaluation")

    class FixedScoresEvaluator(evaluation.InformationRetrievalEvaluator):
        def embed_inputs(self, model, sentences, **kwargs) -> torch.Tensor:
            return torch.tensor(list(sentences))

    evaluator = FixedScoresEvaluator(
        queries={f"q{i}": i for i in range(len(relevant))},
        corpus={cid: j for j, cid in enumerate(corpus_ids)},
        relevant_docs={f"q{i}": docs for i, docs in enumerate(relevant)},
        score_functions={"fixed": lambda q, d: scores[q][:, d]},
        corpus_chunk_size=corpus_chunk_size,
        write_csv=False,
        **ST_CUTOFFS[cutoffs],
    )
    by_metric = evaluator.compute_all_metrics(model=None)["fixed"]
    # ST keys look like {"ndcg@k": {10: value}}; ours like "ndcg@10".
    return {name.replace("@k", f"@{k}"): value for name, values in by_metric.items() for k, value in values.items()}


def random_st_case(seed: int, num_queries: int = 40, num_docs: int = 200) -> tuple[torch.Tensor, list[set]]:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    scores = (torch.rand(num_queries, num_docs) * 10).round() / 10  # 11 distinct values: ties everywhere
    scores[0] = 0.5  # one query where every doc ties
    relevant = [set(rng.sample(range(num_docs), rng.randint(1, 3))) for _ in range(num_queries)]
    relevant[3] = set()  # queries without relevant docs, which ST drops
    relevant[17] = set()
    return scores, relevant


@pytest.mark.parametrize("cutoffs", ["large", "small"])
@pytest.mark.parametrize("corpus_chunk_size", [64, 50_000])
def test_matches_sentence_transformers(corpus_chunk_size: int, cutoffs: str) -> None:
    scores, relevant = random_st_case(seed=2)
    # Integer corpus ids 0..n-1: ST breaks ties by ascending id, i.e. by doc index, our default.
    expected = st_metrics(scores, list(range(scores.shape[1])), relevant, corpus_chunk_size, cutoffs)
    qrels = [dict.fromkeys(docs, 1.0) for docs in relevant]
    result = retrieval_metrics(scores, qrels, list(expected))
    assert result["num_queries"] == 38 and result["num_queries_without_relevant"] == 2
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-9, rel=0), name


@pytest.mark.parametrize("cutoffs", ["large", "small"])
def test_matches_sentence_transformers_with_string_corpus_ids(cutoffs: str) -> None:
    scores, relevant = random_st_case(seed=3)
    num_docs = scores.shape[1]
    # ST breaks ties by ascending corpus id; with shuffled string ids that is not doc order, so tie_break must
    # carry the id order. Zero-padding makes string order equal to numeric order.
    id_order = torch.randperm(num_docs, generator=torch.Generator().manual_seed(3))
    corpus_ids = [f"doc-{int(key):04d}" for key in id_order]
    st_relevant = [{corpus_ids[doc] for doc in docs} for docs in relevant]
    expected = st_metrics(scores, corpus_ids, st_relevant, corpus_chunk_size=64, cutoffs=cutoffs)
    qrels = [dict.fromkeys(docs, 1) for docs in relevant]
    result = retrieval_metrics(scores, qrels, list(expected), tie_break=id_order)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-9, rel=0), name
    # And the tie order really matters here: without tie_break some metric differs.
    default_order = retrieval_metrics(scores, qrels, list(expected))
    assert any(abs(default_order[name] - value) > 1e-9 for name, value in expected.items())
