"""A second stage: --reranker reorders an index's top k by the reranker's scores (the evaluation's reranker loading
and scoring), keeping each page's first-stage score."""

from __future__ import annotations

from tests.search.conftest import run


def test_a_reranker_reorders_the_top_k_by_its_scores(search_indexes):
    index = str(search_indexes["base"])
    alone = run("query", "--index", index, "--top_k", "4", "customer count of Wingtip Retail")["base"]
    reranked = run(
        "query",
        "--index",
        index,
        "--top_k",
        "4",
        "--reranker",
        "generated:tiny-qwen3-vl",
        "--json",
        "true",
        "customer count of Wingtip Retail",
    )["base"]
    assert {hit["id"] for hit in reranked} == {hit["id"] for hit in alone}  # the same pages, reordered
    scores = [hit["score"] for hit in reranked]
    assert scores == sorted(scores, reverse=True)
    first_stage = {hit["id"]: hit["score"] for hit in alone}
    assert all(hit["first_stage_score"] == first_stage[hit["id"]] for hit in reranked)
    assert [hit["score"] for hit in reranked] != [first_stage[hit["id"]] for hit in reranked]  # the reranker's own
