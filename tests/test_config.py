"""Configuration: YAML + command-line overrides, strict keys, and every shipped config parses."""

from __future__ import annotations

from pathlib import Path

import pytest
from sentence_transformers.sentence_transformer.training_args import BatchSamplers

from train_vdr import make_parser
from vdr.errors import VdrError

from .conftest import REPO_ROOT

SHIPPED_CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))


def parse(*argv: str):
    model, data, loss, evaluation, training = make_parser().parse(list(argv))
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
    parse("--config", str(config), "--use_cpu", "true")  # bf16 configs validate only with a GPU or use_cpu


def test_recipe_config_matches_the_reference_recipe():
    model, data, loss, evaluation, training = parse(
        "--config", str(REPO_ROOT / "configs/qwen3-vl-embedding-2b-vdr.yaml"), "--use_cpu", "true"
    )
    assert (model.model_name_or_path, model.attn_implementation, model.torch_dtype) == (
        "Qwen/Qwen3-VL-Embedding-2B",
        "flash_attention_2",
        "bfloat16",
    )
    assert (model.min_pixels, model.max_pixels, model.truncate_dim) == (28 * 28, 600 * 600, 1024)
    assert (data.train_dataset, data.train_dataset_config, data.train_split) == (
        "tomaarsen/llamaindex-vdr-en-train-preprocessed",
        "train",
        "train",
    )
    assert (data.eval_dataset, data.eval_dataset_config, data.eval_split) == (
        "tomaarsen/llamaindex-vdr-en-train-preprocessed",
        "eval",
        "train",
    )
    assert (data.query_column, data.positive_column, data.negative_columns) == ("query", "image", ["negative_0"])
    assert data.eval_negative_columns == ["negative_0", "negative_1", "negative_2", "negative_3"]
    assert loss.matryoshka_dims == [2048, 1536, 1024, 512, 256, 128, 64]
    assert loss.mini_batch_size == 1
    assert (evaluation.eval_name, evaluation.evaluator_batch_size) == ("vdr-eval-hard", 1)
    assert training.num_train_epochs == 1
    assert training.per_device_train_batch_size == training.per_device_eval_batch_size == 64
    assert training.learning_rate == pytest.approx(2e-5)
    assert training.warmup_steps == pytest.approx(0.1)  # transformers 5's spelling of warmup_ratio=0.1
    assert training.bf16 is True and training.fp16 is False
    assert training.batch_sampler == BatchSamplers.NO_DUPLICATES
    assert (training.eval_strategy.value, training.eval_steps) == ("steps", 0.1)
    assert (training.save_strategy.value, training.save_steps, training.save_total_limit) == ("steps", 0.1, 2)
    assert training.logging_steps == 0.05
    assert training.run_name == "Qwen3-VL-Embedding-2B-vdr"
