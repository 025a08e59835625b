"""prepare_vdr_data.py: a folder of PDFs and page images -> pages -> queries -> split -> hard negatives -> report.

Every document is built here: multi-page PDFs with a text layer (fpdf2), an image-only PDF, a corrupt, an empty
(0 bytes), a zero-page and an encrypted PDF, a PNG and a 2-page TIFF. The pipeline runs once per module, with
the tiny offline Qwen3-VL mining the negatives, and the tests check its outputs against the documents built.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest
from fpdf import FPDF
from PIL import Image, ImageDraw

import prepare_vdr_data
from prepare_vdr_data import main, make_parser
from tests.helpers import REPO_ROOT
from vdr.errors import VdrError
from vdr.models.embedder import build_model
from vdr.models.loading import ModelLoadingArguments
from vdr.prepare.checks import validate_dataset
from vdr.prepare.documents import RenderSettings, document_id, pdf_scale, read_pages
from vdr.prepare.queries import (
    GenerationSettings,
    QueryStats,
    file_queries,
    filter_by_retrieval,
    load_prompt_template,
    parse_generation,
    vlm_queries,
)
from vdr.prepare.split import split_documents

TINY = "generated:tiny-qwen3-vl"
COMPANIES = ["Northwind", "Contoso", "Fabrikam", "Tailspin", "Litware", "Adatum"]
TOPICS = ["revenue", "headcount", "energy use", "carbon emissions", "customer count", "operating cost"]
# name -> pages, for the PDFs with a text layer
TEXT_PDFS = {"reports/northwind.pdf": 3, "reports/contoso.pdf": 4, "fabrikam.pdf": 2, "misc/tailspin.pdf": 3}
GOOD_PAGES = sum(TEXT_PDFS.values()) + 1 + 1 + 2  # + image-only PDF + PNG + 2-page TIFF
BAD_FILES = {"broken.pdf", "empty.pdf", "no-pages.pdf", "locked.pdf"}
# The tiny model is random: every page scores about the same, so any margin would leave no negatives.
FAST = ["--max_pixels", "36864", "--torch_dtype", "float32", "--encode_batch_size", "16", "--relative_margin", "-1"]


def write_text_pdf(path: Path, company: str, num_pages: int) -> None:
    pdf = FPDF(format="A4")
    pdf.set_font("helvetica", size=12)
    for page in range(num_pages):
        pdf.add_page()
        topic = TOPICS[(page + len(company)) % len(TOPICS)]
        # The first line repeats on every page (a running header): it must never become a query.
        pdf.multi_cell(0, 8, f"{company} annual report, page {page + 1}", new_x="LMARGIN", new_y="NEXT")
        pdf.multi_cell(
            0,
            8,
            f"In {2015 + page} the {topic} of {company} {['rose', 'fell', 'held'][page % 3]} to {17 * (page + 3)} "
            f"units across the {['northern', 'coastal', 'mountain', 'river'][page % 4]} division. "
            f"Auditors from {COMPANIES[(page + 2) % 6]} reviewed the ledger.",
            new_x="LMARGIN",
            new_y="NEXT",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))


def page_image(text: str, size=(600, 800)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((40, 40), text, fill="black")
    return image


def build_documents(folder: Path) -> Path:
    for (name, pages), company in zip(TEXT_PDFS.items(), COMPANIES):
        write_text_pdf(folder / name, company, pages)
    scan = folder / "scan.png"
    page_image("scanned invoice").save(scan)
    (folder / "scans").mkdir()
    image_only = FPDF()
    image_only.add_page()
    image_only.image(str(scan), x=10, y=10, w=150)
    image_only.output(str(folder / "scans" / "image-only.pdf"))
    frames = [page_image(f"fax page {i}") for i in range(2)]
    frames[0].save(folder / "scans" / "fax.tiff", save_all=True, append_images=frames[1:])
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 50)
    (folder / "empty.pdf").write_bytes(b"")
    pdfium.PdfDocument.new().save(str(folder / "no-pages.pdf"))
    locked = FPDF()
    locked.set_encryption(owner_password="owner", user_password="secret")
    locked.add_page()
    locked.set_font("helvetica")
    locked.cell(text="confidential")
    locked.output(str(folder / "locked.pdf"))
    (folder / "notes.txt").write_text("not a document")
    return folder


def run_prepare(*argv: str) -> dict:
    return main(*make_parser().parse(list(argv)))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, vdr_cache) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("prepare")
    docs = build_documents(root / "docs")
    out = root / "out"
    report = run_prepare(
        "--input_dir",
        str(docs),
        "--output_dir",
        str(out),
        "--model_name_or_path",
        TINY,
        "--num_negatives",
        "2",
        "--eval_fraction",
        "2",
        "--num_workers",
        "2",
        "--max_page_pixels",
        "250000",
        *FAST,
    )
    return docs, out, report


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pdf_page_count(path: Path) -> int:
    document = pdfium.PdfDocument(str(path))
    try:
        return len(document)
    finally:
        document.close()


# 1. Pages ------------------------------------------------------------------------------------------------------


def test_every_readable_page_is_rendered_within_the_pixel_budget(prepared):
    docs, out, _ = prepared
    pages = read_jsonl(out / "pages.jsonl")
    expected = {name: pdf_page_count(docs / name) for name in TEXT_PDFS}
    expected |= {"scans/image-only.pdf": 1, "scan.png": 1, "scans/fax.tiff": 2}
    assert Counter(page["source"] for page in pages) == expected
    assert len(pages) == GOOD_PAGES
    for page in pages:
        with Image.open(out / page["image"]) as image:
            assert image.size == (page["width"], page["height"])
            assert image.width * image.height <= 250_000
        assert page["document"] == document_id(page["source"])
        assert bool(page["text"].strip()) == (page["source"] in TEXT_PDFS)
    northwind = [page for page in pages if page["source"] == "reports/northwind.pdf"]
    assert [page["page"] for page in northwind] == [1, 2, 3]
    assert "Northwind annual report, page 2" in northwind[1]["text"]


def test_unreadable_files_are_skipped_with_their_reason(prepared):
    _, out, report = prepared
    skipped = json.loads((out / "skipped_files.json").read_text())
    assert set(skipped) == BAD_FILES
    assert "corrupt" in skipped["broken.pdf"]
    assert "empty" in skipped["empty.pdf"]
    assert "no pages" in skipped["no-pages.pdf"]
    assert "encrypted" in skipped["locked.pdf"]
    assert report["skipped_files"] == skipped
    assert report["files_found"] == len(TEXT_PDFS) + 3 + len(BAD_FILES)  # notes.txt is not a document


def test_rerun_reuses_rendered_pages(prepared):
    docs, out, _ = prepared
    before = {path: path.stat().st_mtime_ns for path in (out / "pages").rglob("*.png")}
    pages_file = (out / "pages.jsonl").read_text()
    run_prepare("--input_dir", str(docs), "--output_dir", str(out), "--steps", "pages", "--max_page_pixels", "250000")
    assert {path: path.stat().st_mtime_ns for path in (out / "pages").rglob("*.png")} == before
    assert (out / "pages.jsonl").read_text() == pages_file


def test_dpi_follows_the_pixel_budget():
    settings = RenderSettings(max_page_pixels=2_200_000, max_dpi=150)
    a4 = (595.28, 841.89)
    assert pdf_scale(*a4, settings) * 72 == pytest.approx(150)  # A4 at 150 DPI fits the default budget
    a0 = (2383.94, 3370.39)
    scale = pdf_scale(*a0, settings)
    assert scale * 72 < 60 and math.ceil(a0[0] * scale) * math.ceil(a0[1] * scale) <= 2_200_000


# 2. Queries ----------------------------------------------------------------------------------------------------


def test_text_layer_queries_are_distinctive_phrases_of_their_own_page(prepared):
    _, out, report = prepared
    pages = {page["image"]: page for page in read_jsonl(out / "pages.jsonl")}
    queries = read_jsonl(out / "queries.jsonl")
    assert len(queries) == sum(bool(page["text"].strip()) for page in pages.values())  # one per page with text
    for query in queries:
        assert query["query_source"] == "text-known-item"
        assert query["query"] in " ".join(pages[query["image"]]["text"].split())
        assert "annual report, page" not in query["query"]  # a running header is on every page: never a query
    stats = json.loads((out / "query_stats.json").read_text())
    assert stats["pages_without_text"] == 4 == report["query_generation"]["pages_without_text"]


def test_query_file_rows_resolve_to_pages_and_bad_rows_are_named(prepared, tmp_path):
    _, out, _ = prepared
    pages, skipped = read_pages(out)
    good = tmp_path / "queries.csv"
    good.write_text(
        "query,document,page\n"
        "northwind carbon,reports/northwind.pdf,1\n"  # by relative path
        "fabrikam energy,fabrikam.pdf,2\n"  # by file name
        f"fax two,{document_id('scans/fax.tiff')},2\n"  # by document id
        "locked secrets,locked.pdf,1\n"  # a skipped file: dropped and counted, not an error
    )
    rows, stats = file_queries(good, pages, skipped)
    assert [(row["document"], row["page"]) for row in rows] == [
        (document_id("reports/northwind.pdf"), 1),
        (document_id("fabrikam.pdf"), 2),
        (document_id("scans/fax.tiff"), 2),
    ]
    assert rows[2]["image"] == f"pages/{document_id('scans/fax.tiff')}/page-0002.png"
    assert stats.on_skipped_files == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"query": "fine", "document": "fabrikam.pdf", "page": 1}\n'
        '{"query": "", "document": "fabrikam.pdf", "page": 1}\n'
        '{"query": "no such page", "document": "fabrikam.pdf", "page": 9}\n'
        '{"query": "no page", "document": "fabrikam.pdf"}\n'
    )
    with pytest.raises(VdrError, match=r"3 bad row\(s\): line 2: empty query; line 3: no page 9 .*; line 4: no page"):
        file_queries(bad, pages, skipped)


def test_generation_parsing_counts_every_dropped_line():
    stats = QueryStats()
    generation = (
        "1. What was Contoso's revenue in 2019?\n\n- what was contoso's revenue in 2019?\nok\n\x07bad\x08 line here\n"
    )
    generation += '"Which division did the auditors review?"\nWho audited the ledger in 2016?\n'
    assert parse_generation(generation, 2, stats) == [
        "What was Contoso's revenue in 2019?",
        "Which division did the auditors review?",
    ]
    assert (stats.duplicates, stats.malformed, stats.surplus) == (1, 2, 1)  # "ok" is too short: malformed
    assert parse_generation("  \n", 2, stats) == [] and stats.empty_generations == 1


def test_vlm_queries_plumbing_on_the_tiny_model(prepared, tmp_path, monkeypatch):
    """The tiny model's generations are random tokens: this checks batching, caching and the counts, not quality."""
    _, out, _ = prepared
    pages = read_pages(out)[0][:3]
    for page in pages:  # a private copy of the pages: the generation cache is written next to them
        (tmp_path / page.image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / page.image, tmp_path / page.image)
    settings = GenerationSettings(TINY, 2, load_prompt_template(None), 2, 24, 36864, "float32", seed=0)
    rows, stats = vlm_queries(pages, tmp_path, settings)
    assert stats.generations == 3 and stats.kept == len(rows) <= 6
    assert stats.pages_without_query + len({row["image"] for row in rows}) == 3
    generations = read_jsonl(next((tmp_path / "cache").glob("vlm-generations-*.jsonl")))
    assert [row["image"] for row in generations] == [page.image for page in pages]
    recount = QueryStats()
    for row in generations:
        parse_generation(row["generation"], 2, recount)
    assert (recount.malformed, recount.duplicates, recount.empty_generations) == (
        stats.malformed,
        stats.duplicates,
        stats.empty_generations,
    )
    monkeypatch.setattr("vdr.prepare.queries._generate", lambda *args: pytest.fail("cached pages were generated again"))
    assert vlm_queries(pages, tmp_path, settings)[0] == rows


