"""A training run's surroundings: a safe output folder, resuming, Ctrl-C, training prompts, the final save,
metrics.json and the push to the Hub."""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from vdr.cli import create_folder
from vdr.data.sources import negative_columns_of
from vdr.errors import Interrupted, PushFailed, VdrError
from vdr.provenance import redact_command, snapshot_arguments, write_run_config
from vdr.run_folder import (
    FINAL_MODEL_DIR,
    METRICS_FILE,
    checkpoints,
    missing_checkpoint_parts,
    write_training_info,
)
from vdr.training.arguments import DataArguments

logger = logging.getLogger(__name__)
RESUME_LAST = ("last", "true", "True")


@dataclass
class RunStart:
    """What step 0 of a training script settles before anything loads."""

    resume_checkpoint: str | None
    requested: dict[str, dict[str, Any]]  # every argument group as requested, for run_config.json
    push_requested: bool
    hub_token: str | None


def start_run(groups: Sequence[Any], args: Any, argv: list[str]) -> RunStart:
    """Step 0 of every training script (embedding, multi-vector, reranker), after its own argument checks: the
    checkpoint to resume from, an output folder that holds no earlier run, and run_config.json as requested.

    The push is taken away from the trainer (the final model is pushed once, after its local save: a Hub failure
    mid-run must not stop training), and the token is kept out of the arguments the trainer pickles into every
    checkpoint (training_args.bin).
    """
    resume_checkpoint = resolve_resume_checkpoint(args)
    check_output_dir(args.output_dir, resuming=resume_checkpoint is not None)
    if resume_checkpoint is not None:
        check_checkpoint(Path(resume_checkpoint))
    create_folder(args.output_dir, "the run's checkpoints, final model and metrics")
    requested = snapshot_arguments(groups)
    write_run_config(args.output_dir, requested, argv)
    run = RunStart(resume_checkpoint, requested, args.push_to_hub, args.hub_token)
    args.push_to_hub, args.hub_token = False, None
    return run


def resolve_resume_checkpoint(args: SentenceTransformerTrainingArguments) -> str | None:
    """``--resume_from_checkpoint last`` picks the newest ``checkpoint-*`` in ``output_dir``; a path must exist."""
    requested = args.resume_from_checkpoint
    if not requested:
        return None
    if requested in RESUME_LAST:
        last = last_checkpoint(args.output_dir)
        if last is None:
            raise VdrError(
                f"--resume_from_checkpoint {requested}: '{args.output_dir}' holds no checkpoint-* folder to resume "
                "from. Drop the flag to start a new run."
            )
        return last
    if not Path(requested).is_dir():
        raise VdrError(f"--resume_from_checkpoint: checkpoint folder '{requested}' does not exist.")
    return requested


def check_checkpoint(folder: Path) -> None:
    """A checkpoint must hold everything resuming reads (checked before anything loads); an incomplete one (a run
    killed mid-save, a file deleted) is refused, naming the newest intact checkpoint of the same run."""
    missing = missing_checkpoint_parts(folder)
    if not missing:
        return
    if {"trainer_state.json", "model.safetensors"} <= set(missing):
        raise VdrError(
            f"'{folder}' is not a training checkpoint (no trainer_state.json and no model weights). Pass a "
            "checkpoint-<step> folder written by a training run, or --resume_from_checkpoint last."
        )
    intact = [path for path in checkpoints(folder.parent) if path != folder and not missing_checkpoint_parts(path)]
    instead = (
        f" Resume from the newest intact one instead: --resume_from_checkpoint {intact[-1]}"
        if intact
        else f" No other checkpoint of '{folder.parent}' is intact: start a new run (with --model_name_or_path "
        f"{folder} if its weights are there)."
    )
    raise VdrError(
        f"Checkpoint '{folder}' has no {' and no '.join(missing)} (a run killed while saving, or a file deleted): "
        f"resuming from it would restart what is missing and change the run.{instead}"
    )


def check_output_dir(output_dir: str, resuming: bool) -> None:
    """Refuse to start a fresh run over an earlier run's checkpoints or final model (they would be lost), and to
    resume a run that already finished (it would rewrite its final model and metrics)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return
    if resuming:
        if (folder / FINAL_MODEL_DIR).is_dir() and (folder / METRICS_FILE).is_file():
            raise VdrError(
                f"The run in '{output_dir}' already finished ({FINAL_MODEL_DIR}/ and {METRICS_FILE} are written); "
                "resuming would overwrite them. Evaluate it with evaluate_vdr.py, or train further into a new "
                "--output_dir with --model_name_or_path pointing at its final/ folder."
            )
        return
    earlier = sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint-") or p.name == FINAL_MODEL_DIR)
    if earlier:
        raise VdrError(
            f"Output folder '{output_dir}' already holds an earlier run ({', '.join(earlier[:3])}). Resume it with "
            "--resume_from_checkpoint last, or choose a new --output_dir; nothing was changed."
        )


def last_checkpoint(output_dir: str) -> str | None:
    """The output folder's latest checkpoint-* folder, or None (also when the folder does not exist yet)."""
    return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None


def check_enough_rows(num_rows: int, args: SentenceTransformerTrainingArguments) -> None:
    """Refuse a run with fewer rows than one optimizer step takes: its only step would run at a warmup learning
    rate of 0 (or nearly) and leave the model unchanged."""
    step_rows = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    if num_rows < step_rows:
        raise VdrError(
            f"The training data has {num_rows} rows, fewer than one optimizer step takes ({step_rows} = "
            f"per_device_train_batch_size {args.per_device_train_batch_size} x gradient_accumulation_steps "
            f"{args.gradient_accumulation_steps} x {args.world_size} device(s)). Add rows or lower the batch size."
        )


