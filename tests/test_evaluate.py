"""evaluate_vdr.py: agreement with Sentence Transformers' evaluator, both dataset layouts, caching, bad input."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer

from evaluate_vdr import main, make_parser
from vdr.config import ModelArguments, SourceArguments
from vdr.data import (
    GENERATED_BEIR_ID,
    DatasetSpec,
    RetrievalData,
    beir_retrieval_data,
    check_retrieval_data,
    load_retrieval_data,
    write_beir,
)
from vdr.embedding_cache import EmbeddingCache, dataset_fingerprint, model_fingerprint
from vdr.errors import VdrError
from vdr.evaluation import DEFAULT_METRICS, build_ir_evaluator, encode_full_dim, presize_corpus, score_dims
from vdr.model import UnusedLmHeadReportFilter, build_model
from vdr.model_comparison import EncodingSetup, embed_dataset, expand_models
from vdr.pages import GENERATED_PAGES_ID
from vdr.preprocessing import ResizedPageCache

from .conftest import REPO_ROOT

MAX_PIXELS = "36864"


@pytest.fixture(scope="module")
def st_model_dir(tmp_path_factory, vdr_cache) -> Path:
    """The tiny model saved as a Sentence Transformers model, with Matryoshka dims recorded like train_vdr.py."""
    folder = tmp_path_factory.mktemp("models") / "tiny-st"
    model = build_model(ModelArguments(model_name_or_path="generated:tiny-qwen3-vl", max_pixels=int(MAX_PIXELS)))
    model.save_pretrained(str(folder))
    (folder / "vdr_training.json").write_text(json.dumps({"matryoshka_dims": [64, 32, 16]}))
    return folder


@pytest.fixture(scope="module")
def pages_data(vdr_cache):
    options = SourceArguments(num_generated_rows=24, generated_seed=4)
    return load_retrieval_data(DatasetSpec.parse(GENERATED_PAGES_ID), options)


def run_evaluate(output_dir: Path, *argv: str) -> dict:
    args = make_parser().parse(["--output_dir", str(output_dir), "--max_pixels", MAX_PIXELS, *argv])
    return main(*args)


def test_metrics_agree_with_sentence_transformers_at_every_dim(st_model_dir, pages_data):
    model = SentenceTransformer(str(st_model_dir))
    setup = EncodingSetup(batch_size=8, page_cache=ResizedPageCache(0), embedding_cache=EmbeddingCache(None))
    embeddings = embed_dataset(model, "pages", pages_data, setup, {})
    ours = score_dims(model, embeddings.queries, embeddings.corpus, pages_data, [64, 32, 16, 8])
    opened = pages_data.with_opened_pages()  # Sentence Transformers' evaluator takes PIL images
    for dim in (64, 32, 16, 8):
        evaluator = build_ir_evaluator(opened, "st", batch_size=8, truncate_dim=dim, show_progress_bar=False)
        evaluator.precision_recall_at_k = [1, 5, 10, 100]
        evaluator.ndcg_at_k = [1, 5, 10]
        expected = evaluator(model)
        for name in DEFAULT_METRICS:  # every metric evaluate_vdr reports
            assert ours[dim][name] == pytest.approx(expected[f"st_cosine_{name}"], abs=1e-6), (dim, name)


def test_resizing_pages_once_leaves_embeddings_unchanged(st_model_dir, pages_data):
    from PIL import Image

    model = SentenceTransformer(str(st_model_dir))
    pages = [page.open() for page in list(pages_data.corpus.values())[:5]]
    pages.append(pages[0].resize((700, 990)))
    transparent = pages[1].convert("RGBA")
    transparent.putalpha(Image.linear_gradient("L").resize(transparent.size))  # alpha 0..255
    pages += [transparent, pages[2].convert("P").convert("RGBA").convert("LA"), pages[3].convert("L")]
    resized = list(presize_corpus(model, RetrievalData({}, dict(enumerate(pages)), {})).corpus.values())
    assert resized[5].size != pages[5].size  # it really was resized
    raw = encode_full_dim(model, pages, "document", 4, show_progress_bar=False)
    once = encode_full_dim(model, resized, "document", 4, show_progress_bar=False)
    assert torch.equal(raw, once)


def test_both_layouts_give_the_same_scores_and_all_outputs_are_written(tmp_path, st_model_dir):
    result = run_evaluate(
        tmp_path / "out",
        "--model", str(st_model_dir),
        "--model", "generated:tiny-qwen3-vl",
        "--dataset", GENERATED_PAGES_ID,
        "--dataset", f"path={GENERATED_BEIR_ID},name=pages-beir",
        "--num_generated_rows", "16",
    )  # fmt: skip
    by_key = {(r["model"], r["dataset"], r["dim"]): r["metrics"] for r in result["records"]}
    # the saved model's recorded Matryoshka dims are every model's: the bare VLM (no record) is scored there too
    for model in ("tiny-st", "tiny-qwen3-vl"):
        assert {k for k in by_key if k[0] == model} == {
            (model, d, m) for d in ("pages", "pages-beir") for m in (64, 32, 16)
        }
    for dim in (64, 32, 16):
        assert by_key[("tiny-st", "pages", dim)] == pytest.approx(by_key[("tiny-st", "pages-beir", dim)], abs=1e-9)
    out = tmp_path / "out"
    for name in ("results.json", "results.csv", "results.md", "ndcg_by_dim.png", "ndcg_by_model.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["results"]) == 12 and "wall_seconds" in saved["metadata"]
    # the second model reused the pages the first one resized
    assert saved["metadata"]["models"]["tiny-qwen3-vl"]["stats"]["pages"]["page_preprocessings"] == 0
    assert "| tiny-st |" in (out / "results.md").read_text()


def test_rerun_reads_embeddings_from_the_cache(tmp_path, st_model_dir):
    argv = ["--model", str(st_model_dir), "--dataset", GENERATED_PAGES_ID, "--num_generated_rows", "8"]
    argv += ["--cache_dir", str(tmp_path / "cache")]
    first = run_evaluate(tmp_path / "a", *argv)
    second = run_evaluate(tmp_path / "b", *argv)
    assert first["models"]["tiny-st"]["stats"]["pages"]["page_encodings"] == 40
    stats = second["models"]["tiny-st"]["stats"]["pages"]
    assert (stats["cache_hits"], stats["page_encodings"]) == (2, 0)
    assert first["records"] == second["records"]
    uncached = run_evaluate(tmp_path / "c", *argv, "--no_cache", "true")
    assert uncached["models"]["tiny-st"]["stats"]["pages"]["page_encodings"] == 40


def test_changed_weights_are_not_served_from_the_cache(tmp_path, st_model_dir):
    changed = Path(shutil.copytree(st_model_dir, tmp_path / "tiny-st"))
    weights = load_file(str(changed / "model.safetensors"))
    name = next(key for key in weights if key.endswith("layers.1.mlp.down_proj.weight"))
    weights[name] = weights[name] * 1.5  # a change in the middle of the file
    save_file(weights, str(changed / "model.safetensors"), metadata={"format": "pt"})
    argv = ["--dataset", GENERATED_PAGES_ID, "--num_generated_rows", "8", "--cache_dir", str(tmp_path / "cache")]
    run_evaluate(tmp_path / "a", "--model", str(st_model_dir), *argv)
    second = run_evaluate(tmp_path / "b", "--model", str(changed), *argv)
    assert second["models"]["tiny-st"]["stats"]["pages"]["cache_hits"] == 0


def test_training_output_folders_and_checkpoints(tmp_path, st_model_dir):
    run = tmp_path / "run"
    for name in ("checkpoint-10", "checkpoint-2", "final"):
        shutil.copytree(st_model_dir, run / name)
    assert [c.name for c in expand_models([str(run)])] == ["run"]
    names = [c.name for c in expand_models([str(run), str(run)], all_checkpoints=True)]
    assert names == [
        "run/checkpoint-2",
        "run/checkpoint-10",
        "run",
        "run/checkpoint-2 (2)",
        "run/checkpoint-10 (2)",
        "run (2)",
    ]
    shutil.rmtree(run / "final")
    with pytest.raises(VdrError, match="has no final model yet"):
        expand_models([str(run)])


def test_beir_graded_relevance_and_hub_column_names():
    corpus = Dataset.from_dict({"corpus_id": [10, 11, 12], "image": ["a", "b", "c"]})
    queries = Dataset.from_dict({"query_id": ["q1", "q2"], "query": ["x", "y"]})
    qrels = Dataset.from_dict({"query_id": ["q1", "q1", "q2"], "corpus_id": [10, 12, 11], "score": [2, 1, 0]})
    data = beir_retrieval_data(corpus, queries, qrels, "vidore-like")
    assert data.qrels == {"q1": {10: 2.0, 12: 1.0}, "q2": {11: 0.0}}
    assert data.relevant_docs() == {"q1": {10, 12}, "q2": set()}  # grade 0 is not relevant


def test_qrels_with_unknown_ids_and_empty_corpus_are_reported():
    corpus = Dataset.from_dict({"corpus-id": ["d1"], "image": ["a"]})
    queries = Dataset.from_dict({"query-id": ["q1"], "query": ["x"]})
    qrels = Dataset.from_dict({"query-id": ["q1", "q9"], "corpus-id": ["d1", "d7"], "score": [1, 1]})
    data = beir_retrieval_data(corpus, queries, qrels, "bad")
    with pytest.raises(
        VdrError, match=r"Dataset 'bad': the qrels name 1 query id\(s\) that are not in the query table \(e\.g\. 'q9'\)"
    ):
        check_retrieval_data(data, "bad")
    data.qrels.pop("q9")
    data.qrels["q1"]["d7"] = 1.0
    with pytest.raises(VdrError, match=r"1 corpus id\(s\) that are not in the corpus table \(e\.g\. 'd7'\)"):
        check_retrieval_data(data, "bad")
    with pytest.raises(VdrError, match="has an empty corpus"):
        check_retrieval_data(type(data)({"q": "x"}, {}, {}), "empty")


def test_beir_folder_written_from_rows_round_trips(tmp_path, generated_rows):
    write_beir(Dataset.from_list(generated_rows[:3]), tmp_path / "beir")
    data = load_retrieval_data(DatasetSpec.parse(str(tmp_path / "beir")))
    assert len(data.queries) == 3 and len(data.corpus) == 15
    assert data.qrels["q-1"] == {"page-1": 1.0}
    assert data.corpus["page-2-neg3"].open().tobytes() == generated_rows[2]["negative_3"].tobytes()


def test_dataset_spec_parsing():
    spec = DatasetSpec.parse("path=org/set,config=eval,name=hard,negative_columns=negative_0+negative_2,layout=rows")
    assert (spec.path, spec.config, spec.name, spec.negative_columns) == (
        "org/set",
        "eval",
        "hard",
        ("negative_0", "negative_2"),
    )
    assert DatasetSpec.parse("org/set").name == "set"
    with pytest.raises(VdrError, match="Unknown key 'confg' in --dataset .* Did you mean 'config'"):
        DatasetSpec.parse("path=org/set,confg=eval")


def run_evaluate_cli(vdr_cache: Path, *argv: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "evaluate_vdr.py", "--max_pixels", MAX_PIXELS, "--num_generated_rows", "8", *argv]
    env = {"VDR_CACHE": str(vdr_cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def broken_model(folder: Path) -> Path:
    """A folder that looks like a model (it has a config.json) but fails to load."""
    folder.mkdir()
    (folder / "config.json").write_text("{ not json")
    return folder


def test_a_failing_model_is_reported_once_and_the_others_are_still_written(tmp_path, st_model_dir, vdr_cache):
    broken = broken_model(tmp_path / "broken")
    result = run_evaluate_cli(
        vdr_cache, "--output_dir", str(tmp_path / "out"), "--model", str(st_model_dir), "--model", str(broken),
        "--dataset", GENERATED_PAGES_ID, "--truncate_dims", "64", "32",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("Could not load model") == 1  # the reason once, in the final message
    assert "1 of 2 model(s) could not be scored: broken: Could not load model" in result.stderr
    assert f"Results of the others are in {tmp_path / 'out'}." in result.stderr
    assert "Traceback" not in result.stderr
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["model"] for r in saved["results"]} == {"tiny-st"}


def test_when_no_model_succeeds_there_is_no_pointer_to_results(tmp_path, vdr_cache):
    broken = broken_model(tmp_path / "broken")
    out = tmp_path / "out"
    result = run_evaluate_cli(
        vdr_cache, "--output_dir", str(out), "--model", str(broken), "--dataset", GENERATED_PAGES_ID
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("Could not load model") == 1
    assert "1 of 1 model(s) could not be scored: broken: Could not load model" in result.stderr
    assert "Results of the others" not in result.stderr and "Traceback" not in result.stderr
    assert not (out / "results.json").exists()


def test_output_dir_that_is_a_file_fails_before_anything_loads(tmp_path, vdr_cache):
    (tmp_path / "results").write_text("not a folder")
    result = run_evaluate_cli(
        vdr_cache, "--output_dir", str(tmp_path / "results"), "--model", "generated:tiny-qwen3-vl",
        "--dataset", GENERATED_PAGES_ID,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
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
    import evaluate_vdr

    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded something before checking the arguments")

    monkeypatch.setattr(evaluate_vdr, "load_retrieval_data", must_not_load)
    monkeypatch.setattr(evaluate_vdr, "load_for_evaluation", must_not_load)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    argv = [arg.format(empty=tmp_path / "empty", file=tmp_path / "file") for arg in argv]
    defaults = {"--model": "generated:tiny-qwen3-vl", "--dataset": GENERATED_PAGES_ID}
    argv += [item for flag, value in defaults.items() if flag not in argv for item in (flag, value)]
    with pytest.raises(VdrError, match=message):
        run_evaluate(tmp_path / "out", *argv)


def test_model_key_ignores_trainer_state_but_not_weights(tmp_path, st_model_dir):
    checkpoint = Path(shutil.copytree(st_model_dir, tmp_path / "checkpoint-10"))
    (checkpoint / "optimizer.pt").write_bytes(b"state 1")
    (checkpoint / "trainer_state.json").write_text("{}")
    key = model_fingerprint(str(checkpoint))
    (checkpoint / "optimizer.pt").write_bytes(b"state 2, after more steps")
    (checkpoint / "rng_state.pth").write_bytes(b"rng")
    assert model_fingerprint(str(checkpoint)) == key
    (checkpoint / "1_Pooling" / "config.json").write_text('{"pooling_mode_lasttoken": false}')  # a module's config
    assert model_fingerprint(str(checkpoint)) != key
    key = model_fingerprint(str(checkpoint))
    weights = load_file(str(checkpoint / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    save_file(weights, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    assert model_fingerprint(str(checkpoint)) != key


def test_dataset_key_is_the_content(pages_data):
    key = dataset_fingerprint(pages_data)
    same = RetrievalData(dict(pages_data.queries), dict(pages_data.corpus), {})  # qrels do not change embeddings
    assert dataset_fingerprint(same) == key
    first_query = next(iter(pages_data.queries))
    other_text = RetrievalData({**pages_data.queries, first_query: "another query"}, pages_data.corpus, {})
    assert dataset_fingerprint(other_text) != key
    first_page = next(iter(pages_data.corpus))
    other_page = RetrievalData(pages_data.queries, {**pages_data.corpus, first_page: pages_data.corpus[1]}, {})
    assert dataset_fingerprint(other_page) != key


def test_only_the_unused_lm_head_load_report_is_silenced():
    def report(*rows: str) -> logging.LogRecord:
        table = "Key            | Status     |  | \n---------------+------------+--+-\n" + "\n".join(rows)
        message = f"\x1b[1mQwen3VLModel LOAD REPORT\x1b[0m from: x\n{table}\n\nNotes:\n- UNEXPECTED: can be ignored"
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0, message, None, None)

    keep = UnusedLmHeadReportFilter().filter
    assert not keep(report("lm_head.weight | \x1b[33mUNEXPECTED\x1b[0m |  | "))
    assert keep(report("lm_head.weight | UNEXPECTED |  | ", "model.norm.weight | MISSING |  | "))
    assert keep(report("visual.blocks.0.weight | UNEXPECTED |  | "))
    assert keep(logging.LogRecord("transformers", logging.WARNING, "", 0, "something else", None, None))


def test_truncate_dim_larger_than_the_model_is_reported(tmp_path, st_model_dir):
    with pytest.raises(
        VdrError,
        match=r"tiny-st: Evaluation dims \[128\] cannot be produced: the model's embeddings have 64 dimensions",
    ):
        run_evaluate(
            tmp_path, "--model", str(st_model_dir), "--dataset", GENERATED_PAGES_ID, "--num_generated_rows", "8",
            "--truncate_dims", "128", "64",
        )  # fmt: skip


def test_benchmark_runs_as_the_readme_writes_it(tmp_path):
    # From another folder and without PYTHONPATH, as from a fresh clone: the script finds the vdr package itself.
    # (--num_rows 2 --dims 64 is its smoke size: a real run of some seconds.)
    script = REPO_ROOT / "benchmarks" / "bench_evaluate.py"
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--num_rows" in result.stdout


def test_models_built_here_never_ask_the_hub_for_their_dims(monkeypatch):
    """bm25 and the tiny model have no Hub card: asking for one would wait on the network (or find a stranger's)."""
    import vdr.model_comparison as model_comparison

    asked = []
    monkeypatch.setattr(model_comparison, "hub_file", lambda model_id, filename: asked.append(model_id))
    for model_id in ("bm25", "generated:tiny-qwen3-vl", "someone/some-model"):
        assert model_comparison.known_matryoshka_dims(model_id) is None
    assert asked == ["someone/some-model"]


def test_presizing_keeps_everything_but_the_pages(generated_rows, vdr_cache):
    model = build_model(ModelArguments(model_name_or_path="generated:tiny-qwen3-vl", max_pixels=36864))
    data = RetrievalData({"q": "a query"}, {"p": generated_rows[0]["image"]}, {"q": {"p": 1}}, {"p": "page text"})
    presized = presize_corpus(model, data)
    assert (presized.queries, presized.qrels, presized.texts) == (data.queries, data.qrels, data.texts)
    assert presized.corpus["p"].size != data.corpus["p"].size  # resized to the pixel budget
