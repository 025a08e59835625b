"""A user's mistakes and interruptions, in every script: one clear message, the right exit code, no traceback, nothing
lost, and everything that can be checked before a model loads checked then.

Most cases run a script's command-line entry point in-process (``run_script``: the same code path as
``python train_vdr.py``, minus the interpreter start-up); cases about what a real process prints or does with a
signal run it as one (``run_subprocess``). Each bad value is paired with a model path that does not exist, so a
message about the value proves it was caught before anything loaded."""

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
import prepare_vdr_data
import train_vdr
from tests.helpers import REPO_ROOT, assert_clean_error, run_script, run_subprocess, write_images, write_yaml
from vdr.errors import VdrError
from vdr.offline.generated_pages import GENERATED_PAGES_ID

QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")


NO_MODEL = "./no-such-model-folder"


# A short training run: no evaluation, two steps, a checkpoint at each.
SMOKE = (
    "--eval_split_size 0 --eval_strategy no --evaluate_base_model false --max_steps 2 --save_steps 1 --logging_steps 1"
).split()


def out(folder: Path) -> list[str]:
    """An output folder of the test's own (the config's default, outputs/..., may hold a run from elsewhere), and
    a model that does not exist: data mistakes must be reported before the model loads."""
    return ["--output_dir", str(folder / "out"), "--model_name_or_path", NO_MODEL]


def bad_config(tmp_path: Path, text: str) -> str:
    """A config file with ``text``, a model that does not exist and an output folder of the test's own."""
    return write_yaml(tmp_path, f"model_name_or_path: {NO_MODEL}\noutput_dir: {tmp_path / 'out'}\n{text}")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("learning_rate: null\n", "key 'learning_rate': null is not allowed"),
        ("per_device_train_batch_size: [1, 2]\n", "key 'per_device_train_batch_size': expected a single value"),
        ("num_train_epochs: many\n", "key 'num_train_epochs': 'many' is not valid"),
    ],
)
def test_wrong_typed_yaml_values_name_the_file_and_key(tmp_path, capfd, yaml_text, message):
    config = bad_config(tmp_path, yaml_text)
    code, printed = run_script(train_vdr, ["--config", config], capfd)
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
    code, printed = run_script(train_vdr, argv, capfd)
    assert_clean_error(code, printed, message)
    assert not (tmp_path / "out").exists()  # nothing was written either


