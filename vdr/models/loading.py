"""How every model is loaded: the path or Hub id resolved, dtype, attention kernel and page-size options, and the
model's identity by content (what the on-disk caches key on)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdr.errors import VdrError
from vdr.hub import hub_commit, looks_like_local_path
from vdr.offline.tiny_model import TINY_MODEL_ID, ensure_tiny_qwen3_vl

logger = logging.getLogger(__name__)


@dataclass
class ModelLoadingArguments:
    """How to load a model: shared by training and evaluation, so a model is evaluated as it was trained."""

    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel: 'flash_attention_2', 'sdpa' or 'eager'. flash_attention_2 falls back "
            "to sdpa, with a warning, when flash-attn or a CUDA GPU is missing."
        },
    )
    torch_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Weight dtype: 'bfloat16', 'float16', 'float32' or 'auto'. Default: the checkpoint's own dtype "
            "(transformers 5 loads in the dtype the weights were saved in)."
        },
    )
    min_pixels: int | None = field(
        default=None, metadata={"help": "Smallest page size in pixels after resizing (processor min_pixels)."}
    )
    max_pixels: int | None = field(
        default=None,
        metadata={"help": "Largest page size in pixels after resizing (processor max_pixels). Lower saves memory."},
    )
    query_prompt: str | None = field(
        default=None, metadata={"help": "Text prepended to queries, in training and stored in the saved model."}
    )
    document_prompt: str | None = field(
        default=None, metadata={"help": "Text prepended to documents, in training and stored in the saved model."}
    )

    def __post_init__(self):
        check_pixel_bounds(self.min_pixels, self.max_pixels)
        check_dtype_and_attention(self.torch_dtype, self.attn_implementation)


#: What transformers takes as a dtype name and as an attention kernel (a Hub kernel, "org/name", is taken as it is).
TORCH_DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def check_dtype_and_attention(torch_dtype: str | None, attn_implementation: str | None) -> None:
    """Names transformers would only refuse once the data and the model were loading."""
    if torch_dtype is not None and torch_dtype not in TORCH_DTYPES:
        raise ValueError(f"torch_dtype must be one of {', '.join(TORCH_DTYPES)}, got {torch_dtype!r}.")
    known = attn_implementation in ATTENTION_IMPLEMENTATIONS or "/" in (attn_implementation or "")
    if attn_implementation is not None and not known:
        raise ValueError(
            f"attn_implementation must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)} (or a Hub kernel, "
            f"org/name), got {attn_implementation!r}."
        )


def check_pixel_bounds(min_pixels: int | None, max_pixels: int | None) -> None:
    """Page-size bounds must be 1 or more (the processor would read 0 as "no limit"), the smallest not above the
    largest."""
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be 1 or more, got {value} (a page size in pixels, e.g. 360000 = 600*600).")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) is above max_pixels ({max_pixels}).")


# Qwen-VL chat templates end with "<|im_start|>assistant\n" when asked for a generation prompt: the
# embedding is the hidden state of that final token.
PROCESSING_KWARGS = {"chat_template": {"add_generation_prompt": True}}


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


def model_kwargs(args: ModelLoadingArguments) -> dict[str, Any]:
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


def processor_kwargs(args: ModelLoadingArguments) -> dict[str, Any]:
    """Processor keyword arguments: the page-size bounds of the image processor."""
    return {key: value for key, value in (("min_pixels", args.min_pixels), ("max_pixels", args.max_pixels)) if value}


#: Files of a checkpoint folder that only resume training (the trainer's state) or describe the model (its card):
#: they do not change the embeddings. Anything else is hashed: hashing an extra file costs seconds, while
#: skipping a file that defines the model would serve stale embeddings.
NOT_MODEL_FILES = (
    "optimizer.*",
    "scheduler.*",
    "scaler.*",
    "rng_state*",
    "trainer_state.json",
    "training_args.bin",
    "README.md",
)


def model_fingerprint(model_path: str, revision: str | None = None) -> str:
    """Identify a model by content: for a folder, the hash of the files that define the model (weights, configs,
    tokenizer and processor files, modules.json and the module subfolders; not the optimizer or other trainer
    state of a checkpoint); for a Hub id, the id and the commit its revision points to."""
    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        return f"hub:{model_path}@{hub_commit(model_path, revision)}"
    digest = hashlib.sha256()
    for path in model_files(folder):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as handle:
            while chunk := handle.read(8 << 20):
                digest.update(chunk)
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():  # a LoRA adapter alone: its embeddings depend on the base model's weights too
        base = json.loads(adapter_config.read_text())
        digest.update(model_fingerprint(base["base_model_name_or_path"], base.get("revision")).encode())
    return digest.hexdigest()


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder that define the model, sorted (hidden files and trainer state left out)."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and not any(fnmatch.fnmatch(path.name, pattern) for pattern in NOT_MODEL_FILES)
    )
