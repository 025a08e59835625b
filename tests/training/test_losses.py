"""The recipe's loss keeps its objective whatever runs it faster: gradient caching's mini-batch size changes memory
and speed, not the loss or the gradients; the fused AdamW kernel (transformers 5's default optimizer) takes the same
step as the plain one; and the fast recipe config differs from the write-up's only in such settings."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from sentence_transformers import SentenceTransformer

from tests.helpers import REPO_ROOT
from train_vdr import make_parser
from vdr.models.embedder import build_model
from vdr.models.loading import ModelLoadingArguments
from vdr.offline.generated_pages import generate_rows
from vdr.training.arguments import LossArguments
from vdr.training.losses import build_loss

#: The settings a fast config may change: each changes speed or memory, never what is learned (and where it is saved).
SPEED_ONLY = {
    "mini_batch_size",
    "evaluator_batch_size",
    "optim",
    "dataloader_num_workers",
    "dataloader_prefetch_factor",
    "output_dir",
    "logging_dir",
}


@pytest.fixture(scope="module")
def model(vdr_cache) -> SentenceTransformer:
    return build_model("generated:tiny-qwen3-vl", ModelLoadingArguments(max_pixels=64 * 64, torch_dtype="float32"))


def loss_and_gradients(model: SentenceTransformer, rows: list[dict], mini_batch_size: int) -> tuple[float, dict]:
    """The recipe's loss (MatryoshkaLoss over CachedMultipleNegativesRankingLoss) on one batch, and every gradient."""
    model = copy.deepcopy(model)
    loss = build_loss(model, LossArguments(matryoshka_dims=[64, 32, 16], mini_batch_size=mini_batch_size))
    columns = [[row["query"] for row in rows], [row["image"] for row in rows], [row["negative_0"] for row in rows]]
    value = loss([model.preprocess(column) for column in columns], None)
    value.backward()
    return value.item(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mini_batch_size", [3, 8])
def test_the_mini_batch_size_changes_neither_the_loss_nor_the_gradients(model, mini_batch_size):
    rows = generate_rows(8, seed=5)
    recipe_loss, recipe_gradients = loss_and_gradients(model, rows, mini_batch_size=1)  # the write-up's setting
    loss, gradients = loss_and_gradients(model, rows, mini_batch_size)
    assert loss == pytest.approx(recipe_loss, rel=1e-6)
    assert gradients.keys() == recipe_gradients.keys() and len(gradients) > 50  # vision tower and language model
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, recipe_gradients[name], rtol=1e-3, atol=1e-4, msg=name)


def test_the_fused_adamw_takes_the_same_step():
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(64, 32, generator=generator) for _ in range(3)]
    steps = {}
    for fused in (False, True):
        parameters = [torch.nn.Parameter(weight.clone()) for weight in weights]
        optimizer = torch.optim.AdamW(parameters, lr=2e-5, fused=fused)
        for step in range(3):
            for number, parameter in enumerate(parameters):
                parameter.grad = torch.sin(weights[number] * (step + 1))  # the same gradients for both
            optimizer.step()
        steps[fused] = parameters
    for plain, fused in zip(steps[False], steps[True]):
        torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-7)
    assert not torch.equal(steps[False][0], weights[0])  # it did step


def parsed(config: str) -> dict:
    groups = make_parser().parse(["--config", str(REPO_ROOT / "configs" / config), "--use_cpu", "true"])
    values = {}
    for group in groups:
        for field in dataclasses.fields(group):
            value = getattr(group, field.name)
            values[field.name] = getattr(value, "value", value)  # enums as their strings
    return values


def test_the_fast_config_changes_only_how_fast_the_recipe_runs():
    recipe, fast = parsed("qwen3-vl-embedding-2b-vdr.yaml"), parsed("qwen3-vl-embedding-2b-vdr-fast.yaml")
    changed = {name for name in recipe if recipe[name] != fast[name]}
    assert changed <= SPEED_ONLY, changed - SPEED_ONLY
    assert "mini_batch_size" in changed and recipe["optim"] == "adamw_torch_fused"  # transformers 5's default
