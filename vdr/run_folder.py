"""A training run's output folder: what the training scripts write there and what evaluate_vdr.py reads back.

<output_dir>/
  run_config.json     the arguments as requested and resolved, the command, library versions
  checkpoint-<step>/  the newest checkpoints
  final/              the final model, with vdr_training.json (the Matryoshka dims it was trained at)
  metrics.json        the evaluation before and after training
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vdr.errors import VdrError

FINAL_MODEL_DIR = "final"
METRICS_FILE = "metrics.json"
#: Written beside the final model so evaluate_vdr.py knows which dimensions it was trained at.
TRAINING_INFO_FILE = "vdr_training.json"


def is_training_run(folder: Path) -> bool:
    """Whether ``folder`` is a training script's output folder (a final model or a checkpoint in it)."""
    return folder.is_dir() and ((folder / FINAL_MODEL_DIR).is_dir() or any(folder.glob("checkpoint-*")))


def checkpoints(folder: Path) -> list[Path]:
    """The run's ``checkpoint-<step>`` folders by step (a folder with another suffix sorts last, by name)."""

    def step(path: Path) -> tuple[int, str]:
        suffix = path.name.split("-", 1)[-1]
        return (int(suffix), "") if suffix.isdigit() else (1 << 62, path.name)

    return sorted(folder.glob("checkpoint-*"), key=step)


#: What resuming from a checkpoint needs, each as the file names that can hold it: without the optimizer or
#: scheduler state a resumed run would silently restart Adam's moments and the learning-rate schedule.
CHECKPOINT_PARTS = {
    "model.safetensors": (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "adapter_model.safetensors",
        "adapter_model.bin",
    ),
    "trainer_state.json": ("trainer_state.json",),
    "optimizer.pt": ("optimizer.pt", "optimizer.bin"),
    "scheduler.pt": ("scheduler.pt",),
}


def missing_checkpoint_parts(folder: Path) -> list[str]:
    """What a checkpoint folder lacks to resume from (empty: it is whole)."""
    return [part for part, names in CHECKPOINT_PARTS.items() if not any((folder / name).exists() for name in names)]


def write_training_info(final_dir: Path, matryoshka_dims: list[int]) -> None:
    (final_dir / TRAINING_INFO_FILE).write_text(json.dumps({"matryoshka_dims": matryoshka_dims}, indent=2))


def read_trained_dims(model_folder: Path) -> list[int] | None:
    """The Matryoshka dims a final model was trained at, from its ``vdr_training.json`` (None without one)."""
    info = model_folder / TRAINING_INFO_FILE
    if not info.is_file():
        return None
    try:
        return [int(dim) for dim in json.loads(info.read_text())["matryoshka_dims"]]
    except (ValueError, KeyError, TypeError) as error:
        raise VdrError(f"'{info}' is not a valid training record ({error}); pass --truncate_dims.") from None


def read_metrics(run_folder: Path) -> dict[str, Any] | None:
    """The run's metrics.json (None before the run has finished)."""
    path = run_folder / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
