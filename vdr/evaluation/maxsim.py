"""Late interaction scored: MaxSim over page token matrices, with bytes per page from each page's token count, at
float32 and float16."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from sentence_transformers import MultiVectorEncoder
from sentence_transformers.util.similarity import maxsim

from vdr.data.retrieval_sets import RetrievalData
from vdr.evaluation.encoding import Embeddings, EncodingSetup, embed_dataset
from vdr.evaluation.metrics import ModelScores, metrics_from_scores, result_record
from vdr.evaluation.model_list import MULTI_VECTOR, ModelCandidate
from vdr.models.loading import ModelLoadingArguments

#: Storage precisions reported for token matrices, with their bytes per value.
TOKEN_PRECISIONS = {"float32": 4, "float16": 2}


def maxsim_scores(queries: Sequence[torch.Tensor], pages: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[len(queries), len(pages)]`` MaxSim scores of variable-length token matrices: for each query token its best
    page token's dot product, summed over the query's tokens."""
    return maxsim(list(queries), list(pages))


def token_dimension(embeddings: Embeddings) -> int:
    return int(embeddings.corpus[0].shape[1])


def multi_vector_records(
    model_name: str, dataset: str, data: RetrievalData, embeddings: Embeddings
) -> list[dict[str, Any]]:
    """One record per storage precision of the page token matrices (float32 first: the model's own scores)."""
    dim = token_dimension(embeddings)
    records = []
    for precision, value_bytes in TOKEN_PRECISIONS.items():
        dtype = getattr(torch, precision)
        pages = [page.to(dtype).float() for page in embeddings.corpus]  # stored at `precision`, scored in float32
        values = metrics_from_scores(maxsim_scores(embeddings.queries, pages), data)
        page_bytes = round(embeddings.tokens_per_page * dim * value_bytes, 1)
        records.append(
            result_record(
                model_name,
                dataset,
                dim,
                data,
                values,
                kind=MULTI_VECTOR,
                precision=precision,
                bytes_per_page=page_bytes,
                tokens_per_page=round(embeddings.tokens_per_page, 2),
            )
        )
    return records


def score_multi_vector_model(
    model: MultiVectorEncoder,
    candidate: ModelCandidate,
    datasets: dict[str, RetrievalData],
    setup: EncodingSetup,
    loading: ModelLoadingArguments,
    image_tokens_only: bool,
    keep_scores: frozenset[str] = frozenset(),
) -> ModelScores:
    """Main records (float32 only) and storage rows (every precision) of a multi-vector model on every dataset, and
    the query x page scores of those in ``keep_scores`` (for the leaderboard tables)."""
    fingerprint, model_key = setup.model_key(candidate.path, loading, image_tokens_only=image_tokens_only)
    scores = ModelScores(fingerprint=fingerprint)
    for name, data in datasets.items():
        start = time.perf_counter()
        embeddings = embed_dataset(model, name, data, setup, model_key)
        by_precision = multi_vector_records(candidate.name, name, data, embeddings)
        scores.records.append(by_precision[0])
        scores.storage += by_precision
        scores.dims = [token_dimension(embeddings)]
        if name in keep_scores:
            scores.matrices[name] = maxsim_scores(embeddings.queries, embeddings.corpus)
        scores.stats[name] = {**embeddings.stats.as_dict(), "seconds": time.perf_counter() - start}
    return scores
