"""The model: a Sentence Transformer built from an embedding checkpoint or a bare vision-language model."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
from sentence_transformers.util.file_io import is_sentence_transformer_model

from vdr.config import ModelArguments, looks_like_local_path
from vdr.errors import VdrError
from vdr.tiny_model import TINY_MODEL_ID, ensure_tiny_qwen3_vl

logger = logging.getLogger(__name__)

# Qwen-VL chat templates end with "<|im_start|>assistant\n" when asked for a generation prompt: the
# embedding is the hidden state of that final token.
PROCESSING_KWARGS = {"chat_template": {"add_generation_prompt": True}}

# min_pixels / max_pixels (the recipe's processor_kwargs) are applied when the processor loads, but transformers
# 5.23 also sees them on every call and warns each time; the values still take effect, so that one warning is noise.
warnings.filterwarnings("ignore", message="Passing `min_pixels` and `max_pixels` to a processor call is deprecated")


class UnusedLmHeadReportFilter(logging.Filter):
    """Drops transformers' load report when its only finding is the checkpoint's ``lm_head.weight`` left unused: an
    embedding model loads the Qwen3-VL backbone without its language-model head, as intended. A report with any
    other finding (a missing or mismatched weight) still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = re.findall(r"^(\S+)\s*\|\s*(?:\x1b\[[\d;]*m)*([A-Z]+)", message, flags=re.MULTILINE)
        return {(key, status) for key, status in rows if key != "Key"} != {("lm_head.weight", "UNEXPECTED")}


logging.getLogger("transformers.modeling_utils").addFilter(UnusedLmHeadReportFilter())


def resolve_model_path(model_name_or_path: str) -> str:
    """Map the offline tiny model's name to its cached folder; check that a local path exists."""
    if model_name_or_path == TINY_MODEL_ID:
        return str(ensure_tiny_qwen3_vl())
    looks_local = looks_like_local_path(model_name_or_path)
    if looks_local and not Path(model_name_or_path).expanduser().exists():
        unfinished_run = (
            " It looks like a training run's final model, which exists once that run has finished (the reranker "
            "quickstart starts from `python train_vdr.py --config configs/quickstart.yaml`'s outputs/quickstart/final)."
            if Path(model_name_or_path).name == "final"
            else ""
        )
        raise VdrError(
            f"Model path '{model_name_or_path}' does not exist. Give a local model folder, a Hub model id such "
            f"as 'Qwen/Qwen3-VL-Embedding-2B', or '{TINY_MODEL_ID}' for the offline tiny model.{unfinished_run}"
        )
    return str(Path(model_name_or_path).expanduser()) if looks_local else model_name_or_path


def hub_file(model_id: str, filename: str) -> Path | None:
    """One file of a Hub model (its card, its Sentence Transformers config), or None when it cannot be had:
    offline, no such file, not a Hub id. For what only adds information (a model's dims or kind), never required."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model_id, filename))
    except Exception:
        return None


def model_kwargs(args: ModelArguments) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments: dtype and attention kernel (with the flash-attn fallback)."""
    kwargs: dict[str, Any] = {}
    if args.torch_dtype:
        kwargs["dtype"] = args.torch_dtype
    attention = args.attn_implementation
    if attention == "flash_attention_2" and not _flash_attention_available():
        logger.warning(
            "flash_attention_2 needs the flash-attn package and a CUDA GPU; using 'sdpa' instead "
            "(install it with: pip install flash-attn --no-build-isolation)."
        )
        attention = "sdpa"
    if attention:
        kwargs["attn_implementation"] = attention
    return kwargs


def _flash_attention_available() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def processor_kwargs(args: ModelArguments) -> dict[str, Any]:
    """Processor keyword arguments: the page-size bounds of the image processor."""
    return {key: value for key, value in (("min_pixels", args.min_pixels), ("max_pixels", args.max_pixels)) if value}


def build_model(
    args: ModelArguments, model_card_data: SentenceTransformerModelCardData | None = None
) -> SentenceTransformer:
    """Load ``args.model_name_or_path`` as a ``SentenceTransformer`` ready to finetune.

    A Sentence Transformers checkpoint (one with ``modules.json``) loads as it is. A bare vision-language
    model gets Transformer -> last-token Pooling -> Normalize: Sentence Transformers' automatic default
    would be mean pooling without normalisation, which is wrong for Qwen3-VL embedders.
    """
    path = resolve_model_path(args.model_name_or_path)
    load_kwargs = {"model_kwargs": model_kwargs(args), "processor_kwargs": processor_kwargs(args)}
    try:
        if is_sentence_transformer_model(path, revision=args.revision):
            model = SentenceTransformer(path, revision=args.revision, model_card_data=model_card_data, **load_kwargs)
        else:
            model = _build_from_vlm(path, args.revision, model_card_data, load_kwargs)
    except VdrError:
        raise
    except (OSError, ValueError) as error:
        raise VdrError(
            f"Could not load model '{args.model_name_or_path}': {type(error).__name__}: {error}. Check the path "
            "or Hub id (and HF_TOKEN / network access for Hub models)."
        ) from None
    set_prompts(model, args.query_prompt, args.document_prompt)
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
