"""Write and plot retrieval results: models x datasets x embedding dimensions.

``evaluate_vdr.py`` produces one record per (model, dataset, dim)::

    {"model": "base", "dataset": "vdr-eval", "dim": 2048, "num_queries": 300, "num_documents": 1500,
     "metrics": {"ndcg@10": 0.888, "mrr@10": 0.85, ...}}

This module turns such records into ``results.json`` / ``results.csv`` / ``results.md`` and PNG plots. A model's
*full* dimension is the largest ``dim`` among its records; the table and the bar chart compare models there.

Plots are drawn on ``matplotlib.figure.Figure`` objects directly rather than through ``pyplot``: that needs no GUI
backend and no global figure state, so it is safe on headless machines and in threads.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from vdr.errors import VdrError

__all__ = [
    "PRIMARY_METRIC",
    "markdown_table",
    "metric_sort_key",
    "plot_ndcg_by_dim",
    "plot_ndcg_by_model",
    "plot_training_metrics",
    "write_results",
]

PRIMARY_METRIC = "ndcg@10"
DPI = 120
RESULT_FILES = {"json": "results.json", "csv": "results.csv", "markdown": "results.md"}
PLOT_FILES = {"by_dim": "ndcg_by_dim.png", "by_model": "ndcg_by_model.png", "training": "training_{run}.png"}
STORAGE_FILES = {"csv": "storage.csv", "plot": "ndcg_vs_bytes.png"}
#: What a --benchmark run adds (vdr.evaluation.mteb_results): the leaderboard tables and MTEB's result files.
LEADERBOARD_FILE, MTEB_RESULTS_DIR = "leaderboard.md", "mteb_results"
BENCHMARK_OUTPUTS = [LEADERBOARD_FILE, MTEB_RESULTS_DIR]
CSV_LEADING_COLUMNS = ("model", "dataset", "dim", "num_queries", "num_documents")
# Metric families in the order readers expect them; anything else follows alphabetically.
_FAMILY_ORDER = ("ndcg", "mrr", "map", "recall")
_METRIC_RE = re.compile(r"^(?P<family>[^@]+)@(?P<k>\d+)$")


# ---------------------------------------------------------------------------------------------------------------------
# Record helpers
# ---------------------------------------------------------------------------------------------------------------------


def _require_records(records: Sequence[dict], what: str) -> None:
    if not records:
        raise ValueError(f"{what}: no result records were given (the record list is empty).")


def _unique(values: Iterable[str]) -> list[str]:
    """Distinct values in first-appearance order (dict keys keep insertion order)."""
    return list(dict.fromkeys(values))


def _models(records: Sequence[dict]) -> list[str]:
    return _unique(str(r["model"]) for r in records)


def _datasets(records: Sequence[dict]) -> list[str]:
    return _unique(str(r["dataset"]) for r in records)


def _dim(record: dict) -> int:
    """A record's dim; 0 for a record without one (a text baseline such as BM25)."""
    return 0 if record.get("dim") is None else int(record["dim"])


def _full_dims(records: Sequence[dict]) -> dict[str, int]:
    """Each model's full dimension: the largest dim among all its records."""
    full: dict[str, int] = {}
    for r in records:
        model = str(r["model"])
        full[model] = max(full.get(model, 0), _dim(r))
    return full


def _value(record: dict, metric: str) -> float | None:
    value = (record.get("metrics") or {}).get(metric)
    return None if value is None else float(value)


def _full_dim_grid(records: Sequence[dict], metric: str) -> dict[tuple[str, str], float]:
    """``(model, dataset) -> metric`` at each model's full dim; cells without a value are left out."""
    full = _full_dims(records)
    grid: dict[tuple[str, str], float] = {}
    for r in records:
        model = str(r["model"])
        value = _value(r, metric)
        if _dim(r) == full[model] and value is not None:
            grid[(model, str(r["dataset"]))] = value
    return grid


