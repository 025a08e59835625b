"""Retrieve-then-rerank for evaluate_vdr.py: each reranker reorders each embedding model's top K pages.

The embedding model ranks the whole corpus; the reranker scores (query, page) pairs for the top K pages of each
query only, and those K are reordered by its scores while every other page keeps its place. The reranked ranking
is scored by ``vdr.evaluation.score_matrix_metrics``: Sentence Transformers' ``InformationRetrievalEvaluator``, as
for the models alone, so "model + reranker" rows compare with "model" rows exactly. Reranker scores are cached on
disk per reranker and dataset: a re-run, or another model whose top K overlaps, scores only the pairs not seen yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder

from vdr.config import ModelLoadingArguments, RepeatableFlag
from vdr.data import RetrievalData
from vdr.embedding_cache import model_fingerprint
from vdr.errors import VdrError
from vdr.evaluation import score_matrix_metrics
from vdr.model import resolve_model_path
from vdr.model_comparison import EncodingSetup, ModelCandidate, ModelEmbeddings, expand_models
from vdr.preprocessing import EncodingStats, ResizedPageCache, page_resizer
from vdr.reranker import RerankerModelArguments, build_reranker
from vdr.scoring import result_record

logger = logging.getLogger(__name__)

#: Bump when what the score cache stores, or how it is computed, changes.
RERANK_CACHE_FORMAT_VERSION = 1


@dataclass
class RerankArguments:
    """Retrieve-then-rerank: rerankers applied to every embedding model's top pages."""

    reranker: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Reranker(s) (repeatable): a train_reranker_vdr.py output folder (its final model), a CrossEncoder "
            "folder, a Hub id such as Qwen/Qwen3-VL-Reranker-2B, or 'generated:tiny-qwen3-vl'. Each reranks every "
            "model's top --rerank_top_k pages, reported as 'model + reranker'. Loaded with the same dtype, "
            "attention and pixel options as the models.",
            "action": RepeatableFlag,
        },
    )
    rerank_top_k: int = field(default=10, metadata={"help": "How many of each query's top pages a reranker reorders."})
    rerank_batch_size: int = field(default=8, metadata={"help": "(query, page) pairs per reranker forward pass."})

    def __post_init__(self):
        if self.rerank_top_k < 1 or self.rerank_batch_size < 1:
            raise ValueError("rerank_top_k and rerank_batch_size must be 1 or more")


# ---------------------------------------------------------------------------------------------------------------------
# The reranked ranking
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# First stage: what each embedding model retrieved
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FirstStage:
    """An embedding model's query x page scores per dataset, at the dim its reranked results are reported at (its
    largest evaluated dim), kept from the embeddings it was scored with (``score_model``'s ``on_embeddings``):
    nothing is encoded or read from the cache twice. Holds no reference to the model."""

    dim: int | None = None
    scores: dict[str, torch.Tensor] = field(default_factory=dict)

    def keep(self, model: SentenceTransformer, name: str, embeddings: ModelEmbeddings) -> None:
        dim = self.dim
        self.scores[name] = model.similarity(embeddings.queries[:, :dim], embeddings.corpus[:, :dim]).float().cpu()


# ---------------------------------------------------------------------------------------------------------------------
# Reranker scores, cached on disk
# ---------------------------------------------------------------------------------------------------------------------


