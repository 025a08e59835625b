"""GPU tier (excluded by default; run with `pytest -m gpu` on a CUDA machine): the recipe's bf16 + flash-attention
path, on the tiny model so it runs in seconds. Not run in this project's CI, which has no GPU."""

from __future__ import annotations

import json

import pytest
import torch

from train_vdr import main, make_parser

from .conftest import REPO_ROOT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def flash_attn_installed() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


@pytest.mark.skipif(not torch.cuda.is_available() or not flash_attn_installed(), reason="needs flash-attn installed")
def test_without_flash_attn_the_fallback_is_sdpa(caplog):
    from vdr.config import ModelArguments
    from vdr.model import model_kwargs

    if flash_attn_installed():
        pytest.skip("flash-attn is installed: the fallback is not taken")
    assert model_kwargs(ModelArguments(attn_implementation="flash_attention_2"))["attn_implementation"] == "sdpa"


def test_quickstart_trains_in_bf16_with_flash_attention(tmp_path, vdr_cache):
    argv = ["--config", str(REPO_ROOT / "configs/quickstart.yaml"), "--output_dir", str(tmp_path / "run")]
    argv += ["--bf16", "true", "--torch_dtype", "bfloat16", "--attn_implementation", "flash_attention_2"]
    argv += ["--num_train_epochs", "1", "--dataloader_pin_memory", "true"]
    metrics = main(*make_parser().parse(argv))
    assert metrics["final_ndcg@10"] is not None and metrics["final_ndcg@10"] > 0
    from vdr.config import ModelArguments
    from vdr.model import build_model

    model = build_model(ModelArguments(model_name_or_path="generated:tiny-qwen3-vl", torch_dtype="bfloat16",
                                       attn_implementation="flash_attention_2"))  # fmt: skip
    assert model[0].auto_model.config._attn_implementation == "flash_attention_2"  # not the sdpa fallback
    saved = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "bfloat16"
