"""Write a randomly initialised Qwen3-VL of a released model's size, offline, for speed and memory measurements.

Speed and memory do not depend on the weights, so a random model with Qwen3-VL-2B's (or 8B's) architecture measures
the same work as Qwen3-VL-Embedding-2B itself, on a machine that cannot reach the Hub. It has the project's tiny
tokenizer (queries take a few more tokens than with Qwen's) and the real processor; pages cost the same.

Usage (a GPU makes the initialisation quick; on a CPU the 2B model takes a few minutes and ~9 GB of memory):
    python benchmarks/random_qwen3_vl.py --size 2b --output_dir models/random-qwen3-vl-2b
    python benchmarks/bench_train.py --model models/random-qwen3-vl-2b --torch_dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a fresh clone

from vdr.offline.tiny_model import write_tiny_qwen3_vl  # noqa: E402


def _rope(mrope_section: list[int]) -> dict:
    return {"rope_type": "default", "rope_theta": 5e6, "mrope_section": mrope_section, "mrope_interleaved": True}


# From the released Qwen3-VL-2B / 8B configs (the embedding and reranker models share these backbones)
SIZES = {
    "2b": (
        {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "rope_parameters": _rope([24, 20, 20]),
            "tie_word_embeddings": True,
        },
        {
            "depth": 24,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [5, 11, 17],
        },
    ),
    "8b": (
        {
            "vocab_size": 151936,
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "rope_parameters": _rope([24, 20, 20]),
            "tie_word_embeddings": False,
        },
        {
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "out_hidden_size": 4096,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [8, 16, 24],
        },
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="2b")
    parser.add_argument("--output_dir", required=True, help="Folder to write the model to.")
    parser.add_argument("--device", default=None, help="Where to initialise it (default: cuda if available).")
    parser.add_argument("--dtype", default="bfloat16", help="Weights' dtype (default: bfloat16, as released).")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> Path:
    import torch

    text_sizes, vision_sizes = SIZES[args.size]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = write_tiny_qwen3_vl(
        args.output_dir, text_sizes=text_sizes, vision_sizes=vision_sizes, device=device, dtype=args.dtype
    )
    print(f"Wrote a random Qwen3-VL-{args.size.upper()}-size model to {folder}")
    return folder


if __name__ == "__main__":
    main(parse_args())
