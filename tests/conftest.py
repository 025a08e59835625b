"""Shared fixtures: everything is built locally (tiny random Qwen3-VL, generated pages); no Hub access."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

# Before anything imports huggingface_hub, which reads it once at import: a test that reaches for the Hub fails
# fast instead of hanging, in this process and in every subprocess a test starts.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from tests.helpers import REPO_ROOT  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def vdr_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache per test session (tiny model, generated pages), never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("vdr-cache")
    previous = os.environ.get("VDR_CACHE")
    os.environ["VDR_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("VDR_CACHE", None)
    else:
        os.environ["VDR_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(vdr_cache: Path) -> Path:
    from vdr.offline.tiny_model import ensure_tiny_qwen3_vl

    return ensure_tiny_qwen3_vl(vdr_cache)


@pytest.fixture()
def tiny_model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A fresh copy of the tiny checkpoint per test, so no test sees another's changes."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-model"))


@pytest.fixture(scope="session")
def st_model_dir(tmp_path_factory: pytest.TempPathFactory, vdr_cache: Path) -> Path:
    """The tiny model saved as a Sentence Transformers model, with Matryoshka dims recorded like train_vdr.py.
    Tests only read it (copy it to change it)."""
    from vdr.models.embedder import build_model
    from vdr.models.loading import ModelLoadingArguments

    folder = tmp_path_factory.mktemp("models") / "tiny-st"
    model = build_model("generated:tiny-qwen3-vl", ModelLoadingArguments(max_pixels=36864))
    model.save_pretrained(str(folder))
    (folder / "vdr_training.json").write_text(json.dumps({"matryoshka_dims": [64, 32, 16]}))
    return folder


@pytest.fixture(scope="session")
def generated_rows() -> list[dict]:
    from vdr.offline.generated_pages import generate_rows

    return generate_rows(12, seed=3)


@pytest.fixture(scope="session")
def embedding_quickstart(tmp_path_factory: pytest.TempPathFactory, vdr_cache: Path) -> tuple[Path, dict]:
    """configs/quickstart.yaml trained once per session (saved with --truncate_dim 32), and its metrics: the
    training tests check it and the reranker quickstart starts from its final model. Tests only read it."""
    from train_vdr import main, make_parser

    output_dir = tmp_path_factory.mktemp("quickstart") / "run"
    argv = ["--config", str(REPO_ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(output_dir)]
    return output_dir, main(*make_parser().parse([*argv, "--truncate_dim", "32"]))


@pytest.fixture(scope="session")
def reranker_quickstart(tmp_path_factory: pytest.TempPathFactory, embedding_quickstart: tuple) -> tuple[Path, dict]:
    """configs/quickstart-reranker.yaml trained once per session, from the embedding quickstart's final model (its
    documented first step), and its metrics: the reranker training tests check it and the retrieve-then-rerank tests
    rerank with it. Tests only read it."""
    from train_reranker_vdr import main, make_parser

    output_dir = tmp_path_factory.mktemp("quickstart-reranker") / "run"
    embedder = embedding_quickstart[0] / "final"
    config = str(REPO_ROOT / "configs" / "quickstart-reranker.yaml")
    argv = ["--config", config, "--model_name_or_path", str(embedder), "--output_dir", str(output_dir)]
    return output_dir, main(*make_parser().parse(argv))


@pytest.fixture()
def training_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gains an entry for every training step the trainer runs from now on in this test."""
    from sentence_transformers import SentenceTransformerTrainer

    steps: list[int] = []
    original = SentenceTransformerTrainer.training_step
    monkeypatch.setattr(
        SentenceTransformerTrainer, "training_step", lambda self, *a, **k: steps.append(1) or original(self, *a, **k)
    )
    return steps
