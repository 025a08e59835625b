"""Evaluation: retrieval metrics for a model on a ``RetrievalData`` set, at every Matryoshka dimension.

Two paths, one set of numbers:
- ``build_ir_evaluator`` gives Sentence Transformers' ``InformationRetrievalEvaluator``, which the trainer
  calls during training (NDCG@10 in the logs, the model card and checkpoint selection);
- ``evaluate_dims`` encodes the queries and the corpus once, at full dimension, and scores every
  Matryoshka dimension by truncating those embeddings: the reference recipe instead re-encodes the whole
  corpus once per dimension. The metrics agree with the evaluator's (tests check it to 1e-6).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from tqdm.auto import tqdm

from vdr.config import ModelArguments, ModelLoadingArguments
from vdr.data import RetrievalData
from vdr.errors import VdrError
from vdr.metrics import DEFAULT_METRICS, retrieval_metrics
from vdr.model import build_model, embedding_dimension
from vdr.tiny_model import TINY_MODEL_ID
from vdr.training import FINAL_MODEL_DIR, METRICS_FILE, TRAINING_INFO_FILE

logger = logging.getLogger(__name__)


def build_ir_evaluator(
    data: RetrievalData, name: str, batch_size: int, truncate_dim: int | None = None, show_progress_bar: bool = True
) -> InformationRetrievalEvaluator:
    """Sentence Transformers' retrieval evaluator over ``data`` (binary relevance: grade > 0)."""
    return InformationRetrievalEvaluator(
        queries=data.queries,
        corpus=data.corpus,
        relevant_docs=data.relevant_docs(),
        batch_size=batch_size,
        truncate_dim=truncate_dim,
        show_progress_bar=show_progress_bar,
        name=name,
    )


def encode_full_dim(
    model: SentenceTransformer, inputs: Sequence[Any], kind: str, batch_size: int, show_progress_bar: bool = True
) -> torch.Tensor:
    """Encode queries (``kind='query'``) or documents at the model's full dimension, as float32 on CPU."""
    encode = model.encode_query if kind == "query" else model.encode_document
    saved_truncate_dim, model.truncate_dim = model.truncate_dim, None  # a saved default would truncate
    try:
        embeddings = encode(
            list(inputs), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar
        )
    finally:
        model.truncate_dim = saved_truncate_dim
    return embeddings.float().cpu()


def check_dims(dims: Sequence[int], full_dim: int) -> list[int]:
    """Validate evaluation dims against the embedding size, largest first, without duplicates."""
    too_large = [dim for dim in dims if dim > full_dim or dim < 1]
    if too_large:
        raise VdrError(
            f"Cannot evaluate at dimension(s) {too_large}: the model's embeddings have {full_dim} dimensions. "
            f"Choose truncate dims between 1 and {full_dim}."
        )
    return sorted(set(dims), reverse=True)


