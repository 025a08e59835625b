"""The embedding model: a ``SentenceTransformer`` built from an embedding checkpoint or a bare vision-language model,
and its embedding dimensions."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
from sentence_transformers.util.file_io import is_sentence_transformer_model

from vdr.errors import VdrError
from vdr.models.loading import (
    PROCESSING_KWARGS,
    ModelLoadingArguments,
    model_kwargs,
    processor_kwargs,
    resolve_model_path,
)

logger = logging.getLogger(__name__)


def build_model(
    model_name_or_path: str,
    loading: ModelLoadingArguments,
    model_card_data: SentenceTransformerModelCardData | None = None,
) -> SentenceTransformer:
    """Load ``model_name_or_path`` as a ``SentenceTransformer`` ready to finetune or evaluate, with ``loading``'s
    options (dtype, attention, pixels, prompts): training, evaluation and mining load a model the same way.

    A Sentence Transformers checkpoint (one with ``modules.json``) loads as it is. A bare vision-language
    model gets Transformer -> last-token Pooling -> Normalize: Sentence Transformers' automatic default
    would be mean pooling without normalisation, which is wrong for Qwen3-VL embedders.
    """
    path = resolve_model_path(model_name_or_path)
    revision = loading.revision
    load_kwargs = {"model_kwargs": model_kwargs(loading), "processor_kwargs": processor_kwargs(loading)}
    try:
        if is_sentence_transformer_model(path, revision=revision):
            model = SentenceTransformer(path, revision=revision, model_card_data=model_card_data, **load_kwargs)
        else:
            model = _build_from_vlm(path, revision, model_card_data, load_kwargs)
    except VdrError:
        raise
    except (OSError, ValueError) as error:
        raise VdrError(
            f"Could not load model '{model_name_or_path}': {type(error).__name__}: {error}. Check the path "
            "or Hub id (and HF_TOKEN / network access for Hub models)."
        ) from None
    set_prompts(model, loading.query_prompt, loading.document_prompt)
    return model


def _build_from_vlm(
    path: str, revision: str | None, model_card_data: SentenceTransformerModelCardData | None, load_kwargs: dict
) -> SentenceTransformer:
    logger.info("'%s' is not a Sentence Transformers model: adding last-token pooling and normalisation", path)
    if revision:
        load_kwargs["model_kwargs"] = {**load_kwargs["model_kwargs"], "revision": revision}
        load_kwargs["processor_kwargs"] = {**load_kwargs["processor_kwargs"], "revision": revision}
    transformer = Transformer(path, processing_kwargs=PROCESSING_KWARGS, **load_kwargs)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], model_card_data=model_card_data)


def set_prompts(model: SentenceTransformer, query_prompt: str | None, document_prompt: str | None) -> None:
    """Store query/document prompts on the model, so ``encode_query``/``encode_document`` and the saved
    model use them (prompts given only to the trainer are not saved)."""
    if query_prompt is not None:
        model.prompts["query"] = query_prompt
    if document_prompt is not None:
        model.prompts["document"] = document_prompt


@contextmanager
def full_dimension(model: SentenceTransformer) -> Iterator[SentenceTransformer]:
    """Temporarily drop the model's default ``truncate_dim`` (saved models carry one), to get full embeddings."""
    saved, model.truncate_dim = model.truncate_dim, None
    try:
        yield model
    finally:
        model.truncate_dim = saved


def embedding_dimension(model: SentenceTransformer) -> int:
    """The model's full (untruncated) embedding dimension."""
    with full_dimension(model):
        return model.get_embedding_dimension()


def check_dims(dims: Sequence[int], model: SentenceTransformer, what: str) -> list[int]:
    """Dims must lie between 1 and the model's embedding dimension; returned largest first, without repeats."""
    full = embedding_dimension(model)
    bad = [dim for dim in dims if not 1 <= dim <= full]
    if bad:
        raise VdrError(
            f"{what} {bad} cannot be produced: the model's embeddings have {full} dimensions. Choose values between "
            f"1 and {full}."
        )
    return sorted(set(dims), reverse=True)


def check_truncate_dim(model: SentenceTransformer, truncate_dim: int | None) -> None:
    """Fail before training, not after, when the default output dimension cannot be produced."""
    if truncate_dim is not None:
        check_dims([truncate_dim], model, "truncate_dim")
