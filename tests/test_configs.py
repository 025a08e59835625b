"""Every shipped config parses with the script it is for, and the recipe config matches the write-up field by field."""

from __future__ import annotations

import importlib
import math

import pytest

from tests.helpers import REPO_ROOT
from train_vdr import make_parser

SHIPPED_CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))


def parse(*argv: str):
    model, data, loss, evaluation, training, _lora = make_parser().parse(list(argv))
    return model, data, loss, evaluation, training


def test_configs_are_found():
    assert {path.name for path in SHIPPED_CONFIGS} >= {"quickstart.yaml", "qwen3-vl-embedding-2b-vdr.yaml"}


@pytest.mark.parametrize("config", SHIPPED_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_parses(config):
    # each config with the script it is for; bf16 configs validate only with a GPU or use_cpu
    script = (
        "train_reranker_vdr"
        if "reranker" in config.name
        else "train_multivector_vdr"
        if "multivector" in config.name
        else "train_vdr"
    )
    importlib.import_module(script).make_parser().parse(["--config", str(config), "--use_cpu", "true"])


# The write-up's recipe, as listed in ../shared/reference-recipe.md (written from the write-up, not from our YAML):
# a change to the config that drifts from the write-up fails here.
WRITE_UP_RECIPE = {
    "model_name_or_path": "Qwen/Qwen3-VL-Embedding-2B",
    "attn_implementation": "flash_attention_2",
    "torch_dtype": "bfloat16",
    "min_pixels": 28 * 28,
    "max_pixels": 600 * 600,
    "train_dataset": "tomaarsen/llamaindex-vdr-en-train-preprocessed",
    "train_dataset_config": "train",
    "eval_dataset": "tomaarsen/llamaindex-vdr-en-train-preprocessed",
    "eval_dataset_config": "eval",
    "query_column": "query",
    "positive_column": "image",
    "negative_columns": ["negative_0"],  # training uses (query, image, negative_0)
    "eval_negative_columns": [f"negative_{k}" for k in range(4)],  # corpus: 300 positives + 4 x 300 negatives
    "matryoshka_dims": [2048, 1536, 1024, 512, 256, 128, 64],
    "mini_batch_size": 1,
    "eval_name": "vdr-eval-hard",
    "evaluator_batch_size": 1,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 64,
    "learning_rate": 2e-5,
    "warmup_steps": 0.1,  # warmup ratio 0.1 (transformers 5 spells a ratio as a float < 1 in warmup_steps)
    "bf16": True,
    "batch_sampler": "no_duplicates",
    "eval_strategy": "steps",
    "eval_steps": 0.1,
    "save_strategy": "steps",
    "save_steps": 0.1,
    "save_total_limit": 2,
    "logging_steps": 0.05,
    "run_name": "Qwen3-VL-Embedding-2B-vdr",
    "truncate_dim": 1024,  # the final model's default output dimension
}


def test_recipe_config_matches_the_reference_recipe():
    groups = parse("--config", str(REPO_ROOT / "configs/qwen3-vl-embedding-2b-vdr.yaml"), "--use_cpu", "true")
    values = {}
    for group in groups:
        values.update({key: getattr(group, key) for key in WRITE_UP_RECIPE if hasattr(group, key)})
    plain = {key: getattr(value, "value", value) for key, value in values.items()}  # enums as their strings
    assert plain == {key: pytest.approx(v) if isinstance(v, float) else v for key, v in WRITE_UP_RECIPE.items()}
    # 10,000 training rows at 64 a step: the write-up's 157 steps
    assert math.ceil(10_000 / plain["per_device_train_batch_size"]) == 157
