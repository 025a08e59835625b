"""The storage-against-quality report: every model x dataset x dim x precision with its bytes per page and NDCG@10,
as a table (Pareto front marked), storage.csv and a plot of NDCG@10 against bytes per page.

Storage records have the keys of ``vdr.evaluation.report``'s records plus ``kind`` (single_vector, multi_vector,
text), ``precision`` and ``bytes_per_page``."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from vdr.evaluation.report import PRIMARY_METRIC, STORAGE_FILES

STORAGE_HEADING = "## Storage against quality: NDCG@10 and bytes per page"
PRECISION_MARKERS = {"float32": "o", "float16": "D", "int8": "s", "binary": "v", "binary_rescored": "^", "bm25": "*"}


def _ndcg(record: dict) -> float:
    return float(record["metrics"][PRIMARY_METRIC])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (bytes, quality) points: whether each is on the Pareto front, i.e. no other point is at most as large
    and at least as good while strictly better in one of the two."""
    return [
        not any(other[0] <= point[0] and other[1] >= point[1] and other != point for other in points)
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
                float(record["bytes_per_page"]),
                _ndcg(record),
                color=colours[str(record["model"])],
                marker=PRECISION_MARKERS.get(str(record.get("precision")), "o"),
                s=36,
                alpha=0.85,
            )
        front = sorted(
            (r for r, on_front in zip(records, _front_flags(records)) if on_front),
            key=lambda r: float(r["bytes_per_page"]),
        )
        ax.step(
            [float(r["bytes_per_page"]) for r in front],
            [_ndcg(r) for r in front],
            where="post",
            color="black",
            linestyle="--",
            linewidth=1,
            label="Pareto front",
        )
        for record in front:
            label = f"{record['model']} {record['dim'] or ''} {record.get('precision', '')}".replace("  ", " ")
            ax.annotate(
                label,
                (float(record["bytes_per_page"]), _ndcg(record)),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
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
                    [
                        record["dataset"],
                        record["model"],
                        record.get("kind"),
                        record["dim"],
                        record.get("precision"),
                        record["bytes_per_page"],
                        _ndcg(record),
                        on_front,
                    ]
                )