class RerankScoreCache:
    """Reranker scores of (query position, page position) pairs: one file per reranker x dataset x loading
    settings, holding every pair scored so far; ``folder=None`` turns caching off."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None

    def path(self, key: dict[str, Any]) -> Path | None:
        if self.folder is None:
            return None
        key = {**key, "format": RERANK_CACHE_FORMAT_VERSION}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
        return self.folder / f"{digest}.pt"

    def load(self, key: dict[str, Any]) -> dict[tuple[int, int], float]:
        path = self.path(key)
        if path is None or not path.exists():
            return {}
        try:
            table = torch.load(path, weights_only=True)  # [pairs, 3]: query, page, score (float64: exact indices)
            return {(int(q), int(p)): float(s) for q, p, s in table.tolist()}
        except Exception:  # a truncated or foreign file: rescore rather than fail
            logger.warning("Ignoring unreadable cached reranker scores %s", path)
            return {}

    def save(self, key: dict[str, Any], scores: dict[tuple[int, int], float]) -> None:
        path = self.path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        table = torch.tensor([[q, p, s] for (q, p), s in scores.items()], dtype=torch.float64)
        temporary = path.with_suffix(".tmp")
        torch.save(table, temporary)
        temporary.replace(path)  # atomic: a killed run never leaves a half-written entry


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


# ---------------------------------------------------------------------------------------------------------------------
# The stage evaluate_vdr.py runs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RerankResults:
    records: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # "model + reranker" -> its settings and cost
    errors: list[str] = field(default_factory=list)


def rerank_models(
    args: RerankArguments,
    loading: ModelLoadingArguments,
    datasets: dict[str, RetrievalData],
    first_stages: dict[str, FirstStage],
    setup: EncodingSetup,
) -> RerankResults:
    """Load each reranker once and rerank every model's top K on every dataset. A reranker that fails is reported
    (``errors``) without losing the others' results."""
    results = RerankResults()
    cache_folder = setup.embedding_cache.folder
    cache = RerankScoreCache(cache_folder / "rerank" if cache_folder else None)
    for candidate in expand_models(args.reranker):
        reranker = None
        try:
            reranker = load_reranker(candidate, loading)
            fingerprint = model_fingerprint(resolve_model_path(candidate.path)) if cache.folder else None
            for name, data in datasets.items():
                _rerank_dataset(args, reranker, candidate, fingerprint, loading, name, data, first_stages, setup, cache,
                                results)  # fmt: skip
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


def _rerank_dataset(
    args: RerankArguments,
    reranker: CrossEncoder,
    candidate: ModelCandidate,
    fingerprint: str | None,
    loading: ModelLoadingArguments,
    name: str,
    data: RetrievalData,
    first_stages: dict[str, FirstStage],
    setup: EncodingSetup,
    cache: RerankScoreCache,
    results: RerankResults,
) -> None:
    """Rerank every model's top K on one dataset: the pairs of all models are scored together, each once."""
    cache_key = {"reranker": fingerprint, "dataset": setup.dataset_key(name, data), "loading": vars(loading)}
    top_k = args.rerank_top_k
    shortlists = {model: shortlist(stage.scores[name], data, top_k) for model, stage in first_stages.items()}
    wanted = {(q, p) for candidates in shortlists.values() for q, row in enumerate(candidates.tolist()) for p in row}
    known = cache.load(cache_key)
    todo = sorted(wanted - known.keys())
    start = time.perf_counter()
    known.update(score_pairs(reranker, data, todo, args.rerank_batch_size, setup.page_cache, name))
    seconds = time.perf_counter() - start
    cache.save(cache_key, known)
    throughput = len(todo) / seconds if todo else None
    print(
        f"Reranker {candidate.name} on {name}: {len(todo)} new (query, page) pairs in {seconds:.1f} s"
        + (f" = {throughput:.1f} pairs/s" if throughput else "")
        + f"; {len(wanted) - len(todo)} from the cache"
    )
    for model, candidates in shortlists.items():
        candidate_scores = torch.tensor([[known[(q, p)] for p in row] for q, row in enumerate(candidates.tolist())])
        values = reranked_metrics(first_stages[model].scores[name], candidates, candidate_scores, data)
        reranked_name = f"{model} + {candidate.name}"
        results.records.append(result_record(reranked_name, name, first_stages[model].dim, data, values))
        entry = results.models.setdefault(
            reranked_name,
            {"model": model, "reranker": candidate.path, "rerank_top_k": args.rerank_top_k, "fingerprint": fingerprint,
             "stats": {}},
        )  # fmt: skip
        entry["stats"][name] = {"pairs_scored": len(todo), "pairs_cached": len(wanted) - len(todo),
                                "seconds": seconds, "pairs_per_second": throughput}  # fmt: skip
