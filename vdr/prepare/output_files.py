"""The files of prepare_vdr_data.py's output folder, and how they are read and written (JSON lines, JSON).

pages/<document>/page-0001.png, pages.jsonl, skipped_files.json, queries.jsonl, query_stats.json, split.json,
eval-beir/, train.jsonl, eval.jsonl, mining_stats.json, cache/mining/, report.json"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vdr.errors import VdrError

PAGES_FILE = "pages.jsonl"
SKIPPED_FILE = "skipped_files.json"
PAGES_FOLDER = "pages"
QUERIES_FILE = "queries.jsonl"
QUERY_STATS_FILE = "query_stats.json"
SPLIT_FILE = "split.json"
MINING_STATS_FILE = "mining_stats.json"
BEIR_FOLDER = "eval-beir"


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines (to a temporary file first, so a crash never leaves half a file); return the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    count = 0
    with partial.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    os.replace(partial, path)
    return count


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def save_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(asdict(value) if hasattr(value, "__dataclass_fields__") else value, indent=2))


def read_queries(output_dir: Path) -> list[dict]:
    path = output_dir / QUERIES_FILE
    if not path.is_file():
        raise VdrError(f"'{path}' does not exist: run the queries step first (--steps queries).")
    return read_jsonl(path)
