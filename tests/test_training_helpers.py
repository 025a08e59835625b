"""The trainer's surroundings: a failed push loses nothing, resume arguments, training prompts."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from vdr.config import DataArguments
from vdr.errors import VdrError
from vdr.training import push_to_hub, resolve_resume_checkpoint, set_training_prompts


class OfflineModel:
    """Stands in for a SentenceTransformer whose push fails the way an unreachable Hub does."""

    def push_to_hub(self, repo_id, **kwargs):
        self.pushed = (repo_id, kwargs)
        raise ConnectionError("Hub unreachable")


def test_failed_push_is_logged_with_the_retry_command_and_does_not_raise(tmp_path, caplog):
    final_dir = tmp_path / "final"
    final_dir.mkdir()
    (final_dir / "model.safetensors").write_bytes(b"weights")
    model = OfflineModel()
    args = SimpleNamespace(hub_model_id="me/my-model", run_name="run", hub_token=None, hub_private_repo=True)
    with caplog.at_level(logging.ERROR, logger="vdr.training"):
        push_to_hub(model, final_dir, args)
    message = caplog.records[-1].getMessage()
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
