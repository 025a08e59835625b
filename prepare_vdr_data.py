"""Turn a folder of your own PDFs (or page scans) into train and eval sets for train_vdr.py and evaluate_vdr.py.

Steps, each resumable and usable on its own (it reads the previous step's files from --output_dir):
pages (render every page) -> queries (text layer, a VLM, or your file) -> split (by document) -> negatives
(mined with Sentence Transformers' mine_hard_negatives) -> report (printed and report.json).

Usage:
    # Offline smoke run: text-layer queries, the tiny random model mines (the negatives mean nothing)
    python prepare_vdr_data.py --input_dir my-documents/ --output_dir data/my-docs \\
        --model_name_or_path generated:tiny-qwen3-vl --max_pixels 36864

    # Real run: queries written by an instruct VLM, negatives mined by the model you will finetune
    python prepare_vdr_data.py --input_dir my-documents/ --output_dir data/my-docs --queries vlm \\
        --query_model Qwen/Qwen3-VL-2B-Instruct --queries_per_page 2 --max_pixels 360000 --torch_dtype bfloat16

    # Your own queries (JSON-lines or CSV of query, document, page), then only some steps
    python prepare_vdr_data.py --input_dir my-documents/ --output_dir data/my-docs --queries file --queries_file q.csv
    python prepare_vdr_data.py --output_dir data/my-docs --steps negatives report --num_negatives 2

    # Check a dataset (this script's output folder, a rows file, or a BEIR folder); exit code 2 names bad rows
    python prepare_vdr_data.py --validate data/my-docs
"""

from __future__ import annotations

import json
import logging
import os
import sys
from functools import cache
from pathlib import Path
from typing import Any

from vdr.cli import ConfigParser, configure_logging, create_folder, run_cli
from vdr.errors import VdrError
from vdr.models.loading import ModelLoadingArguments
from vdr.prepare.arguments import PrepareArguments, check_prepare_run
from vdr.prepare.checks import build_report, format_report, validate_dataset
from vdr.prepare.documents import PageRecord, RenderSettings, check_some_pages, read_pages, render_documents
from vdr.prepare.negatives import MiningStats, mine_negatives, mining_cache_folder, write_rows
from vdr.prepare.output_files import (
    MINING_STATS_FILE,
    QUERIES_FILE,
    QUERY_STATS_FILE,
    read_jsonl,
    read_queries,
    save_json,
    write_jsonl,
)
from vdr.prepare.queries import (
    GenerationSettings,
    QueryStats,
    check_some_queries,
    file_queries,
    filter_by_retrieval,
    load_prompt_template,
    text_queries,
    vlm_queries,
)
from vdr.prepare.split import read_split, split_documents, write_eval_beir, write_split

logger = logging.getLogger("prepare_vdr_data")


def make_parser() -> ConfigParser:
    return ConfigParser(
        (PrepareArguments, ModelLoadingArguments), prog="prepare_vdr_data.py", description=__doc__.split("\n")[0]
    )


