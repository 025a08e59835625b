"""The result files and plots: the markdown table, results.json / .csv, the plots, and the storage report's Pareto
front."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from vdr.evaluation.report import (
    markdown_table,
    metric_sort_key,
    plot_ndcg_by_dim,
    plot_ndcg_by_model,
    plot_training_metrics,
    write_results,
)
from vdr.evaluation.storage_report import pareto_front

FT = "org/ft-model v2"  # a name with "/", a space and "-", like a Hub id with a suffix


def record(model: str, dataset: str, dim: int, ndcg10: float, num_queries: int | None = 30) -> dict:
    # Metric keys deliberately out of order (and with two non-standard ones) to test the CSV column order.
    metrics = {
        "recall@10": round(ndcg10 + 0.03, 6),
        "precision@5": round(ndcg10 / 5, 6),
        "ndcg@10": ndcg10,
        "map@100": round(ndcg10 - 0.02, 6),
        "accuracy@1": round(ndcg10 - 0.05, 6),
        "mrr@10": round(ndcg10 - 0.01, 6),
        "ndcg@1": round(ndcg10 - 0.05, 6),
        "recall@1": round(ndcg10 - 0.05, 6),
        "ndcg@5": round(ndcg10 - 0.03, 6),
    }
    return {
        "model": model,
        "dataset": dataset,
        "dim": dim,
        "num_queries": num_queries,
        "num_documents": None if num_queries is None else num_queries * 5,
        "metrics": metrics,
    }


# Three models, two datasets, two dims each. "other" has a smaller full dim (1024) and lacks docvqa there (a missing
# cell), though it has docvqa at 256 with a value that would win if the table wrongly used it. "other" ties FT on
# vdr-eval at full dim.
RECORDS = [
    record("base", "vdr-eval", 2048, 0.888),
    record("base", "vdr-eval", 512, 0.85),
    record("base", "docvqa", 2048, 0.7),
    record("base", "docvqa", 512, 0.65),
    record(FT, "vdr-eval", 2048, 0.95),
    record(FT, "vdr-eval", 512, 0.93),
    record(FT, "docvqa", 2048, 0.75),
    record(FT, "docvqa", 512, 0.72),
    record("other", "vdr-eval", 1024, 0.95),
    record("other", "vdr-eval", 256, 0.9),
    record("other", "docvqa", 256, 0.99),
]


EXPECTED_TABLE = (
    "| model | vdr-eval NDCG@10 | docvqa NDCG@10 | mean |\n"
    "|---|---|---|---|\n"
    "| base | 0.8880 | 0.7000 | 0.7940 |\n"
    "| org/ft-model v2 | **0.9500** | **0.7500** | 0.8500 |\n"
    "| other | **0.9500** | - | **0.9500** |\n"
)


EXPECTED_CSV_HEADER = [
    "model",
    "dataset",
    "dim",
    "num_queries",
    "num_documents",
    "ndcg@1",
    "ndcg@5",
    "ndcg@10",
    "mrr@10",
    "map@100",
    "recall@1",
    "recall@10",
    "accuracy@1",
    "precision@5",
]


TRAINING_METRICS = {
    "eval_name": "vdr-eval",
    "metric": "ndcg@10",
    "base": {
        "2048": {"ndcg@10": 0.896, "mrr@10": 0.87},
        "1024": {"ndcg@10": 0.89, "mrr@10": 0.86},
        "512": {"ndcg@10": 0.87, "mrr@10": 0.84},
    },
    "final": {
        "2048": {"ndcg@10": 0.948, "mrr@10": 0.93},
        "1024": {"ndcg@10": 0.944, "mrr@10": 0.925},
        "512": {"ndcg@10": 0.93, "mrr@10": 0.91},
    },
    "base_ndcg@10": 0.896,
    "final_ndcg@10": 0.948,
    "summary": "NDCG@10 on vdr-eval (dim 2048): 0.8960 -> 0.9480",
}


def assert_png(path: Path) -> None:
    """A readable, non-empty PNG that is not one flat colour."""
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width > 100 and height > 100
        low, high = image.convert("L").getextrema()
        assert low != high, "the plot is a blank single-colour image"


def test_markdown_table_matches_hand_written_table() -> None:
    assert markdown_table(RECORDS) == EXPECTED_TABLE


def test_markdown_table_other_metric_and_single_dataset_has_no_mean_column() -> None:
    records = [r for r in RECORDS if r["dataset"] == "vdr-eval"]
    expected = (
        "| model | vdr-eval MRR@10 |\n"
        "|---|---|\n"
        "| base | 0.8780 |\n"
        "| org/ft-model v2 | **0.9400** |\n"
        "| other | **0.9400** |\n"
    )
    assert markdown_table(records, metric="mrr@10") == expected


def test_markdown_table_single_best_and_pipe_escaped() -> None:
    records = [record("a|b", "d", 128, 0.5), record("c", "d", 128, 0.25), record("c", "d", 64, 0.75)]
    expected = "| model | d NDCG@10 |\n|---|---|\n| a\\|b | **0.5000** |\n| c | 0.2500 |\n"
    assert markdown_table(records) == expected


def test_markdown_table_rejects_empty_and_unknown_metric() -> None:
    with pytest.raises(ValueError, match="markdown_table: no result records"):
        markdown_table([])
    with pytest.raises(ValueError, match="no record has metric 'ndcg@11'"):
        markdown_table(RECORDS, metric="ndcg@11")


def test_metric_sort_key_orders_by_family_then_k() -> None:
    names = ["recall@100", "zeta", "ndcg@100", "map@100", "precision@10", "ndcg@10", "mrr@10", "ndcg@5", "precision@5"]
    expected = ["ndcg@5", "ndcg@10", "ndcg@100", "mrr@10", "map@100", "recall@100", "precision@5", "precision@10"]
    assert sorted(names, key=metric_sort_key) == [*expected, "zeta"]


def test_write_results_writes_all_three_files(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "results"
    metadata = {"models": ["base", FT], "batch_size": 8, "cache": tmp_path}  # a Path goes through default=str
    paths = write_results(out, RECORDS, metadata)

    assert paths == {"json": out / "results.json", "csv": out / "results.csv", "markdown": out / "results.md"}
    saved = json.loads(paths["json"].read_text())
    assert saved == {"metadata": {**metadata, "cache": str(tmp_path)}, "results": RECORDS}

    markdown = paths["markdown"].read_text()
    heading, blank, table = markdown.split("\n", 2)
    assert heading.startswith("# ") and "NDCG@10" in heading and blank == ""
    assert table == EXPECTED_TABLE


def test_results_csv_round_trips(tmp_path: Path) -> None:
    records = [*RECORDS, record("base", "tiny", 64, 0.123456789, num_queries=None)]
    paths = write_results(tmp_path, records, {})
    with paths["csv"].open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)

    assert header == EXPECTED_CSV_HEADER
    assert len(rows) == len(records)
    for row, original in zip(rows, records):
        cells = dict(zip(header, row))
        assert cells["model"] == original["model"]
        assert cells["dataset"] == original["dataset"]
        assert int(cells["dim"]) == original["dim"]
        for column in ("num_queries", "num_documents"):
            assert cells[column] == ("" if original[column] is None else str(original[column]))
        metrics = {name: float(cells[name]) for name in EXPECTED_CSV_HEADER[5:]}
        assert metrics == original["metrics"]  # exact: floats are written with repr


def test_write_results_rejects_empty_records_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="write_results: no result records"):
        write_results(tmp_path / "out", [], {})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("plot", [plot_ndcg_by_dim, plot_ndcg_by_model])
def test_plots_of_several_models_and_datasets(plot, tmp_path: Path) -> None:
    path = plot(RECORDS, tmp_path / "plots" / "figure.png")
    assert path == tmp_path / "plots" / "figure.png"
    assert_png(path)


@pytest.mark.parametrize("plot", [plot_ndcg_by_dim, plot_ndcg_by_model])
def test_plots_of_a_single_dim(plot, tmp_path: Path) -> None:
    records = [record("base", "vdr-eval", 2048, 0.9), record(FT, "vdr-eval", 2048, 0.95)]
    assert_png(plot(records, tmp_path / "single.png"))


@pytest.mark.parametrize("plot", [plot_ndcg_by_dim, plot_ndcg_by_model])
def test_plots_of_another_metric(plot, tmp_path: Path) -> None:
    assert_png(plot(RECORDS, str(tmp_path / "mrr.png"), metric="mrr@10"))


@pytest.mark.parametrize(
    ("plot", "name"), [(plot_ndcg_by_dim, "plot_ndcg_by_dim"), (plot_ndcg_by_model, "plot_ndcg_by_model")]
)
def test_plots_reject_empty_records(plot, name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{name}: no result records"):
        plot([], tmp_path / "empty.png")
    with pytest.raises(ValueError, match="no record has metric"):
        plot(RECORDS, tmp_path / "typo.png", metric="ndgc@10")
    assert not list(tmp_path.iterdir())


def test_plot_training_metrics_with_and_without_base(tmp_path: Path) -> None:
    assert_png(plot_training_metrics(TRAINING_METRICS, tmp_path / "with_base.png"))
    no_base = {**TRAINING_METRICS, "base": {}, "base_ndcg@10": None}
    assert_png(plot_training_metrics(no_base, tmp_path / "no_base.png", title="custom title"))
    single_dim = {**TRAINING_METRICS, "base": {}, "final": {"2048": {"ndcg@10": 0.9}}}
    assert_png(plot_training_metrics(single_dim, tmp_path / "single.png"))


def test_plot_training_metrics_rejects_metrics_without_values(tmp_path: Path) -> None:
    empty = {"eval_name": "vdr-eval", "metric": "ndcg@10", "base": {}, "final": {}}
    with pytest.raises(ValueError, match="no 'ndcg@10' values"):
        plot_training_metrics(empty, tmp_path / "empty.png")


def test_pareto_front():
    points = [(8, 0.5), (64, 0.4), (256, 0.7), (256, 0.6), (1000, 0.7)]
    assert pareto_front(points) == [True, False, True, False, False]
