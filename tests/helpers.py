"""Helpers the tests share: the repository root, files written for a test, and running a script's command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from vdr.data.retrieval_sets import RetrievalData

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The page columns of the generated rows that the tests write as files.
PAGE_COLUMNS = ("image", "negative_0")


def write_images(rows: list[dict], folder: Path) -> list[dict]:
    """Save the rows' images as PNG files and return rows holding relative paths instead."""
    folder.mkdir(parents=True, exist_ok=True)
    path_rows = []
    for index, row in enumerate(rows):
        path_row = {"query": row["query"]}
        for column in PAGE_COLUMNS:
            name = f"{column}-{index}.png"
            row[column].save(folder / name)
            path_row[column] = f"pages/{name}"
        path_rows.append(path_row)
    return path_rows


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def make_it_look_interrupted(output_dir: Path, last_checkpoint: str) -> None:
    """A finished run made to look killed before ``last_checkpoint``: that checkpoint, the final model and
    metrics.json never got written."""
    for name in (last_checkpoint, "final"):
        shutil.rmtree(output_dir / name)
    (output_dir / "metrics.json").unlink()


def run_script(script: ModuleType, argv: list[str], capfd: pytest.CaptureFixture) -> tuple[int, str]:
    """Run a script's command line in-process; return its exit code and everything it printed."""
    with pytest.raises(SystemExit) as exit_info:
        script.cli([f"{script.__name__}.py", *argv])
        raise SystemExit(0)
    out, err = capfd.readouterr()
    return exit_info.value.code, out + err


def run_subprocess(script: str, argv: list[str], vdr_cache: Path, timeout: int = 300) -> tuple[int, str]:
    """Run ``python <script> ...`` from the repository root, as a user would; return its exit code and stderr."""
    env = {**os.environ, "VDR_CACHE": str(vdr_cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, script, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    return result.returncode, result.stderr


def assert_clean_error(code: int, printed: str, message: str, expected_code: int = 2) -> None:
    """One message naming the problem, printed once, with the expected exit code and no traceback."""
    assert code == expected_code, printed[-3000:]
    assert message in printed, printed[-3000:]
    assert "Traceback" not in printed
    assert printed.count("error:") == 1  # one message, printed once


def tiny_data(
    num_queries: int, num_pages: int, relevant: list[int], texts: list[str] | None = None, queries: list[str] = ()
) -> RetrievalData:
    """A hand-made retrieval set: query q is relevant to page ``relevant[q]`` only; optional page and query texts."""
    qrels = {q: {page: 1.0} for q, page in enumerate(relevant)}
    corpus = {page: f"page {page}" for page in range(num_pages)}
    page_texts = dict(enumerate(texts)) if texts else None
    query_texts = dict(enumerate(queries)) if queries else {q: f"query {q}" for q in range(num_queries)}
    return RetrievalData(query_texts, corpus, qrels, page_texts)