def score_dims(
    model: SentenceTransformer,
    query_embeddings: torch.Tensor,
    corpus_embeddings: torch.Tensor,
    data: RetrievalData,
    dims: Sequence[int],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[int, dict[str, float]]:
    """Metrics at each dim from full-dimension embeddings, truncated (and re-normalised by cosine)."""
    qrels = qrels_by_position(data)
    tie_break = corpus_tie_break(list(data.corpus))
    results = {}
    for dim in check_dims(dims, query_embeddings.shape[1]):
        scores = model.similarity(query_embeddings[:, :dim], corpus_embeddings[:, :dim])
        results[dim] = retrieval_metrics(scores, qrels, metrics=metrics, tie_break=tie_break)
    return results


def evaluate_dims(
    model: SentenceTransformer,
    data: RetrievalData,
    dims: Sequence[int] | None = None,
    batch_size: int = 16,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[int, dict[str, float]]:
    """Encode ``data`` once and return ``{dim: {metric: value}}`` for every dim (default: full only)."""
    dims = check_dims(dims or [embedding_dimension(model)], embedding_dimension(model))
    embeddings = embed_dataset(model, data, batch_size, PagePreprocessor(), EmbeddingCache(None), {})
    return score_dims(model, embeddings.queries, embeddings.corpus, data, dims, metrics)


def presize_corpus(model: SentenceTransformer, data: RetrievalData, workers: int = 2) -> RetrievalData:
    """Resize every page once, as the model's processor would: later evaluations (the trainer calls its
    evaluator at every eval step) then skip decoding and resizing. The embeddings are unchanged."""
    resizer = page_resizer(model)
    if resizer is None:
        return data
    _, resize = resizer
    pages = list(data.corpus.values())
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        resized = list(tqdm(pool.map(resize, pages), total=len(pages), desc="Resizing pages", unit="page"))
    return RetrievalData(data.queries, dict(zip(data.corpus, resized)), data.qrels, data.fingerprint)


def qrels_by_position(data: RetrievalData) -> list[dict[int, float]]:
    """Relevance judgements keyed by corpus position, one dict per query in ``data.queries`` order."""
    position = {cid: index for index, cid in enumerate(data.corpus)}
    return [{position[cid]: grade for cid, grade in data.qrels.get(qid, {}).items()} for qid in data.queries]


def corpus_tie_break(corpus_ids: list[Any]) -> torch.Tensor:
    """Rank of each corpus id in ascending id order: equal scores go to the smaller id, as in Sentence
    Transformers' evaluator, so both report the same numbers even on ties."""
    order = sorted(range(len(corpus_ids)), key=corpus_ids.__getitem__)
    ranks = torch.empty(len(corpus_ids), dtype=torch.long)
    ranks[torch.tensor(order, dtype=torch.long)] = torch.arange(len(corpus_ids))
    return ranks


def format_dims_table(results: dict[str, dict[int, dict[str, float]]], metric: str = "ndcg@10") -> str:
    """A small text table: one row per dim, one column per model (e.g. base / finetuned)."""
    names = list(results)
    dims = sorted({dim for by_dim in results.values() for dim in by_dim}, reverse=True)
    lines = [f"{'dim':>6}  " + "  ".join(f"{name:>10}" for name in names)]
    for dim in dims:
        cells = [f"{results[name][dim][metric]:>10.4f}" if dim in results[name] else f"{'-':>10}" for name in names]
        lines.append(f"{dim:>6}  " + "  ".join(cells))
    return f"{metric}\n" + "\n".join(lines)


@dataclass
class EncodingStats:
    """What an evaluation cost: page encodings and preprocessings, and where the time went."""

    page_encodings: int = 0
    page_preprocessings: int = 0
    preprocess_seconds: float = 0.0  # summed over worker threads
    encode_seconds: float = 0.0
    cache_hits: int = 0

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))


def page_resizer(model: SentenceTransformer) -> tuple[tuple, Callable[[Image.Image], Image.Image]] | None:
    """The model's own page resize (Qwen-VL image processors), and a key naming its settings.

    Resizing with the processor's own ``resize`` gives the very pixels the processor would produce, so a page
    resized once here encodes to bit-identical embeddings, and the processor's resize becomes a no-op.
    Returns ``None`` for processors without that resize (pages are then passed as they are).
    """
    processor = getattr(model[0], "processor", None)
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or not all(hasattr(image_processor, a) for a in ("patch_size", "merge_size", "size")):
        return None
    from torchvision.transforms.v2 import functional as tvF

    size, resample = image_processor.size, image_processor.resample
    factor = image_processor.patch_size * image_processor.merge_size
    key = (type(image_processor).__name__, size.shortest_edge, size.longest_edge, factor, int(resample))

    def resize(page: Image.Image) -> Image.Image:
        pixels = tvF.pil_to_tensor(page.convert("RGB"))[None]
        resized = image_processor.resize(images=pixels, size=size, resample=resample, factor=factor)[0]
        return Image.fromarray(resized.permute(1, 2, 0).numpy())

    return key, resize


