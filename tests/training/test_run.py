"""A run's surroundings: a failed push loses nothing, resume arguments, training prompts, Ctrl-C."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from datasets import Dataset

from vdr.errors import Interrupted, PushFailed, VdrError
from vdr.training.arguments import DataArguments
from vdr.training.run import push_to_hub, resolve_resume_checkpoint, set_training_prompts, train


class OfflineModel:
    """Stands in for a SentenceTransformer whose push fails the way an unreachable Hub does."""

    def push_to_hub(self, repo_id, **kwargs):
        self.pushed = (repo_id, kwargs)
        raise ConnectionError("Hub unreachable")


def test_failed_push_raises_with_the_retry_command_and_keeps_the_model(tmp_path):
    final_dir = tmp_path / "final"
    final_dir.mkdir()
    (final_dir / "model.safetensors").write_bytes(b"weights")
    model = OfflineModel()
    args = SimpleNamespace(hub_model_id="me/my-model", run_name="run", hub_token=None, hub_private_repo=True)
    with pytest.raises(PushFailed) as failure:
        push_to_hub(model, final_dir, args, token="hf_secret")
    message = str(failure.value)
    assert failure.value.exit_code == 3 and "hf_secret" not in message
    assert model.pushed[1]["token"] == "hf_secret"  # the token is used for the push, and only there
    assert "Pushing to the Hub as 'me/my-model' failed (ConnectionError: Hub unreachable)" in message
    assert f"hf upload me/my-model {final_dir}" in message
    # a private run stays private, and a repo left by an earlier failed push is reused
    assert model.pushed[1]["private"] is True and model.pushed[1]["exist_ok"] is True
    assert (final_dir / "model.safetensors").read_bytes() == b"weights"


def test_resume_last_needs_a_checkpoint(tmp_path):
    args = SimpleNamespace(resume_from_checkpoint="last", output_dir=str(tmp_path))
    with pytest.raises(VdrError, match="holds no checkpoint-\\* folder to resume from"):
        resolve_resume_checkpoint(args)
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-12").mkdir()
    assert resolve_resume_checkpoint(args).endswith("checkpoint-12")
    with pytest.raises(VdrError, match="checkpoint folder 'nowhere' does not exist"):
        resolve_resume_checkpoint(SimpleNamespace(resume_from_checkpoint="nowhere", output_dir=str(tmp_path)))


def test_model_prompts_are_given_to_the_trainer_per_column():
    args = SimpleNamespace(prompts=None)
    model = SimpleNamespace(prompts={"query": "Q: ", "document": "D: "})
    set_training_prompts(
        args, model, DataArguments(negative_columns=["negative_0"], eval_negative_columns=["negative_0", "negative_1"])
    )
    assert args.prompts == {"query": "Q: ", "image": "D: ", "negative_0": "D: ", "negative_1": "D: "}
    explicit = SimpleNamespace(prompts={"query": "mine"})
    set_training_prompts(explicit, model, DataArguments())
    assert explicit.prompts == {"query": "mine"}  # --prompts wins


def test_auto_detected_eval_negatives_get_the_document_prompt_too():
    """Without eval_negative_columns, every negative* page column of the eval rows is in the eval loss."""
    args = SimpleNamespace(prompts=None)
    model = SimpleNamespace(prompts={"document": "D: "})
    eval_rows = Dataset.from_dict({"query": ["q"], "image": ["a.png"], "negative_0": ["b.png"], "negative_7": ["c"]})
    set_training_prompts(args, model, DataArguments(negative_columns=[]), eval_rows)
    assert args.prompts == {"image": "D: ", "negative_0": "D: ", "negative_7": "D: "}


def test_interrupt_names_the_newest_checkpoint_and_the_resume_command(tmp_path):
    class InterruptedTrainer:
        args = SimpleNamespace(output_dir=str(tmp_path))

        def train(self, resume_from_checkpoint=None):
            (tmp_path / "checkpoint-3").mkdir()
            raise KeyboardInterrupt

    argv = ["train_vdr.py", "--config", "c.yaml", "--hub_token", "hf_x", "--resume_from_checkpoint", "old"]
    with pytest.raises(Interrupted) as interrupted:
        train(InterruptedTrainer(), None, argv)
    message = str(interrupted.value)
    assert f"'{tmp_path / 'checkpoint-3'}'" in message and interrupted.value.exit_code == 130
    assert message.endswith(
        "python train_vdr.py --config c.yaml --hub_token '<redacted>' --resume_from_checkpoint last"
    )
