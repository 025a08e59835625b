"""GPU tier (excluded by default; run with `python -m pytest -m gpu tests/test_gpu.py` on a CUDA machine): the
recipe's bf16 path (flash-attention when installed, else the sdpa fallback), LoRA with gradient checkpointing, and
evaluation with a reranker, on the tiny model so it runs in about a minute. Not run in CI, which has no GPU."""

from __future__ import annotations

import json

import pytest
import torch

import evaluate_vdr
import train_vdr
from tests.helpers import REPO_ROOT
from vdr.models.embedder import build_model
from vdr.models.loading import ModelLoadingArguments, model_kwargs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")
RECIPE_GPU_FLAGS = [
    *("--bf16 true --torch_dtype bfloat16 --attn_implementation flash_attention_2 --dataloader_pin_memory true").split()
]


def flash_attn_installed() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def expected_attention() -> str:
    return "flash_attention_2" if flash_attn_installed() else "sdpa"


def test_flash_attention_is_used_when_installed_else_sdpa():
    assert model_kwargs(ModelLoadingArguments(attn_implementation="flash_attention_2"))["attn_implementation"] == (
        expected_attention()
    )
    model = build_model(
        "generated:tiny-qwen3-vl",
        ModelLoadingArguments(torch_dtype="bfloat16", attn_implementation="flash_attention_2"),
    )
    assert model[0].auto_model.config._attn_implementation == expected_attention()


def test_the_quickstart_learns_in_bf16_on_the_gpu(tmp_path, vdr_cache):
    argv = ["--config", QUICKSTART, "--output_dir", str(tmp_path / "run"), *RECIPE_GPU_FLAGS]
    metrics = train_vdr.main(*train_vdr.make_parser().parse(argv))
    # The CPU quickstart goes from ~0.02 to ~0.34 in float32; bf16 on a GPU must learn too
    assert metrics["final_ndcg@10"] > metrics["base_ndcg@10"] + 0.1, metrics
    saved = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "bfloat16"


def test_lora_with_gradient_checkpointing_trains_in_bf16(tmp_path, vdr_cache):
    argv = [
        "--config",
        QUICKSTART,
        "--output_dir",
        str(tmp_path / "lora"),
        *RECIPE_GPU_FLAGS,
        *(
            "--lora true --lora_vision true --gradient_checkpointing true "
            "--num_generated_rows 40 --eval_split_size 8 --eval_strategy no --max_steps 2 "
            "--per_device_train_batch_size 8 --mini_batch_size 4"
        ).split(),
    ]
    metrics = train_vdr.main(*train_vdr.make_parser().parse(argv))
    assert metrics["final_ndcg@10"] is not None and (tmp_path / "lora" / "final").is_dir()


def test_bf16_evaluation_scores_like_float32_and_reranks(tmp_path, vdr_cache):
    """The same model scored in bf16 and in float32 on the GPU: NDCG@10 close; the reranker runs in bf16 too."""
    common = [
        *(
            "--model generated:tiny-qwen3-vl --dataset generated:pages "
            "--num_generated_rows 32 --max_pixels 36864 --reranker generated:tiny-qwen3-vl "
            "--rerank_top_k 5 --no_cache true"
        ).split()
    ]
    results = {}
    for dtype in ("float32", "bfloat16"):
        argv = [*common, "--torch_dtype", dtype, "--output_dir", str(tmp_path / dtype)]
        results[dtype] = evaluate_vdr.main(*evaluate_vdr.make_parser().parse(argv))
    for full, half in zip(results["float32"]["records"], results["bfloat16"]["records"], strict=True):
        assert half["model"] == full["model"]
        assert half["metrics"]["ndcg@10"] == pytest.approx(full["metrics"]["ndcg@10"], abs=0.05), half["model"]
