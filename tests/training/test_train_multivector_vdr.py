"""train_multivector_vdr.py: the late-interaction recipe trains with its own loss, learning rates and evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from sentence_transformers import MultiVectorEncoder
from transformers import set_seed

import train_multivector_vdr
import train_vdr
from tests.helpers import REPO_ROOT
from vdr.cli import load_yaml
from vdr.errors import VdrError
from vdr.models.loading import ModelLoadingArguments
from vdr.models.multi_vector import build_multi_vector_model, is_multi_vector_model

MAX_PIXELS = 36864


MULTI_VECTOR_QUICKSTART = str(REPO_ROOT / "configs" / "quickstart-multivector.yaml")


def train_multi_vector_quickstart(output_dir, *overrides: str) -> dict:
    argv = ["--config", MULTI_VECTOR_QUICKSTART, "--output_dir", str(output_dir), *overrides]
    return train_multivector_vdr.main(*train_multivector_vdr.make_parser().parse(argv))


def test_multi_vector_training_runs_with_its_own_loss_learning_rates_and_evaluation(tmp_path, vdr_cache):
    small = ["--num_generated_rows", "24", "--eval_split_size", "8", "--num_train_epochs", "1"]
    batches = ["--per_device_train_batch_size", "8", "--mini_batch_size", "8"]
    metrics = train_multi_vector_quickstart(tmp_path / "run", *small, *batches)
    assert set(metrics["final"]) == set(metrics["base"]) == {"128"}  # keyed by the token dimension
    final = tmp_path / "run" / "final"
    assert is_multi_vector_model(str(final))
    resolved = json.loads((tmp_path / "run" / "run_config.json").read_text())["resolved"]
    projection_learning_rate = float(load_yaml(MULTI_VECTOR_QUICKSTART)["projection_learning_rate"])
    assert resolved["learning_rate_mapping"] == {r"^(model\.)?1\.linear": projection_learning_rate}
    # the projection trained: compare with the same seeded initialisation
    set_seed(42)
    initial = build_multi_vector_model("generated:tiny-qwen3-vl", ModelLoadingArguments(max_pixels=MAX_PIXELS))
    trained = MultiVectorEncoder(str(final))
    assert not torch.allclose(initial[1].linear.weight, trained[1].linear.weight)


@pytest.mark.parametrize("flags", [["--truncate_dim", "64"], ["--matryoshka_dims", "64"], ["--lora", "true"]])
def test_single_vector_arguments_are_refused_before_anything_loads(tmp_path, flags):
    # token vectors have no Matryoshka dims, and LoRA is not offered for multi-vector training
    with pytest.raises(VdrError, match=f"Unknown argument '{flags[0][2:]}' in the command line"):
        train_multi_vector_quickstart(tmp_path / "a", *flags)
    assert not (tmp_path / "a").exists()


def test_the_old_model_type_line_names_the_new_script(tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text("model_type: multi_vector\n")
    for script in (train_vdr, train_multivector_vdr):
        with pytest.raises(
            VdrError, match=r"'model_type' in .*old\.yaml is no longer an argument: .*train_multivector_vdr\.py"
        ):
            script.make_parser().parse(["--config", str(config)])
    with pytest.raises(VdrError, match="'model_type' in the command line is no longer an argument"):
        train_vdr.make_parser().parse(["--model_type", "multi_vector"])


@pytest.mark.slow
def test_multi_vector_quickstart_improves(tmp_path, vdr_cache):
    metrics = train_multi_vector_quickstart(tmp_path / "run")
    assert metrics["final_ndcg@10"] - metrics["base_ndcg@10"] >= 0.1
