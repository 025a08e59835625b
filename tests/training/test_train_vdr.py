"""End to end: the quickstart config trains the tiny model, and retrieval on held-out pages clearly improves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from tests.helpers import REPO_ROOT, make_it_look_interrupted
from train_vdr import main, make_parser
from vdr.data.retrieval_sets import retrieval_from_rows
from vdr.data.sources import load_training_data
from vdr.errors import VdrError
from vdr.training.arguments import DataArguments
from vdr.training.evaluators import build_ir_evaluator

QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")


# Measured on the 2-core CPU dev machine: NDCG@10 0.021 (base) -> 0.344 (trained) at dim 64. The
# thresholds leave a wide margin for thread-count and library-version noise.
MIN_FINAL_NDCG = 0.20


MIN_NDCG_GAIN = 0.15


def run_quickstart(output_dir: Path, *overrides: str) -> dict:
    args = make_parser().parse(["--config", QUICKSTART, "--output_dir", str(output_dir), *overrides])
    return main(*args)


@pytest.fixture(scope="module")
def trained(embedding_quickstart) -> tuple[Path, dict]:
    return embedding_quickstart


def test_ndcg_rises_clearly_above_the_base_model(trained):
    _, metrics = trained
    assert metrics["final_ndcg@10"] >= MIN_FINAL_NDCG
    assert metrics["final_ndcg@10"] - metrics["base_ndcg@10"] >= MIN_NDCG_GAIN
    assert set(metrics["final"]) == {"64", "32", "16"}  # every Matryoshka dim is reported


def test_metrics_json_matches_sentence_transformers_evaluator(trained):
    """metrics.json comes from one encoding + truncation; ST's evaluator re-encodes per dim. Same numbers."""
    output_dir, _ = trained
    metrics = json.loads((output_dir / "metrics.json").read_text())
    model = SentenceTransformer(str(output_dir / "final"))
    model.truncate_dim = None
    _, eval_rows = load_training_data(
        DataArguments(train_dataset="generated:pages", num_generated_rows=320, eval_split_size=64), seed=42
    )
    data = retrieval_from_rows(eval_rows, "query", "image", [f"negative_{k}" for k in range(4)], "eval")
    data = data.with_opened_pages()  # the original pages, not resized by us
    for dim in (64, 32, 16):
        evaluator = build_ir_evaluator(data, "check", batch_size=32, truncate_dim=dim, show_progress_bar=False)
        expected = evaluator(model)
        ours = metrics["final"][str(dim)]
        for name in ("ndcg@10", "mrr@10", "recall@1", "recall@10", "map@100"):
            assert ours[name] == pytest.approx(expected[f"check_cosine_{name}"], abs=1e-6), (dim, name)


def test_outputs_final_model_checkpoint_and_provenance(trained):
    output_dir, _ = trained
    final = SentenceTransformer(str(output_dir / "final"))
    assert final.truncate_dim == 32
    assert final.encode(["Contoso Energy revenue"]).shape == (1, 32)
    assert json.loads((output_dir / "final" / "vdr_training.json").read_text())["matryoshka_dims"] == [64, 32, 16]
    run_config = json.loads((output_dir / "run_config.json").read_text())
    assert run_config["ModelArguments"]["truncate_dim"] == 32 and "torch" in run_config["versions"]
    checkpoints = sorted(output_dir.glob("checkpoint-*"))
    assert len(checkpoints) == 1  # save_total_limit: 1
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) >= 5 and losses[-1] < losses[0]
    assert any("eval_generated-pages_cosine_ndcg@10" in entry for entry in state["log_history"])


def test_final_model_and_last_checkpoint_give_identical_embeddings(trained, generated_rows):
    output_dir, _ = trained
    checkpoint = sorted(output_dir.glob("checkpoint-*"))[-1]  # the last step's weights: the final model's
    final, again = SentenceTransformer(str(output_dir / "final")), SentenceTransformer(str(checkpoint))
    again.truncate_dim = final.truncate_dim
    inputs = [generated_rows[0]["query"], generated_rows[0]["image"]]
    torch.testing.assert_close(
        final.encode(inputs, convert_to_tensor=True), again.encode(inputs, convert_to_tensor=True)
    )


def test_training_changed_the_weights(trained, tiny_model_dir):
    output_dir, _ = trained
    # The base checkpoint is a Qwen3VLForConditionalGeneration ("model." prefix); the embedder saves its Qwen3VLModel.
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(output_dir / "final" / "model.safetensors"))
    changed = [not torch.equal(before[f"model.{name}"], weight) for name, weight in after.items()]
    assert len(changed) > 50 and sum(changed) / len(changed) > 0.9


def test_a_new_run_never_overwrites_an_earlier_one(trained):
    output_dir, _ = trained
    before = sorted(p.name for p in output_dir.iterdir())
    with pytest.raises(VdrError, match="already holds an earlier run .*--resume_from_checkpoint last"):
        run_quickstart(output_dir)
    assert sorted(p.name for p in output_dir.iterdir()) == before


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, training_steps, vdr_cache):
    output_dir = tmp_path / "run"
    # a short run: 8 steps, checkpoints at 4 and 8, no evaluation during training
    short = (
        *("--max_steps 8 --save_steps 4 --save_total_limit 2 --eval_strategy no --evaluate_base_model false").split(),
    )
    run_quickstart(output_dir, *short)
    make_it_look_interrupted(output_dir, "checkpoint-8")  # after step 4

    training_steps.clear()
    metrics = run_quickstart(output_dir, *short, "--resume_from_checkpoint", "last")
    assert len(training_steps) == 4  # steps 5..8 only: it carried on, it did not start over
    state = json.loads((output_dir / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    assert metrics["final_ndcg@10"] is not None and (output_dir / "final" / "model.safetensors").exists()
