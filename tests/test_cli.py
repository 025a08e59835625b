"""The command line: YAML + command-line overrides, strict keys, typed values (``vdr.cli.ConfigParser``)."""

from __future__ import annotations

import pytest

from tests.helpers import write_yaml
from train_vdr import make_parser
from vdr.errors import VdrError


def parse(*argv: str):
    model, data, loss, evaluation, training, _lora = make_parser().parse(list(argv))
    return model, data, loss, evaluation, training


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


def test_command_line_list_replaces_the_yaml_list(tmp_path):
    from evaluate_vdr import make_parser as evaluate_parser

    config = write_yaml(tmp_path, "model: [from-yaml]\ndataset: [generated:pages]\n")
    _, evaluate, *_ = evaluate_parser().parse(["--config", config, "--model", "a", "--model", "b"])
    assert evaluate.model == ["a", "b"] and evaluate.dataset == ["generated:pages"]
    config = write_yaml(tmp_path, "matryoshka_dims: [64, 32]\nnegative_columns: [negative_0, negative_1]\n")
    _, data, loss, _, _ = parse("--config", config, "--matryoshka_dims", "16")
    assert loss.matryoshka_dims == [16] and data.negative_columns == ["negative_0", "negative_1"]


@pytest.mark.parametrize(
    "script", ["train_vdr", "train_multivector_vdr", "train_reranker_vdr", "evaluate_vdr", "prepare_vdr_data"]
)
def test_help_lists_every_argument_of_every_group(script):
    import dataclasses
    import importlib

    parser = importlib.import_module(script).make_parser()
    help_text = parser.format_help()
    fields = [field.name for group in parser.dataclass_types for field in dataclasses.fields(group) if field.init]
    missing = [name for name in fields if f"--{name}" not in help_text]
    assert fields and not missing