def set_training_prompts(
    args: SentenceTransformerTrainingArguments,
    model: SentenceTransformer,
    data: DataArguments,
    eval_rows: Dataset | None = None,
) -> None:
    """Give the trainer the model's query/document prompts per column, unless ``--prompts`` was set.

    The evaluation rows' negative columns (auto-detected ones too) get the document prompt: the trainer's eval
    loss reads every one of them.
    """
    if args.prompts or not model.prompts:
        return
    if eval_rows is not None:
        eval_negative_columns = negative_columns_of(eval_rows, data.eval_negative_columns)
    else:
        eval_negative_columns = data.eval_negative_columns or []
    prompts = {}
    if "query" in model.prompts:
        prompts[data.query_column] = model.prompts["query"]
    if "document" in model.prompts:
        for column in [data.positive_column, *data.negative_columns, *eval_negative_columns]:
            prompts[column] = model.prompts["document"]
    args.prompts = prompts or None


def resolved_settings(
    model: SentenceTransformer, args: SentenceTransformerTrainingArguments, resume_checkpoint: str | None
) -> dict[str, Any]:
    """What the run resolved beyond its arguments: prompts per column, the model's stored prompts, and the
    checkpoint it resumed from."""
    return {
        "prompts_per_column": args.prompts,
        "model_prompts": dict(model.prompts),
        "resumed_from_checkpoint": resume_checkpoint,
    }


def train(trainer: Any, resume_checkpoint: str | None, argv: list[str]) -> None:
    """``trainer.train``, with Ctrl-C turned into a clean stop that names the checkpoint to resume from and the
    exact command (checkpoints already written are kept as they are)."""
    try:
        trainer.train(resume_from_checkpoint=resume_checkpoint)
    except KeyboardInterrupt:
        output_dir = trainer.args.output_dir
        last = last_checkpoint(output_dir)
        if last is None:
            raise Interrupted(
                f"Training was interrupted before its first checkpoint; '{output_dir}' holds nothing to resume."
            ) from None
        raise Interrupted(
            f"Training was interrupted. The newest checkpoint is '{last}'; continue from it with:\n  "
            f"{resume_command(argv)}"
        ) from None


def resume_command(argv: list[str]) -> str:
    """The command that continues this run: the same arguments plus ``--resume_from_checkpoint last``."""
    kept, skip_next = [], False
    for arg in redact_command(argv):
        if skip_next:
            skip_next = False
        elif arg == "--resume_from_checkpoint":
            skip_next = True
        elif not arg.startswith("--resume_from_checkpoint="):
            kept.append(arg)
    return " ".join(shlex.quote(arg) for arg in ["python", *kept, "--resume_from_checkpoint", "last"])


def save_to_final_dir(model: Any, output_dir: str) -> Path:
    """Save any Sentence Transformers model (embedder, multi-vector encoder, cross-encoder) to ``output_dir/final``."""
    final_dir = Path(output_dir) / FINAL_MODEL_DIR
    model.save_pretrained(str(final_dir))
    logger.info("Saved the final model to %s", final_dir)
    return final_dir


def save_final_model(
    model: SentenceTransformer, output_dir: str, truncate_dim: int | None, matryoshka_dims: list[int]
) -> Path:
    """Save to ``output_dir/final`` with ``truncate_dim`` as the model's default output dimension."""
    model.truncate_dim = truncate_dim
    final_dir = save_to_final_dir(model, output_dir)
    write_training_info(final_dir, matryoshka_dims)
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


def write_reranker_metrics(
    output_dir: str, eval_name: str, base: dict[str, float], final: dict[str, float], metric: str = "ndcg@10"
) -> dict[str, Any]:
    """Write ``metrics.json``: the reranking metrics before and after training, and a one-line summary."""
    record: dict[str, Any] = {"eval_name": eval_name, "metric": metric, "base": base, "final": final}
    record[f"base_{metric}"] = base.get(metric)
    record[f"final_{metric}"] = final.get(metric)
    if not final:
        record["summary"] = "No evaluation data was given, so no reranking metrics were computed."
    else:
        before = f"{base[metric]:.4f} -> " if metric in base else ""
        where = f"reranking {eval_name} (positive + hard negatives)"
        record["summary"] = f"{metric.upper()} {where}: {before}{final[metric]:.4f}"
    (Path(output_dir) / METRICS_FILE).write_text(json.dumps(record, indent=2))
    return record


def push_to_hub(
    model: SentenceTransformer, final_dir: Path, args: SentenceTransformerTrainingArguments, token: str | None
) -> None:
    """Push the saved final model with Sentence Transformers' own ``push_to_hub`` (model card included), to
    ``--hub_model_id`` (default: the run name), honouring ``--hub_private_repo``. The local copy is already saved,
    so a failure raises ``PushFailed`` with the command that retries it; nothing is lost."""
    repo_id = args.hub_model_id or args.run_name
    try:
        url = model.push_to_hub(
            repo_id,
            token=token,
            private=args.hub_private_repo,
            local_model_path=str(final_dir),
            exist_ok=True,  # a repo left by an earlier, failed push is reused, not an error
        )
        logger.info("Pushed the final model to %s", url)
    except Exception as error:  # network, auth, quota: the local copy is safe; say how to retry
        raise PushFailed(
            f"Pushing to the Hub as '{repo_id}' failed ({type(error).__name__}: {error}). The model is saved in "
            f"{final_dir}; to retry: `hf auth login`, then `hf upload {repo_id} {final_dir}`."
        ) from None
