"""Evaluation: retrieval metrics for a model on a ``RetrievalData`` set, at every Matryoshka dimension.

Two paths, one set of numbers:
- ``build_ir_evaluator`` gives Sentence Transformers' ``InformationRetrievalEvaluator``, which the trainer
  calls during training (NDCG@10 in the logs, the model card and checkpoint selection);
- ``evaluate_dims`` / ``embed_dataset`` encode the queries and the corpus once, at full dimension, and score
  every Matryoshka dimension by truncating those embeddings (the reference recipe re-encodes the corpus once
  per dimension). The metrics agree with the evaluator's (tests check it to 1e-6).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from tqdm.auto import tqdm

from vdr.config import DataArguments, ModelArguments, ModelLoadingArguments
from vdr.data import RetrievalData, negative_columns_of, retrieval_from_rows, training_columns
from vdr.embedding_cache import EmbeddingCache, dataset_fingerprint
from vdr.errors import VdrError
from vdr.metrics import DEFAULT_METRICS, retrieval_metrics
from vdr.model import build_model, check_dims, embedding_dimension, full_dimension
from vdr.preprocessing import EncodingStats, PagePreprocessor, page_resizer, pixel_count
from vdr.tiny_model import TINY_MODEL_ID
from vdr.training import FINAL_MODEL_DIR, METRICS_FILE, TRAINING_INFO_FILE

logger = logging.getLogger(__name__)


@dataclass
class TrainingEvaluation:
    """What train_vdr.py evaluates with: the retrieval set (pages resized once), the trainer's evaluator, and
    the evaluation rows in the loss's column order (for the trainer's eval loss)."""

    data: RetrievalData
    evaluator: InformationRetrievalEvaluator
    loss_dataset: Any
    negative_columns: list[str]


def build_training_evaluation(
    model: SentenceTransformer, eval_rows: Any, data_args: DataArguments, name: str, batch_size: int
) -> TrainingEvaluation:
    """The evaluation set of a training run: query ``i`` against the positives and every negative column."""
    negatives = negative_columns_of(eval_rows, data_args.eval_negative_columns)
    columns = (data_args.query_column, data_args.positive_column, negatives, "Evaluation data")
    data = presize_corpus(model, retrieval_from_rows(eval_rows, *columns))  # once per run, not per evaluation
    return TrainingEvaluation(
        data=data,
        evaluator=build_ir_evaluator(data, name, batch_size),
        loss_dataset=training_columns(eval_rows, *columns),
        negative_columns=negatives,
    )


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
    with full_dimension(model):
        embeddings = encode(
            list(inputs), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar
        )
    return embeddings.float().cpu()


def score_dims(
    model: SentenceTransformer,
    query_embeddings: torch.Tensor,
    corpus_embeddings: torch.Tensor,
    data: RetrievalData,
    dims: Sequence[int],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[int, dict[str, float]]:
    """Metrics at each dim from full-dimension embeddings, truncated and scored with the model's similarity
    (cosine for these models, which re-normalises the truncated vectors)."""
    qrels = qrels_by_position(data)
    tie_break = corpus_tie_break(list(data.corpus))
    results = {}
    for dim in check_dims(dims, model, "Evaluation dims"):
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
    dims = check_dims(dims or [embedding_dimension(model)], model, "Evaluation dims")
    preprocessor = PagePreprocessor(budget_bytes=0)  # one pass: nothing to keep pages for
    embeddings = embed_dataset(model, data, batch_size, preprocessor, EmbeddingCache(None), {})
    return score_dims(model, embeddings.queries, embeddings.corpus, data, dims, metrics)


def presize_corpus(model: SentenceTransformer, data: RetrievalData, workers: int = 2) -> RetrievalData:
    """Decode and resize every page once, as the model's processor would, and keep the results: the trainer
    calls its evaluator at every eval step, which then skips that work. The embeddings are unchanged. Memory:
    the resized pages (about 1 MB each at 600*600 pixels)."""
    key, resize = page_resizer(model)
    pages = list(data.corpus.values())
    resized: list[Any] = [None] * len(pages)
    batches = PagePreprocessor(workers, budget_bytes=0).batches(
        pages, range(len(pages)), 32, key, resize, EncodingStats()
    )
    with tqdm(total=len(pages), desc="Resizing pages", unit="page") as progress:
        for indices, batch in batches:
            for index, page in zip(indices, batch):
                resized[index] = page
            progress.update(len(batch))
    return RetrievalData(data.queries, dict(zip(data.corpus, resized)), data.qrels, data.fingerprint)


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
    key, resize = page_resizer(model)
    order = sorted(range(len(pages)), key=lambda i: -pixel_count(pages[i]))
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
    cache_key: dict[str, Any],
) -> ModelEmbeddings:
    """Queries and pages of ``data`` at full dimension, from the cache when it has them."""
    stats = EncodingStats()
    dataset_key = dataset_fingerprint(data) if cache.folder else data.fingerprint
    embeddings = {}
    for kind, inputs in (("queries", list(data.queries.values())), ("corpus", list(data.corpus.values()))):
        key = {**cache_key, "dataset": dataset_key, "kind": kind}
        cached = cache.load(key, rows=len(inputs))
        if cached is not None:
            stats.cache_hits += 1
            embeddings[kind] = cached
            continue
        if kind == "queries":
            embeddings[kind] = encode_full_dim(model, inputs, "query", batch_size)
        else:
            embeddings[kind] = encode_pages(model, inputs, batch_size, preprocessor, dataset_key, stats)
        cache.save(key, embeddings[kind])
    return ModelEmbeddings(embeddings["queries"], embeddings["corpus"], stats)


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
            candidates.append(ModelCandidate(name, str(folder) if folder.is_dir() else value))
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
    card = folder / "README.md" if folder.is_dir() else _hub_model_card(model_path)
    if card is not None and card.is_file():
        match = re.search(r'"matryoshka_dims":\s*\[([\d,\s]+)\]', card.read_text(errors="ignore"))
        if match:
            return [int(dim) for dim in match.group(1).split(",")]
    return None


def _hub_model_card(model_id: str) -> Path | None:
    """A Hub model's card (its README), whose training details list the Matryoshka dims; None when offline."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model_id, "README.md"))
    except Exception:
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
    dims = requested or known_matryoshka_dims(candidate.path) or [embedding_dimension(model)]
    return check_dims(dims, model, "Evaluation dims")


def score_model(
    model: SentenceTransformer,
    candidate: ModelCandidate,
    datasets: dict[str, RetrievalData],
    dims: list[int],
    batch_size: int,
    preprocessor: PagePreprocessor,
    cache: EmbeddingCache,
    cache_key: dict[str, Any],
    on_embeddings: Callable[[str, RetrievalData, ModelEmbeddings], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Records (one per dataset x dim) for one model, and its encoding statistics per dataset. ``on_embeddings``
    (issue 12: quantized storage) also gets each dataset's full-dimension embeddings."""
    records, stats = [], {}
    for name, data in datasets.items():
        start = time.perf_counter()
        embeddings = embed_dataset(model, data, batch_size, preprocessor, cache, cache_key)
        if on_embeddings is not None:  # issue 12
            on_embeddings(name, data, embeddings)
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
