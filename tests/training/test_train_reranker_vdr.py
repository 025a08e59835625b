"""train_reranker_vdr.py: pages presized, rows shaped for each loss, and the quickstart that learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset, Image
from safetensors.torch import load_file
from sentence_transformers.cross_encoder import CrossEncoder
from sentence_transformers.cross_encoder.data_collator import CrossEncoderDataCollator
from sentence_transformers.cross_encoder.modules import LogitScore

from tests.helpers import REPO_ROOT
from vdr.data.page_images import presize_page_columns
from vdr.models.reranker import RerankerModelArguments, build_reranker
from vdr.training.arguments import RerankerLossArguments
from vdr.training.losses import build_reranker_loss, rows_for_loss

QUICKSTART = str(REPO_ROOT / "configs" / "quickstart-reranker.yaml")


TINY = "generated:tiny-qwen3-vl"


MAX_PIXELS = 36864


# Measured on the 2-core CPU dev machine, the quickstart as shipped (warm start from the embedding quickstart's model):
# NDCG@10 0.499 -> 0.723 (seed 42, the one run here) and 0.530 -> 0.656 (seed 7). From the random tiny model, or with
# the previous recipe (bce on one negative column at 3e-4), it moved -0.06 to +0.07 (one cmnrl run: +0.11).
MIN_NDCG_GAIN = 0.12


@pytest.fixture(scope="module")
def reranker(vdr_cache) -> CrossEncoder:
    return build_reranker(RerankerModelArguments(model_name_or_path=TINY, max_pixels=MAX_PIXELS, torch_dtype="float32"))


@pytest.fixture(scope="module")
def page_rows(generated_rows) -> Dataset:
    columns = ("query", "image", "negative_0", "negative_1")
    rows = Dataset.from_list([{column: row[column] for column in columns} for row in generated_rows[:4]])
    for column in ("image", "negative_0", "negative_1"):
        rows = rows.cast_column(column, Image())
    return rows


def test_presized_pages_give_the_processor_the_same_pixels(reranker, page_rows):
    presized = presize_page_columns(reranker, page_rows, columns=["image", "negative_0", "negative_1"], as_images=True)
    for column in ("image", "negative_1"):
        original = reranker.preprocess([(page_rows[0]["query"], page_rows[0][column])])
        resized = reranker.preprocess([(presized[0]["query"], presized[0][column])])
        assert presized[0][column].size != page_rows[0][column].size
        torch.testing.assert_close(resized["pixel_values"], original["pixel_values"], rtol=0, atol=0)


def test_cmnrl_needs_an_in_batch_negative():
    # Sentence Transformers samples num_negatives per row: 0 would fail at the first training step, not here
    with pytest.raises(ValueError, match="num_in_batch_negatives must be 1 or more"):
        RerankerLossArguments(loss="cmnrl", num_in_batch_negatives=0)


@pytest.mark.parametrize("loss_name", ["bce", "lambda", "cmnrl"])
def test_rows_are_shaped_for_each_loss_and_the_loss_reads_them(reranker, page_rows, loss_name):
    rows = rows_for_loss(page_rows, loss_name, "query", "image", ["negative_0", "negative_1"])
    expected_columns = {
        "bce": ["query", "document", "label"],
        "lambda": ["query", "documents", "labels"],
        "cmnrl": ["query", "image", "negative_0", "negative_1"],
    }
    assert rows.column_names == expected_columns[loss_name]
    if loss_name == "bce":
        assert len(rows) == 12 and sorted(rows["label"]) == [0.0] * 8 + [1.0] * 4
        assert rows[0]["query"] == page_rows[0]["query"] and rows[4]["label"] == 0.0
    if loss_name == "lambda":
        assert rows[0]["labels"] == [1.0, 0.0, 0.0] and len(rows[0]["documents"]) == 3
        assert rows[0]["documents"][2].tobytes() == page_rows[0]["negative_1"].tobytes()
    # One loss computation on the batch the trainer's collator builds from these rows
    loss = build_reranker_loss(reranker, RerankerLossArguments(loss=loss_name, mini_batch_size=4), num_negatives=2)
    batch = CrossEncoderDataCollator(preprocess_fn=reranker.preprocess)([rows[i] for i in range(2)])
    labels = batch.pop("label", None)
    value = loss(list(batch.values()), labels)
    assert torch.isfinite(value) and value.requires_grad


@pytest.fixture(scope="module")
def embedder(embedding_quickstart) -> Path:
    """The embedding quickstart's model: the reranker quickstart's starting point (its documented first step)."""
    output_dir, _ = embedding_quickstart
    return output_dir / "final"


def test_the_quickstart_trains_and_writes_its_outputs(reranker_quickstart, embedder):
    output_dir, metrics = reranker_quickstart
    assert json.loads((output_dir / "metrics.json").read_text())["final"]["ndcg@10"] == metrics["final_ndcg@10"]
    assert set(metrics["base"]) == {"map", "mrr@10", "ndcg@10"} and (output_dir / "run_config.json").is_file()
    checkpoints = list(output_dir.glob("checkpoint-*"))
    assert len(checkpoints) == 1
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert len([entry for entry in state["log_history"] if "loss" in entry]) >= 2
    saved = CrossEncoder(str(output_dir / "final"))
    assert isinstance(saved[1], LogitScore)
    # Started from the embedding model's backbone (saved without the "model." prefix of the model with an LM head)
    before = {f"model.{name}": value for name, value in load_file(str(embedder / "model.safetensors")).items()}
    after = load_file(str(output_dir / "final" / "model.safetensors"))
    assert set(after) - set(before) == {"lm_head.weight"}  # the one part an embedding model does not keep
    changed = [not torch.equal(before[name], after[name]) for name in before]
    assert len(changed) > 50 and sum(changed) / len(changed) > 0.9  # every part of the backbone trained


def test_the_quickstart_reranker_learns(reranker_quickstart):
    _, metrics = reranker_quickstart
    assert metrics["final_ndcg@10"] - metrics["base_ndcg@10"] >= MIN_NDCG_GAIN, metrics["summary"]
