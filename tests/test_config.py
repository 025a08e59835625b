"""Configuration: YAML + command-line overrides, strict keys, and every shipped config parses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from train_vdr import make_parser
from vdr.errors import VdrError

from .conftest import REPO_ROOT

SHIPPED_CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))


def parse(*argv: str):
    model, data, loss, evaluation, training, _lora = make_parser().parse(list(argv))
    return model, data, loss, evaluation, training


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_values_are_typed_and_overridden_by_the_command_line(tmp_path):
    config = write_yaml(tmp_path, "learning_rate: 1e-5\nmax_pixels: 1000\noutput_dir: out\nmatryoshka_dims: [32, 16]\n")
    model, _, loss, _, training = parse("--config", config, "--max_pixels", "2000")
    assert training.learning_rate == pytest.approx(1e-5)  # PyYAML reads "1e-5" as a string; argparse converts it
    assert model.max_pixels == 2000  # command line beats YAML
    assert loss.matryoshka_dims == [32, 16]
    assert training.output_dir == "out"


def test_yaml_scalar_for_a_list_field_is_one_item_and_items_are_typed(tmp_path):
    config = write_yaml(tmp_path, "negative_columns: negative_2\nmatryoshka_dims: ['64', 32]\n")
    _, data, loss, _, _ = parse("--config", config)
    assert data.negative_columns == ["negative_2"]
    assert loss.matryoshka_dims == [64, 32]


def test_defaults_apply_without_a_config():
    model, data, loss, evaluation, training = parse("--output_dir", "out")
    assert model.model_name_or_path == "Qwen/Qwen3-VL-Embedding-2B"
    assert data.negative_columns == ["negative_0"]
    assert loss.mini_batch_size == 1


def test_unknown_yaml_key_is_named_with_the_closest_valid_one(tmp_path):
    config = write_yaml(tmp_path, "lerning_rate: 1e-5\n")
    with pytest.raises(
        VdrError, match=r"Unknown argument 'lerning_rate' in .*config\.yaml\. Did you mean 'learning_rate'\?"
    ):
        parse("--config", config)


def test_unknown_command_line_flag_is_named(tmp_path):
    with pytest.raises(
        VdrError, match=r"Unknown argument 'max_pixel' in the command line\. Did you mean 'max_pixels'\?"
    ):
        parse("--max_pixel", "5")


def test_invalid_value_is_reported_as_a_user_error():
    with pytest.raises(VdrError, match="matryoshka_dims must be listed largest first"):
        parse("--matryoshka_dims", "16", "64")


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(VdrError, match="Config file .*nope.yaml' does not exist"):
        parse("--config", str(tmp_path / "nope.yaml"))


def test_configs_are_found():
    assert {path.name for path in SHIPPED_CONFIGS} >= {"quickstart.yaml", "qwen3-vl-embedding-2b-vdr.yaml"}


@pytest.mark.parametrize("config", SHIPPED_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_parses(config):
    # each config with the script it is for; bf16 configs validate only with a GPU or use_cpu
    if "reranker" in config.name:
        from train_reranker_vdr import make_parser as reranker_parser

        reranker_parser().parse(["--config", str(config), "--use_cpu", "true"])
    else:
        parse("--config", str(config), "--use_cpu", "true")


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


def test_command_line_list_replaces_the_yaml_list(tmp_path):
    from evaluate_vdr import make_parser as evaluate_parser

    config = write_yaml(tmp_path, "model: [from-yaml]\ndataset: [generated:pages]\n")
    _, evaluate, *_ = evaluate_parser().parse(["--config", config, "--model", "a", "--model", "b"])
    assert evaluate.model == ["a", "b"] and evaluate.dataset == ["generated:pages"]
    config = write_yaml(tmp_path, "matryoshka_dims: [64, 32]\nnegative_columns: [negative_0, negative_1]\n")
    _, data, loss, _, _ = parse("--config", config, "--matryoshka_dims", "16")
    assert loss.matryoshka_dims == [16] and data.negative_columns == ["negative_0", "negative_1"]