def test_retrieval_filter_keeps_queries_whose_page_ranks_in_the_top_k(prepared, tmp_path):
    _, out, _ = prepared
    pages = read_pages(out)[0]
    queries = read_jsonl(out / "queries.jsonl")
    model = build_model(TINY, ModelLoadingArguments(max_pixels=36864, torch_dtype="float32"))
    kept, dropped = filter_by_retrieval(queries, pages, model, 3, out, batch_size=16)
    # Independently: rank every page for every query with the model's own similarity.
    corpus = model.encode_document([str(out / page.image) for page in pages], batch_size=16)
    scores = model.similarity(model.encode_query([q["query"] for q in queries]), corpus)
    position = {page.image: index for index, page in enumerate(pages)}
    expected = [q for q, row in zip(queries, scores) if position[q["image"]] in row.topk(3).indices.tolist()]
    assert kept == expected and dropped == len(queries) - len(expected)
    assert filter_by_retrieval(queries, pages, model, len(pages), out, batch_size=16) == (queries, 0)


# 3-4. Split and hard negatives ---------------------------------------------------------------------------------


def test_split_is_by_document_and_deterministic(prepared):
    _, out, report = prepared
    split = json.loads((out / "split.json").read_text())
    assert len(split["eval"]) == 2 and not set(split["train"]) & set(split["eval"])
    train, evaluation = read_jsonl(out / "train.jsonl"), read_jsonl(out / "eval.jsonl")
    assert {row["document"] for row in train} <= set(split["train"])
    assert {row["document"] for row in evaluation} == set(split["eval"])
    assert report["split"]["eval_documents"] == 2
    documents = [f"doc{i}" for i in range(10)]
    first = split_documents(documents, set(documents), 0.3, seed=7)
    assert first == split_documents(list(reversed(documents)), set(documents), 0.3, seed=7)
    assert len(first[1]) == 3 and sorted(first[0] + first[1]) == sorted(documents)
    assert any(split_documents(documents, set(documents), 0.3, seed=seed) != first for seed in range(5))


