"""Retrieve-then-rerank for evaluate_vdr.py: each reranker reorders each embedding model's top K pages.

The embedding model ranks the whole corpus; the reranker scores (query, page) pairs for the top K pages of each
query only, and those K are reordered by its scores while every other page keeps its place. The reranked ranking
is scored by ``vdr.evaluation.metrics.score_matrix_metrics``: Sentence Transformers' ``InformationRetrievalEvaluator``,
as for the models alone, so "model + reranker" rows compare with "model" rows exactly. Reranker scores are cached
on disk per reranker and dataset: a re-run, or another model whose top K overlaps, scores only the pairs not seen
yet."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from sentence_transformers.cross_encoder import CrossEncoder

from vdr.data.page_images import page_resizer
from vdr.data.retrieval_sets import RetrievalData
from vdr.errors import VdrError
from vdr.evaluation.arguments import RerankArguments
from vdr.evaluation.encoding import EncodingSetup, EncodingStats, ResizedPageCache
from vdr.evaluation.metrics import ModelScores, result_record, score_matrix_metrics
from vdr.evaluation.model_list import ModelCandidate
from vdr.models.loading import ModelLoadingArguments
from vdr.models.reranker import RerankerModelArguments, build_reranker

logger = logging.getLogger(__name__)


def reranked_scores(scores: torch.Tensor, candidates: torch.Tensor, candidate_scores: torch.Tensor) -> torch.Tensor:
    """A score matrix whose ranking is each query's ``candidates`` first, best ``candidate_scores`` first, then
    every other page in its first-stage order.

    Args:
        scores: [queries, pages] first-stage scores.
        candidates: [queries, K] page indices of each query's top K (as ``shortlist`` returns them).
        candidate_scores: [queries, K] reranker scores of those pages.

    The candidates get scores above every first-stage score, ordered by the reranker (equal reranker scores keep
    the first-stage order); every other page keeps its first-stage score, hence its place and tie order.
    """
    num_candidates = candidates.shape[1]
    order = torch.sort(candidate_scores.double(), dim=1, descending=True, stable=True).indices
    new_rank = torch.empty_like(order)
    new_rank.scatter_(1, order, torch.arange(num_candidates).expand_as(order).contiguous())
    result = scores.double().clone()
    above_all = result.max() + 1
    result.scatter_(1, candidates, above_all + (num_candidates - new_rank).double())
    return result


def shortlist(scores: torch.Tensor, data: RetrievalData, top_k: int) -> torch.Tensor:
    """Each query's top K page indices, best first, in the evaluator's own order: by score, ties to the smaller
    corpus id."""
    ids = list(data.corpus)
    by_id = torch.tensor(sorted(range(len(ids)), key=ids.__getitem__), dtype=torch.long)
    order = torch.sort(scores[:, by_id], dim=1, descending=True, stable=True).indices
    return by_id[order[:, :top_k]]


def reranked_metrics(
    scores: torch.Tensor, candidates: torch.Tensor, candidate_scores: torch.Tensor, data: RetrievalData
) -> dict[str, float]:
    """The retrieval metrics of the reranked ranking, computed exactly as the embedding models' own."""
    return score_matrix_metrics(reranked_scores(scores, candidates, candidate_scores), data)


def score_pairs(
    reranker: CrossEncoder,
    data: RetrievalData,
    pairs: list[tuple[int, int]],
    batch_size: int,
    page_cache: ResizedPageCache,
    dataset_name: str,
) -> dict[tuple[int, int], float]:
    """Reranker scores (raw log-odds) of (query position, page position) pairs. Each page is resized once to the
    reranker's pixel budget, through the evaluation's page cache (shared with any model with the same processor
    settings, keyed as ``encode_pages`` keys them)."""
    if not pairs:
        return {}
    queries, pages = list(data.queries.values()), list(data.corpus.values())
    key, resize = page_resizer(reranker)
    stats = EncodingStats()
    resized = {i: page_cache.resized((dataset_name, *key, i), pages[i], resize, stats) for i in {p for _, p in pairs}}
    # Raw log-odds, not the default sigmoid: a saturated sigmoid would turn clear wins into ties.
    scores = reranker.predict(
        [(queries[query], resized[page]) for query, page in pairs],
        batch_size=batch_size,
        activation_fn=torch.nn.Identity(),
        convert_to_tensor=True,
        show_progress_bar=True,
    )
    return dict(zip(pairs, scores.float().cpu().tolist()))