class PagePreprocessor:
    """Decodes and resizes pages in worker threads, ahead of the encoder, and keeps the resized pages (within a
    memory budget) so the next model with the same processor settings skips the work."""

    def __init__(self, workers: int = 2, budget_bytes: int = 4 << 30):
        self.workers = workers
        self.budget_bytes = budget_bytes
        self.kept_bytes = 0
        self._kept: dict[tuple, Image.Image] = {}

    def batches(
        self,
        pages: Sequence[Any],
        order: Sequence[int],
        batch_size: int,
        key: tuple,
        resize: Callable,
        stats: EncodingStats,
    ):
        """Yield ``(indices, resized pages)`` batches in ``order``, resizing up to a few batches ahead."""

        def prepare(index: int) -> Image.Image:
            cached = self._kept.get((*key, index))
            if cached is not None:
                return cached
            start = time.perf_counter()
            page = resize(pages[index])
            stats.preprocess_seconds += time.perf_counter() - start
            stats.page_preprocessings += 1
            self._keep((*key, index), page)
            return page

        chunks = [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
        if self.workers == 0:
            for chunk in chunks:
                yield chunk, [prepare(i) for i in chunk]
            return
        with ThreadPoolExecutor(self.workers) as pool:
            ahead = 4  # batches resized ahead of the encoder: enough to hide preprocessing, bounded memory
            futures = [[pool.submit(prepare, i) for i in chunk] for chunk in chunks[:ahead]]
            for number, chunk in enumerate(chunks):
                if number + ahead < len(chunks):
                    futures.append([pool.submit(prepare, i) for i in chunks[number + ahead]])
                yield chunk, [future.result() for future in futures[number]]
                futures[number] = None  # release the batch

    def _keep(self, key: tuple, page: Image.Image) -> None:
        size = page.width * page.height * 3
        if self.kept_bytes + size <= self.budget_bytes:
            self._kept[key] = page
            self.kept_bytes += size


def encode_pages(
    model: SentenceTransformer,
    pages: Sequence[Any],
    batch_size: int,
    preprocessor: PagePreprocessor,
    dataset_key: str,
    stats: EncodingStats,
    show_progress_bar: bool = True,
) -> torch.Tensor:
    """Encode page images at full dimension: largest pages first (batches pad little), preprocessing overlapped."""
    resizer = page_resizer(model)
    if resizer is None:
        key, resize = ("as-is",), lambda page: page
    else:
        key, resize = resizer
    order = sorted(range(len(pages)), key=lambda i: -_pixel_count(pages[i]))
    embeddings: list[torch.Tensor | None] = [None] * len(pages)
    progress = tqdm(total=len(pages), desc="Encoding pages", unit="page", disable=not show_progress_bar)
    for indices, batch in preprocessor.batches(pages, order, batch_size, (dataset_key, *key), resize, stats):
        start = time.perf_counter()
        encoded = encode_full_dim(model, batch, "document", batch_size, show_progress_bar=False)
        stats.encode_seconds += time.perf_counter() - start
        stats.page_encodings += len(batch)
        for index, vector in zip(indices, encoded):
            embeddings[index] = vector
        progress.update(len(batch))
    progress.close()
    return torch.stack(embeddings)


def _pixel_count(page: Any) -> int:
    return page.width * page.height if hasattr(page, "width") else 0


class EmbeddingCache:
    """Full-dimension embeddings on disk, keyed by model content, dataset content and preprocessing settings."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None

    def path(self, parts: dict[str, Any]) -> Path | None:
        if self.folder is None:
            return None
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]
        return self.folder / f"{digest}.pt"

    def load(self, parts: dict[str, Any]) -> torch.Tensor | None:
        path = self.path(parts)
        if path is None or not path.exists():
            return None
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a truncated or stale file: recompute rather than fail
            logger.warning("Ignoring unreadable cached embeddings %s", path)
            return None

    def save(self, parts: dict[str, Any], embeddings: torch.Tensor) -> None:
        path = self.path(parts)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        torch.save(embeddings, temporary)
        temporary.replace(path)  # atomic: a killed run never leaves a half-written cache entry


def model_fingerprint(model_path: str, revision: str | None = None) -> str:
    """Identify a model by content: for a folder, each file's size and the hash of its first and last MiB
    (cheap for multi-GB weights, yet any retraining changes it); for a Hub id, the id and revision."""
    folder = Path(model_path)
    if not folder.is_dir():
        return f"hub:{model_path}@{revision or 'main'}"
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "README.md"):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder)}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), 2)
                digest.update(handle.read())
    return digest.hexdigest()


@dataclass
class ModelEmbeddings:
    """A model's full-dimension query and page embeddings for one dataset."""

    queries: torch.Tensor
    corpus: torch.Tensor
    stats: EncodingStats = field(default_factory=EncodingStats)


def embed_dataset(
    model: SentenceTransformer,
    data: RetrievalData,
    batch_size: int,
    preprocessor: PagePreprocessor,
    cache: EmbeddingCache,
    cache_parts: dict[str, Any],
) -> ModelEmbeddings:
    """Queries and pages of ``data`` at full dimension, from the cache when it has them."""
    stats = EncodingStats()
    embeddings = {}
    for kind in ("queries", "corpus"):
        parts = {**cache_parts, "dataset": data.fingerprint, "kind": kind}
        cached = cache.load(parts)
        if cached is not None:
            stats.cache_hits += 1
            embeddings[kind] = cached
            continue
        if kind == "queries":
            embeddings[kind] = encode_full_dim(model, list(data.queries.values()), "query", batch_size)
        else:
            pages = list(data.corpus.values())
            embeddings[kind] = encode_pages(model, pages, batch_size, preprocessor, data.fingerprint, stats)
        cache.save(parts, embeddings[kind])
    return ModelEmbeddings(embeddings["queries"], embeddings["corpus"], stats)


@dataclass(frozen=True)
class ModelCandidate:
    """One model to score: its display name and where it loads from."""

    name: str
    path: str
    training_run: Path | None = None  # the train_vdr.py output folder it came from, if any


def expand_models(models: Sequence[str], all_checkpoints: bool = False) -> list[ModelCandidate]:
    """Turn ``--model`` values into loadable models: a training output folder gives its final model (and, with
    ``all_checkpoints``, every ``checkpoint-*``); anything else is taken as it is."""
    candidates: list[ModelCandidate] = []
    for value in models:
        folder = Path(value).expanduser()
        is_run = folder.is_dir() and ((folder / FINAL_MODEL_DIR).is_dir() or any(folder.glob("checkpoint-*")))
        if not is_run:
            if value == TINY_MODEL_ID:
                name = value.split(":", 1)[1]
            else:  # a local folder is named by its folder, a Hub id by the id
                name = folder.resolve().name if folder.is_dir() else value.rstrip("/")
            candidates.append(ModelCandidate(name, value))
            continue
        run_name = folder.resolve().name
        if all_checkpoints:
            for checkpoint in sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])):
                candidates.append(ModelCandidate(f"{run_name}/{checkpoint.name}", str(checkpoint), folder))
        if (folder / FINAL_MODEL_DIR).is_dir():
            candidates.append(ModelCandidate(run_name, str(folder / FINAL_MODEL_DIR), folder))
        elif not all_checkpoints:
            raise VdrError(
                f"Training output '{value}' has no final model yet ({FINAL_MODEL_DIR}/). Pass --all_checkpoints to "
                "score its checkpoints, or one checkpoint folder directly."
            )
    return _unique_names(candidates)


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
        return json.loads(info.read_text())["matryoshka_dims"]
    card = folder / "README.md"
    if card.is_file():
        import re

        match = re.search(r'"matryoshka_dims":\s*\[([\d,\s]+)\]', card.read_text(errors="ignore"))
        if match:
            return [int(dim) for dim in match.group(1).split(",")]
    return None