def _require_metric(records: Sequence[dict], metric: str, what: str) -> None:
    # A typo in the metric name would otherwise give an all-"-" table or an empty plot, which looks like a result.
    if all(_value(r, metric) is None for r in records):
        known = sorted({name for r in records for name in (r.get("metrics") or {})}, key=metric_sort_key)
        raise ValueError(f"{what}: no record has metric {metric!r}; the records have {known}.")


def metric_sort_key(name: str) -> tuple[int, str, int, str]:
    """Sort key giving ndcg@k (ascending k), mrr, map, recall, then other metrics alphabetically."""
    match = _METRIC_RE.match(name)
    family, k = (match["family"], int(match["k"])) if match else (name, -1)
    rank = _FAMILY_ORDER.index(family) if family in _FAMILY_ORDER else len(_FAMILY_ORDER)
    return rank, family, k, name


def _label(metric: str) -> str:
    return metric.upper()


# ---------------------------------------------------------------------------------------------------------------------
# Table and files
# ---------------------------------------------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    # A "|" inside a name would otherwise split the cell.
    return text.replace("|", "\\|")


def _format_column(values: list[float | None]) -> list[str]:
    """Format one column to 4 decimals, bolding every value that ties the best *as displayed*."""
    shown = [None if v is None else f"{v:.4f}" for v in values]
    present = [v for v in values if v is not None]
    best = f"{max(present):.4f}" if present else None
    return ["-" if s is None else (f"**{s}**" if s == best else s) for s in shown]


def markdown_table(records: list[dict], metric: str = PRIMARY_METRIC) -> str:
    """A GitHub-flavoured markdown table of ``metric`` at each model's full dim: models as rows, datasets as columns.

    The best value in each column is bold (ties all bold), a missing cell is ``-``, and with several datasets a final
    ``mean`` column averages each model's available datasets.
    """
    _require_records(records, "markdown_table")
    _require_metric(records, metric, "markdown_table")
    models, datasets = _models(records), _datasets(records)
    grid = _full_dim_grid(records, metric)

    columns = [[grid.get((m, d)) for m in models] for d in datasets]
    headers = [f"{_md_escape(d)} {_label(metric)}" for d in datasets]
    if len(datasets) > 1:
        columns.append([_mean([grid[(m, d)] for d in datasets if (m, d) in grid]) for m in models])
        headers.append("mean")

    cells = [_format_column(column) for column in columns]
    lines = ["| " + " | ".join(["model", *headers]) + " |", "|" + "---|" * (len(headers) + 1)]
    for row, model in enumerate(models):
        lines.append("| " + " | ".join([_md_escape(model), *(column[row] for column in cells)]) + " |")
    return "\n".join(lines) + "\n"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _metric_names(records: Sequence[dict]) -> list[str]:
    return sorted({name for r in records for name in (r.get("metrics") or {})}, key=metric_sort_key)


