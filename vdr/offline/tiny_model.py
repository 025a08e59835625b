"""A tiny, randomly initialised Qwen3-VL checkpoint built entirely offline.

It has the real architecture (``Qwen3VLForConditionalGeneration``), the real ``Qwen3VLProcessor`` with a
structured chat template, and a byte-level BPE tokenizer trained here on local text. It exists so that the
whole pipeline (quickstart, tests, benchmarks) runs on a CPU without the Hugging Face Hub. Its embeddings
mean nothing until trained; it is a stand-in for ``Qwen/Qwen3-VL-Embedding-2B``, not a small version of it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from vdr.cache import build_once, default_cache_dir

logger = logging.getLogger(__name__)

#: The name that stands for this checkpoint wherever a model id or path is accepted.
TINY_MODEL_ID = "generated:tiny-qwen3-vl"
#: Bump when the recipe below changes, so cached copies are rebuilt rather than reused.
TINY_MODEL_VERSION = 1
TINY_MODEL_MARKER = "vdr_tiny_model.json"  # written last: a folder without it is an unfinished build
CHECKPOINT_JSON_FILES = ("config.json", "tokenizer.json", "processor_config.json", TINY_MODEL_MARKER)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Structured (content is a list of {"type": ...} parts), Qwen-style chat template. Each image renders as
# exactly one <|vision_start|><|image_pad|><|vision_end|>; the processor expands <|image_pad|> to the
# image's number of merged patches.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] == 'video' -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)

# Pixel budget of the tiny image processor: patch 16 x merge 2 = 32-pixel tiles, so a page uses at most
# (320*320) / (16*16) = 400 patches (100 visual tokens after merging).
TINY_MIN_PIXELS = 32 * 32
TINY_MAX_PIXELS = 320 * 320


def _tokenizer_corpus() -> list[str]:
    """Local text the tokenizer is trained on: the vocabulary of the generated pages plus prose."""
    from vdr.offline.generated_pages import vocabulary_text

    return vocabulary_text()


def _train_tokenizer(vocab_size: int = 730):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=4096,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )


# The tiny sizes (about 0.5M parameters). Replacing them with a released model's sizes gives a randomly
# initialised model of that size: the training benchmark measures a full-size model so (speed does not depend on
# the weights).
TINY_TEXT_SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    # mrope_section must sum to head_dim / 2 (temporal, height, width rotary frequencies).
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": [4, 2, 2],
        "mrope_interleaved": True,
    },
}
TINY_VISION_SIZES = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 4,
    "out_hidden_size": 64,  # must equal the text hidden size
    "num_position_embeddings": 256,  # a perfect square (a 16x16 grid of learned positions)
    "deepstack_visual_indexes": [0, 1],  # below the vision depth, no more than the text layers
}


def _build_config(tokenizer, text_sizes: dict | None = None, vision_sizes: dict | None = None):
    from transformers import Qwen3VLConfig

    token_id = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 4096,
        **(text_sizes or TINY_TEXT_SIZES),
        "pad_token_id": token_id("<|endoftext|>"),
        "eos_token_id": token_id("<|im_end|>"),
    }
    vision_config = {
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        **(vision_sizes or TINY_VISION_SIZES),
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        eos_token_id=token_id("<|im_end|>"),
        pad_token_id=token_id("<|endoftext|>"),
    )


def _build_processor(tokenizer):
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS},
    )
    video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def write_tiny_qwen3_vl(
    output_dir: str | Path,
    seed: int = 0,
    text_sizes: dict | None = None,
    vision_sizes: dict | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Path:
    """Write a tiny random Qwen3-VL checkpoint (weights, config, processor) to ``output_dir``.

    ``text_sizes`` / ``vision_sizes`` replace the tiny sizes (see ``TINY_TEXT_SIZES``); ``device`` and ``dtype``
    (e.g. "cuda", "bfloat16") make initialising a full-size model quick."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = _train_tokenizer()
    config = _build_config(tokenizer, text_sizes, vision_sizes)
    with torch.device(device or "cpu"):
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=getattr(torch, dtype or "float32"))
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    _build_processor(tokenizer).save_pretrained(output_dir)
    (output_dir / TINY_MODEL_MARKER).write_text(json.dumps({"version": TINY_MODEL_VERSION, "seed": seed}))
    return output_dir


def ensure_tiny_qwen3_vl(cache_dir: str | Path | None = None) -> Path:
    """Return the path of the cached tiny checkpoint, building it first if it is missing, stale or damaged."""
    target = Path(cache_dir or default_cache_dir()) / f"tiny-qwen3-vl-v{TINY_MODEL_VERSION}"
    if not (target / TINY_MODEL_MARKER).exists():
        logger.info("Building the tiny offline Qwen3-VL checkpoint in %s (once; later runs reuse it)", target)
    return build_once(target, TINY_MODEL_MARKER, write_tiny_qwen3_vl, _is_complete_checkpoint)


def _is_complete_checkpoint(folder: Path) -> bool:
    """Whether every file of a cached tiny checkpoint is present and parses (weights: their header)."""
    from safetensors import safe_open

    try:
        for name in CHECKPOINT_JSON_FILES:
            json.loads((folder / name).read_text())
        with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
            return len(list(weights.keys())) > 0
    except Exception:  # missing, truncated or garbled: rebuild
        return False
