"""evaluate_vdr.py: agreement with Sentence Transformers' evaluator, both dataset layouts, caching, training runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer

from evaluate_vdr import main, make_parser
from tests.helpers import REPO_ROOT
from vdr.cache import TensorCache
from vdr.data.retrieval_sets import (
    GENERATED_BEIR_ID,
    RetrievalData,
    load_retrieval_data,
)
from vdr.data.sources import DatasetSpec, SourceArguments
from vdr.errors import VdrError
from vdr.evaluation.encoding import EncodingSetup, ResizedPageCache, embed_dataset, encode_full_dim
from vdr.evaluation.metrics import DEFAULT_METRICS, score_dims
from vdr.evaluation.model_list import expand_models
from vdr.models.embedder import build_model
from vdr.models.loading import ModelLoadingArguments, model_fingerprint
from vdr.offline.generated_pages import GENERATED_PAGES_ID
from vdr.training.evaluators import build_ir_evaluator, presize_corpus

MAX_PIXELS = "36864"


@pytest.fixture(scope="module")
def pages_data(vdr_cache):
    options = SourceArguments(num_generated_rows=24, generated_seed=4)
    return load_retrieval_data(DatasetSpec.parse(GENERATED_PAGES_ID), options)


def run_evaluate(output_dir: Path, *argv: str) -> dict:
    args = make_parser().parse(["--output_dir", str(output_dir), "--max_pixels", MAX_PIXELS, *argv])
    return main(*args)


def test_metrics_agree_with_sentence_transformers_at_every_dim(st_model_dir, pages_data):
    model = SentenceTransformer(str(st_model_dir))
    setup = EncodingSetup(batch_size=8, page_cache=ResizedPageCache(0), cache=TensorCache(None))
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
        "--model",
        str(st_model_dir),
        "--model",
        "generated:tiny-qwen3-vl",
        "--dataset",
        GENERATED_PAGES_ID,
        "--dataset",
        f"path={GENERATED_BEIR_ID},name=pages-beir",
        "--num_generated_rows",
        "16",
    )
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


def test_truncate_dim_larger_than_the_model_is_reported(tmp_path, st_model_dir):
    with pytest.raises(
        VdrError,
        match=r"tiny-st: Evaluation dims \[128\] cannot be produced: the model's embeddings have 64 dimensions",
    ):
        run_evaluate(
            tmp_path,
            "--model",
            str(st_model_dir),
            "--dataset",
            GENERATED_PAGES_ID,
            "--num_generated_rows",
            "8",
            "--truncate_dims",
            "128",
            "64",
        )


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
    import vdr.evaluation.model_list as model_list

    asked = []
    monkeypatch.setattr(model_list, "hub_file", lambda model_id, filename: asked.append(model_id))
    for model_id in ("bm25", "generated:tiny-qwen3-vl", "someone/some-model"):
        assert model_list.known_matryoshka_dims(model_id) is None
    assert asked == ["someone/some-model"]


def test_presizing_keeps_everything_but_the_pages(generated_rows, vdr_cache):
    model = build_model("generated:tiny-qwen3-vl", ModelLoadingArguments(max_pixels=36864))
    data = RetrievalData({"q": "a query"}, {"p": generated_rows[0]["image"]}, {"q": {"p": 1}}, {"p": "page text"})
    presized = presize_corpus(model, data)
    assert (presized.queries, presized.qrels, presized.texts) == (data.queries, data.qrels, data.texts)
    assert presized.corpus["p"].size != data.corpus["p"].size  # resized to the pixel budget


def test_each_model_is_freed_before_the_next_one_loads(tmp_path, monkeypatch, vdr_cache):
    # With a reranker, the model's scores are kept for reranking: the model itself must not be (GPU memory)
    import gc
    import weakref
    from types import SimpleNamespace

    import evaluate_vdr

    loaded, alive_after_collect = [], []
    original_load = evaluate_vdr.build_model

    def load(*args, **kwargs):
        model = original_load(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    def collect() -> int:
        freed = gc.collect()
        alive_after_collect.append(loaded[-1]() is not None)
        return freed

    monkeypatch.setattr(evaluate_vdr, "build_model", load)
    monkeypatch.setattr(evaluate_vdr, "gc", SimpleNamespace(collect=collect))
    tiny = "generated:tiny-qwen3-vl"
    argv = [
        "--model",
        tiny,
        "--reranker",
        tiny,
        *"--rerank_top_k 2 --dataset generated:pages --max_pixels".split(),
        str(MAX_PIXELS),
        *"--num_generated_rows 4 --no_cache true --output_dir".split(),
        str(tmp_path / "eval"),
    ]
    main(*make_parser().parse(argv))
    assert alive_after_collect == [False]
