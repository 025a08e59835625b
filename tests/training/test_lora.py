"""LoRA on the tiny model: only the adapters train (with gradient checkpointing), merged and unmerged models embed
alike, an adapter-only model loads for evaluation (its cache key covering the base model), and a run resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer

from tests.helpers import REPO_ROOT, make_it_look_interrupted
from train_vdr import main, make_parser
from vdr.errors import VdrError
from vdr.models.embedder import build_model
from vdr.models.loading import ModelLoadingArguments, model_fingerprint
from vdr.training.arguments import LANGUAGE_MODEL_TARGETS, VISION_TARGETS, LoraArguments, ModelArguments
from vdr.training.lora import save_final

QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")
# A short LoRA run: 2 steps of 4 rows, a checkpoint after each, no evaluation during training, a few eval pages
SHORT_LORA_RUN = (
    "--lora true --lora_vision true --gradient_checkpointing true "
    "--num_generated_rows 24 --eval_split_size 4 --evaluate_base_model false "
    "--eval_strategy no --per_device_train_batch_size 4 --mini_batch_size 4 "
    "--max_steps 2 --save_steps 1 --save_total_limit 2"
).split()


def run(output_dir: Path, *overrides: str) -> dict:
    return main(
        *make_parser().parse(["--config", QUICKSTART, "--output_dir", str(output_dir), *SHORT_LORA_RUN, *overrides])
    )


def parameters(model: SentenceTransformer) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.named_parameters()}


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, vdr_cache) -> dict:
    """One LoRA run whose final model keeps the adapter only, with the model's parameters before and after."""
    output_dir = tmp_path_factory.mktemp("lora") / "run"
    seen = {}
    original = SentenceTransformerTrainer.train

    def recording_train(trainer, *args, **kwargs):
        seen["before"] = parameters(trainer.model)
        seen["trainable"] = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
        result = original(trainer, *args, **kwargs)
        seen["after"] = parameters(trainer.model)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SentenceTransformerTrainer, "train", recording_train)
        metrics = run(output_dir, "--lora_merge", "false")
    return {"output_dir": output_dir, "metrics": metrics, **seen}


def test_only_the_adapter_weights_change(adapter_run):
    before, after, trainable = adapter_run["before"], adapter_run["after"], adapter_run["trainable"]
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert trainable and all(".lora_" in name for name in trainable)
    assert changed and changed <= trainable  # nothing outside the adapters moved
    # the adapters sit on the language model and (opted in) the vision tower; LoRA's B starts at zero, so a changed
    # lora_B means gradients reached it through the checkpointed layers
    assert any("language_model" in name and "lora_B" in name for name in changed)
    assert any("visual" in name and "lora_B" in name for name in changed)


def test_checkpoints_and_the_adapter_only_final_model_hold_the_adapter_only(adapter_run):
    output_dir = adapter_run["output_dir"]
    for folder in (output_dir / "checkpoint-1", output_dir / "final"):
        assert (folder / "adapter_model.safetensors").is_file() and not (folder / "model.safetensors").exists()
    config = json.loads((output_dir / "final" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute()  # loads from any working directory
    assert set(config["target_modules"]) == set(LANGUAGE_MODEL_TARGETS + VISION_TARGETS)
    assert adapter_run["metrics"]["final_ndcg@10"] is not None


def test_merged_and_adapter_only_models_give_the_same_embeddings(adapter_run, generated_rows, tmp_path):
    adapter_only = build_model(str(adapter_run["output_dir"] / "final"), ModelLoadingArguments())
    tiny = ModelArguments(model_name_or_path="generated:tiny-qwen3-vl", torch_dtype="float32")
    merged_dir = save_final(adapter_only, str(tmp_path), None, [64, 32, 16], LoraArguments(lora=True), tiny)
    assert not (merged_dir / "adapter_config.json").exists() and (merged_dir / "model.safetensors").is_file()
    merged = SentenceTransformer(str(merged_dir))
    inputs = [generated_rows[0]["query"], generated_rows[0]["image"], generated_rows[1]["image"]]
    expected = adapter_only.encode(inputs, convert_to_tensor=True)
    torch.testing.assert_close(merged.encode(inputs, convert_to_tensor=True), expected, atol=1e-5, rtol=0)


def test_an_adapter_only_models_cache_key_covers_its_base_model(adapter_run, tiny_model_copy, tmp_path):
    adapter = Path(shutil.copytree(adapter_run["output_dir"] / "final", tmp_path / "adapter"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny_model_copy)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    before = model_fingerprint(str(adapter))
    weights = load_file(str(tiny_model_copy / "model.safetensors"))
    name = next(iter(weights))
    save_file({**weights, name: weights[name] + 1}, str(tiny_model_copy / "model.safetensors"))
    assert model_fingerprint(str(adapter)) != before  # same adapter files, another base model


def test_a_lora_run_resumes_from_its_checkpoint(adapter_run, tmp_path, training_steps):
    output_dir = Path(shutil.copytree(adapter_run["output_dir"], tmp_path / "run"))
    make_it_look_interrupted(output_dir, "checkpoint-2")  # after step 1
    run(output_dir, "--resume_from_checkpoint", "last")  # the final model is merged this time (the default)
    assert len(training_steps) == 1  # step 2 only
    # resuming restored the adapter (and optimizer, data order): step 2 ends where the uninterrupted run's did
    uninterrupted = load_file(str(adapter_run["output_dir"] / "checkpoint-2" / "adapter_model.safetensors"))
    resumed = load_file(str(output_dir / "checkpoint-2" / "adapter_model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for name, weight in uninterrupted.items():
        torch.testing.assert_close(resumed[name], weight, atol=1e-6, rtol=1e-5)
    assert (output_dir / "final" / "model.safetensors").is_file()
    assert not (output_dir / "final" / "adapter_config.json").exists()


def test_lora_arguments_are_checked():
    with pytest.raises(VdrError, match="lora_r must be 1 or more"):
        make_parser().parse(["--lora", "true", "--lora_r", "0"])
    *_, lora = make_parser().parse(["--lora", "true", "--lora_vision", "true"])
    assert lora.target_modules() == LANGUAGE_MODEL_TARGETS + VISION_TARGETS
