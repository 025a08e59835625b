"""An embedding model scored on every dataset: one encoding per dataset, every Matryoshka dim sliced from it, every
storage precision (``quantization``), and the query x page scores a reranker starts from."""

from __future__ import annotations

import time

from sentence_transformers import SentenceTransformer

from vdr.data.retrieval_sets import RetrievalData
from vdr.evaluation.arguments import EvaluateArguments
from vdr.evaluation.encoding import EncodingSetup, embed_dataset
from vdr.evaluation.metrics import ModelScores, result_record, score_dims
from vdr.evaluation.model_list import ModelCandidate
from vdr.evaluation.quantization import quantized_records
from vdr.models.loading import ModelLoadingArguments


def score_single_vector_model(
    model: SentenceTransformer,
    candidate: ModelCandidate,
    datasets: dict[str, RetrievalData],
    dims: list[int],
    setup: EncodingSetup,
    loading: ModelLoadingArguments,
    args: EvaluateArguments,
    keep_first_stage: bool = False,
    keep_scores: frozenset[str] = frozenset(),
) -> ModelScores:
    """Records (one per dataset x dim), storage rows (each dim x ``args.precisions``) and, with
    ``keep_first_stage``, each dataset's query x page scores at the largest dim (for retrieve-then-rerank); those of
    the datasets in ``keep_scores`` are kept in ``matrices`` (for the leaderboard tables)."""
    fingerprint, model_key = setup.model_key(candidate.path, loading)
    scores = ModelScores(dims=dims, fingerprint=fingerprint)
    for name, data in datasets.items():
        start = time.perf_counter()
        embeddings = embed_dataset(model, name, data, setup, model_key)
        for dim, metrics in score_dims(model, embeddings.queries, embeddings.corpus, data, dims).items():
            scores.records.append(result_record(candidate.name, name, dim, data, metrics))
        scores.storage += quantized_records(
            candidate.name,
            name,
            data,
            embeddings.queries,
            embeddings.corpus,
            dims,
            args.precisions,
            args.rescore_multiplier,
        )
        if keep_first_stage or name in keep_scores:
            top = max(dims)
            queries, pages = embeddings.queries[:, :top], embeddings.corpus[:, :top]
            matrix = model.similarity(queries, pages).float().cpu()
            if keep_first_stage:
                scores.first_stage[name] = matrix
            if name in keep_scores:
                scores.matrices[name] = matrix
        scores.stats[name] = {**embeddings.stats.as_dict(), "seconds": time.perf_counter() - start}
    return scores
