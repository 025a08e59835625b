"""The late-interaction (ColPali-style) model: Sentence Transformers' ``MultiVectorEncoder``.

A multi-vector model keeps one 128-d vector per token (for a page: mostly its image patches) and scores a query
against a page with MaxSim: each query token takes its best-matching page token, and the maxima are summed.
``MultiVectorEncoder`` builds it from the same base as the single-vector recipe: from a Sentence Transformers
folder it drops Pooling / Normalize and adds a token-level Dense projection to 128 dims (randomly initialised,
hence its higher learning rate), a scoring mask and a token-level Normalize."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sentence_transformers import MultiVectorEncoder
from sentence_transformers.base.modules.dense import Dense
from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

from vdr.errors import VdrError
from vdr.hub import hub_file
from vdr.models.embedder import set_prompts
from vdr.models.loading import ModelLoadingArguments, model_kwargs, processor_kwargs, resolve_model_path

#: ``model_type`` in a saved model's config_sentence_transformers.json.
SAVED_MODEL_TYPE = "MultiVectorEncoder"


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
    model_name_or_path: str, loading: ModelLoadingArguments, model_card_data: Any = None
) -> MultiVectorEncoder:
    """A ``MultiVectorEncoder`` from a base model (Sentence Transformers folder, bare VLM or Hub id) or a saved one,
    with the same loading options (dtype, attention, pixels, prompts) as the single-vector path."""
    path = resolve_model_path(model_name_or_path)
    try:
        model = MultiVectorEncoder(
            path,
            revision=loading.revision,
            model_kwargs=model_kwargs(loading),
            processor_kwargs=processor_kwargs(loading),
            model_card_data=model_card_data,
        )
    except (OSError, ValueError) as error:
        raise VdrError(
            f"Could not load '{model_name_or_path}' as a multi-vector model: {type(error).__name__}: {error}."
        ) from None
    set_prompts(model, loading.query_prompt, loading.document_prompt)
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
