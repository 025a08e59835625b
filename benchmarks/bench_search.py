"""Benchmark: search_vdr.py's index, how fast it is built and how fast (and how exactly) it answers.

1. Indexing: the generated pages indexed by the tiny model (search_vdr.py index --dataset generated:pages), pages per
   second, and the share of the time spent encoding (decode, resize, model) against writing (quantize, LanceDB).
2. Queries: synthetic unit vectors (what a model's normalised page embeddings are) written as an index's table, at
   each size and setting (2048 float32, 256 float32, 2048 binary with float rescoring), searched through
   PageIndex.search: latency p50 / p95 of an exact scan and of LanceDB's ANN index, and the ANN's recall@10 against
   the exact scan. Pages come in clusters of 10 (a random centre plus noise) and each query is a page's vector plus
   noise, so a query's true top 10 is its page's cluster, clearly apart from the rest (on uniformly random vectors
   the 2nd to 10th neighbours are near-ties, and recall against them measures nothing).

Usage (CPU, offline):
    python benchmarks/bench_search.py --sizes 10000 100000            # about 10 minutes on 2 cores
    python benchmarks/bench_search.py --sizes 1000 --queries 20 --index_pages 0   # smoke run, seconds

A size whose table would not fit the --max_gb budget is skipped and said so.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Run as `python benchmarks/bench_search.py` from a fresh clone: the project root is not on the import path then.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import search_vdr  # noqa: E402
from vdr.search.index import (  # noqa: E402
    IndexSettings,
    PageIndex,
    create_ann_index,
    page_vectors,
    rows_table,
    table_schema,
)
from vdr.search.pages import IndexPage  # noqa: E402

#: (label, dim, precision); the ANN index is --float_ann for float32, ivf_flat (Hamming) for binary.
SETTINGS = (("2048 float32", 2048, "float32"), ("256 float32", 256, "float32"), ("2048 binary", 2048, "binary"))
#: Pages per synthetic cluster: a query's true top 10 is its page's cluster, clearly apart from every other page.
CLUSTER = 10
WRITE_ROWS = 20_000


def bench_indexing(pages: int, folder: Path) -> None:
    rows = max(1, pages // 5)
    argv = [
        "index",
        "--index",
        str(folder / "tiny"),
        "--model",
        "generated:tiny-qwen3-vl",
        "--dataset",
        "generated:pages",
        "--num_generated_rows",
        str(rows),
        "--max_pixels",
        "36864",
    ]
    search_vdr.main(*search_vdr.make_parser().parse(argv))  # writes the pages and builds the model (once)
    shutil.rmtree(folder / "tiny")
    start = time.perf_counter()
    stats = search_vdr.main(*search_vdr.make_parser().parse(argv))["stats"]
    wall = time.perf_counter() - start
    work = stats.encode_seconds + stats.write_seconds
    print(
        f"| indexing | {stats.encoded} pages | {stats.encoded / wall:.1f} pages/s (wall, incl. loading the model) | "
        f"{stats.encoded / work:.1f} pages/s encoding + writing | encoding {stats.encode_seconds:.1f} s "
        f"({stats.encode_seconds / work:.1%}), writing {stats.write_seconds:.2f} s ({stats.write_seconds / work:.1%}) |"
    )


def unit(array: np.ndarray) -> np.ndarray:
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def synthetic_index(folder: Path, size: int, dim: int, precision: str, rng: np.random.Generator) -> PageIndex:
    """An index of ``size`` unit vectors in clusters of ``CLUSTER`` (each a random centre plus noise), written in
    blocks (never all in memory as float32 at 1M x 2048)."""
    settings = IndexSettings("synthetic", "synthetic", {}, dim, dim, precision)
    schema, index = table_schema(settings), None
    for start in range(0, size, WRITE_ROWS):
        count = min(WRITE_ROWS, size - start)
        centres = np.repeat(unit(rng.standard_normal((count // CLUSTER + 1, dim), dtype=np.float32)), CLUSTER, 0)
        noise = rng.standard_normal((count, dim), dtype=np.float32) * (0.7 / np.sqrt(dim))
        vectors = torch.from_numpy(unit(centres[:count] + noise))
        pages = [IndexPage(f"p{i}/1", f"p{i}", 1, "", "") for i in range(start, start + count)]
        rows = rows_table(pages, page_vectors(vectors, settings), schema)
        if index is None:
            index = PageIndex.create(str(folder), settings, rows)
        else:
            index.add(rows)
    return index


def queries_near_pages(index: PageIndex, count: int, rng: np.random.Generator, noise: float = 0.5) -> list:
    """Stored pages' vectors plus Gaussian noise (norm ``noise`` relative to the unit page vector), renormalised."""
    picks = ", ".join(f"'p{i}/1'" for i in rng.choice(len(index), size=count, replace=False))
    rows = index.table.search().where(f"id IN ({picks})").select(["vector"]).limit(None).to_arrow()["vector"]
    dim = index.settings.dim
    queries = []
    for row in rows.to_pylist():
        stored = np.asarray(row, dtype=np.float32)
        base = (
            np.unpackbits(stored.astype(np.uint8))[:dim] * 2.0 - 1 if index.settings.precision == "binary" else stored
        )
        base = base / np.linalg.norm(base)
        queries.append(torch.from_numpy(unit((base + noise * rng.standard_normal(dim) / np.sqrt(dim))[None])[0]))
    return queries


