"""The trainer's surroundings: a safe output folder, resuming, prompts, the final save, metrics and push."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from vdr.config import DataArguments
from vdr.errors import VdrError

logger = logging.getLogger(__name__)

FINAL_MODEL_DIR = "final"
METRICS_FILE = "metrics.json"
#: Written beside the final model so evaluate_vdr.py knows which dimensions it was trained at.
TRAINING_INFO_FILE = "vdr_training.json"
RESUME_LAST = ("last", "true", "True")


def resolve_resume_checkpoint(args: SentenceTransformerTrainingArguments) -> str | None:
    """``--resume_from_checkpoint last`` picks the newest ``checkpoint-*`` in ``output_dir``; a path must exist."""
    requested = args.resume_from_checkpoint
    if not requested:
        return None
    if requested in RESUME_LAST:
        last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        if last is None:
            raise VdrError(
                f"--resume_from_checkpoint {requested}: '{args.output_dir}' holds no checkpoint-* folder to resume "
                "from. Drop the flag to start a new run."
            )
        return last
    if not Path(requested).is_dir():
        raise VdrError(f"--resume_from_checkpoint: checkpoint folder '{requested}' does not exist.")
    return requested


def check_output_dir(output_dir: str, resuming: bool) -> None:
    """Refuse to start a fresh run over an earlier run's checkpoints or final model (they would be lost)."""
    folder = Path(output_dir)
    if resuming or not folder.is_dir():
        return
    earlier = sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint-") or p.name == FINAL_MODEL_DIR)
    if earlier:
        raise VdrError(
            f"Output folder '{output_dir}' already holds an earlier run ({', '.join(earlier[:3])}). Resume it with "
            "--resume_from_checkpoint last, or choose a new --output_dir; nothing was changed."
        )


def set_training_prompts(
    args: SentenceTransformerTrainingArguments, model: SentenceTransformer, data: DataArguments
) -> None:
    """Give the trainer the model's query/document prompts per column, unless ``--prompts`` was set."""
    if args.prompts or not model.prompts:
        return
    prompts = {}
    if "query" in model.prompts:
        prompts[data.query_column] = model.prompts["query"]
    if "document" in model.prompts:
        # eval negatives too: the trainer's eval loss reads every negative column of the evaluation rows
        for column in [data.positive_column, *data.negative_columns, *(data.eval_negative_columns or [])]:
            prompts[column] = model.prompts["document"]
    args.prompts = prompts or None


def save_final_model(
    model: SentenceTransformer, output_dir: str, truncate_dim: int | None, matryoshka_dims: list[int]
) -> Path:
    """Save to ``output_dir/final`` with ``truncate_dim`` as the model's default output dimension."""
    final_dir = Path(output_dir) / FINAL_MODEL_DIR
    model.truncate_dim = truncate_dim
    model.save_pretrained(str(final_dir))
    (final_dir / TRAINING_INFO_FILE).write_text(json.dumps({"matryoshka_dims": matryoshka_dims}, indent=2))
    logger.info("Saved the final model to %s", final_dir)
    return final_dir


def write_metrics(
    output_dir: str,
    eval_name: str,
    base: dict[int, dict[str, float]],
    final: dict[int, dict[str, float]],
    metric: str = "ndcg@10",
) -> dict[str, Any]:
    """Write ``metrics.json``: every metric at every dim, before and after training, plus a summary."""
    record: dict[str, Any] = {"eval_name": eval_name, "metric": metric}
    for name, scores in (("base", base), ("final", final)):
        record[name] = {str(dim): values for dim, values in scores.items()}
        record[f"{name}_{metric}"] = scores[max(scores)][metric] if scores else None
    record["summary"] = _summary(eval_name, metric, base, final)
    path = Path(output_dir) / METRICS_FILE
    path.write_text(json.dumps(record, indent=2))
    return record


def _summary(eval_name: str, metric: str, base: dict, final: dict) -> str:
    if not final:
        return "No evaluation data was given, so no retrieval metrics were computed."
    dim = max(final)
    before = f"{base[dim][metric]:.4f} -> " if dim in base else ""
    return f"{metric.upper()} on {eval_name} (dim {dim}): {before}{final[dim][metric]:.4f}"


def push_to_hub(model: SentenceTransformer, final_dir: Path, args: SentenceTransformerTrainingArguments) -> None:
    """Push the saved final model with Sentence Transformers' own ``push_to_hub`` (model card included), to
    ``--hub_model_id`` (default: the run name), honouring ``--hub_private_repo`` and ``--hub_token``. Never raises:
    the local copy is already saved, so a failure is reported with the command that retries it."""
    repo_id = args.hub_model_id or args.run_name
    if not repo_id:
        logger.error("--push_to_hub needs --hub_model_id (or --run_name); the model is saved in %s.", final_dir)
        return
    try:
        url = model.push_to_hub(
            repo_id,
            token=args.hub_token,
            private=args.hub_private_repo,
            local_model_path=str(final_dir),
            exist_ok=True,  # a repo left by an earlier, failed push is reused, not an error
        )
        logger.info("Pushed the final model to %s", url)
    except Exception as error:  # network, auth, quota: the local copy is safe, so report and go on
        logger.error(
            "Pushing to the Hub as '%s' failed (%s: %s). The model is saved in %s; to retry: `hf auth login`, then "
            "`hf upload %s %s`",
            repo_id, type(error).__name__, error, final_dir, repo_id, final_dir,
        )  # fmt: skip