def test_negatives_are_other_pages_of_the_same_side(prepared):
    _, out, _ = prepared
    split = json.loads((out / "split.json").read_text())
    document_of = {page["image"]: page["document"] for page in read_jsonl(out / "pages.jsonl")}
    for name in ("train", "eval"):
        for row in read_jsonl(out / f"{name}.jsonl"):
            negatives = [row["negative_0"], row["negative_1"]]
            assert row["image"] not in negatives and len(set(negatives)) == 2
            assert all(document_of[page] in split[name] for page in negatives)  # no page crosses the split
            assert (out / negatives[0]).is_file()


def test_excluding_same_document_negatives(prepared, tmp_path):
    _, out, _ = prepared
    copy = Path(shutil.copytree(out, tmp_path / "out"))
    report = run_prepare(
        "--output_dir",
        str(copy),
        "--steps",
        "negatives",
        "report",
        "--model_name_or_path",
        TINY,
        "--num_negatives",
        "2",
        "--exclude_negatives_from",
        "document",
        *FAST,
    )
    for name in ("train", "eval"):
        rows = read_jsonl(copy / f"{name}.jsonl")
        assert rows and all(not row["negative_0"].startswith(f"pages/{row['document']}/") for row in rows)
        assert report[name]["share_of_negatives_from_same_document"] == 0


