"""Benchmark: evaluate_vdr's evaluation against the reference recipe's, on the same model and pages.

The reference approach (the write-up's final report) runs one InformationRetrievalEvaluator per Matryoshka
dimension at batch size 1: every evaluator re-preprocesses and re-encodes the whole corpus. Ours encodes the
corpus once, at full dimension, resizes each page once (in worker threads, overlapped with encoding) and
scores every dimension by truncation. Both report the same metrics; this prints how long each took, how many
page encodings and preprocessings each did, and the share of time spent preprocessing vs encoding.

Usage (CPU, offline, a few minutes):
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
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image

from vdr.config import ModelArguments
from vdr.data import RetrievalData
from vdr.evaluation import EmbeddingCache, PagePreprocessor, build_ir_evaluator, embed_dataset, score_dims
from vdr.model import build_model
from vdr.pages import generate_rows
from vdr.tiny_model import TINY_MODEL_ID

A4_150_DPI = (1240, 1754)


@dataclass
class Counters:
    """Work done inside the model's processor (preprocessing) and its forward pass (encoding)."""

    pages_preprocessed: int = 0
    pages_encoded: int = 0
    preprocess_seconds: float = 0.0
    encode_seconds: float = 0.0


@contextmanager
def instrumented(model, counters: Counters):
    """Count and time page preprocessing (processor calls) and encoding (forward passes) of ``model``."""
    transformer = model[0]
    original_preprocess, original_forward = transformer.preprocess, model.forward

    def preprocess(inputs, *args, **kwargs):
        start = time.perf_counter()
        features = original_preprocess(inputs, *args, **kwargs)
        counters.preprocess_seconds += time.perf_counter() - start
        counters.pages_preprocessed += sum(isinstance(item, Image.Image) for item in inputs)
        return features

    def forward(features, *args, **kwargs):
        start = time.perf_counter()
        output = original_forward(features, *args, **kwargs)
        counters.encode_seconds += time.perf_counter() - start
        if "image_grid_thw" in features:
            counters.pages_encoded += len(features["image_grid_thw"])
        return output

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
    """Pages opened lazily from their bytes (as datasets does): each approach pays for its own decoding."""
    return RetrievalData(queries, {cid: Image.open(io.BytesIO(png)) for cid, png in corpus.items()}, qrels)


def reference(model, data: RetrievalData, dims: list[int]) -> tuple[float, Counters, dict]:
    """One evaluator per dimension, batch size 1, as the write-up's final report does."""
    counters, results = Counters(), {}
    start = time.perf_counter()
    with instrumented(model, counters):
        for dim in dims:
            evaluator = build_ir_evaluator(data, f"ref-{dim}", batch_size=1, truncate_dim=dim, show_progress_bar=False)
            results[dim] = evaluator(model)[f"ref-{dim}_cosine_ndcg@10"]
    return time.perf_counter() - start, counters, results


def ours(model, data: RetrievalData, dims: list[int], batch_size: int, workers: int) -> tuple[float, Counters, dict]:
    """One encoding at full dimension, pages resized once in worker threads, every dim by truncation."""
    counters = Counters()
    start = time.perf_counter()
    with instrumented(model, counters):
        embeddings = embed_dataset(model, data, batch_size, PagePreprocessor(workers), EmbeddingCache(None), {})
        scores = score_dims(model, embeddings.queries, embeddings.corpus, data, dims)
    seconds = time.perf_counter() - start
    # our own page resizing happens in worker threads, outside the processor: count it as preprocessing
    counters.preprocess_seconds += embeddings.stats.preprocess_seconds
    return seconds, counters, {dim: values["ndcg@10"] for dim, values in scores.items()}


def report(name: str, seconds: float, counters: Counters) -> None:
    # Preprocessing and encoding seconds are summed over threads: ours overlaps them, so they exceed wall time.
    busy = counters.preprocess_seconds + counters.encode_seconds
    print(
        f"{name:>10}: {seconds:6.1f} s wall | page encodings {counters.pages_encoded:5d} | page preprocessings "
        f"{counters.pages_preprocessed:5d} | preprocessing {counters.preprocess_seconds:6.1f} s "
        f"({100 * counters.preprocess_seconds / busy:4.1f}%) vs encoding {counters.encode_seconds:6.1f} s "
        f"({100 * counters.encode_seconds / busy:4.1f}%) | {counters.pages_encoded / seconds:.1f} pages/s"
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
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 on a GPU")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_model(
        ModelArguments(model_name_or_path=args.model, max_pixels=args.max_pixels, torch_dtype=args.dtype)
    )
    page_set = a4_page_set(args.num_rows, seed=11)
    num_pages = len(page_set[1])
    print(f"{args.model} on {model.device}: {args.num_rows} queries, {num_pages} A4 pages, dims {args.dims}")

    ref_seconds, ref_counters, ref_ndcg = reference(model, fresh(*page_set), args.dims)
    our_seconds, our_counters, our_ndcg = ours(model, fresh(*page_set), args.dims, args.batch_size, args.workers)
    report("reference", ref_seconds, ref_counters)
    report("ours", our_seconds, our_counters)
    print(f"ours resized each of the {num_pages} pages once, in worker threads, before the processor saw it")
    worst = max(abs(ref_ndcg[d] - our_ndcg[d]) for d in args.dims)
    print(f"NDCG@10 by dim, reference vs ours (max difference {worst:.2e}):")
    print("  " + "  ".join(f"{d}: {ref_ndcg[d]:.4f}/{our_ndcg[d]:.4f}" for d in args.dims))
    print(f"speed-up: {ref_seconds / our_seconds:.1f}x ({ref_seconds:.1f} s -> {our_seconds:.1f} s)")


if __name__ == "__main__":
    main()
