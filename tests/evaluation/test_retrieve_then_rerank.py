"""Retrieve-then-rerank: exactly the top K reordered, the metrics of the reranked ranking, and evaluate_vdr.py's
rows."""

from __future__ import annotations

import pytest
import torch

from evaluate_vdr import main as evaluate_main
from evaluate_vdr import make_parser as evaluate_parser
from vdr.data.retrieval_sets import RetrievalData
from vdr.evaluation.retrieve_then_rerank import reranked_metrics, reranked_scores, shortlist

TINY = "generated:tiny-qwen3-vl"


MAX_PIXELS = 36864


def test_reranking_reorders_exactly_the_top_k_and_leaves_the_rest():
    # Two queries, six pages. First-stage order, query 0: 3 1 4 0 5 2; query 1: 0 2 (tie with 5, id order) 5 1 3 4.
    scores = torch.tensor([[0.3, 0.8, 0.0, 0.9, 0.7, 0.1], [0.9, 0.2, 0.5, 0.1, 0.0, 0.5]])
    data = RetrievalData({"q0": "a", "q1": "b"}, {f"d{i}": None for i in range(6)}, {"q0": {"d0": 1}, "q1": {"d1": 1}})
    candidates = shortlist(scores, data, top_k=3)
    assert candidates.tolist() == [[3, 1, 4], [0, 2, 5]]
    # The reranker prefers the third candidate, then the first; for query 1 it ties the first two.
    candidate_scores = torch.tensor([[1.0, -2.0, 5.0], [0.5, 0.5, 0.7]])
    ranking = shortlist(reranked_scores(scores, candidates, candidate_scores), data, top_k=6)
    assert ranking.tolist() == [[4, 3, 1, 0, 5, 2], [5, 0, 2, 1, 3, 4]]  # equal reranker scores keep the first order


def test_reranked_metrics_match_a_hand_computed_ranking():
    data = RetrievalData({"q": "query"}, {f"d{i}": None for i in range(4)}, {"q": {"d2": 1.0}})
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1]])  # the relevant page d2 is third
    candidates = torch.tensor([[0, 1, 2]])
    metrics = reranked_metrics(scores, candidates, torch.tensor([[0.0, 0.0, 3.0]]), data)
    assert metrics["ndcg@1"] == 1.0 and metrics["mrr@10"] == 1.0  # the reranker lifted it to the top
    metrics = reranked_metrics(scores, candidates, torch.tensor([[3.0, 2.0, 1.0]]), data)
    assert metrics["mrr@10"] == pytest.approx(1 / 3)


def test_evaluate_reports_retrieve_then_rerank_beside_the_model(reranker_quickstart, tmp_path):
    output_dir, _ = reranker_quickstart
    argv = [
        "--model",
        TINY,
        "--reranker",
        str(output_dir),
        *"--rerank_top_k 5 --dataset generated:pages --max_pixels".split(),
        str(MAX_PIXELS),
        *"--num_generated_rows 16 --generated_seed 1 --output_dir".split(),
        str(tmp_path / "eval"),
        "--cache_dir",
        str(tmp_path / "cache"),
    ]
    first = evaluate_main(*evaluate_parser().parse(argv))
    names = [record["model"] for record in first["records"]]
    assert names == ["tiny-qwen3-vl", "tiny-qwen3-vl + run"]
    alone, reranked = first["records"]
    # Only the top 5 moved: a relevant page ranked below 5 keeps its rank, so recall@5 and beyond cannot change
    for metric in ("recall@5", "recall@10", "recall@100"):
        assert reranked["metrics"][metric] == pytest.approx(alone["metrics"][metric])
    assert first["models"]["tiny-qwen3-vl + run"]["stats"]["pages"]["pairs_scored"] == 16 * 5
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| tiny-qwen3-vl |" in table and "| tiny-qwen3-vl + run |" in table
    # Again: every pair comes from the score cache, and the figures are the same
    again = evaluate_main(*evaluate_parser().parse([*argv, "--overwrite_output_dir", "true"]))
    assert again["models"]["tiny-qwen3-vl + run"]["stats"]["pages"]["pairs_scored"] == 0
    assert again["records"][1]["metrics"] == reranked["metrics"]


def test_without_the_cache_the_model_encodes_each_page_once_and_is_still_reranked(tmp_path, vdr_cache):
    argv = [
        "--model",
        TINY,
        "--reranker",
        TINY,
        *"--rerank_top_k 3 --dataset generated:pages --max_pixels".split(),
        str(MAX_PIXELS),
        *"--num_generated_rows 6 --generated_seed 2 --no_cache true --output_dir".split(),
        str(tmp_path / "eval"),
    ]
    result = evaluate_main(*evaluate_parser().parse(argv))
    assert [record["model"] for record in result["records"]] == ["tiny-qwen3-vl", "tiny-qwen3-vl + tiny-qwen3-vl"]
    pages = result["records"][0]["num_documents"]
    assert result["models"]["tiny-qwen3-vl"]["stats"]["pages"]["page_encodings"] == pages  # kept, not re-encoded
    assert result["models"]["tiny-qwen3-vl + tiny-qwen3-vl"]["stats"]["pages"]["pairs_scored"] == 6 * 3
