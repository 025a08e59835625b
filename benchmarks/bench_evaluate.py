"""Benchmark: what each part of evaluate_vdr's evaluation buys, one change at a time, on the same model and pages.

Steps, each changing one thing from the step before it:
  reference         one InformationRetrievalEvaluator per Matryoshka dim at batch size 1 (the write-up's final report)
  encode once       one encoding at full dimension, every dim scored from it (still batch size 1)
  batch 16          the same at --batch_size
  resize ahead      pages decoded and resized by us with the processor's own resize, then encoded (evaluate_vdr.py)
  + 2 threads       the same with the resizing done in 2 worker threads ahead of the encoder (removed from
                    evaluate_vdr.py: it did not pay on 2 CPU cores; re-created here so the figure stays measurable)
Then, for a second model with the same processor settings: its pages resized again vs taken from the pages the first
model resized (evaluate_vdr.py's ResizedPageCache); and train_vdr.py's one-time resize of its eval pages
(presize_corpus, one thread) against the same resize spread over 2 threads (removed: no faster on 2 CPU cores).

Usage (CPU, offline, a few minutes; --num_rows 2 --dims 64 is a smoke run of seconds):
    python benchmarks/bench_evaluate.py
    python benchmarks/bench_evaluate.py --num_rows 60 --max_pixels 102400 --batch_size 16

Pages are generated, then upscaled to A4 at 150 DPI (1240 x 1754), the size of a real rendered page, so that
decoding and resizing cost what they cost in practice. Speed does not depend on the weights, so a randomly
initialised model measures the same work as a trained one; on a GPU, build a full-size Qwen3-VL-2B
architecture from its config and pass its folder with --model.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

# Run as `python benchmarks/bench_evaluate.py` from a fresh clone: the project root is not on the import path then.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vdr.data.page_images import page_resizer, pixel_count  # noqa: E402
from vdr.data.retrieval_sets import RetrievalData  # noqa: E402
from vdr.evaluation.encoding import EncodingStats, ResizedPageCache, encode_full_dim, encode_pages  # noqa: E402
from vdr.evaluation.metrics import score_dims  # noqa: E402
from vdr.models.embedder import build_model  # noqa: E402
from vdr.models.loading import ModelLoadingArguments  # noqa: E402
from vdr.offline.generated_pages import generate_rows  # noqa: E402
from vdr.offline.tiny_model import TINY_MODEL_ID  # noqa: E402
from vdr.training.evaluators import build_ir_evaluator, presize_corpus  # noqa: E402

A4_150_DPI = (1240, 1754)


@dataclass
class Counters:
    """Work done inside the model's processor (preprocessing) and its forward pass (encoding)."""

    pages_preprocessed: int = 0
    pages_encoded: int = 0


@contextmanager
def instrumented(model, counters: Counters):
    """Count the pages that go through ``model``'s processor and its forward pass."""
    transformer = model[0]
    original_preprocess, original_forward = transformer.preprocess, model.forward

    def preprocess(inputs, *args, **kwargs):
        counters.pages_preprocessed += sum(isinstance(item, Image.Image) for item in inputs)
        return original_preprocess(inputs, *args, **kwargs)

    def forward(features, *args, **kwargs):
        if "image_grid_thw" in features:
            counters.pages_encoded += len(features["image_grid_thw"])
        return original_forward(features, *args, **kwargs)

    transformer.preprocess, model.forward = preprocess, forward
    try:
        yield counters
    finally:
        transformer.preprocess, model.forward = original_preprocess, original_forward


def a4_page_set(num_rows: int, seed: int) -> tuple[dict, dict[int, bytes], dict]:
    """Queries, pages as PNG bytes at A4 150-DPI size, and qrels, in the reference recipe's id layout."""
    rows = generate_rows(num_rows, seed=seed)
    queries = {i: row["query"] for i, row in enumerate(rows)}
    corpus = {i: _png(row["image"]) for i, row in enumerate(rows)}
    for k in range(4):
        corpus.update({num_rows * (k + 1) + i: _png(row[f"negative_{k}"]) for i, row in enumerate(rows)})
    return queries, corpus, {i: {i: 1.0} for i in range(num_rows)}


def _png(page: Image.Image) -> bytes:
    buffer = io.BytesIO()
    page.resize(A4_150_DPI, Image.BICUBIC).save(buffer, format="PNG")
    return buffer.getvalue()


def fresh(queries: dict, corpus: dict[int, bytes], qrels: dict) -> RetrievalData:
    """Pages opened lazily from their bytes (as datasets does): each step pays for its own decoding."""
    return RetrievalData(queries, {cid: Image.open(io.BytesIO(png)) for cid, png in corpus.items()}, qrels)


@dataclass
class Step:
    name: str
    seconds: float
    cpu_seconds: float  # of every thread of this process: steadier than wall time on a shared machine
    counters: Counters
    ndcg: dict[int, float]


def timed(name: str, model, run: Callable[[], dict[int, float]]) -> Step:
    counters = Counters()
    start, cpu_start = time.perf_counter(), time.process_time()
    with instrumented(model, counters):
        ndcg = run()
    return Step(name, time.perf_counter() - start, time.process_time() - cpu_start, counters, ndcg)


def reference(model, data: RetrievalData, dims: list[int]) -> dict[int, float]:
    """One evaluator per dimension, batch size 1, as the write-up's final report does."""
    results = {}
    for dim in dims:
        evaluator = build_ir_evaluator(data, f"ref-{dim}", batch_size=1, truncate_dim=dim, show_progress_bar=False)
        results[dim] = evaluator(model)[f"ref-{dim}_cosine_ndcg@10"]
    return results


