"""Late interaction (ColPali-style): Sentence Transformers' ``MultiVectorEncoder`` for training and evaluation.

A multi-vector model keeps one 128-d vector per token (for a page: mostly its image patches) and scores a query
against a page with MaxSim: each query token takes its best-matching page token, and the maxima are summed.
``MultiVectorEncoder`` builds it from the same base as the single-vector recipe: from a Sentence Transformers
folder it drops Pooling / Normalize and adds a token-level Dense projection to 128 dims (randomly initialised,
hence its higher learning rate), a scoring mask and a token-level Normalize.

Evaluation encodes each page once into a variable-length token matrix (cached on disk like single vectors) and
reports NDCG@10 etc. with bytes per page from the page's token count, at float32 and float16.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import MultiVectorEncoder
from sentence_transformers.base.modules.dense import Dense
from sentence_transformers.multi_vector_encoder.evaluation import MultiVectorInformationRetrievalEvaluator
from sentence_transformers.multi_vector_encoder.losses import CachedMultiVectorMultipleNegativesRankingLoss
from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask
from sentence_transformers.util.similarity import maxsim

from vdr.config import LossArguments, ModelLoadingArguments
from vdr.data import RetrievalData
from vdr.embedding_cache import EmbeddingCache
from vdr.errors import VdrError
from vdr.model import hub_file, model_kwargs, processor_kwargs, resolve_model_path, set_prompts
from vdr.model_comparison import EncodingSetup, encode_pages_largest_first
from vdr.preprocessing import EncodingStats, ResizedPageCache
from vdr.scoring import MULTI_VECTOR, metrics_from_scores, result_record

logger = logging.getLogger(__name__)

#: ``model_type`` in a saved model's config_sentence_transformers.json.
SAVED_MODEL_TYPE = "MultiVectorEncoder"
#: Storage precisions reported for token matrices, with their bytes per value.
TOKEN_PRECISIONS = {"float32": 4, "float16": 2}


def is_multi_vector_model(model_path: str) -> bool:
    """Whether a model folder (or Hub id) holds a saved ``MultiVectorEncoder``."""
    folder = Path(model_path).expanduser()
    name = "config_sentence_transformers.json"
    config = folder / name if folder.is_dir() else hub_file(model_path, name)
    if config is None or not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == SAVED_MODEL_TYPE
    except (ValueError, AttributeError):
        return False


def build_multi_vector_model(
    args: ModelLoadingArguments, model_name_or_path: str, model_card_data: Any = None
) -> MultiVectorEncoder:
    """A ``MultiVectorEncoder`` from a base model (Sentence Transformers folder, bare VLM or Hub id) or a saved one,
    with the same loading options (dtype, attention, pixels, prompts) as the single-vector path."""
    path = resolve_model_path(model_name_or_path)
    try:
        model = MultiVectorEncoder(
            path,
            revision=args.revision,
            model_kwargs=model_kwargs(args),  # both read only the loading options every argument group has
            processor_kwargs=processor_kwargs(args),
            model_card_data=model_card_data,
        )
    except (OSError, ValueError) as error:
        raise VdrError(
            f"Could not load '{model_name_or_path}' as a multi-vector model: {type(error).__name__}: {error}."
        ) from None
    set_prompts(model, args.query_prompt, args.document_prompt)
    return model


def keep_only_image_tokens(model: MultiVectorEncoder) -> None:
    """Score pages by their image-patch tokens only (colpali-engine's ``mask_non_image_embeddings``): the chat
    template's text tokens around the image are dropped from the index."""
    processor = model[0].processor
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    masks = [module for module in model if isinstance(module, MultiVectorMask)]
    if not masks:
        raise VdrError("This multi-vector model has no MultiVectorMask module, so its page tokens cannot be masked.")
    for mask in masks:
        mask.keep_only_token_ids = [image_token_id]


def projection_learning_rates(model: MultiVectorEncoder, learning_rate: float) -> dict[str, float]:
    """``learning_rate_mapping`` giving the token projection (the Dense module) its own learning rate; the
    pattern also matches the parameter names as the loss wraps the model (``model.<index>.linear``)."""
    index = next((i for i, module in enumerate(model) if isinstance(module, Dense)), None)
    if index is None:
        raise VdrError("--projection_learning_rate is set, but this multi-vector model has no Dense projection.")
    return {rf"^(model\.)?{index}\.linear": learning_rate}


def build_multi_vector_loss(
    model: MultiVectorEncoder, args: LossArguments
) -> CachedMultiVectorMultipleNegativesRankingLoss:
    """In-batch negatives scored with MaxSim, with gradient caching (memory of ``mini_batch_size`` rows)."""
    return CachedMultiVectorMultipleNegativesRankingLoss(
        model, mini_batch_size=args.mini_batch_size, gather_across_devices=args.gather_across_devices
    )


def build_multi_vector_evaluator(
    data: RetrievalData, name: str, batch_size: int
) -> MultiVectorInformationRetrievalEvaluator:
    """The trainer's retrieval evaluator (MaxSim; no truncate_dim: token vectors have no Matryoshka dims)."""
    return MultiVectorInformationRetrievalEvaluator(
        queries=data.queries,
        corpus=data.corpus,
        relevant_docs=data.relevant_docs(),
        batch_size=batch_size,
        show_progress_bar=True,
        name=name,
    )


def maxsim_scores(queries: Sequence[torch.Tensor], pages: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[len(queries), len(pages)]`` MaxSim scores of variable-length token matrices: for each query token its best
    page token's dot product, summed over the query's tokens."""
    return maxsim(list(queries), list(pages))


# --------------------------------------------------------------------------------------------------------------------
# Encoding for evaluation: token matrices, cached on disk
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TokenEmbeddings:
    """A multi-vector model's token matrices for one dataset's queries and pages."""

    queries: list[torch.Tensor]
    pages: list[torch.Tensor]
    stats: EncodingStats = field(default_factory=EncodingStats)

    @property
    def tokens_per_page(self) -> float:
        return sum(len(page) for page in self.pages) / len(self.pages)


def save_token_matrices(cache: EmbeddingCache, key: dict[str, Any], matrices: list[torch.Tensor]) -> None:
    """Variable-length matrices as one ``[total_tokens, dim]`` tensor plus each matrix's length."""
    path = cache.path(key)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    lengths = torch.tensor([len(matrix) for matrix in matrices])
    torch.save({"values": torch.cat(matrices), "lengths": lengths}, temporary)
    temporary.replace(path)  # atomic, as EmbeddingCache.save


def load_token_matrices(cache: EmbeddingCache, key: dict[str, Any], rows: int) -> list[torch.Tensor] | None:
    path = cache.path(key)
    if path is None or not path.exists():
        return None
    try:
        stored = torch.load(path, weights_only=True)
        values, lengths = stored["values"], stored["lengths"]
    except Exception:  # a truncated or foreign file: recompute rather than fail
        logger.warning("Ignoring unreadable cached token embeddings %s", path)
        return None
    if len(lengths) != rows or int(lengths.sum()) != len(values):
        return None
    return list(torch.split(values, lengths.tolist()))


def encode_page_tokens(
    model: MultiVectorEncoder,
    pages: Sequence[Any],
    batch_size: int,
    page_cache: ResizedPageCache,
    dataset_name: str,
    stats: EncodingStats,
) -> list[torch.Tensor]:
    """Pages to token matrices (float32, CPU), largest first, as ``model_comparison.encode_pages``."""

    def encode(batch: list[Any]) -> list[torch.Tensor]:
        matrices = model.encode_document(batch, batch_size=batch_size, show_progress_bar=False)
        return [matrix.float().cpu() for matrix in matrices]

    return encode_pages_largest_first(
        model, pages, batch_size, page_cache, dataset_name, stats, encode, "Encoding pages (multi-vector)"
    )


def embed_tokens(
    model: MultiVectorEncoder, name: str, data: RetrievalData, setup: EncodingSetup, model_key: dict[str, Any]
) -> TokenEmbeddings:
    """Token matrices of dataset ``name``'s queries and pages, from the embedding cache when it has them."""
    stats = EncodingStats()
    batch_size, cache = setup.batch_size, setup.embedding_cache
    encoded = {}
    for kind, inputs in (("queries", list(data.queries.values())), ("corpus", list(data.corpus.values()))):
        key = {**model_key, "dataset": setup.dataset_key(name, data), "kind": kind, "layout": "token_matrices"}
        cached = load_token_matrices(cache, key, rows=len(inputs))
        if cached is not None:
            stats.cache_hits += 1
            encoded[kind] = cached
            continue
        if kind == "queries":
            queries = model.encode_query(inputs, batch_size=batch_size, show_progress_bar=False)
            encoded[kind] = [matrix.float().cpu() for matrix in queries]
        else:
            encoded[kind] = encode_page_tokens(model, inputs, batch_size, setup.page_cache, name, stats)
        save_token_matrices(cache, key, encoded[kind])
    return TokenEmbeddings(encoded["queries"], encoded["corpus"], stats)


def token_dimension(embeddings: TokenEmbeddings) -> int:
    return int(embeddings.pages[0].shape[1])


def multi_vector_records(
    model_name: str, dataset: str, data: RetrievalData, embeddings: TokenEmbeddings
) -> list[dict[str, Any]]:
    """One record per storage precision of the page token matrices (float32 first: the model's own scores)."""
    dim = token_dimension(embeddings)
    records = []
    for precision, value_bytes in TOKEN_PRECISIONS.items():
        dtype = getattr(torch, precision)
        pages = [page.to(dtype).float() for page in embeddings.pages]  # stored at `precision`, scored in float32
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


def evaluate_multi_vector(model: MultiVectorEncoder, data: RetrievalData, batch_size: int) -> dict[int, dict]:
    """``{token dim: metrics}`` of a model on ``data`` (train_vdr.py's before / after figures), encoded once."""
    setup = EncodingSetup(batch_size, ResizedPageCache(budget_bytes=0), EmbeddingCache(None))
    embeddings = embed_tokens(model, "eval", data, setup, {})
    scores = maxsim_scores(embeddings.queries, embeddings.pages)
    return {token_dimension(embeddings): metrics_from_scores(scores, data)}


def score_multi_vector_model(
    model: MultiVectorEncoder,
    model_name: str,
    datasets: dict[str, RetrievalData],
    setup: EncodingSetup,
    model_key: dict[str, Any],
) -> tuple[list[dict], list[dict], dict[str, dict]]:
    """(main records: float32 only, storage records: every precision, encoding statistics per dataset)."""
    records, storage, stats = [], [], {}
    for name, data in datasets.items():
        start = time.perf_counter()
        embeddings = embed_tokens(model, name, data, setup, model_key)
        by_precision = multi_vector_records(model_name, name, data, embeddings)
        records.append(by_precision[0])
        storage += by_precision
        stats[name] = {**embeddings.stats.as_dict(), "seconds": time.perf_counter() - start}
    return records, storage, stats