# 5. Report and validation --------------------------------------------------------------------------------------


def test_report_counts(prepared):
    _, out, report = prepared
    assert report == json.loads((out / "report.json").read_text())
    pages = read_jsonl(out / "pages.jsonl")
    queries = read_jsonl(out / "queries.jsonl")
    assert (report["documents"], report["pages"], report["queries"]) == (7, GOOD_PAGES, len(queries))
    assert report["pages_with_text"] == sum(TEXT_PDFS.values())
    assert report["page_width"]["max"] == max(page["width"] for page in pages)
    assert report["query_words"]["median"] == statistics.median(len(q["query"].split()) for q in queries)
    document_of = {page["image"]: page["document"] for page in pages}
    for name in ("train", "eval"):
        rows = read_jsonl(out / f"{name}.jsonl")
        negatives = [(row["document"], row[f"negative_{k}"]) for row in rows for k in range(2)]
        same = sum(document == document_of[page] for document, page in negatives)
        assert report[name]["rows"] == len(rows)
        assert report[name]["share_of_negatives_from_same_document"] == pytest.approx(same / len(negatives), abs=1e-4)
    # Negatives were not limited (no margin, no exclusion), so every query became a row.
    assert report["train"]["rows"] + report["eval"]["rows"] == len(queries)


def test_validate_names_planted_problems_by_line(prepared, tmp_path, capfd):
    _, out, _ = prepared
    assert validate_dataset(out) == []
    rows = read_jsonl(out / "train.jsonl")[:3]
    for row in rows:
        for key in ("image", "negative_0", "negative_1"):
            row[key] = str(out / row[key])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    planted = [
        rows[0],
        {**rows[1], "query": "  "},  # line 2
        {**rows[1], "negative_1": str(tmp_path / "gone.png")},  # line 3
        {**rows[2], "negative_0": rows[2]["image"]},  # line 4
        rows[0],  # line 5: duplicate of line 1
        {k: v for k, v in rows[2].items() if k != "negative_1"},  # line 6: one negative fewer
        {**rows[2], "image": str(broken)},  # line 7
    ]
    dataset = tmp_path / "planted.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in planted))
    problems = validate_dataset(dataset)
    assert [problem.split(": ", 2)[1] for problem in problems] == [f"line {n}" for n in (2, 3, 4, 5, 7, 6)]
    joined = "\n".join(problems)
    for expected in (
        "line 2: empty query",
        f"line 3: column 'negative_1': missing image '{tmp_path / 'gone.png'}'",
        "line 4: negative equal to its positive (negative_0)",
        "line 5: duplicate of line 1",
        "line 6: 1 negatives where most rows have 2",
        f"line 7: column 'image': unreadable image '{broken}'",
    ):
        assert expected in joined
    with pytest.raises(SystemExit) as exit_info:
        prepare_vdr_data.cli(["prepare_vdr_data.py", "--validate", str(dataset)])
    out, err = capfd.readouterr()
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "6 problem(s)" in err and "line 4: negative equal to its positive" in out


