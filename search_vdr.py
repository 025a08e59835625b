"""Search your pages: index them with a model, query the index, serve it as a local web page.

Usage:
    # Index a folder of PDFs / page images (rendered as prepare_vdr_data.py renders them), a prepared dataset's pages,
    # or a dataset's corpus, with one model, at a Matryoshka dim and storage precision chosen now
    python search_vdr.py index --index outputs/search/finetuned --model outputs/quickstart/final \\
        --dataset generated:pages --num_generated_rows 64 --generated_seed 1 --max_pixels 36864
    python search_vdr.py index --index indexes/my-docs --model models/my-docs/final --input_dir my-documents/ \\
        --dim 512 --precision binary

    # Query: the top k (document, page, score); --json for scripts; --reranker for a second stage over the top k
    python search_vdr.py query --index outputs/search/finetuned "What was the revenue in 2021?"

    # Serve: a web page on 127.0.0.1, the indexes side by side
    python search_vdr.py serve --index outputs/search/base --index outputs/search/finetuned

    # Several processes encode their share of the pages into the same table
    torchrun --nproc_per_node 4 search_vdr.py index --index indexes/big --model ... --input_dir big-corpus/

Re-running index encodes only new or changed pages and drops removed ones; an interrupted run resumes where it
stopped. The index is one LanceDB table: --index takes a folder or a URI (s3://..., gs://..., az://...).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from vdr.cli import ConfigParser, configure_logging, create_folder, run_cli
from vdr.data.sources import check_image_root
from vdr.errors import VdrError
from vdr.evaluation.model_list import expand_models
from vdr.models.embedder import build_model
from vdr.models.loading import ModelLoadingArguments
from vdr.search.arguments import IndexArguments, QueryArguments, ServeArguments
from vdr.search.index import create_ann_index
from vdr.search.indexing import (
    build_index,
    index_settings,
    index_summary,
    main_process_first,
    page_folder_default,
    process_group,
    process_rank,
)
from vdr.search.pages import dataset_pages, folder_pages, prepared_pages
from vdr.search.searching import Searcher, format_results

logger = logging.getLogger("search_vdr")
COMMANDS = ("index", "query", "serve")


class QueryParser(ConfigParser):
    """A subcommand's parser that also takes the query text as its positional argument."""

    def __init__(self, dataclass_types, prog: str):
        super().__init__(dataclass_types, prog=prog)
        self.add_argument("query_text", nargs="?", default=None, metavar="TEXT", help="The query.")

    def _namespace_to_dataclasses(self, namespace):
        positional = vars(namespace).pop("query_text", None)
        if positional is not None:
            namespace.text = positional
        return super()._namespace_to_dataclasses(namespace)


class SearchParser:
    """``search_vdr.py COMMAND [arguments]``: each subcommand has its own ConfigParser (YAML + flags)."""

    def parser(self, command: str) -> ConfigParser:
        prog = f"search_vdr.py {command}"
        if command == "index":
            return ConfigParser((ModelLoadingArguments, IndexArguments), prog=prog, description="Index pages.")
        return QueryParser((QueryArguments if command == "query" else ServeArguments,), prog=prog)

    def parse(self, argv: list[str]) -> tuple[Any, ...]:
        if not argv or argv[0] in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0 if argv else 2)
        if argv[0] not in COMMANDS:
            raise VdrError(f"Unknown command '{argv[0]}': the first argument is one of {', '.join(COMMANDS)}.")
        return (argv[0], *self.parser(argv[0]).parse(argv[1:]))


def make_parser() -> SearchParser:
    return SearchParser()


def index(loading: ModelLoadingArguments, args: IndexArguments) -> dict[str, Any]:
    # 1. The pages: rendered from a folder, read from a prepared dataset, or written from a dataset's corpus
    check_image_root(args)
    model_path = expand_models([args.model])[0].path  # a training run's folder gives its final model
    if Path(model_path).expanduser().is_dir():  # recorded as an absolute path: the index loads it from anywhere
        model_path = str(Path(model_path).expanduser().resolve())
    if "://" not in args.index:
        create_folder(args.index, "the index", "--index")
    pages_dir = page_folder_default(args.index, args.pages_dir)
    with main_process_first():  # the other processes find the pages rendered
        if args.input_dir:
            pages, source = folder_pages(args.input_dir, pages_dir, args.num_workers), args.input_dir
        elif args.pages:
            pages, source = prepared_pages(args.pages), args.pages
        else:
            pages, source = dataset_pages(args.dataset, args, pages_dir), args.dataset

    # 2. The model, and the settings the index records (dim, precision, loading options, model fingerprint)
    model = build_model(model_path, loading)
    settings = index_settings(model, model_path, loading, args)

    # 3. Encode what is new or changed (each process its share), drop what is gone, then the optional ANN index
    index, stats = build_index(model, settings, pages, args)
    if process_rank()[0] == 0:
        if args.ann_index != "none":
            create_ann_index(index, args.ann_index)
        print(index_summary(index, stats, source))
    return {"index": index, "stats": stats}


def query(args: QueryArguments) -> dict[str, list[dict[str, Any]]]:
    if not args.text:
        raise VdrError('Give the query text: `python search_vdr.py query --index PATH "your question"`.')
    results = Searcher.open(args).search(args.text)
    print(json.dumps(results, indent=1) if args.json else format_results(results))
    return results


def serve(args: ServeArguments) -> None:
    from vdr.search.app import build_app, launch

    launch(build_app(Searcher.open(args)), args.host, args.port, block=True)


def main(command: str, *groups: Any) -> Any:
    if command == "index":
        with process_group():
            return index(*groups)
    return query(*groups) if command == "query" else serve(*groups)


def cli(argv: list[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    run_cli(lambda: main(*make_parser().parse(argv[1:])))


if __name__ == "__main__":
    configure_logging()
    cli()