def test_output_dir_that_is_a_file_is_refused_by_both_scripts(tmp_path, capfd):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    code, printed = run_script(train_vdr, ["--model_name_or_path", NO_MODEL, "--output_dir", str(existing)], capfd)
    assert_clean_error(code, printed, f"--output_dir '{existing}' is an existing file")
    code, printed = run_script(
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
    code, printed = run_script(train_vdr, ["--config", QUICKSTART, "--train_dataset", data, *out(folder)], capfd)
    # row index 2 is the third line of the file
    assert_clean_error(code, printed, f"{data}: line 3, column 'query' should hold a non-empty query text")


def test_empty_file_and_empty_glob_say_so(tmp_path, capfd):
    (tmp_path / "train.jsonl").write_text("\n")
    argv = ["--config", QUICKSTART, "--train_dataset", str(tmp_path / "train.jsonl"), *out(tmp_path)]
    code, printed = run_script(train_vdr, argv, capfd)
    assert_clean_error(code, printed, "is empty: it holds no rows")
    pattern = str(tmp_path / "nothing-*.jsonl")
    code, printed = run_script(train_vdr, ["--config", QUICKSTART, "--train_dataset", pattern, *out(tmp_path)], capfd)
    assert_clean_error(code, printed, f"Dataset pattern '{pattern}' matches no file")


@pytest.mark.parametrize("damage", ["arrow", "dataset_info.json"])
def test_a_damaged_save_to_disk_folder_is_named(jsonl_rows, capfd, damage):
    folder, rows = jsonl_rows
    saved = folder / "saved"
    Dataset.from_list([{"query": row["query"]} for row in rows]).save_to_disk(str(saved))
    victim = next(saved.glob("*.arrow")) if damage == "arrow" else saved / damage
    victim.unlink()
    code, printed = run_script(train_vdr, ["--config", QUICKSTART, "--train_dataset", str(saved), *out(folder)], capfd)
    assert_clean_error(code, printed, f"Dataset folder '{saved}' looks like a datasets.save_to_disk folder but")


def test_too_few_rows_for_one_batch_are_refused(jsonl_rows, capfd):
    folder, rows = jsonl_rows
    data = write_jsonl(folder / "train.jsonl", rows)
    argv = ["--config", QUICKSTART, "--train_dataset", data, *out(folder), *SMOKE]
    code, printed = run_script(train_vdr, argv, capfd)
    assert_clean_error(code, printed, "The training data has 4 rows, fewer than one optimizer step takes (32")


def test_carving_an_eval_split_writes_nothing_into_the_data_folder(tmp_path, generated_rows):
    from vdr.data.sources import load_training_data
    from vdr.training.arguments import DataArguments

    saved = tmp_path / "saved"
    rows = [{"query": row["query"], "image": row["image"], "negative_0": row["negative_0"]} for row in generated_rows]
    Dataset.from_list(rows).save_to_disk(str(saved))
    before = sorted(path.name for path in saved.rglob("*"))
    train, held_out = load_training_data(DataArguments(train_dataset=str(saved), eval_split_size=3), seed=0)
    assert (len(train), len(held_out)) == (9, 3)
    assert sorted(path.name for path in saved.rglob("*")) == before  # no cache-*.arrow index files


def test_no_token_in_any_file_or_log_and_a_failed_push_exits_non_zero(tmp_path, capfd, vdr_cache):
    token = "hf_FAKEtoken0123456789"
    output_dir = tmp_path / "run"
    argv = ["--config", QUICKSTART, "--output_dir", str(output_dir), *SMOKE]
    argv += ["--push_to_hub", "true", "--hub_model_id", "someone/vdr-test", "--hub_token", token]
    code, printed = run_script(train_vdr, argv, capfd)  # HF_HUB_OFFLINE: the push fails
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
    code, printed = run_script(train_vdr, argv, capfd)
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


def test_unknown_key(vdr_cache):
    code, printed = run_subprocess("train_vdr.py", ["--config", QUICKSTART, "--lerning_rate", "1e-4"], vdr_cache)
    assert_clean_error(
        code, printed, "Unknown argument 'lerning_rate' in the command line. Did you mean 'learning_rate'?"
    )


def test_missing_model_path(tmp_path, capfd):
    argv = [
        "--config",
        QUICKSTART,
        "--model_name_or_path",
        str(tmp_path / "nope"),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    code, printed = run_script(train_vdr, argv, capfd)
    assert_clean_error(code, printed, f"Model path '{tmp_path / 'nope'}' does not exist")


@pytest.fixture()
def path_dataset(tmp_path, generated_rows):
    """A JSON-lines training file whose image columns hold file paths."""
    rows = []
    for index, row in enumerate(generated_rows[:4]):
        for column in ("image", "negative_0"):
            row[column].save(tmp_path / f"{column}-{index}.png")
        rows.append({"query": row["query"], "image": f"image-{index}.png", "negative_0": f"negative_0-{index}.png"})
    return tmp_path, rows


def train_on_jsonl(folder: Path, rows: list[dict], capfd, *extra: str) -> tuple[int, str]:
    """Run the quickstart on ``rows`` written as a JSON-lines file (two rows held out for evaluation)."""
    Dataset.from_list(rows).to_json(str(folder / "train.jsonl"))
    data = ["--train_dataset", str(folder / "train.jsonl"), "--eval_split_size", "2"]
    return run_script(train_vdr, ["--config", QUICKSTART, *data, "--output_dir", str(folder / "out"), *extra], capfd)


def test_missing_column(path_dataset, capfd):
    folder, rows = path_dataset
    code, printed = train_on_jsonl(folder, rows, capfd, "--query_column", "question")
    assert_clean_error(code, printed, "has no column 'question' (its columns are: query, image, negative_0)")


def test_unreadable_image(path_dataset, capfd):
    folder, rows = path_dataset
    (folder / "image-2.png").write_bytes(b"\x89PNG broken")
    code, printed = train_on_jsonl(folder, rows, capfd)
    assert_clean_error(code, printed, f"line 3, column 'image': image file '{folder / 'image-2.png'}' cannot be read")


MAX_PIXELS = "36864"


def run_evaluate(vdr_cache: Path, *argv: str) -> tuple[int, str]:
    """evaluate_vdr.py as a real process on small generated pages: what it prints, logs included, is checked."""
    return run_subprocess(
        "evaluate_vdr.py", ["--max_pixels", MAX_PIXELS, "--num_generated_rows", "8", *argv], vdr_cache
    )


def broken_model(folder: Path) -> Path:
    """A folder that looks like a model (it has a config.json) but fails to load."""
    folder.mkdir()
    (folder / "config.json").write_text("{ not json")
    return folder


def test_a_failing_model_is_reported_once_and_the_others_are_still_written(tmp_path, st_model_dir, vdr_cache):
    broken = broken_model(tmp_path / "broken")
    code, printed = run_evaluate(
        vdr_cache,
        "--output_dir",
        str(tmp_path / "out"),
        "--model",
        str(st_model_dir),
        "--model",
        str(broken),
        "--dataset",
        GENERATED_PAGES_ID,
        "--truncate_dims",
        "64",
        "32",
    )
    assert_clean_error(code, printed, "1 of 2 model(s) could not be scored: broken: Could not load model")
    assert printed.count("Could not load model") == 1  # the reason once, in the final message
    assert f"Results of the others are in {tmp_path / 'out'}." in printed
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["model"] for r in saved["results"]} == {"tiny-st"}


def test_when_no_model_succeeds_there_is_no_pointer_to_results(tmp_path, vdr_cache):
    broken = broken_model(tmp_path / "broken")
    out = tmp_path / "out"
    code, printed = run_evaluate(
        vdr_cache, "--output_dir", str(out), "--model", str(broken), "--dataset", GENERATED_PAGES_ID
    )
    assert_clean_error(code, printed, "1 of 1 model(s) could not be scored: broken: Could not load model")
    assert printed.count("Could not load model") == 1
    assert "Results of the others" not in printed
    assert not (out / "results.json").exists()


def test_output_dir_that_is_a_file_fails_before_anything_loads(tmp_path, vdr_cache):
    (tmp_path / "results").write_text("not a folder")
    code, printed = run_evaluate(
        vdr_cache,
        "--output_dir",
        str(tmp_path / "results"),
        "--model",
        "generated:tiny-qwen3-vl",
        "--dataset",
        GENERATED_PAGES_ID,
    )
    assert code == 2
    assert printed.strip().splitlines() == [
        f"error: --output_dir '{tmp_path / 'results'}' is an existing file. Give a folder path for the results."
    ]  # one paragraph, nothing loaded or logged before it


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch_size", "0"], "--batch_size must be 1 or more, got 0"),
        (["--truncate_dims", "64", "0"], r"--truncate_dims must be positive integers, got \[64, 0\]"),
        (["--preprocess_cache_mb", "-1"], "--preprocess_cache_mb must be 0 or more, got -1"),
        (["--dataset", "path=x,nmae=y"], "Unknown key 'nmae' in --dataset 'path=x,nmae=y'. Did you mean 'name'"),
        (["--dataset", "path=a,name=x", "--dataset", "path=b,name=x"], "Two --dataset entries share a name"),
        (["--model", "./no/such/model"], "--model './no/such/model' does not exist"),
        (["--model", "{empty}"], "holds no model \\(no modules.json or config.json\\)"),
        (["--output_dir", "{file}/sub"], "--output_dir '.*/sub' cannot be created"),
    ],
)
def test_bad_values_fail_before_anything_loads(tmp_path, monkeypatch, argv, message):
    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded something before checking the arguments")

    for loader in ("load_retrieval_data", "build_model", "build_multi_vector_model"):
        monkeypatch.setattr(evaluate_vdr, loader, must_not_load)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    argv = [arg.format(empty=tmp_path / "empty", file=tmp_path / "file") for arg in argv]
    defaults = {"--model": "generated:tiny-qwen3-vl", "--dataset": GENERATED_PAGES_ID}
    argv += [item for flag, value in defaults.items() if flag not in argv for item in (flag, value)]
    with pytest.raises(VdrError, match=message):
        evaluate_vdr.main(*evaluate_vdr.make_parser().parse(["--output_dir", str(tmp_path / "out"), *argv]))


def run_prepare(*argv: str) -> dict:
    return prepare_vdr_data.main(*prepare_vdr_data.make_parser().parse(list(argv)))


def test_prepare_bad_input_gives_one_clear_error(tmp_path, vdr_cache):
    code, printed = run_subprocess(
        "prepare_vdr_data.py",
        ["--input_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out")],
        vdr_cache,
    )
    assert_clean_error(code, printed, f"Input folder '{tmp_path / 'nowhere'}' does not exist")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no documents here")
    with pytest.raises(VdrError, match="No PDFs or page images"):
        run_prepare("--input_dir", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "out"))
    with pytest.raises(VdrError, match="Query file .* does not exist"):
        run_prepare(
            "--input_dir",
            str(tmp_path / "empty"),
            "--output_dir",
            str(tmp_path / "out"),
            "--queries",
            "file",
            "--queries_file",
            str(tmp_path / "missing.csv"),
            "--steps",
            "queries",
        )