def test_validate_a_beir_folder(prepared, tmp_path):
    _, out, _ = prepared
    beir = Path(shutil.copytree(out / "eval-beir", tmp_path / "eval-beir"))
    for part in ("corpus", "queries", "qrels"):  # corpus paths are relative: point them back at the real pages
        rows = read_jsonl(beir / f"{part}.jsonl")
        if part == "corpus":
            rows = [{**row, "image": str((out / "eval-beir" / row["image"]).resolve())} for row in rows]
            rows[1]["image"] = "missing.png"
        if part == "qrels":
            rows.append({"query-id": "q999", "corpus-id": rows[0]["corpus-id"], "score": 1})
        (beir / f"{part}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    problems = validate_dataset(beir)
    assert len(problems) == 2
    assert "corpus.jsonl: line 2: missing image" in problems[0]
    assert f"qrels.jsonl: line {len(rows)}: query-id 'q999' is not in queries.jsonl" in problems[1]


# The output trains and evaluates with the project's own scripts ------------------------------------------------


def test_train_vdr_trains_on_the_output_and_evaluate_vdr_scores_it(prepared, tmp_path):
    import evaluate_vdr
    import train_vdr

    _, out, _ = prepared
    train_vdr.main(
        *train_vdr.make_parser().parse(
            [
                "--model_name_or_path",
                TINY,
                "--train_dataset",
                str(out / "train.jsonl"),
                "--eval_dataset",
                str(out / "eval.jsonl"),
                *(
                    "--negative_columns negative_0 negative_1 --matryoshka_dims 64 32 --max_steps 2 "
                    "--per_device_train_batch_size 4 --max_pixels 36864 --torch_dtype float32 "
                    "--report_to none --dataloader_pin_memory false --output_dir"
                ).split(),
                str(tmp_path / "run"),
                "--save_strategy",
                "no",
            ]
        )
    )
    state = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(state["final"]) == {"64", "32"}
    result = evaluate_vdr.main(
        *evaluate_vdr.make_parser().parse(
            [
                "--model",
                str(tmp_path / "run"),
                "--dataset",
                str(out / "eval.jsonl"),
                "--dataset",
                str(out / "eval-beir"),
                *"--max_pixels 36864 --no_cache true --output_dir".split(),
                str(tmp_path / "evaluation"),
            ]
        )
    )
    split = json.loads((out / "split.json").read_text())
    eval_pages = [page for page in read_jsonl(out / "pages.jsonl") if page["document"] in split["eval"]]
    eval_rows = read_jsonl(out / "eval.jsonl")
    by_dataset = {record["dataset"]: record for record in result["records"] if record["dim"] == 64}
    assert by_dataset["eval-beir"]["num_documents"] == len(eval_pages)
    assert by_dataset["eval-beir"]["num_queries"] == len({row["query"] for row in eval_rows})
    assert by_dataset["eval.jsonl"]["num_documents"] == 3 * len(eval_rows)  # positive + 2 negatives per row
    assert all(0 <= record["metrics"]["ndcg@10"] <= 1 for record in by_dataset.values())


# Bad input: one clear paragraph, exit code 2 -------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------------
# Robustness: damaged caches, odd files, a killed run, and the text a baseline needs
# ---------------------------------------------------------------------------------------------------------------------


def test_a_csv_query_file_with_a_byte_order_mark_is_read(prepared, tmp_path):
    _, out, _ = prepared
    pages, skipped = read_pages(out)
    spreadsheet = tmp_path / "queries.csv"  # as Excel's "CSV UTF-8" writes it: a BOM before the header
    spreadsheet.write_bytes("query,document,page\nnorthwind carbon,reports/northwind.pdf,1\n".encode("utf-8-sig"))
    rows, _ = file_queries(spreadsheet, pages, skipped)
    assert [(row["query"], row["page"]) for row in rows] == [("northwind carbon", 1)]


def test_symlink_loops_and_dangling_links_are_skipped_with_their_reason(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    page_image("a page").save(docs / "good.png")
    (docs / "gone.pdf").symlink_to(docs / "deleted.pdf")  # dangling
    (docs / "loop.pdf").symlink_to(docs / "loop.pdf")  # points at itself
    (docs / "cycle").symlink_to(docs)  # a folder link back up the tree
    out = tmp_path / "out"
    run_prepare("--input_dir", str(docs), "--output_dir", str(out), "--steps", "pages", "--num_workers", "1")
    pages, skipped = read_pages(out)
    assert [page.source for page in pages] == ["good.png"]
    assert "link" in skipped["gone.pdf"] and "link" in skipped["loop.pdf"]


def test_a_truncated_mining_cache_is_rebuilt(prepared, tmp_path, caplog):
    _, out, _ = prepared
    copy = Path(shutil.copytree(out, tmp_path / "out"))
    # the query embeddings are reused by a re-run (the corpus's are keyed by the pages' paths, which the copy moved)
    cached = sorted((copy / "cache" / "mining").rglob("query_embeddings_*.npy"))
    assert cached
    cached[0].write_bytes(cached[0].read_bytes()[:100])  # what a kill mid-write or a full disk leaves
    steps = ["--steps", "negatives", "--num_negatives", "2", "--model_name_or_path", TINY, *FAST]
    with caplog.at_level("WARNING"):
        run_prepare("--output_dir", str(copy), *steps)
    assert "damaged" in caplog.text and str(cached[0]) in caplog.text
    assert read_jsonl(copy / "train.jsonl") == read_jsonl(out / "train.jsonl")  # the same negatives again
    assert np.load(cached[0]).ndim == 2  # rebuilt whole


def test_the_eval_sets_carry_each_pages_text_for_a_text_baseline(prepared):
    _, out, _ = prepared
    texts = {page.image: page.text for page in read_pages(out)[0]}
    for row in read_jsonl(out / "eval.jsonl"):
        assert row["image_text"] == texts[row["image"].removeprefix("./")]
        assert row["negative_0_text"] == texts[row["negative_0"].removeprefix("./")]
    corpus = read_jsonl(out / "eval-beir" / "corpus.jsonl")
    assert all(record["text"] == texts[record["corpus-id"]] for record in corpus)


def child_processes(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc: Linux)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; it only waits for its parent to collect it


def test_a_killed_run_leaves_no_worker_processes_behind(tmp_path, vdr_cache):
    docs = tmp_path / "docs"
    for index in range(6):  # enough pages to keep two render workers busy for a while
        write_text_pdf(docs / f"report-{index}.pdf", COMPANIES[index], 12)
    argv = ["--input_dir", str(docs), "--output_dir", str(tmp_path / "out"), "--steps", "pages", "--num_workers", "2"]
    env = {**os.environ, "VDR_CACHE": str(vdr_cache), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "prepare_vdr_data.py", *argv], cwd=REPO_ROOT, env=env)
    deadline, children = time.monotonic() + 60, set()
    while len(children) < 3 and time.monotonic() < deadline:  # two workers and multiprocessing's resource tracker
        time.sleep(0.2)
        children = child_processes(process.pid)
    assert len(children) >= 3, children
    process.send_signal(signal.SIGKILL)  # what the OOM killer does
    process.wait()
    deadline = time.monotonic() + 20
    while any(alive(child) for child in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [child for child in children if alive(child)]
