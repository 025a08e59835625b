"""evaluate_vdr.py: agreement with Sentence Transformers' evaluator, both dataset layouts, caching, bad input."""

from __future__ import annotations

import json
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
from vdr.embedding_cache import EmbeddingCache
from vdr.errors import VdrError
from vdr.evaluation import (
    build_ir_evaluator,
    embed_dataset,
    encode_full_dim,
    expand_models,
    presize_corpus,
    score_dims,
)
from vdr.metrics import DEFAULT_METRICS
from vdr.model import build_model
from vdr.pages import GENERATED_PAGES_ID
from vdr.preprocessing import PagePreprocessor

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
    embeddings = embed_dataset(model, pages_data, 8, PagePreprocessor(), EmbeddingCache(None), {})
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
    # the saved model is scored at its recorded Matryoshka dims, the bare VLM at its full dim
    assert {k for k in by_key if k[0] == "tiny-st"} == {
        ("tiny-st", d, m) for d in ("pages", "pages-beir") for m in (64, 32, 16)
    }
    assert {k for k in by_key if k[0] == "tiny-qwen3-vl"} == {
        ("tiny-qwen3-vl", "pages", 64),
        ("tiny-qwen3-vl", "pages-beir", 64),
    }
    for dim in (64, 32, 16):
        assert by_key[("tiny-st", "pages", dim)] == pytest.approx(by_key[("tiny-st", "pages-beir", dim)], abs=1e-9)
    out = tmp_path / "out"
    for name in ("results.json", "results.csv", "results.md", "ndcg_by_dim.png", "ndcg_by_model.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["results"]) == 8 and "wall_seconds" in saved["metadata"]
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


def test_bad_models_fail_clearly_but_the_others_are_still_written(tmp_path, st_model_dir, vdr_cache):
    (tmp_path / "empty-checkpoint").mkdir()
    command = [
        sys.executable, "evaluate_vdr.py", "--output_dir", str(tmp_path / "out"), "--max_pixels", MAX_PIXELS,
        "--model", str(st_model_dir), "--model", str(tmp_path / "empty-checkpoint"),
        "--dataset", GENERATED_PAGES_ID, "--num_generated_rows", "8", "--truncate_dims", "64", "32",
    ]  # fmt: skip
    env = {"VDR_CACHE": str(vdr_cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "empty-checkpoint' holds no model (no modules.json or config.json)" in result.stderr
    assert "Traceback" not in result.stderr
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["model"] for r in saved["results"]} == {"tiny-st"}


def test_truncate_dim_larger_than_the_model_is_reported(tmp_path, st_model_dir):
    with pytest.raises(
        VdrError,
        match=r"tiny-st: Evaluation dims \[128\] cannot be produced: the model's embeddings have 64 dimensions",
    ):
        run_evaluate(
            tmp_path, "--model", str(st_model_dir), "--dataset", GENERATED_PAGES_ID, "--num_generated_rows", "8",
            "--truncate_dims", "128", "64",
        )  # fmt: skip
