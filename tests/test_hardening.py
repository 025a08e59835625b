"""A user's mistakes and interruptions: one clear message, the right exit code, no traceback, nothing lost.

Most cases run the scripts' command-line entry point in-process (the same code path as `python train_vdr.py`, minus
the interpreter start-up); the Ctrl-C case runs a real subprocess. Each bad value is paired with a model path that
does not exist, so a message about the value proves it was caught before anything loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import Dataset

import evaluate_vdr
import train_vdr
from vdr.data import ensure_generated_pages
from vdr.tiny_model import ensure_tiny_qwen3_vl

from .conftest import REPO_ROOT
from .test_data import write_images

QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")
NO_MODEL = "./no-such-model-folder"
# A short training run: no evaluation, two steps, a checkpoint at each.
SMOKE = [
    "--eval_split_size", "0", "--eval_strategy", "no", "--evaluate_base_model", "false",
    "--max_steps", "2", "--save_steps", "1", "--logging_steps", "1",
]  # fmt: skip


def run(script, argv: list[str], capfd) -> tuple[int, str]:
    """Run a script's CLI in-process; return its exit code and everything it printed."""
    with pytest.raises(SystemExit) as exit_info:
        script.cli([f"{script.__name__}.py", *argv])
        raise SystemExit(0)
    out, err = capfd.readouterr()
    return exit_info.value.code, out + err


def assert_clean_error(code: int, printed: str, message: str, expected_code: int = 2) -> None:
    assert code == expected_code, printed[-3000:]
    assert message in printed, printed[-3000:]
    assert "Traceback" not in printed
    assert printed.count("error:") == 1  # one message, printed once


def out(folder: Path) -> list[str]:
    """An output folder of the test's own (the config's default, outputs/..., may hold a run from elsewhere), and
    a model that does not exist: data mistakes must be reported before the model loads."""
    return ["--output_dir", str(folder / "out"), "--model_name_or_path", NO_MODEL]


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(f"model_name_or_path: {NO_MODEL}\noutput_dir: {tmp_path / 'out'}\n{text}")
    return str(path)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("learning_rate: null\n", "key 'learning_rate': null is not allowed"),
        ("per_device_train_batch_size: [1, 2]\n", "key 'per_device_train_batch_size': expected a single value"),
        ("num_train_epochs: many\n", "key 'num_train_epochs': 'many' is not valid"),
    ],
)
def test_wrong_typed_yaml_values_name_the_file_and_key(tmp_path, capfd, yaml_text, message):
    config = write_yaml(tmp_path, yaml_text)
    code, printed = run(train_vdr, ["--config", config], capfd)
    assert_clean_error(code, printed, f"Config file '{config}', {message}")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--per_device_train_batch_size", "-4"], "--per_device_train_batch_size must be 1 or more, got -4"),
        (["--evaluator_batch_size", "0"], "evaluator_batch_size must be 1 or more"),
        (["--matryoshka_dims", "64", "32", "--truncate_dim", "48"], "--truncate_dim 48 is not one of the trained"),
        (["--eval_split_size", "0", "--eval_strategy", "steps"], "evaluates during training, but there is no"),
        (["--eval_split_size", "2.5"], "eval_split_size is a row count"),
        (["--push_to_hub", "true"], "--push_to_hub true needs a repository name"),
    ],
)
def test_bad_values_are_refused_before_the_model_loads(tmp_path, capfd, flags, message):
    argv = ["--model_name_or_path", NO_MODEL, "--output_dir", str(tmp_path / "out"), *flags]
    code, printed = run(train_vdr, argv, capfd)
    assert_clean_error(code, printed, message)
    assert not (tmp_path / "out").exists()  # nothing was written either


def test_output_dir_that_is_a_file_is_refused_by_both_scripts(tmp_path, capfd):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    code, printed = run(train_vdr, ["--model_name_or_path", NO_MODEL, "--output_dir", str(existing)], capfd)
    assert_clean_error(code, printed, f"--output_dir '{existing}' is an existing file")
    code, printed = run(
        evaluate_vdr, ["--model", NO_MODEL, "--dataset", "generated:pages", "--output_dir", str(existing)], capfd
    )
    assert code == 2 and str(existing) in printed and "Traceback" not in printed
    assert existing.read_text() == "keep me"


@pytest.fixture()
def jsonl_rows(tmp_path, generated_rows):
    rows = write_images(generated_rows[:4], tmp_path / "pages")
    return tmp_path, rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize("bad_query", [None, "", "   "])
def test_a_null_or_empty_query_is_named_by_its_line(jsonl_rows, capfd, bad_query):
    folder, rows = jsonl_rows
    rows[2]["query"] = bad_query
    data = write_jsonl(folder / "train.jsonl", rows)
    code, printed = run(train_vdr, ["--config", QUICKSTART, "--train_dataset", data, *out(folder)], capfd)
    # row index 2 is the third line of the file
    assert_clean_error(code, printed, f"{data}: line 3, column 'query' should hold a non-empty query text")


def test_empty_file_and_empty_glob_say_so(tmp_path, capfd):
    (tmp_path / "train.jsonl").write_text("\n")
    argv = ["--config", QUICKSTART, "--train_dataset", str(tmp_path / "train.jsonl"), *out(tmp_path)]
    code, printed = run(train_vdr, argv, capfd)
    assert_clean_error(code, printed, "is empty: it holds no rows")
    pattern = str(tmp_path / "nothing-*.jsonl")
    code, printed = run(train_vdr, ["--config", QUICKSTART, "--train_dataset", pattern, *out(tmp_path)], capfd)
    assert_clean_error(code, printed, f"Dataset pattern '{pattern}' matches no file")