def load_for_evaluation(candidate: ModelCandidate, loading: ModelLoadingArguments) -> SentenceTransformer:
    """Load a model with the same options as training; a folder without a model is a clear error."""
    folder = Path(candidate.path)
    if folder.is_dir() and not any((folder / name).exists() for name in ("modules.json", "config.json")):
        raise VdrError(
            f"'{candidate.path}' holds no model (no modules.json or config.json). Point --model at a model folder, a "
            "train_vdr.py output folder, or a checkpoint-* folder."
        )
    return build_model(ModelArguments(model_name_or_path=candidate.path, **vars(loading)))


def evaluation_dims(
    model: SentenceTransformer, candidate: ModelCandidate, requested: Sequence[int] | None
) -> list[int]:
    """Requested dims, else the model's Matryoshka dims, else its full dim; all checked against the model."""
    full = embedding_dimension(model)
    dims = requested or known_matryoshka_dims(candidate.path) or [full]
    try:
        return check_dims(dims, full)
    except VdrError as error:
        raise VdrError(f"Model '{candidate.name}': {error}") from None


def score_model(
    model: SentenceTransformer,
    candidate: ModelCandidate,
    datasets: dict[str, RetrievalData],
    dims: list[int],
    batch_size: int,
    preprocessor: PagePreprocessor,
    cache: EmbeddingCache,
    cache_parts: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Records (one per dataset x dim) for one model, and its encoding statistics per dataset."""
    records, stats = [], {}
    for name, data in datasets.items():
        start = time.perf_counter()
        embeddings = embed_dataset(model, data, batch_size, preprocessor, cache, cache_parts)
        for dim, values in score_dims(model, embeddings.queries, embeddings.corpus, data, dims).items():
            records.append(
                {
                    "model": candidate.name,
                    "dataset": name,
                    "dim": dim,
                    "num_queries": int(values.pop("num_queries")),
                    "num_documents": len(data.corpus),
                    "metrics": {k: v for k, v in values.items() if k != "num_queries_without_relevant"},
                }
            )
        stats[name] = {**embeddings.stats.as_dict(), "seconds": time.perf_counter() - start}
    return records, stats


def read_training_metrics(candidate: ModelCandidate) -> dict[str, Any] | None:
    """The metrics.json of the training run a candidate came from, if there is one."""
    if candidate.training_run is None or not (candidate.training_run / METRICS_FILE).is_file():
        return None
    return json.loads((candidate.training_run / METRICS_FILE).read_text())
