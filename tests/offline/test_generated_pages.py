"""The generated document pages: deterministic, with hard negatives that look like their page, and their text."""

from __future__ import annotations

from datasets import Image

from tests.helpers import PAGE_COLUMNS
from vdr.data.sources import (
    GENERATED_PAGES_VERSION,
    DatasetSpec,
    SourceArguments,
    load_rows,
)
from vdr.offline.generated_pages import GENERATED_PAGES_ID, generate_rows


def test_generated_pages_are_deterministic_and_differ_by_seed():
    first, again, other = generate_rows(3, seed=7), generate_rows(3, seed=7), generate_rows(3, seed=8)
    assert [r["query"] for r in first] == [r["query"] for r in again]
    assert first[0]["image"].tobytes() == again[0]["image"].tobytes()
    assert first[0]["image"].tobytes() != other[0]["image"].tobytes()
    pages = {"image", "negative_0", "negative_1", "negative_2", "negative_3"}
    assert set(first[0]) == {"query", *pages, *(f"{page}_text" for page in pages)}  # each page's text


def test_hard_negatives_look_like_their_page_but_differ():
    row = generate_rows(1, seed=5)[0]
    positive = row["image"]
    for k in range(4):
        negative = row[f"negative_{k}"]
        assert negative.size == positive.size
        assert negative.tobytes() != positive.tobytes()
    # negative_0 is the same organisation and figure in another year: same header colour
    assert row["negative_0"].getpixel((2, 2)) == positive.getpixel((2, 2))


def test_generated_source_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("VDR_CACHE", str(tmp_path))  # an empty cache: only this call can have written it
    options = SourceArguments(num_generated_rows=6, generated_seed=1)
    dataset = load_rows(DatasetSpec(GENERATED_PAGES_ID), list(PAGE_COLUMNS), options)
    assert len(dataset) == 6 and isinstance(dataset.features["image"], Image)
    assert [path.name for path in tmp_path.iterdir()] == [f"pages-v{GENERATED_PAGES_VERSION}-n6-seed1"]


def test_generated_pages_carry_their_text():
    row = generate_rows(1, seed=3)[0]
    organisation, title = row["image_text"].splitlines()[:2]
    assert organisation in row["query"] and title.startswith(organisation)
    assert {f"negative_{k}_text" for k in range(4)} <= set(row)
    assert all(row[f"negative_{k}_text"] != row["image_text"] for k in range(4))
