"""evaluate_vdr.py's side of evaluation: which models to compare, loaded how, scored at which dims, and their
pages encoded once per model (resized pages shared between models, embeddings cached on disk).

The metrics themselves come from ``vdr.evaluation.score_dims``, the same scoring train_vdr.py uses.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from vdr.bm25 import BM25_MODEL_ID
from vdr.config import ModelArguments, ModelLoadingArguments, looks_like_local_path
from vdr.data import RetrievalData
from vdr.embedding_cache import EmbeddingCache, dataset_fingerprint
from vdr.errors import VdrError
from vdr.evaluation import encode_full_dim, score_dims
from vdr.model import build_model, check_dims, embedding_dimension, hub_file
from vdr.preprocessing import EncodingStats, ResizedPageCache, page_resizer, pixel_count
from vdr.scoring import result_record
from vdr.tiny_model import TINY_MODEL_ID
from vdr.training import FINAL_MODEL_DIR, METRICS_FILE, TRAINING_INFO_FILE

MODEL_FILES = ("modules.json", "config.json")


@dataclass(frozen=True)
class ModelCandidate:
    """One model to score: its display name and where it loads from."""

    name: str
    path: str
    training_run: Path | None = None  # the train_vdr.py output folder it came from, if any


def expand_models(models: Sequence[str], all_checkpoints: bool = False) -> list[ModelCandidate]:
    """Turn ``--model`` values into loadable models: a training output folder gives its final model (and, with
    ``all_checkpoints``, every ``checkpoint-*``); anything else is taken as it is. A local path that does not
    exist, or a folder with no model in it, is an error here, before any model loads."""
    candidates: list[ModelCandidate] = []
    for value in models:
        folder = Path(value).expanduser()
        is_run = folder.is_dir() and ((folder / FINAL_MODEL_DIR).is_dir() or any(folder.glob("checkpoint-*")))
        if not is_run:
            candidates.append(_single_model(value, folder))
            continue
        run_name = folder.resolve().name
        if all_checkpoints:
            for checkpoint in sorted(folder.glob("checkpoint-*"), key=_checkpoint_step):
                candidates.append(ModelCandidate(f"{run_name}/{checkpoint.name}", str(checkpoint), folder))
        if (folder / FINAL_MODEL_DIR).is_dir():
            candidates.append(ModelCandidate(run_name, str(folder / FINAL_MODEL_DIR), folder))
        elif not all_checkpoints:
            raise VdrError(
                f"Training output '{value}' has no final model yet ({FINAL_MODEL_DIR}/). Pass --all_checkpoints to "
                "score its checkpoints, or one checkpoint folder directly."
            )
    return _unique_names(candidates)


def _single_model(value: str, folder: Path) -> ModelCandidate:
    """A model folder (named by its folder), a Hub id (named by the id) or the tiny offline model."""
    if value == TINY_MODEL_ID:
        return ModelCandidate(value.split(":", 1)[1], value)
    if folder.is_dir():
        if not any((folder / name).exists() for name in MODEL_FILES):
            raise VdrError(
                f"--model '{value}' holds no model (no {' or '.join(MODEL_FILES)}). Point --model at a model folder, "
                "a train_vdr.py output folder, or a checkpoint-* folder."
            )
        return ModelCandidate(folder.resolve().name, str(folder))
    if looks_like_local_path(value):
        raise VdrError(
            f"--model '{value}' does not exist. Give a model folder, a train_vdr.py output folder, a Hub id such as "
            f"'Qwen/Qwen3-VL-Embedding-2B', or '{TINY_MODEL_ID}'."
        )
    return ModelCandidate(value.rstrip("/"), value)


def _checkpoint_step(path: Path) -> tuple[int, str]:
    """Sort checkpoint-<step> folders by step (a folder with another suffix sorts last, by name)."""
    suffix = path.name.split("-", 1)[-1]
    return (int(suffix), "") if suffix.isdigit() else (1 << 62, path.name)


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
    info = folder / TRAINING_INFO_FILE
    if info.is_file():
        try:
            return [int(dim) for dim in json.loads(info.read_text())["matryoshka_dims"]]
        except (ValueError, KeyError, TypeError) as error:
            raise VdrError(f"'{info}' is not a valid training record ({error}); pass --truncate_dims.") from None
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


def load_for_evaluation(candidate: ModelCandidate, loading: ModelLoadingArguments) -> SentenceTransformer:
    """Load a model with the same options as training."""
    return build_model(ModelArguments(model_name_or_path=candidate.path, **vars(loading)))


@dataclass
class EncodingSetup:
    """How every model encodes: batch size, resized pages shared between models, the on-disk embedding cache."""

    batch_size: int
    page_cache: ResizedPageCache
    embedding_cache: EmbeddingCache
    _dataset_keys: dict[str, str] = field(default_factory=dict)

    def dataset_key(self, name: str, data: RetrievalData) -> str:
        """The dataset's content hash, computed once per run (only the embedding cache needs it)."""
        if name not in self._dataset_keys:
            self._dataset_keys[name] = dataset_fingerprint(data) if self.embedding_cache.folder else name
        return self._dataset_keys[name]


