"""Which models evaluate_vdr.py compares: ``--model`` values expanded (a training run gives its final model and, on
request, its checkpoints), each model's kind, and the Matryoshka dims each is scored at."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer

from vdr.errors import VdrError
from vdr.hub import hub_file, looks_like_local_path
from vdr.models.embedder import check_dims, embedding_dimension
from vdr.models.multi_vector import is_multi_vector_model
from vdr.offline.tiny_model import TINY_MODEL_ID
from vdr.run_folder import FINAL_MODEL_DIR, checkpoints, is_training_run, read_metrics, read_trained_dims

MODEL_FILES = ("modules.json", "config.json")
#: The ``--model`` value that stands for the text baseline.
BM25_MODEL_ID = "bm25"
#: The kinds of model evaluate_vdr.py scores (the ``kind`` of a storage record).
SINGLE_VECTOR, MULTI_VECTOR, TEXT = "single_vector", "multi_vector", "text"


@dataclass(frozen=True)
class ModelCandidate:
    """One model to score: its display name and where it loads from."""

    name: str
    path: str
    training_run: Path | None = None  # the train_vdr.py output folder it came from, if any


def expand_models(models: Sequence[str], all_checkpoints: bool = False, flag: str = "--model") -> list[ModelCandidate]:
    """Turn ``--model`` (or ``--reranker``: ``flag``) values into loadable models: a training output folder gives its
    final model (and, with ``all_checkpoints``, every ``checkpoint-*``); anything else is taken as it is. A local
    path that does not exist, or a folder with no model in it, is an error here, before any model loads."""
    candidates: list[ModelCandidate] = []
    for value in models:
        folder = Path(value).expanduser()
        if not is_training_run(folder):
            candidates.append(_single_model(value, folder, flag))
            continue
        run_name = folder.resolve().name
        if all_checkpoints:
            for checkpoint in checkpoints(folder):
                candidates.append(ModelCandidate(f"{run_name}/{checkpoint.name}", str(checkpoint), folder))
        if (folder / FINAL_MODEL_DIR).is_dir():
            candidates.append(ModelCandidate(run_name, str(folder / FINAL_MODEL_DIR), folder))
        elif not all_checkpoints:
            raise VdrError(
                f"Training output '{value}' has no final model yet ({FINAL_MODEL_DIR}/). Pass --all_checkpoints to "
                "score its checkpoints, or one checkpoint folder directly."
            )
    return _unique_names(candidates)


def _single_model(value: str, folder: Path, flag: str) -> ModelCandidate:
    """A model folder (named by its folder), a Hub id (named by the id) or the tiny offline model."""
    if value == TINY_MODEL_ID:
        return ModelCandidate(value.split(":", 1)[1], value)
    if folder.is_dir():
        if not any((folder / name).exists() for name in MODEL_FILES):
            raise VdrError(
                f"{flag} '{value}' holds no model (no {' or '.join(MODEL_FILES)}). Point {flag} at a model folder, "
                "a training script's output folder, or a checkpoint-* folder."
            )
        return ModelCandidate(folder.resolve().name, str(folder))
    if looks_like_local_path(value):
        raise VdrError(
            f"{flag} '{value}' does not exist. Give a model folder, a training script's output folder, a Hub id such "
            f"as 'Qwen/Qwen3-VL-Embedding-2B', or '{TINY_MODEL_ID}'."
        )
    return ModelCandidate(value.rstrip("/"), value)


def _unique_names(candidates: list[ModelCandidate]) -> list[ModelCandidate]:
    seen: dict[str, int] = {}
    unique = []
    for candidate in candidates:
        seen[candidate.name] = seen.get(candidate.name, 0) + 1
        if seen[candidate.name] > 1:
            candidate = ModelCandidate(
                f"{candidate.name} ({seen[candidate.name]})", candidate.path, candidate.training_run
            )
        unique.append(candidate)
    return unique


def known_matryoshka_dims(model_path: str) -> list[int] | None:
    """The dims a model was trained at: from train_vdr.py's record, else from its model card's loss settings."""
    folder = Path(model_path)
    trained = read_trained_dims(folder)
    if trained is not None:
        return trained
    if model_path in (TINY_MODEL_ID, BM25_MODEL_ID):  # built here: no folder, and no Hub card to ask for
        return None
    card = folder / "README.md" if folder.is_dir() else hub_file(model_path, "README.md")
    if card is not None and card.is_file():
        match = re.search(r'"matryoshka_dims":\s*\[([\d,\s]+)\]', card.read_text(errors="ignore"))
        if match:
            return [int(dim) for dim in match.group(1).split(",")]
    return None


def shared_default_dims(candidates: Sequence[ModelCandidate]) -> set[int]:
    """Every dim any of the models was trained at: each model is scored at those it can produce, so a finetuned
    model and its base are compared at every Matryoshka dim, not only at the base's full dim."""
    return {dim for candidate in candidates for dim in known_matryoshka_dims(candidate.path) or []}


def evaluation_dims(
    model: SentenceTransformer, requested: Sequence[int] | None, shared_defaults: set[int]
) -> list[int]:
    """The requested dims (each checked against the model), else its full dim and every shared default below it."""
    if requested:
        return check_dims(requested, model, "Evaluation dims")
    full = embedding_dimension(model)
    return sorted({full, *(dim for dim in shared_defaults if dim <= full)}, reverse=True)


def read_training_metrics(candidate: ModelCandidate) -> dict[str, Any] | None:
    """The metrics.json of the training run a candidate came from, if there is one."""
    return None if candidate.training_run is None else read_metrics(candidate.training_run)


def check_rerankers(candidates: Sequence[ModelCandidate]) -> None:
    """A ``--reranker`` must be a reranker: a Sentence Transformers folder without a LogitScore head is an embedding
    (or multi-vector) model, whose yes/no head a CrossEncoder would initialise at random and report as scores. (A
    bare vision-language model, with no modules.json, is built as a zero-shot reranker on purpose.)"""
    for candidate in candidates:
        modules = Path(candidate.path) / "modules.json"
        if not modules.is_file():
            continue
        types = [str(module.get("type", "")) for module in json.loads(modules.read_text())]
        if any(kind.endswith("LogitScore") for kind in types):
            continue
        kind = "a multi-vector model" if is_multi_vector_model(candidate.path) else "an embedding model"
        raise VdrError(
            f"--reranker '{candidate.path}' is {kind} (its modules are {', '.join(t.rsplit('.', 1)[-1] for t in types)}"
            ", with no LogitScore head): as a reranker its relevance head would be random, and so would its scores. "
            "Pass a reranker trained with train_reranker_vdr.py (its output folder) or a published one such as "
            "Qwen/Qwen3-VL-Reranker-2B; to score this model, give it to --model."
        )


def model_kind(candidate: ModelCandidate) -> str:
    """How a model is loaded and scored: ``text`` (BM25), ``multi_vector`` (a saved MultiVectorEncoder) or
    ``single_vector`` (anything else: an embedding model, or a base model to build one from)."""
    if candidate.path == BM25_MODEL_ID:
        return TEXT
    return MULTI_VECTOR if is_multi_vector_model(candidate.path) else SINGLE_VECTOR
