"""LoRA: train small low-rank adapters on a frozen model (PEFT), for GPUs too small to finetune it whole.

The adapter is added through Sentence Transformers' / transformers' own adapter support (``add_adapter``), under
PEFT's default adapter name: checkpoints then hold the adapter only, and resuming reloads it (a named adapter
does not resume). The final model is saved merged by default, with PEFT's own ``merge_and_unload``: a standalone
model that loads anywhere, at the base model's size and speed. ``--lora_merge false`` keeps the adapter only
(megabytes; loading it needs the base model, found through the adapter's ``base_model_name_or_path``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sentence_transformers import SentenceTransformer
from transformers import PreTrainedModel

from vdr.hub import looks_like_local_path
from vdr.models.loading import model_kwargs, resolve_model_path
from vdr.training.arguments import LoraArguments, ModelArguments
from vdr.training.run import save_final_model

logger = logging.getLogger(__name__)


def lora_config(args: LoraArguments, base_model: str, revision: str | None = None):
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.target_modules(),
        base_model_name_or_path=base_model,
        revision=revision,
    )


def portable_base_model(model_args: ModelArguments) -> str:
    """Where an adapter-only model finds its base: the Hub id as given, or a local folder's absolute path (a
    relative path would only resolve from the training run's working directory)."""
    path = resolve_model_path(model_args.model_name_or_path)
    return str(Path(path).resolve()) if looks_like_local_path(path) or Path(path).is_dir() else path


def add_lora_adapter(model: SentenceTransformer, lora_args: LoraArguments, model_args: ModelArguments) -> None:
    """Freeze the model and add trainable LoRA adapters under PEFT's default name (the one that resumes)."""
    from peft.functional import cast_adapter_dtype

    config = lora_config(lora_args, portable_base_model(model_args), model_args.revision)
    model.add_adapter(config)
    backbone = model.transformers_model
    # transformers' add_adapter records the path the weights were loaded from (for a Hub model, a local cache
    # snapshot); the adapter-only save must point at the portable name instead.
    backbone.peft_config["default"].base_model_name_or_path = config.base_model_name_or_path
    # Adapters in bf16 lose small updates; PEFT's own upcast keeps them (and their optimizer state) in fp32.
    cast_adapter_dtype(backbone, adapter_name="default", autocast_adapter_dtype=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "LoRA on %s: %d trainable parameters of %d (%.2f%%)",
        config.target_modules,
        trainable,
        total,
        100 * trainable / total,
    )


def has_lora_adapter(model: SentenceTransformer) -> bool:
    return bool(getattr(model.transformers_model, "_hf_peft_config_loaded", False))


def merged_backbone(model: SentenceTransformer, model_args: ModelArguments) -> PreTrainedModel:
    """The backbone with the trained adapter merged in, by PEFT's ``merge_and_unload`` on a fresh copy of the base
    model in CPU memory (the model being trained is left as it is). Merged and unmerged embeddings agree to ~1e-7
    in float32."""
    from peft import PeftModel

    backbone = model.transformers_model
    config = backbone.peft_config["default"]
    load_kwargs = {**model_kwargs(model_args), "dtype": backbone.dtype, "revision": model_args.revision}
    base = type(backbone).from_pretrained(resolve_model_path(config.base_model_name_or_path), **load_kwargs)
    with tempfile.TemporaryDirectory() as adapter_dir:
        backbone.save_pretrained(adapter_dir)  # adapter only: the format PeftModel.from_pretrained reads
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    return merged.eval()


@contextmanager
def swapped_backbone(model: SentenceTransformer, backbone: PreTrainedModel) -> Iterator[SentenceTransformer]:
    """``model`` with another backbone in its Transformer module, for saving; the original is put back after."""
    transformer = model[0]
    original, transformer.model = transformer.model, backbone
    try:
        yield model
    finally:
        transformer.model = original


def save_final(
    model: SentenceTransformer,
    output_dir: str,
    truncate_dim: int | None,
    matryoshka_dims: list[int],
    lora_args: LoraArguments,
    model_args: ModelArguments,
) -> Path:
    """Save the final model: merged when it carries a LoRA adapter and ``lora_merge`` is on (the default), else as
    it is (a LoRA model then saves its adapter only)."""
    if not (has_lora_adapter(model) and lora_args.lora_merge):
        return save_final_model(model, output_dir, truncate_dim, matryoshka_dims)
    logger.info("Merging the LoRA adapter into the base model's weights for the final save")
    with swapped_backbone(model, merged_backbone(model, model_args)):
        return save_final_model(model, output_dir, truncate_dim, matryoshka_dims)
