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


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_a_scheduler_stops_cleanly_and_says_how_to_resume(tmp_path, vdr_cache, stop):
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
    process.send_signal(stop)
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


# ---------------------------------------------------------------------------------------------------------------------
# Bad input that once gave a wrong result, a traceback or a dead end
# ---------------------------------------------------------------------------------------------------------------------


def must_not_load(*args, **kwargs):
    raise AssertionError("a model was loaded before the input was checked")


def no_model_may_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way the scripts load a model fails the test: what is checked must be checked before that."""
    for module in (evaluate_vdr, train_vdr):
        for loader in ("build_model", "build_multi_vector_model", "build_trainable_model"):
            if hasattr(module, loader):
                monkeypatch.setattr(module, loader, must_not_load)
    monkeypatch.setattr("vdr.models.embedder.build_model", must_not_load)


def beir_folder(folder: Path, rows: list[dict], corpus_ids: list[str] | None = None, **columns) -> Path:
    """A small BEIR-layout set (corpus.jsonl with image paths, queries.jsonl, qrels.jsonl) from generated rows: query
    i is relevant to page i. ``corpus_ids`` / ``query_ids`` / ``scores`` replace the defaults to plant a problem."""
    (folder / "pages").mkdir(parents=True)
    corpus_ids = corpus_ids or [f"p{i}" for i in range(len(rows))]
    query_ids = columns.get("query_ids") or [f"q{i}" for i in range(len(rows))]
    scores = columns.get("scores") or [1] * len(rows)
    corpus = []
    for index, (row, corpus_id) in enumerate(zip(rows, corpus_ids)):
        row["image"].save(folder / "pages" / f"{index}.png")
        corpus.append({"corpus-id": corpus_id, "image": f"pages/{index}.png"})
    queries = [{"query-id": qid, "query": row["query"]} for qid, row in zip(query_ids, rows)]
    qrels = [{"query-id": qid, "corpus-id": cid, "score": s} for qid, cid, s in zip(query_ids, corpus_ids, scores)]
    for name, records in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder


@pytest.mark.parametrize("part", ["corpus", "queries"])
def test_duplicate_ids_in_a_beir_set_are_refused(tmp_path, capfd, monkeypatch, generated_rows, part):
    ids = {"corpus": {"corpus_ids": ["p0", "p1", "p0", "p3"]}, "queries": {"query_ids": ["q0", "q1", "q1", "q3"]}}
    folder = beir_folder(tmp_path / "beir", generated_rows[:4], **ids[part])
    no_model_may_load(monkeypatch)
    argv = ["--model", "generated:tiny-qwen3-vl", "--dataset", str(folder), "--output_dir", str(tmp_path / "out")]
    code, printed = run_script(evaluate_vdr, argv, capfd)
    duplicate = "p0" if part == "corpus" else "q1"
    assert_clean_error(code, printed, f"the id '{duplicate}' appears 2 times in the {part} (records ")
    assert f"{folder / part}.jsonl" in printed  # names the file


def test_an_embedding_model_is_refused_as_a_reranker(tmp_path, capfd, monkeypatch, st_model_dir):
    no_model_may_load(monkeypatch)
    argv = ["--model", "generated:tiny-qwen3-vl", "--reranker", str(st_model_dir), "--dataset", "generated:pages"]
    code, printed = run_script(evaluate_vdr, [*argv, "--output_dir", str(tmp_path / "out")], capfd)
    assert_clean_error(code, printed, f"--reranker '{st_model_dir}' is an embedding model")


def test_a_reranker_folder_without_a_model_is_named_as_a_reranker_before_anything_loads(tmp_path, capfd, monkeypatch):
    (tmp_path / "empty").mkdir()
    no_model_may_load(monkeypatch)
    argv = ["--model", "generated:tiny-qwen3-vl", "--reranker", str(tmp_path / "empty"), "--dataset", "generated:pages"]
    code, printed = run_script(evaluate_vdr, [*argv, "--output_dir", str(tmp_path / "out")], capfd)
    assert_clean_error(code, printed, f"--reranker '{tmp_path / 'empty'}' holds no model")


def fake_checkpoint(folder: Path, missing: tuple[str, ...] = ()) -> Path:
    """A checkpoint folder as the trainer writes it (files with stand-in contents), without ``missing``."""
    folder.mkdir(parents=True)
    for name in ("model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        if name not in missing:
            (folder / name).write_text("{}")
    return folder


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt", "model.safetensors", "trainer_state.json"])
def test_resuming_from_an_incomplete_checkpoint_is_refused_and_the_intact_one_named(tmp_path, capfd, missing):
    run = tmp_path / "run"
    fake_checkpoint(run / "checkpoint-2")
    fake_checkpoint(run / "checkpoint-4", missing=(missing,))
    argv = ["--model_name_or_path", NO_MODEL, "--output_dir", str(run), "--resume_from_checkpoint", "last"]
    code, printed = run_script(train_vdr, argv, capfd)
    assert_clean_error(code, printed, f"'{run / 'checkpoint-4'}' has no {missing}")
    assert f"--resume_from_checkpoint {run / 'checkpoint-2'}" in printed  # the newest intact one


def test_resuming_from_a_folder_that_is_not_a_checkpoint_is_refused(tmp_path, capfd):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    argv = ["--model_name_or_path", NO_MODEL, "--output_dir", str(tmp_path / "run")]
    code, printed = run_script(train_vdr, [*argv, "--resume_from_checkpoint", str(tmp_path / "notes")], capfd)
    assert_clean_error(code, printed, f"'{tmp_path / 'notes'}' is not a training checkpoint")


def evaluate_bm25(output_dir: Path, capfd, *extra: str) -> tuple[int, str]:
    """evaluate_vdr.py with the BM25 baseline alone on a few generated pages: results in seconds, no model."""
    argv = ["--model", "bm25", "--dataset", "generated:pages", "--num_generated_rows", "4"]
    return run_script(evaluate_vdr, [*argv, "--output_dir", str(output_dir), *extra], capfd)


def test_a_second_evaluation_never_mixes_with_the_first_in_one_output_dir(tmp_path, capfd, vdr_cache):
    out = tmp_path / "eval"
    assert evaluate_bm25(out, capfd)[0] == 0
    (out / "training_base.png").write_bytes(b"a plot of the first run")
    first = (out / "results.json").read_text()
    code, printed = evaluate_bm25(out, capfd, "--num_generated_rows", "5")
    assert_clean_error(code, printed, f"--output_dir '{out}' already holds the results of an earlier evaluation")
    assert (out / "results.json").read_text() == first  # nothing replaced
    code, printed = evaluate_bm25(out, capfd, "--num_generated_rows", "5", "--overwrite_output_dir", "true")
    assert code == 0, printed[-2000:]
    assert json.loads((out / "results.json").read_text())["results"][0]["num_queries"] == 5
    assert not (out / "training_base.png").exists()  # the first run's files are gone, not mixed in


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max_pixels", "-5", "max_pixels must be 1 or more, got -5"),
        ("--max_pixels", "0", "max_pixels must be 1 or more, got 0"),
        ("--min_pixels", "0", "min_pixels must be 1 or more, got 0"),
        ("--learning_rate", "-1", "--learning_rate must be 0 or more, got -1.0"),
    ],
)
def test_bad_numbers_are_refused_before_the_model_loads(tmp_path, capfd, flag, value, message):
    argv = ["--model_name_or_path", NO_MODEL, "--output_dir", str(tmp_path / "out"), flag, value]
    code, printed = run_script(train_vdr, argv, capfd)
    assert_clean_error(code, printed, message)


def test_pixel_bounds_are_checked_in_every_script(tmp_path, capfd):
    argv = ["--model", "bm25", "--dataset", "generated:pages", "--max_pixels", "0"]
    code, printed = run_script(evaluate_vdr, [*argv, "--output_dir", str(tmp_path / "out")], capfd)
    assert_clean_error(code, printed, "max_pixels must be 1 or more, got 0")
    code, printed = run_script(prepare_vdr_data, ["--validate", str(tmp_path), "--min_pixels", "-1"], capfd)
    assert_clean_error(code, printed, "min_pixels must be 1 or more, got -1")


@pytest.mark.parametrize("script", ["train_vdr", "prepare_vdr_data"])
def test_an_output_dir_that_cannot_be_created_is_refused(tmp_path, capfd, script):
    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / "out"
    module = {"train_vdr": train_vdr, "prepare_vdr_data": prepare_vdr_data}[script]
    argv = {
        "train_vdr": ["--model_name_or_path", NO_MODEL, "--output_dir", str(target)],
        "prepare_vdr_data": ["--input_dir", str(tmp_path), "--output_dir", str(target)],
    }[script]
    code, printed = run_script(module, argv, capfd)
    assert_clean_error(code, printed, f"--output_dir '{target}' cannot be created")


def test_a_qrels_score_that_is_not_a_number_is_named(tmp_path, capfd, monkeypatch, generated_rows):
    folder = beir_folder(tmp_path / "beir", generated_rows[:3], scores=[1, "high", 2])
    no_model_may_load(monkeypatch)
    argv = ["--model", "generated:tiny-qwen3-vl", "--dataset", str(folder), "--output_dir", str(tmp_path / "out")]
    code, printed = run_script(evaluate_vdr, argv, capfd)
    assert_clean_error(code, printed, f"{folder / 'qrels.jsonl'}: record 2, column 'score': 'high' is not a number")


def test_invalid_json_in_a_json_lines_file_names_its_line(jsonl_rows, capfd):
    folder, rows = jsonl_rows
    data = folder / "train.jsonl"
    lines = [json.dumps(row) for row in rows]
    lines.insert(4, '{"query": "unfinished", "image": ')
    data.write_text("\n".join(lines) + "\n")
    code, printed = run_script(train_vdr, ["--config", QUICKSTART, "--train_dataset", str(data), *out(folder)], capfd)
    assert_clean_error(code, printed, f"{data}: line 5 is not valid JSON")


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_config_that_is_not_utf8_names_the_file(tmp_path, capfd, encoding):
    config = tmp_path / "config.yaml"
    config.write_bytes("query_prompt: Résumé\n".encode(encoding))
    code, printed = run_script(train_vdr, ["--config", str(config), *out(tmp_path)], capfd)
    assert_clean_error(code, printed, f"Config file '{config}' is not UTF-8 text")


def test_a_data_file_that_is_not_utf8_names_the_file_and_line(jsonl_rows, capfd):
    folder, rows = jsonl_rows
    rows[1]["query"] = "Résumé of Q3"
    data = folder / "train.jsonl"
    data.write_bytes("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("latin-1"))
    code, printed = run_script(train_vdr, ["--config", QUICKSTART, "--train_dataset", str(data), *out(folder)], capfd)
    assert_clean_error(code, printed, f"{data}: line 2 is not UTF-8 text")


def test_a_beir_folder_as_training_data_is_refused_before_anything_is_written(tmp_path, capfd, generated_rows):
    folder = beir_folder(tmp_path / "eval-beir", generated_rows[:3])
    argv = ["--config", QUICKSTART, "--eval_split_size", "0", "--eval_dataset", str(folder), *out(tmp_path)]
    code, printed = run_script(train_vdr, argv, capfd)
    assert_clean_error(code, printed, f"--eval_dataset '{folder}' is a BEIR-layout evaluation set")
    assert not (tmp_path / "out").exists()  # run_config.json not written either


def test_training_into_the_data_folder_is_refused(jsonl_rows, capfd):
    folder, rows = jsonl_rows
    data = write_jsonl(folder / "train.jsonl", rows)
    argv = [
        "--config",
        QUICKSTART,
        "--train_dataset",
        data,
        "--output_dir",
        str(folder),
        "--model_name_or_path",
        NO_MODEL,
    ]
    code, printed = run_script(train_vdr, argv, capfd)
    assert_clean_error(code, printed, f"--output_dir '{folder}' is the folder of the training data")
    assert sorted(path.name for path in folder.iterdir()) == ["pages", "train.jsonl"]  # nothing written beside it


def test_a_model_that_scores_nothing_does_not_stop_the_others(
    tmp_path, capfd, monkeypatch, st_model_dir, generated_rows
):
    # page images without any text: BM25 has nothing to index and no OCR package to read them with
    monkeypatch.setattr("vdr.evaluation.bm25.ocr_reader", lambda: None)
    folder = beir_folder(tmp_path / "beir", generated_rows[:4])
    argv = ["--model", "bm25", "--model", str(st_model_dir), "--dataset", str(folder), "--max_pixels", "36864"]
    code, printed = run_script(evaluate_vdr, [*argv, "--output_dir", str(tmp_path / "out")], capfd)
    assert code == 0 and "Traceback" not in printed, printed[-3000:]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {record["model"] for record in saved["results"]} == {"tiny-st"}
    assert "BM25 skipped on 'beir'" in (tmp_path / "out" / "results.md").read_text()


def test_a_folder_of_only_unreadable_files_stops_before_any_model_loads(tmp_path, capfd, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 50)
    (docs / "empty.pdf").write_bytes(b"")
    no_model_may_load(monkeypatch)
    argv = ["--input_dir", str(docs), "--output_dir", str(tmp_path / "out"), "--num_workers", "1"]
    code, printed = run_script(prepare_vdr_data, argv, capfd)
    assert_clean_error(code, printed, "None of the 2 file(s) under")
    assert "broken.pdf: it is corrupt" in printed and "empty.pdf: it is empty" in printed
    assert (tmp_path / "out" / "skipped_files.json").is_file()  # the reasons are kept


def test_prepare_refuses_to_write_into_the_input_folder(tmp_path, capfd):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "report.pdf").write_bytes(b"%PDF-1.4")
    argv = ["--input_dir", str(tmp_path / "docs"), "--output_dir", str(tmp_path / "docs")]
    code, printed = run_script(prepare_vdr_data, argv, capfd)
    assert_clean_error(code, printed, "--output_dir is the --input_dir itself")
    assert sorted(path.name for path in (tmp_path / "docs").iterdir()) == ["report.pdf"]


def test_a_query_file_that_is_not_utf8_names_the_file(tmp_path, capfd):
    queries = tmp_path / "queries.csv"
    queries.write_bytes("query,document,page\nrésumé,report.pdf,1\n".encode("latin-1"))
    argv = ["--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--steps", "queries"]
    code, printed = run_script(prepare_vdr_data, [*argv, "--queries", "file", "--queries_file", str(queries)], capfd)
    assert_clean_error(code, printed, f"Query file '{queries}' is not UTF-8 text")


# ---------------------------------------------------------------------------------------------------------------------
# More bad input, found by trying what users get wrong
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--torch_dtype", "float8"], "torch_dtype must be one of auto, bfloat16, float16, float32, got 'float8'"),
        (["--attn_implementation", "flash"], "attn_implementation must be one of eager, sdpa, flash_attention_2"),
        (["--num_train_epochs", "0"], "--num_train_epochs 0.0 trains nothing"),
        (["--report_to", "wandb"], "--report_to wandb: wandb is not installed"),
        (
            ["--push_to_hub", "true", "--hub_model_id", "you/your model"],
            "--hub_model_id 'you/your model' is not a valid",
        ),
        (["--negative_columns", "image"], "the query, positive and negative columns must differ; image is given"),
        (["--image_root", "./no-such-folder"], "--image_root './no-such-folder' is not a folder"),
    ],
)
def test_more_bad_training_values_are_refused_before_the_model_loads(tmp_path, capfd, flags, message):
    code, printed = run_script(train_vdr, [*out(tmp_path), *flags], capfd)
    assert_clean_error(code, printed, message)
    assert not (tmp_path / "out").exists()


def test_evaluating_on_the_training_data_is_refused(jsonl_rows, capfd):
    folder, rows = jsonl_rows
    data = write_jsonl(folder / "train.jsonl", rows)
    argv = ["--config", QUICKSTART, "--train_dataset", data, "--eval_split_size", "0", "--eval_dataset", data]
    code, printed = run_script(train_vdr, [*argv, *out(folder)], capfd)
    assert_clean_error(code, printed, f"--eval_dataset is the training data itself ('{data}')")


def test_a_config_folder_is_named_as_a_folder(tmp_path, capfd):
    code, printed = run_script(train_vdr, ["--config", str(tmp_path), *out(tmp_path)], capfd)
    assert_clean_error(code, printed, f"Config file '{tmp_path}' is a folder")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cache_dir", "{file}"], "--cache_dir '{file}' is an existing file"),
        (["--num_generated_rows", "0"], "num_generated_rows must be 1 or more, got 0"),
        (["--dataset", "https://example.com/pages.jsonl"], "is a URL: datasets are read from local files"),
        (["--image_root", "{missing}"], "--image_root '{missing}' is not a folder"),
    ],
)
def test_more_bad_evaluation_values_are_refused_before_the_model_loads(tmp_path, capfd, monkeypatch, flags, message):
    (tmp_path / "file").write_text("")
    paths = {"file": tmp_path / "file", "missing": tmp_path / "missing"}
    flags, message = [flag.format(**paths) for flag in flags], message.format(**paths)
    no_model_may_load(monkeypatch)
    argv = ["--model", "generated:tiny-qwen3-vl", "--output_dir", str(tmp_path / "out"), "--num_generated_rows", "4"]
    argv += [*flags] if "--dataset" in flags else ["--dataset", "generated:pages", *flags]  # the flag's value last
    code, printed = run_script(evaluate_vdr, argv, capfd)
    assert_clean_error(code, printed, message)


def test_pages_with_no_text_give_no_text_queries_and_say_so(tmp_path, capfd, generated_rows):
    (tmp_path / "scans").mkdir()
    generated_rows[0]["image"].save(tmp_path / "scans" / "scan.png")  # an image: no text layer
    argv = ["--input_dir", str(tmp_path / "scans"), "--output_dir", str(tmp_path / "out"), "--num_workers", "1"]
    code, printed = run_script(prepare_vdr_data, argv, capfd)
    assert_clean_error(code, printed, "No query was made from the 1 page(s) with --queries text: 1 of the 1 page(s)")
    assert "--queries vlm" in printed


def test_a_resolution_of_zero_is_refused_rather_than_reported_as_corrupt_pdfs(tmp_path, capfd):
    argv = ["--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--max_dpi", "0"]
    code, printed = run_script(prepare_vdr_data, argv, capfd)
    assert_clean_error(code, printed, "max_dpi must be above 0, got 0.0")
