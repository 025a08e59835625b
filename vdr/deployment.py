"""Choosing what to deploy: evaluate_vdr.py's hooks for multi-vector models, the BM25 text baseline and quantized
storage, and the storage-against-quality report (a table and a plot of NDCG@10 against bytes per page).

Storage records (one per model x dataset x dim x precision) have the keys of ``vdr.reporting``'s records plus
``kind`` (single_vector, multi_vector, text), ``precision`` and ``bytes_per_page``.
"""

from __future__ import annotations

import csv
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from vdr.bm25 import BM25_MODEL_ID, score_bm25
from vdr.config import EvaluateArguments, ModelLoadingArguments
from vdr.data import RetrievalData
from vdr.embedding_cache import model_fingerprint
from vdr.model import resolve_model_path
from vdr.model_comparison import EncodingSetup, ModelCandidate, ModelEmbeddings
from vdr.multi_vector import (
    build_multi_vector_model,
    is_multi_vector_model,
    keep_only_image_tokens,
    score_multi_vector_model,
)
from vdr.quantization import quantized_records

PRIMARY_METRIC = "ndcg@10"
STORAGE_FILES = {"csv": "storage.csv", "plot": "ndcg_vs_bytes.png"}
STORAGE_HEADING = "## Storage against quality: NDCG@10 and bytes per page"
PRECISION_MARKERS = {"float32": "o", "float16": "D", "int8": "s", "binary": "v", "binary_rescored": "^", "bm25": "*"}


@dataclass
class StorageReport:
    """What evaluate_vdr.py gathers for the storage-against-quality report: every model x dataset x dim x
    precision with its bytes per page, and notes (such as a dataset BM25 had to skip)."""

    storage: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def collector(
        self, model_name: str, dims: Sequence[int], args: EvaluateArguments
    ) -> Callable[[str, RetrievalData, ModelEmbeddings], None]:
        """``model_comparison.score_model``'s ``on_embeddings``: every dim x precision of a single-vector model."""

        def collect(dataset: str, data: RetrievalData, embeddings: ModelEmbeddings) -> None:
            self.storage += quantized_records(
                model_name, dataset, data, embeddings.queries, embeddings.corpus, dims, args.precisions,
                args.rescore_multiplier,
            )  # fmt: skip

        return collect


def score_other_kinds(
    candidate: ModelCandidate,
    datasets: dict[str, RetrievalData],
    loading: ModelLoadingArguments,
    args: EvaluateArguments,
    setup: EncodingSetup,
    report: StorageReport,
) -> tuple[list[dict], dict[str, Any]] | None:
    """Score ``--model bm25`` or a multi-vector model as ``evaluate_vdr.score_candidate`` does (its records and what
    results.json says about it), adding its storage rows to ``report``; None for a single-vector model."""
    if candidate.path == BM25_MODEL_ID:
        records, skipped, stats = score_bm25(datasets)
        report.storage += records
        note = "BM25 skipped on '{}': no page text and no OCR package (see the log)."
        report.notes += [note.format(name) for name in skipped]
        return records, {"path": candidate.path, "dims": [], "fingerprint": None, "stats": stats}
    if not is_multi_vector_model(candidate.path):
        return None
    model = build_multi_vector_model(loading, candidate.path)
    try:
        if args.image_tokens_only:
            keep_only_image_tokens(model)
        cached = setup.embedding_cache.folder is not None
        fingerprint = model_fingerprint(resolve_model_path(candidate.path), loading.revision) if cached else None
        model_key = {"model": fingerprint, "loading": vars(loading), "image_tokens_only": args.image_tokens_only}
        records, storage, stats = score_multi_vector_model(model, candidate.name, datasets, setup, model_key)
    finally:
        del model  # free it before the next model loads
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    report.storage += storage
    dims = [int(records[0]["dim"])] if records else []
    return records, {"path": candidate.path, "dims": dims, "fingerprint": fingerprint, "stats": stats}


# --------------------------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------------------------


