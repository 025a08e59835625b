"""Storage against quality for single-vector models: page embeddings kept as float32, int8 or binary, at every dim.

Quantization is Sentence Transformers' own ``quantize_embeddings``; scoring follows how an index of that precision
scores (the ``semantic_search_usearch`` / ``semantic_search_faiss`` patterns):

- ``float32``: cosine similarity of the truncated embeddings (the same numbers as the main results);
- ``int8``: integer dot product of int8 codes, queries and pages quantized with ranges calibrated on the corpus
  (each dim's min and max over the pages), as an int8 inner-product index scores;
- ``binary``: one sign bit per dim, packed 8 to a byte; pages ranked by Hamming distance to the binary query;
- ``binary_rescored``: the same Hamming search, then the ``rescore_multiplier x 10`` nearest pages re-ranked by the
  float query against their bits (float query . bits, as Sentence Transformers rescores); the index still holds
  only bits, so the bytes per page are binary's.

Bytes per page count the page's vector only (int8's two calibration rows are stored once per index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sentence_transformers.util.quantization import quantize_embeddings

from vdr.data.retrieval_sets import RetrievalData
from vdr.evaluation.arguments import STORAGE_PRECISIONS
from vdr.evaluation.metrics import metrics_from_scores, result_record
from vdr.evaluation.model_list import SINGLE_VECTOR

PRECISIONS = STORAGE_PRECISIONS
#: Rescoring reorders the top ``rescore_multiplier`` x this many binary hits: NDCG@10 is the headline metric.
RESCORE_TOP_K = 10


def bytes_per_page(dim: int, precision: str) -> int:
    """Storage of one page embedding of ``dim`` dims at ``precision``."""
    if precision == "float32":
        return 4 * dim
    if precision == "int8":
        return dim
    return (dim + 7) // 8  # binary: one bit per dim, packed into whole bytes


def quantized_scores(
    queries: torch.Tensor, corpus: torch.Tensor, precision: str, rescore_candidates: int = 40
) -> torch.Tensor:
    """``[num_queries, num_pages]`` scores (higher is better) of L2-normalised float embeddings, with the pages
    (and, except for rescoring, the queries) stored at ``precision``."""
    if precision == "float32":
        return queries @ corpus.T
    query_array, corpus_array = queries.numpy(), corpus.numpy()
    if precision == "int8":
        query_codes, corpus_codes = (
            quantize_embeddings(array, "int8", calibration_embeddings=corpus_array)
            for array in (query_array, corpus_array)
        )
        return torch.from_numpy(query_codes.astype(np.int64) @ corpus_codes.astype(np.int64).T)
    query_bits, corpus_bits = (quantize_embeddings(array, "ubinary") for array in (query_array, corpus_array))
    scores = -hamming_distances(query_bits, corpus_bits, queries.shape[1])
    if precision == "binary_rescored":
        scores = rescore_with_float_queries(scores, queries, corpus_bits, rescore_candidates)
    return scores


def unpack_bits(packed: np.ndarray, dim: int) -> torch.Tensor:
    """Packed sign bits (``ubinary``) back to a ``[n, dim]`` float tensor of 0/1, padding bits dropped."""
    return torch.from_numpy(np.unpackbits(packed, axis=-1)[:, :dim].astype(np.float32))


def hamming_distances(query_bits: np.ndarray, corpus_bits: np.ndarray, dim: int) -> torch.Tensor:
    """Hamming distance between every packed query and page: with bits mapped to +-1, a matching bit adds 1 to
    the dot product and a differing one -1, so distance = (dim - dot) / 2 (exact: small integers in float32)."""
    signed_queries = unpack_bits(query_bits, dim) * 2 - 1
    signed_pages = unpack_bits(corpus_bits, dim) * 2 - 1
    return ((dim - signed_queries @ signed_pages.T) / 2).round().long()


def rescore_with_float_queries(
    binary_scores: torch.Tensor, queries: torch.Tensor, corpus_bits: np.ndarray, candidates: int
) -> torch.Tensor:
    """Re-rank each query's ``candidates`` best binary hits by float query . page bits; the other pages keep
    their binary order below them. Ties among binary hits go to the page listed first."""
    num_pages = binary_scores.shape[1]
    candidates = min(candidates, num_pages)
    # A unique integer key per page (score, then position) makes the candidate set deterministic under ties.
    keys = binary_scores.long() * num_pages - torch.arange(num_pages)
    top = keys.topk(candidates, dim=1).indices
    page_bits = unpack_bits(corpus_bits, queries.shape[1])
    rescored = torch.einsum("qd,qkd->qk", queries, page_bits[top])
    # Every rescored value lies within +-sum|q|, and every binary score is <= 0: lift the candidates above all.
    lift = queries.abs().sum(dim=1, keepdim=True) + 1
    scores = binary_scores.double()
    scores.scatter_(1, top, (lift + rescored).double())
    return scores


def quantized_records(
    model: str,
    dataset: str,
    data: RetrievalData,
    query_embeddings: torch.Tensor,
    corpus_embeddings: torch.Tensor,
    dims: Sequence[int],
    precisions: Sequence[str] = PRECISIONS,
    rescore_multiplier: int = 4,
) -> list[dict[str, Any]]:
    """One record per dim x precision, from full-dimension float embeddings (truncated, then re-normalised: the
    project's models score by cosine)."""
    records = []
    for dim in dims:
        queries = torch.nn.functional.normalize(query_embeddings[:, :dim].float(), dim=1)
        corpus = torch.nn.functional.normalize(corpus_embeddings[:, :dim].float(), dim=1)
        for precision in precisions:
            scores = quantized_scores(queries, corpus, precision, rescore_multiplier * RESCORE_TOP_K)
            record = result_record(
                model,
                dataset,
                dim,
                data,
                metrics_from_scores(scores, data, shuffle_ties=precision != "float32"),
                kind=SINGLE_VECTOR,
                precision=precision,
                bytes_per_page=bytes_per_page(dim, precision),
            )
            records.append(record)
    return records
