"""The tiny offline Qwen3-VL's builder at other sizes: the benchmarks' random stand-ins for the released models."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import REPO_ROOT


@pytest.mark.parametrize(("size", "backbone_parameters"), [("2b", 2.13e9), ("8b", 8.14e9)])
def test_the_benchmarks_full_size_random_model_has_the_released_size(size, backbone_parameters):
    """benchmarks/random_qwen3_vl.py stands in for Qwen3-VL-Embedding-2B/8B in speed figures: its size must match
    (the embedding model is the backbone without the language-model head). Built on the meta device: no memory."""
    import sys

    from transformers import Qwen3VLForConditionalGeneration

    from vdr.offline.tiny_model import _build_config, _train_tokenizer

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from random_qwen3_vl import SIZES

    config = _build_config(_train_tokenizer(), *SIZES[size])
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    parameters = sum(parameter.numel() for parameter in model.model.parameters())
    assert parameters == pytest.approx(backbone_parameters, rel=0.01)
    assert config.vision_config.out_hidden_size == config.text_config.hidden_size
