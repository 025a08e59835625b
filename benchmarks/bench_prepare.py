"""Benchmark: prepare_vdr_data.py's page rendering (1 vs 2 processes) and hard-negative mining, and where time goes.

Usage (CPU, offline, about a minute):
    python benchmarks/bench_prepare.py
    python benchmarks/bench_prepare.py --num_documents 16 --pages_per_document 12 --max_pixels 36864

PDFs are built here (fpdf2): A4 pages of text with a drawn table and bar chart, rendered at the default budget
(A4 at 150 DPI, 1240 x 1754). Mining uses the tiny offline Qwen3-VL: speed does not depend on the weights, but a
real 2B model's forward pass costs far more per page than the tiny one's, so the mining rate here is an upper
bound for the preprocessing share, not a prediction for Qwen3-VL-Embedding-2B.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a fresh clone, without installing

from fpdf import FPDF  # noqa: E402

from vdr.prepare.documents import RenderSettings, render_documents  # noqa: E402


def build_pdfs(folder: Path, num_documents: int, pages_per_document: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = "revenue cost margin region division audit ledger forecast energy customers growth quarter".split()
    for doc in range(num_documents):
        pdf = FPDF(format="A4")
        pdf.set_font("helvetica", size=10)
        for page in range(pages_per_document):
            pdf.add_page()
            pdf.set_font("helvetica", "B", 16)
            pdf.cell(0, 10, f"Report {doc} - section {page + 1}", new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("helvetica", size=10)
            for _ in range(12):
                sentence = " ".join(rng.choice(words) for _ in range(14)).capitalize() + f" {rng.randint(1, 999)}."
                pdf.multi_cell(0, 5, sentence, new_x="LMARGIN", new_y="NEXT")
            for _ in range(6):  # a table
                for _ in range(4):
                    pdf.cell(40, 7, f"{rng.randint(10, 9999)}", border=1)
                pdf.ln()
            top = pdf.get_y() + 5
            for bar in range(10):  # a bar chart
                height = rng.uniform(5, 60)
                pdf.set_fill_color(rng.randint(0, 255), 90, 160)
                pdf.rect(20 + bar * 16, top + 60 - height, 10, height, style="F")
        pdf.output(str(folder / f"report-{doc:02d}.pdf"))


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool's workers, once it has shut down)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_rendering(docs: Path, workers: int, settings: RenderSettings) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (over all processes) and pages rendered."""
    out = Path(tempfile.mkdtemp(prefix=f"bench-render-{workers}-"))
    try:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        pages, _ = render_documents(docs, out, settings, workers)
        return time.perf_counter() - start, cpu_seconds() - cpu_start, len(pages)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def rendering_breakdown(pdf_path: Path, settings: RenderSettings) -> dict[str, float]:
    """Seconds per page, one process: pdfium rasterising, the bitmap -> PIL copy, PNG encoding, the text layer."""
    import pypdfium2 as pdfium

    from vdr.prepare.documents import pdf_scale

    totals = dict.fromkeys(["open", "rasterise", "to_pil", "png_encode", "text_layer"], 0.0)
    start = time.perf_counter()
    document = pdfium.PdfDocument(str(pdf_path))
    totals["open"] = time.perf_counter() - start
    for index in range(len(document)):
        page = document[index]
        scale = pdf_scale(*page.get_size(), settings)
        t0 = time.perf_counter()
        bitmap = page.render(scale=scale, rev_byteorder=True)  # as vdr.prepare.documents renders
        t1 = time.perf_counter()
        image = bitmap.to_pil()
        t2 = time.perf_counter()
        image.save(io.BytesIO(), format="PNG", compress_level=1)
        t3 = time.perf_counter()
        page.get_textpage().get_text_range()
        t4 = time.perf_counter()
        totals["rasterise"] += t1 - t0
        totals["to_pil"] += t2 - t1
        totals["png_encode"] += t3 - t2
        totals["text_layer"] += t4 - t3
    pages = len(document)
    document.close()
    return {name: seconds / pages for name, seconds in totals.items()}