def write_results(output_dir: str | Path, records: list[dict], metadata: dict) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` and ``results.md`` into ``output_dir`` (created if needed).

    Returns ``{"json": path, "csv": path, "markdown": path}``.
    """
    # Check before writing anything, so a bad call leaves no half-written result folder behind.
    _require_records(records, "write_results")
    table = markdown_table(records)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in RESULT_FILES.items()}

    # default=str keeps paths, dtypes and the like in metadata from breaking the dump.
    paths["json"].write_text(json.dumps({"metadata": metadata, "results": records}, indent=2, default=str) + "\n")
    _write_csv(paths["csv"], records)
    heading = f"# Retrieval results: {_label(PRIMARY_METRIC)} at each model's full embedding dimension"
    paths["markdown"].write_text(f"{heading}\n\n{table}")
    return paths


def _write_csv(path: Path, records: Sequence[dict]) -> None:
    metric_names = _metric_names(records)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CSV_LEADING_COLUMNS, *metric_names])
        for r in records:
            metrics = r.get("metrics") or {}
            leading = [r.get(column) for column in CSV_LEADING_COLUMNS]
            row = [*leading, *(metrics.get(name) for name in metric_names)]
            # csv writes None as "", which reads back as "missing"; repr keeps floats exact.
            writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])


# ---------------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------------


def _colors(models: Sequence[str]) -> dict[str, str]:
    """One colour per model, the same in every subplot."""
    return {model: f"C{i % 10}" for i, model in enumerate(models)}


def _log2_dim_axis(ax: Any, dims: Sequence[int]) -> None:
    """A log2 x axis ticked at exactly the dims evaluated, padded so a single dim still gives a sane range."""
    dims = sorted(set(dims))
    ax.set_xscale("log", base=2)
    ax.set_xlim(dims[0] / 1.4, dims[-1] * 1.4)
    ax.xaxis.set_major_locator(FixedLocator(dims))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(d) for d in dims])
    ax.set_xlabel("embedding dimension")


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _series(records: Sequence[dict], model: str, dataset: str, metric: str) -> tuple[list[int], list[float]]:
    """(dims, values) for one model on one dataset, sorted by dim; a later duplicate record wins."""
    points: dict[int, float] = {}
    for r in records:
        value = _value(r, metric)
        if str(r["model"]) == model and str(r["dataset"]) == dataset and value is not None:
            points[_dim(r)] = value
    dims = sorted(points)
    return dims, [points[d] for d in dims]


def plot_ndcg_by_dim(records: list[dict], path: str | Path, metric: str = PRIMARY_METRIC) -> Path:
    """Line plot of ``metric`` against embedding dim (log2 axis): one subplot per dataset, one line per model."""
    _require_records(records, "plot_ndcg_by_dim")
    _require_metric(records, metric, "plot_ndcg_by_dim")
    models, datasets = _models(records), _datasets(records)
    colors = _colors(models)

    fig = Figure(figsize=(0.6 + 4.4 * len(datasets), 4.6), layout="constrained")
    axes = fig.subplots(1, len(datasets), sharey=True, squeeze=False)[0]
    for ax, dataset in zip(axes, datasets):
        dims_seen: list[int] = []
        for model in models:
            dims, values = _series(records, model, dataset, metric)
            if dims == [0]:  # no embedding dimension (a text baseline): a horizontal line
                ax.axhline(values[0], color=colors[model], linestyle="--", label=model)
            elif dims:
                ax.plot(dims, values, marker="o", color=colors[model], label=model)
                dims_seen.extend(dims)
        ax.set_title(dataset)
        ax.grid(True, alpha=0.3)
        if dims_seen:
            _log2_dim_axis(ax, dims_seen)
    axes[0].set_ylabel(_label(metric))
    # One figure-wide legend: per-axes legends would repeat and could cover the lines.
    handles = {model: line for ax in axes for line, model in zip(*ax.get_legend_handles_labels())}
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 4))
    fig.suptitle(f"{_label(metric)} by embedding dimension")
    return _save(fig, path)


def plot_ndcg_by_model(records: list[dict], path: str | Path, metric: str = PRIMARY_METRIC) -> Path:
    """Grouped bar chart of ``metric`` at each model's full dim: one group per model, one bar per dataset."""
    _require_records(records, "plot_ndcg_by_model")
    _require_metric(records, metric, "plot_ndcg_by_model")
    models, datasets = _models(records), _datasets(records)
    grid = _full_dim_grid(records, metric)

    width = 0.8 / len(datasets)
    fig = Figure(figsize=(max(5.0, 1.2 + len(models) * (0.5 + 0.55 * len(datasets))), 4.8), layout="constrained")
    ax = fig.subplots()
    for i, dataset in enumerate(datasets):
        values = [grid.get((m, dataset)) for m in models]
        xs = [j + (i - (len(datasets) - 1) / 2) * width for j in range(len(models))]
        # A missing cell is drawn as no bar, labelled "n/a", so it is not mistaken for a score of 0.
        bars = ax.bar(xs, [0.0 if v is None else v for v in values], width, label=dataset)
        labels = ["n/a" if v is None else f"{v:.3f}" for v in values]
        ax.bar_label(bars, labels=labels, padding=2, fontsize=8, rotation=90 if len(datasets) > 3 else 0)

    ax.set_xticks(range(len(models)))
    long_labels = max(len(m) for m in models) > 12 or len(models) > 6
    ax.set_xticklabels(models, rotation=30 if long_labels else 0, ha="right" if long_labels else "center")
    top = max(grid.values())
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)  # headroom for the value labels
    ax.set_ylabel(f"{_label(metric)} (full dim)")
    ax.set_title(f"{_label(metric)} at each model's full embedding dimension")
    ax.grid(True, axis="y", alpha=0.3)
    # Outside the axes, so it can never hide a bar or its label.
    fig.legend(title="dataset", fontsize=8, loc="outside right upper")
    return _save(fig, path)


def _training_series(scores: dict | None, metric: str) -> tuple[list[int], list[float]]:
    points = {int(dim): float(values[metric]) for dim, values in (scores or {}).items() if metric in values}
    dims = sorted(points)
    return dims, [points[d] for d in dims]


def plot_training_metrics(metrics: dict, path: str | Path, title: str | None = None) -> Path:
    """Plot a training run's ``metrics.json``: its metric against dim for the base model and the finetuned one."""
    metric = metrics.get("metric", PRIMARY_METRIC)
    eval_name = metrics.get("eval_name", "eval")
    # Finetuned labels go above the points and base labels below: finetuned usually scores higher, so they don't clash.
    series = [("base", "base", "C0", -14), ("final", "finetuned", "C1", 8)]
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    all_dims: list[int] = []
    for key, label, color, offset in series:
        dims, values = _training_series(metrics.get(key), metric)
        if not dims:  # e.g. no base evaluation was run
            continue
        ax.plot(dims, values, marker="o", color=color, label=label)
        for dim, value in zip(dims, values):
            ax.annotate(
                f"{value:.3f}", (dim, value), textcoords="offset points", xytext=(0, offset), ha="center", fontsize=8
            )
        all_dims.extend(dims)
    if not all_dims:
        raise ValueError(f"plot_training_metrics: metrics has no {metric!r} values under 'base' or 'final'.")

    _log2_dim_axis(ax, all_dims)
    ax.margins(y=0.15)  # room for the annotations above and below
    ax.set_ylabel(_label(metric))
    ax.set_title(title if title is not None else f"{eval_name}: base vs finetuned")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def earlier_results(output_dir: Path) -> list[Path]:
    """The files an earlier evaluate_vdr.py run left in ``output_dir`` (results, storage report, plots)."""
    names = [*RESULT_FILES.values(), *STORAGE_FILES.values(), PLOT_FILES["by_dim"], PLOT_FILES["by_model"]]
    names += BENCHMARK_OUTPUTS
    found = [output_dir / name for name in names if (output_dir / name).exists()]
    return found + sorted(output_dir.glob(PLOT_FILES["training"].format(run="*")))


def clear_earlier_results(output_dir: Path, overwrite: bool) -> None:
    """Two runs' results never mix in one folder: an earlier run's files are refused, or, with ``overwrite``, removed
    first (only the files evaluate_vdr.py writes; anything else in the folder stays)."""
    earlier = earlier_results(output_dir)
    if not earlier:
        return
    if not overwrite:
        raise VdrError(
            f"--output_dir '{output_dir}' already holds the results of an earlier evaluation "
            f"({', '.join(path.name for path in earlier[:4])}{', ...' if len(earlier) > 4 else ''}). Choose a new "
            "--output_dir, or pass --overwrite_output_dir true to replace them."
        )
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
