"""Benchmark results the way the leaderboard shows and stores them: each model's main score per task (the mean over
the task's language subsets, as mteb's ``TaskResult.get_score``) and their mean over tasks, as a markdown table per
benchmark, and one MTEB result file per model and task.

MTEB's result layout (mteb 2.26's ``ResultCache``): ``<folder>/<model name, "/" as "__">/<revision>/<TaskName>.json``
plus ``model_meta.json``; a task file holds ``dataset_revision``, ``task_name``, ``mteb_version``, ``scores`` (split ->
one entry per language subset: every figure, ``main_score``, ``hf_subset``, ``languages``), ``evaluation_time``,
``kg_co2_emissions`` and ``date``. A test loads the files with mteb's own ``TaskResult.from_disk``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

import torch

from vdr.evaluation.benchmarks import SPLIT, BenchmarkData
from vdr.evaluation.metrics import ModelScores, mteb_retrieval_scores
from vdr.evaluation.report import LEADERBOARD_FILE, MTEB_RESULTS_DIR

__all__ = ["LEADERBOARD_FILE", "leaderboard_rows", "write_mteb_results"]

if TYPE_CHECKING:
    from vdr.evaluation.retrieve_then_rerank import RerankResults

#: The mteb release whose result-file format these files follow (they are written here, not by mteb).
MTEB_FORMAT_VERSION = "2.26.24"
#: MTEB's placeholder for a model without a revision.
NO_REVISION = "no_revision_available"


@dataclass
class TaskScores:
    """One model on one task: every figure per language subset, and the time it took."""

    model: str
    task: BenchmarkData
    subsets: dict[str, dict[str, float]]
    evaluation_time: float | None = None
    protocol: dict[str, Any] | None = None

    @property
    def main_score(self) -> float:
        return fmean(scores["main_score"] for scores in self.subsets.values())


def score_task(model: str, task: BenchmarkData, scores: torch.Tensor, seconds: float | None = None) -> TaskScores:
    """Every language subset of ``task`` scored from one query x page score matrix (rows in ``task.data`` order)."""
    subsets = {}
    for subset, query_ids in task.subsets.items():
        figures = mteb_retrieval_scores(scores, task.data, query_ids)
        subsets[subset] = {**figures, "main_score": figures[task.selected.task.main_score]}
    return TaskScores(model, task, subsets, seconds)


def leaderboard_rows(
    tasks: dict[str, BenchmarkData], scored: dict[str, ModelScores], reranked: RerankResults | None
) -> LeaderboardRows:
    """Every model's (and "model + reranker"'s) MTEB figures on every task it has query x page scores for."""
    rows = LeaderboardRows()
    for model, scores in scored.items():
        for name, task in tasks.items():
            if name in scores.matrices:
                seconds = scores.stats.get(name, {}).get("seconds")
                rows.scores.append(score_task(model, task, scores.matrices[name], seconds))
                rows.scores[-1].protocol = scores.protocol
    for model, matrices in (reranked.matrices if reranked else {}).items():
        for name, task in tasks.items():
            if name in matrices:
                seconds = reranked.models[model]["stats"].get(name, {}).get("seconds")
                rows.scores.append(score_task(model, task, matrices[name], seconds))
    return rows


@dataclass
class LeaderboardRows:
    """Every model's task scores on every benchmark, in the order they were scored."""

    scores: list[TaskScores] = field(default_factory=list)

    def models(self) -> list[str]:
        return list(dict.fromkeys(s.model for s in self.scores))

    def benchmarks(self) -> list[str]:
        return list(dict.fromkeys(s.task.selected.benchmark.name for s in self.scores))

    def table(self, benchmark: str) -> str:
        """Models as rows, the benchmark's tasks' main scores as columns, and their mean (over the tasks scored)."""
        rows = [s for s in self.scores if s.task.selected.benchmark.name == benchmark]
        tasks = list(dict.fromkeys(s.task.selected.task.name for s in rows))
        models = list(dict.fromkeys(s.model for s in rows))
        grid = {(s.model, s.task.selected.task.name): s.main_score for s in rows}
        metric = rows[0].task.selected.task.main_score.replace("_at_", "@").upper()
        mteb_name = rows[0].task.selected.benchmark.mteb_name
        lines = [
            f"### {mteb_name}: {metric} per task (mean over its languages), as the leaderboard scores it",
            "",
            "| model | " + " | ".join(tasks) + " | mean |",
            "|" + "---|" * (len(tasks) + 2),
        ]
        for model in models:
            values = [grid.get((model, task)) for task in tasks]
            cells = ["-" if value is None else f"{value:.4f}" for value in values]
            present = [value for value in values if value is not None]
            mean = f"{fmean(present):.4f}" if len(present) == len(tasks) else "-"
            lines.append("| " + " | ".join([model.replace("|", "\\|"), *cells, mean]) + " |")
        return "\n".join(lines) + "\n"

    def tables(self) -> str:
        return "\n".join(self.table(benchmark) for benchmark in self.benchmarks())


def task_result(scores: TaskScores) -> dict[str, Any]:
    """One MTEB result file's content."""
    task = scores.task.selected.task
    entries = [
        {**figures, "hf_subset": subset, "languages": task.languages[subset], "mteb_version": MTEB_FORMAT_VERSION}
        for subset, figures in scores.subsets.items()
    ]
    return {
        "dataset_revision": task.mteb_revision,
        "task_name": task.name,
        "mteb_version": MTEB_FORMAT_VERSION,
        "scores": {SPLIT: entries},
        "evaluation_time": scores.evaluation_time,
        "kg_co2_emissions": None,
        "date": time.time(),
    }


def write_mteb_results(output_dir: Path, rows: LeaderboardRows, revisions: dict[str, str | None]) -> list[Path]:
    """Write each model's task results under ``output_dir/mteb_results`` in MTEB's layout; returns the task files."""
    written = []
    for scores in rows.scores:
        revision = revisions.get(scores.model) or NO_REVISION
        folder = output_dir / MTEB_RESULTS_DIR / scores.model.replace("/", "__").replace(" ", "_") / revision
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"name": scores.model, "revision": revision, "written_by": "vdr-finetune evaluate_vdr.py"}
        if scores.protocol is not None:
            meta["protocol"] = scores.protocol
        (folder / "model_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        path = folder / f"{scores.task.selected.task.name}.json"
        path.write_text(json.dumps(task_result(scores), indent=2) + "\n")
        written.append(path)
    return written