@dataclass
class RerankResults:
    records: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # "model + reranker" -> its settings and cost
    errors: list[str] = field(default_factory=list)
    #: "model + reranker" -> dataset -> the reranked query x page scores (for the leaderboard tables)
    matrices: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def rerank_models(
    rerankers: list[ModelCandidate],
    args: RerankArguments,
    loading: ModelLoadingArguments,
    datasets: dict[str, RetrievalData],
    first_stages: dict[str, ModelScores],
    setup: EncodingSetup,
) -> RerankResults:
    """Load each reranker (``rerankers``: the ``--reranker`` values, expanded and checked) once and rerank every
    model's top K (``first_stages``: each model's scores, with its query x page scores kept) on every dataset. A
    reranker that fails is reported (``errors``) without losing the others' results."""
    results = RerankResults()
    for candidate in rerankers:
        reranker = None
        try:
            reranker = load_reranker(candidate, loading)
            fingerprint, reranker_key = setup.model_key(candidate.path, loading, role="reranker")
            for name, data in datasets.items():
                pairs = _rerank_dataset(reranker, candidate, reranker_key, name, data, first_stages, args, setup)
                for model, record in pairs.records.items():
                    reranked_name = f"{model} + {candidate.name}"
                    results.records.append({**record, "model": reranked_name})
                    results.matrices.setdefault(reranked_name, {})[name] = pairs.matrices[model]
                    entry = results.models.setdefault(
                        reranked_name,
                        {
                            "model": model,
                            "reranker": candidate.path,
                            "rerank_top_k": args.rerank_top_k,
                            "fingerprint": fingerprint,
                            "stats": {},
                        },
                    )
                    entry["stats"][name] = pairs.stats
        except (VdrError, torch.OutOfMemoryError) as error:
            hint = " Lower --rerank_batch_size or --max_pixels." if isinstance(error, torch.OutOfMemoryError) else ""
            logger.error("Skipping reranker '%s': %s%s", candidate.name, error, hint)
            results.errors.append(f"reranker {candidate.name}: {error}{hint}")
        finally:
            del reranker
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return results


def load_reranker(candidate: ModelCandidate, loading: ModelLoadingArguments) -> CrossEncoder:
    shared = ("attn_implementation", "torch_dtype", "min_pixels", "max_pixels")
    options = {name: getattr(loading, name) for name in shared}
    return build_reranker(RerankerModelArguments(model_name_or_path=candidate.path, **options))


@dataclass
class RerankedDataset:
    """One reranker on one dataset: a record per model it reranked, and what the pairs cost."""

    records: dict[str, dict[str, Any]]
    stats: dict[str, Any]
    matrices: dict[str, torch.Tensor]  # per model: its reranked query x page scores


def _rerank_dataset(
    reranker: CrossEncoder,
    candidate: ModelCandidate,
    reranker_key: dict[str, Any],
    name: str,
    data: RetrievalData,
    first_stages: dict[str, ModelScores],
    args: RerankArguments,
    setup: EncodingSetup,
) -> RerankedDataset:
    """Rerank every model's top K on one dataset: the pairs of all models are scored together, each once, and only
    those the cache does not hold yet."""
    top_k = args.rerank_top_k
    shortlists = {model: shortlist(scores.first_stage[name], data, top_k) for model, scores in first_stages.items()}
    wanted = {(q, p) for candidates in shortlists.values() for q, row in enumerate(candidates.tolist()) for p in row}
    cache_key = {**reranker_key, "dataset": setup.dataset_key(name, data)}
    known = _pair_scores(setup.cache.load(cache_key, is_valid=_is_pair_table))
    todo = sorted(wanted - known.keys())
    start = time.perf_counter()
    known.update(score_pairs(reranker, data, todo, args.rerank_batch_size, setup.page_cache, name))
    seconds = time.perf_counter() - start
    setup.cache.save(cache_key, _pair_table(known))
    throughput = len(todo) / seconds if todo else None
    print(
        f"Reranker {candidate.name} on {name}: {len(todo)} new (query, page) pairs in {seconds:.1f} s"
        + (f" = {throughput:.1f} pairs/s" if throughput else "")
        + f"; {len(wanted) - len(todo)} from the cache"
    )
    records, matrices = {}, {}
    for model, candidates in shortlists.items():
        candidate_scores = torch.tensor([[known[(q, p)] for p in row] for q, row in enumerate(candidates.tolist())])
        matrices[model] = reranked_scores(first_stages[model].first_stage[name], candidates, candidate_scores)
        values = score_matrix_metrics(matrices[model], data)
        records[model] = result_record(model, name, max(first_stages[model].dims), data, values)
    stats = {
        "pairs_scored": len(todo),
        "pairs_cached": len(wanted) - len(todo),
        "seconds": seconds,
        "pairs_per_second": throughput,
    }
    return RerankedDataset(records, stats, matrices)


def _pair_table(scores: dict[tuple[int, int], float]) -> torch.Tensor:
    """Reranker scores as the cache stores them: ``[pairs, 3]`` rows of query position, page position, score
    (float64: the positions stay exact)."""
    return torch.tensor([[q, p, s] for (q, p), s in scores.items()], dtype=torch.float64).reshape(-1, 3)


def _is_pair_table(table: Any) -> bool:
    return isinstance(table, torch.Tensor) and table.ndim == 2 and table.shape[1] == 3


def _pair_scores(table: torch.Tensor | None) -> dict[tuple[int, int], float]:
    return {} if table is None else {(int(q), int(p)): float(s) for q, p, s in table.tolist()}
