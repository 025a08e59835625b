"""Searching opened indexes with a text query: each index's own model (loaded as the index records it, once per
model and settings) encodes the query; an optional reranker reorders each index's top k (the evaluation's
retrieve-then-rerank loading and scoring)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder

from vdr.data.retrieval_sets import RetrievalData
from vdr.evaluation.encoding import ResizedPageCache, encode_full_dim
from vdr.evaluation.model_list import check_rerankers, expand_models
from vdr.evaluation.retrieve_then_rerank import load_reranker, score_pairs
from vdr.models.embedder import build_model
from vdr.models.loading import ModelLoadingArguments
from vdr.search.arguments import QueryArguments
from vdr.search.index import PageIndex

logger = logging.getLogger(__name__)


@dataclass
class Searcher:
    """Opened indexes by name, their models, and the query options."""

    indexes: dict[str, PageIndex]
    args: QueryArguments
    models: dict[str, SentenceTransformer] = field(default_factory=dict)
    reranker: CrossEncoder | None = None

    @classmethod
    def open(cls, args: QueryArguments) -> Searcher:
        """Open every ``--index`` (each named by its folder, made unique), load their models and the reranker."""
        indexes: dict[str, PageIndex] = {}
        for uri in args.index:
            name = uri.rstrip("/").rsplit("/", 1)[-1] or uri
            while name in indexes:
                name += "'"
            indexes[name] = PageIndex.open(uri)
        searcher = cls(indexes, args)
        for index in indexes.values():
            searcher._model(index)
        if args.reranker:
            candidates = expand_models([args.reranker], flag="--reranker")
            check_rerankers(candidates)
            loading = ModelLoadingArguments(**next(iter(indexes.values())).settings.loading)
            searcher.reranker = load_reranker(candidates[0], loading)
        return searcher

    def _model(self, index: PageIndex) -> SentenceTransformer:
        settings = index.settings
        key = f"{settings.model_fingerprint}:{sorted(settings.loading.items())}"
        if key not in self.models:
            self.models[key] = build_model(settings.model, ModelLoadingArguments(**settings.loading))
        return self.models[key]

    def search(self, text: str, top_k: int | None = None) -> dict[str, list[dict[str, Any]]]:
        """Each index's top k pages for ``text`` (reranked when a reranker is loaded), best first."""
        top_k = top_k or self.args.top_k
        results = {}
        for name, index in self.indexes.items():
            query = encode_full_dim(self._model(index), [text], "query", 1, show_progress_bar=False)[0]
            hits = index.search(query, top_k, self.args.rescore_multiplier, self.args.nprobes, self.args.refine_factor)
            results[name] = self._rerank(text, hits) if self.reranker is not None else hits
        return results

    def _rerank(self, text: str, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The hits reordered by the reranker's scores (raw log-odds), each keeping its first-stage score."""
        if not hits:
            return hits
        data = RetrievalData({0: text}, {i: hit["page_file"] for i, hit in enumerate(hits)}, {})
        pairs = [(0, i) for i in range(len(hits))]
        scores = score_pairs(self.reranker, data, pairs, self.args.rerank_batch_size, ResizedPageCache(0), "query")
        reranked = [{**hit, "first_stage_score": hit["score"], "score": scores[(0, i)]} for i, hit in enumerate(hits)]
        return sorted(reranked, key=lambda hit: -hit["score"])


def format_results(results: dict[str, list[dict[str, Any]]]) -> str:
    """Plain text: per index, one line per page (rank, score, document, page)."""
    lines = []
    for name, hits in results.items():
        lines.append(f"{name}:")
        width = max([len(hit["document"]) for hit in hits] + [8])
        for rank, hit in enumerate(hits, 1):
            lines.append(f"  {rank:>3}  {hit['score']:>9.4f}  {hit['document']:<{width}}  page {hit['page']}")
    return "\n".join(lines)