@dataclass
class ModelEmbeddings:
    """A model's full-dimension query and page embeddings for one dataset."""

    queries: torch.Tensor
    corpus: torch.Tensor
    stats: EncodingStats = field(default_factory=EncodingStats)


def embed_dataset(
    model: SentenceTransformer, name: str, data: RetrievalData, setup: EncodingSetup, model_key: dict[str, Any]
) -> ModelEmbeddings:
    """Queries and pages of dataset ``name`` at full dimension, from the embedding cache when it has them."""
    stats = EncodingStats()
    embeddings = {}
    for kind, inputs in (("queries", list(data.queries.values())), ("corpus", list(data.corpus.values()))):
        key = {**model_key, "dataset": setup.dataset_key(name, data), "kind": kind}
        cached = setup.embedding_cache.load(key, rows=len(inputs))
        if cached is not None:
            stats.cache_hits += 1
            embeddings[kind] = cached
            continue
        if kind == "queries":
            embeddings[kind] = encode_full_dim(model, inputs, "query", setup.batch_size)
        else:
            embeddings[kind] = encode_pages(model, inputs, setup.batch_size, setup.page_cache, name, stats)
        setup.embedding_cache.save(key, embeddings[kind])
    return ModelEmbeddings(embeddings["queries"], embeddings["corpus"], stats)


def encode_pages(
    model: SentenceTransformer,
    pages: Sequence[Any],
    batch_size: int,
    page_cache: ResizedPageCache,
    dataset_name: str,
    stats: EncodingStats,
    show_progress_bar: bool = True,
) -> torch.Tensor:
    """Encode pages at full dimension (see ``encode_pages_largest_first``)."""

    def encode(batch: list[Any]) -> torch.Tensor:
        return encode_full_dim(model, batch, "document", batch_size, show_progress_bar=False)

    vectors = encode_pages_largest_first(
        model, pages, batch_size, page_cache, dataset_name, stats, encode, "Encoding pages", show_progress_bar
    )
    return torch.stack(vectors)


def encode_pages_largest_first(
    model: Any,
    pages: Sequence[Any],
    batch_size: int,
    page_cache: ResizedPageCache,
    dataset_name: str,
    stats: EncodingStats,
    encode: Callable[[list[Any]], Sequence[torch.Tensor]],
    description: str,
    show_progress_bar: bool = True,
) -> list[torch.Tensor]:
    """``encode`` (a batch of resized pages -> one tensor per page) over every page, largest first (batches pad
    little), in the pages' order. Pages are decoded and resized one batch at a time (or taken from the resized
    pages another model left in ``page_cache``), so full-size pages are never all in memory at once."""
    key, resize = page_resizer(model)
    order = sorted(range(len(pages)), key=lambda i: -pixel_count(pages[i]))
    encoded_pages: list[torch.Tensor | None] = [None] * len(pages)
    with tqdm(total=len(pages), desc=description, unit="page", disable=not show_progress_bar) as progress:
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = [page_cache.resized((dataset_name, *key, i), pages[i], resize, stats) for i in indices]
            started = time.perf_counter()
            encoded = encode(batch)
            stats.encode_seconds += time.perf_counter() - started
            stats.page_encodings += len(batch)
            for index, tensor in zip(indices, encoded):
                encoded_pages[index] = tensor
            progress.update(len(batch))
    return encoded_pages


def score_model(
    model: SentenceTransformer,
    model_name: str,
    datasets: dict[str, RetrievalData],
    dims: list[int],
    setup: EncodingSetup,
    model_key: dict[str, Any],
    on_embeddings: Callable[[str, RetrievalData, ModelEmbeddings], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Records (one per dataset x dim) for one model, and its encoding statistics per dataset. ``on_embeddings``
    also gets each dataset's full-dimension embeddings (evaluate_vdr.py: quantized storage, vdr/deployment.py)."""
    records, stats = [], {}
    for name, data in datasets.items():
        start = time.perf_counter()
        embeddings = embed_dataset(model, name, data, setup, model_key)
        if on_embeddings is not None:
            on_embeddings(name, data, embeddings)
        for dim, metrics in score_dims(model, embeddings.queries, embeddings.corpus, data, dims).items():
            records.append(result_record(model_name, name, dim, data, metrics))
        stats[name] = {**embeddings.stats.as_dict(), "seconds": time.perf_counter() - start}
    return records, stats


def read_training_metrics(candidate: ModelCandidate) -> dict[str, Any] | None:
    """The metrics.json of the training run a candidate came from, if there is one."""
    if candidate.training_run is None or not (candidate.training_run / METRICS_FILE).is_file():
        return None
    return json.loads((candidate.training_run / METRICS_FILE).read_text())
