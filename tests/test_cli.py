"""The command line: bad input gives exit code 2 and one clear paragraph, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from datasets import Dataset

from .conftest import REPO_ROOT


def run_train(*args: str, env_cache) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "VDR_CACHE": str(env_cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "train_vdr.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def assert_clean_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_key(tmp_path, vdr_cache):
    result = run_train("--config", "configs/quickstart.yaml", "--lerning_rate", "1e-4", env_cache=vdr_cache)
    assert_clean_error(result, "Unknown argument 'lerning_rate' in the command line. Did you mean 'learning_rate'?")


def test_missing_model_path(tmp_path, vdr_cache):
    result = run_train(
        "--config",
        "configs/quickstart.yaml",
        "--model_name_or_path",
        str(tmp_path / "nope"),
        "--output_dir",
        str(tmp_path / "out"),
        env_cache=vdr_cache,
    )
    assert_clean_error(result, f"Model path '{tmp_path / 'nope'}' does not exist")


@pytest.fixture()
def path_dataset(tmp_path, generated_rows):
    """A JSON-lines training file whose image columns hold file paths."""
    rows = []
    for index, row in enumerate(generated_rows[:4]):
        for column in ("image", "negative_0"):
            row[column].save(tmp_path / f"{column}-{index}.png")
        rows.append({"query": row["query"], "image": f"image-{index}.png", "negative_0": f"negative_0-{index}.png"})
    return tmp_path, rows


def train_on_jsonl(folder, rows, *extra: str, env_cache) -> subprocess.CompletedProcess:
    """Run the quickstart on ``rows`` written as a JSON-lines file (two rows held out for evaluation)."""
    Dataset.from_list(rows).to_json(str(folder / "train.jsonl"))
    data = ["--train_dataset", str(folder / "train.jsonl"), "--eval_split_size", "2"]
    return run_train(
        "--config", "configs/quickstart.yaml", *data, "--output_dir", str(folder / "out"), *extra, env_cache=env_cache
    )


def test_missing_column(path_dataset, vdr_cache):
    folder, rows = path_dataset
    result = train_on_jsonl(folder, rows, "--query_column", "question", env_cache=vdr_cache)
    assert_clean_error(result, "has no column 'question' (its columns are: query, image, negative_0)")


def test_unreadable_image(path_dataset, vdr_cache):
    folder, rows = path_dataset
    (folder / "image-2.png").write_bytes(b"\x89PNG broken")
    result = train_on_jsonl(folder, rows, env_cache=vdr_cache)
    assert_clean_error(result, f"line 3, column 'image': image file '{folder / 'image-2.png'}' cannot be read")