def encode_once(model, data: RetrievalData, dims: list[int], batch_size: int, encode_corpus=None) -> dict[int, float]:
    """Queries and pages encoded once at full dimension; every dim scored from those embeddings."""
    queries = encode_full_dim(model, list(data.queries.values()), "query", batch_size, show_progress_bar=False)
    pages = list(data.corpus.values())
    corpus = (encode_corpus or (lambda: encode_full_dim(model, pages, "document", batch_size, False)))()
    return {dim: values["ndcg@10"] for dim, values in score_dims(model, queries, corpus, data, dims).items()}


def resized_ahead(model, pages: list, batch_size: int, page_cache: ResizedPageCache) -> torch.Tensor:
    """evaluate_vdr.py's page encoding: each batch decoded and resized by us (main thread), then encoded."""
    return encode_pages(model, pages, batch_size, page_cache, "bench", EncodingStats(), show_progress_bar=False)


def resized_in_threads(model, pages: list, batch_size: int, workers: int) -> torch.Tensor:
    """The removed design: worker threads resize pages (largest first) ahead of the encoder, which takes them in
    batches as they come."""
    _, resize = page_resizer(model)
    order = sorted(range(len(pages)), key=lambda i: -pixel_count(pages[i]))
    embeddings: list[torch.Tensor | None] = [None] * len(pages)
    with ThreadPoolExecutor(workers) as pool:
        resized = pool.map(resize, [pages[i] for i in order])  # runs ahead while the main thread encodes
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = [next(resized) for _ in indices]
            for index, vector in zip(indices, encode_full_dim(model, batch, "document", batch_size, False)):
                embeddings[index] = vector
    return torch.stack(embeddings)


def resize_all_in_threads(resize: Callable, pages: list, workers: int) -> list:
    """The removed design of presize_corpus: every page resized by a pool of threads."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(resize, pages))


def report(step: Step, before: Step | None) -> None:
    versus = f"{before.seconds / step.seconds:5.2f}x faster than {before.name}" if before else ""
    print(
        f"{step.name:>18}: {step.seconds:6.1f} s wall, {step.cpu_seconds:6.1f} s CPU | page encodings "
        f"{step.counters.pages_encoded:5d} | through the processor {step.counters.pages_preprocessed:5d} | {versus}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=TINY_MODEL_ID, help="Model to benchmark (default: the tiny offline one).")
    parser.add_argument("--num_rows", type=int, default=40, help="Queries; the corpus has 5 pages per query.")
    parser.add_argument("--max_pixels", type=int, default=320 * 320, help="Processor max_pixels.")
    parser.add_argument(
        "--dims", type=int, nargs="+", default=[64, 48, 32, 24, 16, 12, 8], help="7 dims, as the recipe."
    )
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="Threads of the '+ threads' and presize steps.")
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 on a GPU")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_model(args.model, ModelLoadingArguments(max_pixels=args.max_pixels, torch_dtype=args.dtype))
    page_set = a4_page_set(args.num_rows, seed=11)
    num_pages, batch, dims = len(page_set[1]), args.batch_size, args.dims
    print(f"{args.model} on {model.device}: {args.num_rows} queries, {num_pages} A4 pages, dims {dims}")

    def pages_of(data: RetrievalData) -> list:
        return list(data.corpus.values())

    steps: list[Step] = []
    for name, run in [
        ("reference", lambda data: reference(model, data, dims)),
        ("encode once", lambda data: encode_once(model, data, dims, 1)),
        (f"batch {batch}", lambda data: encode_once(model, data, dims, batch)),
        (
            "resize ahead",
            lambda data: encode_once(
                model, data, dims, batch, lambda: resized_ahead(model, pages_of(data), batch, ResizedPageCache(0))
            ),
        ),
        (
            f"+ {args.workers} threads",
            lambda data: encode_once(
                model, data, dims, batch, lambda: resized_in_threads(model, pages_of(data), batch, args.workers)
            ),
        ),
    ]:
        steps.append(timed(name, model, lambda run=run: run(fresh(*page_set))))
        report(steps[-1], steps[-2] if len(steps) > 1 else None)
    worst = max(abs(steps[0].ndcg[d] - step.ndcg[d]) for step in steps for d in dims)
    print(f"NDCG@10 by dim (max difference from the reference over all steps: {worst:.2e}):")
    print("  " + "  ".join(f"{d}: {steps[0].ndcg[d]:.4f}" for d in dims))
    print(f"evaluate_vdr.py's path (resize ahead) vs the reference: {steps[0].seconds / steps[3].seconds:.1f}x faster")

    print("\nA second model with the same processor settings (page encoding only):")
    for name, budget in (("resized again", 0), ("resized pages kept", 4 << 30)):
        page_cache = ResizedPageCache(budget)
        resized_ahead(model, pages_of(fresh(*page_set)), batch, page_cache)  # the first model
        second = timed(
            name, model, lambda cache=page_cache: resized_ahead(model, pages_of(fresh(*page_set)), batch, cache)
        )
        report(second, None)

    print("\ntrain_vdr.py's one-time resize of its eval pages:")
    _, resize = page_resizer(model)
    for name, resize_all in [
        ("presize_corpus", lambda data: presize_corpus(model, data)),
        (f"{args.workers} threads", lambda data: resize_all_in_threads(resize, pages_of(data), args.workers)),
    ]:
        start, cpu_start = time.perf_counter(), time.process_time()
        resize_all(fresh(*page_set))
        print(f"{name:>18}: {time.perf_counter() - start:6.1f} s wall, {time.process_time() - cpu_start:6.1f} s CPU")


if __name__ == "__main__":
    main()