@pytest.mark.parametrize("damage", ["arrow", "dataset_info.json"])
def test_a_damaged_save_to_disk_folder_is_named(jsonl_rows, capfd, damage):
    folder, rows = jsonl_rows
    saved = folder / "saved"
    Dataset.from_list([{"query": row["query"]} for row in rows]).save_to_disk(str(saved))
    victim = next(saved.glob("*.arrow")) if damage == "arrow" else saved / damage
    victim.unlink()
    code, printed = run(train_vdr, ["--config", QUICKSTART, "--train_dataset", str(saved), *out(folder)], capfd)
    assert_clean_error(code, printed, f"Dataset folder '{saved}' looks like a datasets.save_to_disk folder but")


def test_too_few_rows_for_one_batch_are_refused(jsonl_rows, capfd):
    folder, rows = jsonl_rows
    data = write_jsonl(folder / "train.jsonl", rows)
    argv = ["--config", QUICKSTART, "--train_dataset", data, *out(folder), *SMOKE]
    code, printed = run(train_vdr, argv, capfd)
    assert_clean_error(code, printed, "The training data has 4 rows, fewer than one optimizer step takes (32")


def test_carving_an_eval_split_writes_nothing_into_the_data_folder(tmp_path, generated_rows):
    from vdr.config import DataArguments
    from vdr.data import load_training_data

    saved = tmp_path / "saved"
    rows = [{"query": row["query"], "image": row["image"], "negative_0": row["negative_0"]} for row in generated_rows]
    Dataset.from_list(rows).save_to_disk(str(saved))
    before = sorted(path.name for path in saved.rglob("*"))
    train, held_out = load_training_data(DataArguments(train_dataset=str(saved), eval_split_size=3), seed=0)
    assert (len(train), len(held_out)) == (9, 3)
    assert sorted(path.name for path in saved.rglob("*")) == before  # no cache-*.arrow index files


def test_damaged_caches_are_rebuilt_not_fatal(tmp_path):
    model_dir = ensure_tiny_qwen3_vl(tmp_path)
    (model_dir / "model.safetensors").write_bytes(b"truncated")
    assert ensure_tiny_qwen3_vl(tmp_path) == model_dir
    assert (model_dir / "model.safetensors").stat().st_size > 1000
    pages = ensure_generated_pages(4, seed=9, cache_dir=tmp_path)
    next(pages.glob("*.arrow")).unlink()
    assert ensure_generated_pages(4, seed=9, cache_dir=tmp_path) == pages
    from datasets import load_from_disk

    assert len(load_from_disk(str(pages))) == 4


def test_no_token_in_any_file_or_log_and_a_failed_push_exits_non_zero(tmp_path, capfd, vdr_cache):
    token = "hf_FAKEtoken0123456789"
    output_dir = tmp_path / "run"
    argv = ["--config", QUICKSTART, "--output_dir", str(output_dir), *SMOKE]
    argv += ["--push_to_hub", "true", "--hub_model_id", "someone/vdr-test", "--hub_token", token]
    code, printed = run(train_vdr, argv, capfd)  # HF_HUB_OFFLINE: the push fails
    assert_clean_error(code, printed, "Pushing to the Hub as 'someone/vdr-test' failed", expected_code=3)
    assert f"hf upload someone/vdr-test {output_dir / 'final'}" in printed
    assert token not in printed
    assert (output_dir / "final" / "model.safetensors").exists()  # the model is saved all the same
    files = [path for path in output_dir.rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in files)
    leaking = [str(path) for path in files if token.encode() in path.read_bytes()]
    assert not leaking
    run_config = json.loads((output_dir / "run_config.json").read_text())
    # what was requested (before the run turned the trainer's own push off), secrets hidden
    assert run_config["SentenceTransformerTrainingArguments"]["push_to_hub"] is True
    assert "<redacted>" in run_config["command"]


def test_resuming_a_finished_run_is_refused(tmp_path, capfd, vdr_cache):
    output_dir = tmp_path / "run"
    (output_dir / "final").mkdir(parents=True)
    (output_dir / "checkpoint-2").mkdir()
    (output_dir / "metrics.json").write_text("{}")
    argv = ["--model_name_or_path", NO_MODEL, "--output_dir", str(output_dir), "--resume_from_checkpoint", "last"]
    code, printed = run(train_vdr, argv, capfd)
    assert_clean_error(code, printed, f"The run in '{output_dir}' already finished")
    assert (output_dir / "metrics.json").read_text() == "{}"


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path, vdr_cache):
    output_dir = tmp_path / "run"
    argv = ["train_vdr.py", "--config", "configs/quickstart.yaml", "--output_dir", str(output_dir), *SMOKE]
    argv[argv.index("--max_steps") + 1] = "1000"  # long enough to be interrupted
    env = {**os.environ, "VDR_CACHE": str(vdr_cache)}
    process = subprocess.Popen(
        [sys.executable, *argv], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not (output_dir / "checkpoint-2").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "Training was interrupted. The newest checkpoint is" in stderr
    assert "--resume_from_checkpoint last" in stderr
    assert any(output_dir.glob("checkpoint-*"))  # checkpoints written before Ctrl-C stay
    shutil.rmtree(output_dir)