def main(args: PrepareArguments, loading: ModelLoadingArguments) -> dict[str, Any]:
    if args.validate:
        return validate(args.validate)
    check_prepare_run(args)  # folders and the query file: before hours of rendering, not after
    output_dir = create_folder(args.output_dir, "the pages, queries and datasets")

    @cache
    def embedding_model():  # loaded once, only by the steps that need it, exactly as train_vdr.py loads it
        # Imported here, not at the top: the spawned rendering workers re-import this script and must start fast.
        from vdr.models.embedder import build_model

        return build_model(args.model_name_or_path, loading)

    # 1. Pages: rendered in a process pool, written as they come; existing pages are reused
    if "pages" in args.steps:
        settings = RenderSettings(args.max_page_pixels, args.max_dpi, args.image_format)
        workers = args.num_workers or os.cpu_count() or 1
        render_documents(args.input_dir, output_dir, settings, workers)
    pages, skipped = read_pages(output_dir)
    check_some_pages(pages, skipped, output_dir)  # before any model loads

    # 2. Queries: text layer (known-item), a vision-language model, or the user's file; optional retrieval filter
    if "queries" in args.steps:
        queries, stats = make_queries(args, loading, pages, skipped, output_dir)
        if args.filter_top_k:
            queries, stats.filtered_out = filter_by_retrieval(
                queries, pages, embedding_model(), args.filter_top_k, output_dir, args.encode_batch_size
            )
            stats.filter_top_k = args.filter_top_k
        write_jsonl(output_dir / QUERIES_FILE, queries)
        save_json(output_dir / QUERY_STATS_FILE, stats)
        check_some_queries(queries, stats, args.queries)

    # 3. Split by document (deterministic under --seed); the eval documents' pages become the BEIR corpus
    if "split" in args.steps:
        queries = read_queries(output_dir)
        documents, with_queries = [p.document for p in pages], {q["document"] for q in queries}
        train_documents, eval_documents = split_documents(documents, with_queries, args.eval_fraction, args.seed)
        write_split(output_dir, train_documents, eval_documents, args.seed)
        in_eval = set(eval_documents)
        write_eval_beir(
            output_dir, [p for p in pages if p.document in in_eval], [q for q in queries if q["document"] in in_eval]
        )

    # 4. Hard negatives, mined on each side of the split from that side's pages only
    if "negatives" in args.steps:
        queries, split = read_queries(output_dir), read_split(output_dir)
        mining = MiningStats()
        cache_folder = mining_cache_folder(output_dir, args.model_name_or_path, loading) if args.num_negatives else None
        for name in ("train", "eval"):
            documents = set(split[name])
            rows = [q for q in queries if q["document"] in documents]
            if args.num_negatives and rows:  # no rows: no model to load
                side_pages = [p for p in pages if p.document in documents]
                rows = mine_negatives(rows, side_pages, embedding_model(), args, output_dir, cache_folder, mining)
            if rows:  # the eval rows carry each page's text for the text baseline
                texts = {page.image: page.text for page in pages} if name == "eval" else None
                write_rows(output_dir / f"{name}.jsonl", rows, output_dir, texts)
            else:
                logger.warning(
                    "No %s rows, so %s.jsonl is not written: its %d document(s) have no queries, or too few pages "
                    "for %d negatives per query. Hold out more documents (--eval_fraction) or lower --num_negatives.",
                    name,
                    name,
                    len(documents),
                    args.num_negatives,
                )
                (output_dir / f"{name}.jsonl").unlink(missing_ok=True)
        save_json(output_dir / MINING_STATS_FILE, mining)

    # 5. Report: printed and saved as report.json
    report = {}
    if "report" in args.steps:
        report = make_report(output_dir, pages, skipped)
        (output_dir / "report.json").write_text(json.dumps(report, indent=2))
        print(format_report(report))
    return report


def make_queries(
    args: PrepareArguments,
    loading: ModelLoadingArguments,
    pages: list[PageRecord],
    skipped: dict[str, str],
    output_dir: Path,
) -> tuple[list[dict], QueryStats]:
    if args.queries == "file":
        queries, stats = file_queries(args.queries_file, pages, skipped)
    elif args.queries == "vlm":
        settings = GenerationSettings(
            model=args.query_model,
            num_queries=args.queries_per_page,
            prompt_template=load_prompt_template(args.query_prompt_template),
            batch_size=args.query_batch_size,
            max_new_tokens=args.query_max_new_tokens,
            max_pixels=args.query_max_pixels,
            torch_dtype=loading.torch_dtype,
            seed=args.seed,
        )
        queries, stats = vlm_queries(pages, output_dir, settings)
    else:
        queries, stats = text_queries(pages, args.queries_per_page)
    unique = list({(q["query"], q["image"]): q for q in queries}.values())  # the same query for the same page once
    stats.duplicates += len(queries) - len(unique)
    return unique, stats


def make_report(output_dir: Path, pages: list[PageRecord], skipped: dict[str, str]) -> dict[str, Any]:
    def optional_file(name: str) -> bool:
        return (output_dir / f"{name}.jsonl").is_file()

    def optional(name: str):
        path = output_dir / name
        return json.loads(path.read_text()) if path.is_file() else None

    queries = read_jsonl(output_dir / QUERIES_FILE) if (output_dir / QUERIES_FILE).is_file() else []
    datasets = {name: read_jsonl(output_dir / f"{name}.jsonl") for name in ("train", "eval") if optional_file(name)}
    report = build_report(
        pages,
        skipped,
        queries,
        optional(QUERY_STATS_FILE),
        optional("split.json"),
        datasets,
        optional(MINING_STATS_FILE),
    )
    return report


def validate(dataset: str) -> dict[str, Any]:
    problems = validate_dataset(dataset)
    for problem in problems:
        print(problem)
    if problems:
        raise VdrError(
            f"{len(problems)} problem(s) in '{dataset}' (listed above, one per row); the first: {problems[0]}"
        )
    print(f"'{dataset}': no problems found.")
    return {"problems": []}


def cli(argv: list[str] | None = None) -> None:
    """The command line: parse, run, and turn a user's mistake into one message and an exit code."""
    argv = sys.argv if argv is None else argv
    run_cli(lambda: main(*make_parser().parse(argv[1:])))


if __name__ == "__main__":
    configure_logging()
    cli()