def _ndcg(record: dict) -> float:
    return float(record["metrics"][PRIMARY_METRIC])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (bytes, quality) points: whether each is on the Pareto front, i.e. no other point is at most as large
    and at least as good while strictly better in one of the two."""
    return [
        not any(
            other[0] <= point[0] and other[1] >= point[1] and other != point
            for other in points
        )
        for point in points
    ]


def _by_dataset(storage: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for record in storage:
        groups.setdefault(str(record["dataset"]), []).append(record)
    return groups


def _front_flags(records: Sequence[dict]) -> list[bool]:
    return pareto_front([(float(r["bytes_per_page"]), _ndcg(r)) for r in records])


def _format_bytes(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:g}"


def storage_table(storage: Sequence[dict]) -> str:
    """Markdown: per dataset, every model / dim / precision with its bytes per page and NDCG@10, smallest index
    first; the Pareto front (nothing smaller scores as well) is marked."""
    lines = [
        "| dataset | model | kind | dim | precision | bytes / page | NDCG@10 | Pareto front |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, records in _by_dataset(storage).items():
        flags = _front_flags(records)
        rows = sorted(zip(records, flags), key=lambda pair: (float(pair[0]["bytes_per_page"]), -_ndcg(pair[0])))
        for record, on_front in rows:
            cells = [
                dataset,
                str(record["model"]).replace("|", "\\|"),
                str(record.get("kind", "")),
                "-" if record["dim"] is None else str(record["dim"]),
                str(record.get("precision", "")),
                _format_bytes(float(record["bytes_per_page"])),
                f"{_ndcg(record):.4f}",
                "**yes**" if on_front else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_ndcg_vs_bytes(storage: Sequence[dict], path: str | Path) -> Path:
    """NDCG@10 against bytes per page (log x): every model / dim / precision a point (colour: model, marker:
    precision), the Pareto front a dashed staircase with its points labelled."""
    groups = _by_dataset(storage)
    models = list(dict.fromkeys(str(r["model"]) for r in storage))
    colours = {model: f"C{i % 10}" for i, model in enumerate(models)}
    fig = Figure(figsize=(0.8 + 6.2 * len(groups), 5.4), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (dataset, records) in zip(axes, groups.items()):
        for record in records:
            ax.scatter(
                float(record["bytes_per_page"]), _ndcg(record), color=colours[str(record["model"])],
                marker=PRECISION_MARKERS.get(str(record.get("precision")), "o"), s=36, alpha=0.85,
            )  # fmt: skip
        front = sorted(
            (r for r, on_front in zip(records, _front_flags(records)) if on_front),
            key=lambda r: float(r["bytes_per_page"]),
        )
        ax.step([float(r["bytes_per_page"]) for r in front], [_ndcg(r) for r in front], where="post",
                color="black", linestyle="--", linewidth=1, label="Pareto front")  # fmt: skip
        for record in front:
            label = f"{record['model']} {record['dim'] or ''} {record.get('precision', '')}".replace("  ", " ")
            ax.annotate(label, (float(record["bytes_per_page"]), _ndcg(record)), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("bytes per page (log scale)")
        ax.set_title(dataset)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("NDCG@10")
    _legend(fig, models, colours, storage)
    fig.suptitle("Storage against quality")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    return path


def _legend(fig: Figure, models: list[str], colours: dict[str, str], storage: Sequence[dict]) -> None:
    from matplotlib.lines import Line2D

    precisions = list(dict.fromkeys(str(r.get("precision")) for r in storage))
    handles = [Line2D([], [], color=colours[m], marker="o", linestyle="", label=m) for m in models]
    handles += [
        Line2D([], [], color="grey", marker=PRECISION_MARKERS.get(p, "o"), linestyle="", label=p) for p in precisions
    ]
    handles.append(Line2D([], [], color="black", linestyle="--", label="Pareto front"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)


def write_storage_report(output_dir: str | Path, storage: Sequence[dict], notes: Sequence[str] = ()) -> str:
    """Append the storage table (and notes) to results.md, write storage.csv and the plot; return the section."""
    if not storage and not notes:
        return ""
    output_dir = Path(output_dir)
    section = f"\n{STORAGE_HEADING}\n\n" + (storage_table(storage) if storage else "")
    section += "".join(f"\n- {note}" for note in notes) + ("\n" if notes else "")
    with (output_dir / "results.md").open("a") as handle:
        handle.write(section)
    if storage:
        _write_storage_csv(output_dir / STORAGE_FILES["csv"], storage)
        plot_ndcg_vs_bytes(storage, output_dir / STORAGE_FILES["plot"])
    return section


def _write_storage_csv(path: Path, storage: Sequence[dict]) -> None:
    columns = ("dataset", "model", "kind", "dim", "precision", "bytes_per_page", PRIMARY_METRIC, "pareto_front")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for records in _by_dataset(storage).values():
            for record, on_front in zip(records, _front_flags(records)):
                writer.writerow(
                    [record["dataset"], record["model"], record.get("kind"), record["dim"], record.get("precision"),
                     record["bytes_per_page"], _ndcg(record), on_front]  # fmt: skip
                )
