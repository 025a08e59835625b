"""Training rows from every source kind: column and image checks (named by line), the held-out split, limits."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict, Image

from tests.helpers import write_images
from vdr.data.sources import (
    DatasetSpec,
    SourceArguments,
    carve_eval_split,
    load_rows,
    load_training_data,
    negative_columns_of,
    training_columns,
)
from vdr.errors import VdrError
from vdr.offline.generated_pages import GENERATED_PAGES_ID
from vdr.training.arguments import DataArguments

COLUMNS = ["image", "negative_0"]


def test_a_numeric_negative_column_is_not_a_page_column(tmp_path, generated_rows):
    rows = write_images(generated_rows[:2], tmp_path / "pages")
    for row in rows:
        row["negative_score"] = 0.5
    Dataset.from_list(rows).to_json(str(tmp_path / "train.jsonl"))
    dataset = load_rows(DatasetSpec(str(tmp_path / "train.jsonl")), COLUMNS)
    assert dataset.features["negative_score"].dtype == "float64"
    assert negative_columns_of(dataset, None) == ["negative_0"]


def test_save_to_disk_folder_with_splits(tmp_path, generated_rows):
    splits = DatasetDict(
        {"train": Dataset.from_list(generated_rows[:8]), "test": Dataset.from_list(generated_rows[8:])}
    )
    splits.save_to_disk(str(tmp_path / "saved"))
    assert len(load_rows(DatasetSpec(str(tmp_path / "saved"), split="test"), COLUMNS)) == 4
    with pytest.raises(VdrError, match="has no split 'validation' .*train, test"):
        load_rows(DatasetSpec(str(tmp_path / "saved"), split="validation"), COLUMNS)


def test_parquet_with_relative_image_paths(tmp_path, generated_rows):
    rows = write_images(generated_rows[:4], tmp_path / "pages")
    Dataset.from_list(rows).to_parquet(str(tmp_path / "train.parquet"))
    dataset = load_rows(DatasetSpec(str(tmp_path / "train.parquet")), COLUMNS)
    assert isinstance(dataset.features["negative_0"], Image)
    assert dataset[2]["image"].tobytes() == generated_rows[2]["image"].convert("RGB").tobytes()


def test_jsonl_glob_with_image_root(tmp_path, generated_rows):
    rows = write_images(generated_rows[:4], tmp_path / "root" / "pages")
    (tmp_path / "data").mkdir()
    for part in range(2):
        lines = "\n".join(json.dumps(row) for row in rows[part * 2 : part * 2 + 2])
        (tmp_path / "data" / f"part-{part}.jsonl").write_text(lines)
    options = SourceArguments(image_root=str(tmp_path / "root"))
    dataset = load_rows(DatasetSpec(str(tmp_path / "data" / "*.jsonl")), COLUMNS, options)
    assert len(dataset) == 4 and dataset[3]["query"] == rows[3]["query"]


def test_missing_image_file_names_line_column_and_path(tmp_path, generated_rows):
    rows = write_images(generated_rows[:3], tmp_path / "pages")
    rows[1]["negative_0"] = "pages/missing.png"
    Dataset.from_list(rows).to_json(str(tmp_path / "train.jsonl"))
    # row index 1 is line 2 of the JSON-lines file
    with pytest.raises(VdrError, match=r"line 2, column 'negative_0': image file '.*missing\.png' does not exist"):
        load_rows(DatasetSpec(str(tmp_path / "train.jsonl")), COLUMNS)


def test_unreadable_image_file_is_reported(tmp_path, generated_rows):
    rows = write_images(generated_rows[:2], tmp_path / "pages")
    (tmp_path / "pages" / "image-0.png").write_bytes(b"not a png")
    Dataset.from_list(rows).to_parquet(str(tmp_path / "train.parquet"))
    with pytest.raises(VdrError, match=r"row 0, column 'image': image file '.*image-0\.png' cannot be read"):
        load_rows(DatasetSpec(str(tmp_path / "train.parquet")), COLUMNS)


def test_missing_path_and_mixed_files_are_reported(tmp_path):
    with pytest.raises(VdrError, match="Dataset path './nowhere' does not exist"):
        load_rows(DatasetSpec("./nowhere"), COLUMNS)
    (tmp_path / "a.parquet").write_bytes(b"")
    (tmp_path / "b.jsonl").write_text("")
    with pytest.raises(VdrError, match="must all be .parquet or all .jsonl"):
        load_rows(DatasetSpec(str(tmp_path / "*")), COLUMNS)


def test_missing_column_lists_the_real_columns(generated_rows):
    dataset = Dataset.from_list(generated_rows[:2])
    with pytest.raises(VdrError, match=r"has no column 'question' \(its columns are: query, image, negative_0"):
        training_columns(dataset, "question", "image", [], "Training data")


def test_training_columns_keep_only_what_the_loss_reads_in_order(generated_rows):
    dataset = Dataset.from_list(generated_rows[:2])
    assert training_columns(dataset, "query", "image", ["negative_1"], "x").column_names == [
        "query",
        "image",
        "negative_1",
    ]


@pytest.mark.parametrize(("size", "expected"), [(3, 3), (0.25, 3)])
def test_carve_eval_split(size, expected, generated_rows):
    train, held_out = carve_eval_split(Dataset.from_list(generated_rows), size, seed=0)
    assert (len(train), len(held_out)) == (12 - expected, expected)
    assert not set(train["query"]) & set(held_out["query"])


def test_carve_eval_split_rejects_taking_everything(generated_rows):
    with pytest.raises(VdrError, match="leaves no training rows"):
        carve_eval_split(Dataset.from_list(generated_rows), 12, seed=0)


def test_load_training_data_carves_and_limits(vdr_cache):
    args = DataArguments(
        train_dataset=GENERATED_PAGES_ID, num_generated_rows=10, eval_split_size=4, max_train_samples=5
    )
    train, eval_rows = load_training_data(args, seed=0)
    assert train.column_names == ["query", "image", "negative_0"] and len(train) == 5
    assert len(eval_rows) == 4 and "negative_3" in eval_rows.column_names


def test_eval_negative_columns_with_any_name_are_loaded_as_images(tmp_path, generated_rows):
    rows = write_images(generated_rows[:6], tmp_path / "pages")
    for row in rows:
        row["hard_page"] = row.pop("negative_0")
    Dataset.from_list(rows).to_json(str(tmp_path / "train.jsonl"))
    args = DataArguments(
        train_dataset=str(tmp_path / "train.jsonl"),
        negative_columns=[],
        eval_negative_columns=["hard_page"],
        eval_split_size=2,
    )
    train, eval_rows = load_training_data(args, seed=0)
    assert train.column_names == ["query", "image"]
    assert isinstance(eval_rows.features["hard_page"], Image)


def test_separate_eval_file_may_have_negatives_the_training_file_lacks(tmp_path, generated_rows):
    rows = write_images(generated_rows[:4], tmp_path / "pages")
    Dataset.from_list([{k: v for k, v in row.items() if k != "negative_0"} for row in rows]).to_json(
        str(tmp_path / "train.jsonl")
    )
    Dataset.from_list(rows).to_json(str(tmp_path / "eval.jsonl"))
    args = DataArguments(
        train_dataset=str(tmp_path / "train.jsonl"),
        eval_dataset=str(tmp_path / "eval.jsonl"),
        negative_columns=[],
        eval_negative_columns=["negative_0"],
    )
    train, eval_rows = load_training_data(args, seed=0)
    assert train.column_names == ["query", "image"] and isinstance(eval_rows.features["negative_0"], Image)