def timed_search(index: PageIndex, queries: list, **options) -> tuple[list[list[str]], np.ndarray]:
    index.search(queries[0], 10, **options)  # warm the caches
    ids, times = [], []
    for query in queries:
        start = time.perf_counter()
        hits = index.search(query, 10, **options)
        times.append(time.perf_counter() - start)
        ids.append([hit["id"] for hit in hits])
    return ids, np.asarray(times) * 1000


def bench_queries(size: int, label: str, dim: int, precision: str, folder: Path, args) -> None:
    ann = args.float_ann if precision == "float32" else "ivf_flat"
    bytes_needed = size * (dim / 8 if precision == "binary" else 4 * dim)
    if bytes_needed > args.max_gb * 1e9:
        print(f"| {size:,} | {label} | skipped: {bytes_needed / 1e9:.1f} GB of vectors, over --max_gb {args.max_gb} |")
        return
    rng = np.random.default_rng(size + dim)
    start = time.perf_counter()
    index = synthetic_index(folder / f"{size}-{dim}-{precision}", size, dim, precision, rng)
    write_seconds = time.perf_counter() - start
    queries = queries_near_pages(index, args.queries, rng)
    exact_ids, exact_ms = timed_search(index, queries)
    start = time.perf_counter()
    create_ann_index(index, ann)
    build_seconds = time.perf_counter() - start
    ann_ids, ann_ms = timed_search(index, queries, nprobes=args.nprobes, refine=args.refine_factor)
    recall = np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(ann_ids, exact_ids)])
    print(
        f"| {size:,} | {label} | {write_seconds:.0f} s | exact {np.percentile(exact_ms, 50):.1f} / "
        f"{np.percentile(exact_ms, 95):.1f} ms | {ann}: built in {build_seconds:.0f} s, "
        f"{np.percentile(ann_ms, 50):.1f} / {np.percentile(ann_ms, 95):.1f} ms | {recall:.3f} |",
        flush=True,
    )
    shutil.rmtree(index.uri, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=100, help="Queries per setting (latency and recall).")
    parser.add_argument("--index_pages", type=int, default=160, help="Generated pages to index (0: skip that part).")
    parser.add_argument("--only", nargs="+", default=None, help="Settings to run, e.g. '256 float32'.")
    parser.add_argument("--float_ann", default="ivf_flat", choices=["ivf_flat", "ivf_pq", "ivf_hnsw_sq"])
    parser.add_argument("--nprobes", type=int, default=20)
    parser.add_argument("--refine_factor", type=int, default=4)
    parser.add_argument("--max_gb", type=float, default=4.0, help="Largest table of vectors to write.")
    parser.add_argument("--folder", default=None, help="Where the tables go (default: a temporary folder).")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="bench-search-"))
    torch.set_num_threads(2)
    if args.index_pages:
        bench_indexing(args.index_pages, folder)
    print("| pages | setting | write | exact scan p50 / p95 | ANN index p50 / p95 | ANN recall@10 vs exact |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        for label, dim, precision in SETTINGS:
            if not args.only or label in args.only:
                bench_queries(size, label, dim, precision, folder, args)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