def time_mining(docs: Path, max_pixels: int | None) -> dict[str, float]:
    """The queries -> split -> negatives steps on rendered pages, with the time of their parts."""
    from prepare_vdr_data import main, make_parser
    from vdr.models.embedder import build_model
    from vdr.models.loading import ModelLoadingArguments
    from vdr.prepare.documents import read_pages

    out = Path(tempfile.mkdtemp(prefix="bench-mine-"))
    pixels = ["--max_pixels", str(max_pixels)] if max_pixels else []
    common = ["--output_dir", str(out), "--model_name_or_path", "generated:tiny-qwen3-vl", "--torch_dtype", "float32"]
    try:
        main(*make_parser().parse(["--input_dir", str(docs), *common, "--steps", "pages", "queries", "split"]))
        pages = read_pages(out)[0]
        start = time.perf_counter()
        loading = ModelLoadingArguments(torch_dtype="float32", max_pixels=max_pixels)
        model = build_model("generated:tiny-qwen3-vl", loading)
        load = time.perf_counter() - start
        paths = [str(out / page.image) for page in pages]
        start = time.perf_counter()
        for first in range(0, len(paths), 8):
            model.preprocess(paths[first : first + 8])  # decode + resize + processor: no forward pass
        preprocess = time.perf_counter() - start
        start = time.perf_counter()
        model.encode_document(paths, batch_size=8, show_progress_bar=False)
        encode = time.perf_counter() - start
        start = time.perf_counter()
        main(*make_parser().parse([*common, *pixels, "--steps", "negatives", "--relative_margin", "-1"]))
        mining = time.perf_counter() - start
        return {
            "pages": len(pages),
            "mining_step_seconds": mining,
            "model_load_seconds": load,
            "page_encoding_seconds": encode,
            "page_preprocessing_seconds": preprocess,
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_documents", type=int, default=8)
    parser.add_argument("--pages_per_document", type=int, default=12)
    parser.add_argument("--max_pixels", type=int, default=None, help="Mining model's max_pixels (default: its own).")
    args = parser.parse_args()
    settings = RenderSettings()
    docs = Path(tempfile.mkdtemp(prefix="bench-docs-"))
    try:
        build_pdfs(docs, args.num_documents, args.pages_per_document)
        print(f"{args.num_documents} PDFs x {args.pages_per_document} A4 pages, budget {settings.max_page_pixels:,} px")
        print(
            f"CPU cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f} (other work slows both runs)"
        )
        rates = {}
        for workers in (1, 2):
            seconds, cpu, pages = time_rendering(docs, workers, settings)
            rates[workers] = pages / seconds
            print(
                f"rendering, {workers} process(es): {pages} pages in {seconds:.1f} s = {rates[workers]:.1f} pages/s "
                f"(CPU busy {cpu / seconds:.0%} of one core)"
            )
        print(f"speed-up with 2 processes: {rates[2] / rates[1]:.2f}x")
        parts = rendering_breakdown(next(iter(sorted(docs.glob("*.pdf")))), settings)
        total = sum(parts.values())
        print(
            "per page, one process: "
            + ", ".join(f"{name} {1000 * value:.1f} ms ({value / total:.0%})" for name, value in parts.items())
        )
        mining = time_mining(docs, args.max_pixels)
        pages = mining["pages"]
        print(
            f"mining (tiny model, queries from the text layer): {pages} pages in {mining['mining_step_seconds']:.1f} s "
            f"= {pages / mining['mining_step_seconds']:.1f} pages/s (step total: model load, page + query encoding, "
            "search)"
        )
        print(
            f"  of which, measured apart: model load {mining['model_load_seconds']:.1f} s, encoding every page "
            f"{mining['page_encoding_seconds']:.1f} s, of which preprocessing (decode + resize + processor) "
            f"{mining['page_preprocessing_seconds']:.1f} s "
            f"({mining['page_preprocessing_seconds'] / mining['page_encoding_seconds']:.0%})"
        )
    finally:
        shutil.rmtree(docs, ignore_errors=True)


if __name__ == "__main__":
    main()
