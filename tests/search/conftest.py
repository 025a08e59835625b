"""Indexes the search tests share: the generated pages indexed by the base tiny model and by the quickstart's
finetuned model, built once per session. Tests only read them."""

from __future__ import annotations

from pathlib import Path

import pytest

import search_vdr

ROWS, SEED = 6, 1  # 30 pages: fewer than binary rescoring's 40 candidates, so it rescores every page
GENERATED = ["--dataset", "generated:pages", "--num_generated_rows", str(ROWS), "--generated_seed", str(SEED)]


def run(*argv: str):
    """search_vdr.py's main with this command line (parsed as the script parses it)."""
    return search_vdr.main(*search_vdr.make_parser().parse(list(argv)))


def build(index: Path, model: str | Path, *argv: str) -> dict:
    return run("index", "--index", str(index), "--model", str(model), *argv)


@pytest.fixture(scope="session")
def search_indexes(tmp_path_factory: pytest.TempPathFactory, embedding_quickstart) -> dict[str, Path]:
    """{"finetuned": index, "base": index} over the same generated pages (float32, full dim)."""
    folder = tmp_path_factory.mktemp("search-indexes")
    build(folder / "finetuned", embedding_quickstart[0] / "final", *GENERATED)
    build(folder / "base", "generated:tiny-qwen3-vl", *GENERATED, "--max_pixels", "36864")
    return {"finetuned": folder / "finetuned", "base": folder / "base"}
