"""Score embedding checkpoints side by side on visual document retrieval, at every Matryoshka dimension.

Each model encodes each dataset's queries and pages once, at full dimension; every dimension is scored by
truncating those embeddings, with Sentence Transformers' InformationRetrievalEvaluator. Every model is scored at
every Matryoshka dim any of them was trained at (that it can produce). Resized pages are shared by models with the
same processor settings and embeddings are cached on disk, so re-running or adding a model computes only what is new.

Usage:
    # Offline: the quickstart's output against its base model, on generated pages in both dataset layouts
    python evaluate_vdr.py --model outputs/quickstart --model generated:tiny-qwen3-vl \\
        --dataset generated:pages --dataset generated:pages-beir --max_pixels 36864 \\
        --num_generated_rows 64 --generated_seed 1

    # The reference recipe's eval set (rows layout: query, image, negative_0..3)
    python evaluate_vdr.py --model models/Qwen3-VL-Embedding-2B-vdr --model Qwen/Qwen3-VL-Embedding-2B \\
        --dataset path=tomaarsen/llamaindex-vdr-en-train-preprocessed,config=eval,name=vdr-eval-hard \\
        --min_pixels 784 --max_pixels 360000 --torch_dtype bfloat16 --attn_implementation flash_attention_2

    # A BEIR-layout benchmark (corpus / queries / qrels configs, as the ViDoRe v2 and v3 sets on the Hub)
    python evaluate_vdr.py --model models/Qwen3-VL-Embedding-2B-vdr --dataset path=vidore/esg_reports_v2,layout=beir

    # Choosing what to deploy: single-vector (every dim x float32 / int8 / binary), multi-vector and BM25 side by side
    python evaluate_vdr.py --model outputs/quickstart --model outputs/quickstart-multivector --model bm25 \\
        --dataset generated:pages --max_pixels 36864 --num_generated_rows 64 --generated_seed 1

    # Every checkpoint of a training run
    python evaluate_vdr.py --model models/Qwen3-VL-Embedding-2B-vdr --all_checkpoints true --dataset ...

    # Against the leaderboard: ViDoRe v3's public tasks, scored as MTEB scores them (table + MTEB result files)
    python evaluate_vdr.py --benchmark vidore-v3 --model models/Qwen3-VL-Embedding-2B-vdr \
        --model Qwen/Qwen3-VL-Embedding-2B --torch_dtype bfloat16 --attn_implementation flash_attention_2

Outputs in --output_dir: results.json, results.csv, results.md, ndcg_by_dim.png, ndcg_by_model.png (several
models), training_<run>.png (base vs finetuned, for training output folders), and the storage-against-quality
report: storage.csv, ndcg_vs_bytes.png and a table in results.md. With --benchmark: leaderboard.md (one table per
benchmark) and mteb_results/ (MTEB's result files).
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from vdr.cache import TensorCache, default_cache_dir
from vdr.cli import ConfigParser, configure_logging, create_folder, run_cli
from vdr.data.retrieval_sets import RetrievalData, load_retrieval_data
from vdr.data.sources import DatasetSpec, check_image_root
from vdr.errors import VdrError
from vdr.evaluation.arguments import EvaluateArguments, RerankArguments
from vdr.evaluation.benchmarks import (
    BenchmarkData,
    leaderboard_protocol,
    load_benchmark_tasks,
    prompt_groups,
    protocol_loading,
    score_by_prompts,
    select_tasks,
)
from vdr.evaluation.bm25 import score_bm25
from vdr.evaluation.encoding import EncodingSetup, ResizedPageCache
from vdr.evaluation.maxsim import score_multi_vector_model
from vdr.evaluation.metrics import ModelScores, has_graded_relevance
from vdr.evaluation.model_list import (
    MULTI_VECTOR,
    TEXT,
    ModelCandidate,
    check_rerankers,
    evaluation_dims,
    expand_models,
    model_kind,
    read_training_metrics,
    shared_default_dims,
)
from vdr.evaluation.mteb_results import LEADERBOARD_FILE, leaderboard_rows, write_mteb_results
from vdr.evaluation.report import (
    PLOT_FILES,
    clear_earlier_results,
    markdown_table,
    plot_ndcg_by_dim,
    plot_ndcg_by_model,
    plot_training_metrics,
    write_results,
)
from vdr.evaluation.retrieve_then_rerank import RerankResults, rerank_models
from vdr.evaluation.single_vector import score_single_vector_model
from vdr.evaluation.storage_report import storage_table, write_storage_report
from vdr.models.embedder import build_model
from vdr.models.loading import ModelLoadingArguments, resolve_model_path
from vdr.models.multi_vector import build_multi_vector_model, keep_only_image_tokens
from vdr.provenance import library_versions

logger = logging.getLogger("evaluate_vdr")


def make_parser() -> ConfigParser:
    return ConfigParser(
        (ModelLoadingArguments, EvaluateArguments, RerankArguments),
        prog="evaluate_vdr.py",
        description=__doc__.split("\n")[0],
    )


def main(
    loading: ModelLoadingArguments, args: EvaluateArguments, rerank: RerankArguments | None = None
) -> dict[str, Any]:
    rerank = rerank or RerankArguments()
    start = time.perf_counter()

    # 1. Everything that can be checked without loading: output folder, dataset specs, model and reranker paths, dims
    output_dir = create_folder(args.output_dir, "the results")
    clear_earlier_results(output_dir, args.overwrite_output_dir)
    cache_dir = args.cache_dir or str(default_cache_dir() / "embeddings")
    cache = TensorCache(None if args.no_cache else create_folder(cache_dir, "the embedding cache", "--cache_dir"))
    check_image_root(args)
    specs = parse_dataset_specs(args.dataset)
    selected = select_tasks(args.benchmark, args.tasks, args.languages) if args.benchmark else []
    candidates = expand_models(args.model, args.all_checkpoints)
    rerankers = expand_models(rerank.reranker, flag="--reranker")
    check_rerankers(rerankers)
    shared_dims = shared_default_dims(candidates)

    # 2. Datasets and leaderboard tasks: each loaded (and checked) once, shared by every model
    datasets = {spec.name: load_dataset(spec, args) for spec in specs}
    tasks = load_benchmark_tasks(selected)
    datasets |= {name: task.data for name, task in tasks.items()}

    # 3. Score each model: one encoding per dataset, every dimension and precision from it; a failing model does not
    #    stop the rest, and the results so far are written after each model
    setup = EncodingSetup(
        batch_size=args.batch_size,
        page_cache=ResizedPageCache(args.preprocess_cache_mb << 20),
        cache=cache,
        presize_dir=default_cache_dir() if tasks else None,  # leaderboard pages: resized once per pixel budget
    )
    scored: dict[str, ModelScores] = {}
    errors: list[str] = []
    for number, candidate in enumerate(candidates, 1):
        logger.info("Model %d of %d: %s", number, len(candidates), candidate.name)
        try:
            scored[candidate.name] = score_candidate(
                candidate, loading, args, shared_dims, datasets, setup, bool(rerank.reranker), tasks
            )
        except (VdrError, torch.OutOfMemoryError) as error:
            hint = " Lower --batch_size or --max_pixels." if isinstance(error, torch.OutOfMemoryError) else ""
            errors.append(f"{candidate.name}: {error}{hint}")
            logger.warning("Model '%s' could not be scored (the reason is reported at the end).", candidate.name)
            continue
        if all_records(scored, None):  # a model may have produced none (BM25 on pages without text)
            write_outputs(output_dir, scored, None, candidates, specs, loading, args, start)

    # 4. Retrieve-then-rerank: each reranker reorders every model's top K pages ("model + reranker" records)
    reranked = None
    first_stages = {name: scores for name, scores in scored.items() if scores.first_stage}
    if rerank.reranker and first_stages:
        reranked = rerank_models(rerankers, rerank, loading, datasets, first_stages, setup)
        errors += reranked.errors
        if reranked.records:
            write_outputs(output_dir, scored, reranked, candidates, specs, loading, args, start)

    # 5. Plots and the summary tables; the leaderboard tables and MTEB result files of the benchmark tasks
    records, storage = all_records(scored, reranked), all_storage_rows(scored)
    write_plots(output_dir, records, candidates)
    if storage:
        print(storage_table(storage))
    if tasks and records:
        board = leaderboard_rows(tasks, scored, reranked)
        write_mteb_results(output_dir, board, {name: loading.revision for name in board.models()})
        (output_dir / LEADERBOARD_FILE).write_text(board.tables())
        print(board.tables())
    if errors:
        num_models = len(candidates) + len(rerank.reranker)
        raise VdrError(failure_message(errors, num_models, output_dir if records else None))
    if not records:
        notes = " ".join(note for scores in scored.values() for note in scores.notes)
        raise VdrError(f"No model produced a result, so nothing was written. {notes}")
    return {"records": records, "models": model_summaries(scored, reranked, candidates)}


def score_candidate(
    candidate: ModelCandidate,
    loading: ModelLoadingArguments,
    args: EvaluateArguments,
    shared_dims: set[int],
    datasets: dict[str, RetrievalData],
    setup: EncodingSetup,
    keep_first_stage: bool = False,
    tasks: dict[str, BenchmarkData] | None = None,
) -> ModelScores:
    """Load one model as its kind (text baseline, multi-vector or single-vector), score it on every dataset and free
    it before the next model loads. ``keep_first_stage`` keeps a single-vector model's query x page scores for
    retrieve-then-rerank. On leaderboard ``tasks`` a model is loaded at its family's leaderboard page budget (or
    ``--pixel_budget training``) and a single-vector model encodes their queries with each task's instruction."""
    kind, tasks = model_kind(candidate), tasks or {}
    if kind == TEXT:
        return score_bm25(datasets)
    protocol = None
    if tasks:  # multi-vector models: MTEB's ColPali-style wrappers set no instruction, so only their own budget
        budget, family = (args.pixel_budget, None) if kind != MULTI_VECTOR else ("training", MULTI_VECTOR)
        path = resolve_model_path(candidate.path)
        protocol = leaderboard_protocol(path, budget, loading.min_pixels, loading.max_pixels, family)
        loading = protocol_loading(loading, protocol)
    if kind == MULTI_VECTOR:
        model = build_multi_vector_model(candidate.path, loading)
        if args.image_tokens_only:
            keep_only_image_tokens(model)
    else:
        model = build_model(candidate.path, loading)
    try:
        if kind == MULTI_VECTOR:
            scores = score_multi_vector_model(
                model, candidate, datasets, setup, loading, args.image_tokens_only, frozenset(tasks)
            )
        else:
            dims = evaluation_dims(model, args.truncate_dims, shared_dims)
            scores = score_by_prompts(
                model,
                prompt_groups(datasets, tasks, protocol),
                loading,
                partial(
                    score_single_vector_model,
                    model,
                    candidate,
                    dims=dims,
                    setup=setup,
                    args=args,
                    keep_first_stage=keep_first_stage,
                    keep_scores=frozenset(tasks),
                ),
            )
        if protocol:
            instructions = {name: protocol.query_instruction(task.selected.task) for name, task in tasks.items()}
            scores.protocol = {**vars(protocol), "query_instructions": instructions}
        return scores
    finally:
        del model  # free it before the next model loads
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def parse_dataset_specs(values: list[str]) -> list[DatasetSpec]:
    specs = [DatasetSpec.parse(value) for value in values]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise VdrError(f"Two --dataset entries share a name ({', '.join(names)}); give each a distinct name=...")
    return specs


def load_dataset(spec: DatasetSpec, args: EvaluateArguments) -> RetrievalData:
    data = load_retrieval_data(spec, args)
    has_graded_relevance(data)  # fractional grades fail here, before any model loads
    logger.info("Dataset %s: %d queries, %d pages", spec.name, len(data.queries), len(data.corpus))
    return data


def write_plots(output_dir: Path, records: list[dict], candidates: list[ModelCandidate]) -> None:
    if records:
        plot_ndcg_by_dim(records, output_dir / PLOT_FILES["by_dim"])
        if len({record["model"] for record in records}) > 1:
            plot_ndcg_by_model(records, output_dir / PLOT_FILES["by_model"])
        print(markdown_table(records))
    one_per_run = {candidate.training_run: candidate for candidate in candidates if candidate.training_run}
    for candidate in one_per_run.values():
        metrics = read_training_metrics(candidate)
        if metrics and metrics.get("final"):
            run = candidate.training_run.resolve().name
            plot_training_metrics(metrics, output_dir / PLOT_FILES["training"].format(run=run))


def failure_message(errors: list[str], num_models: int, results_dir: Path | None) -> str:
    """One paragraph: which models failed and why, and where the others' results are (when there are any)."""
    failed = f"{len(errors)} of {num_models} model(s) could not be scored: {'; '.join(errors)}"
    return f"{failed} Results of the others are in {results_dir}." if results_dir else failed


def all_records(scored: dict[str, ModelScores], reranked: RerankResults | None) -> list[dict[str, Any]]:
    """Every model's result records, then every "model + reranker"'s."""
    return [record for scores in scored.values() for record in scores.records] + (reranked.records if reranked else [])


def all_storage_rows(scored: dict[str, ModelScores]) -> list[dict[str, Any]]:
    return [row for scores in scored.values() for row in scores.storage]


def model_summaries(
    scored: dict[str, ModelScores], reranked: RerankResults | None, candidates: list[ModelCandidate]
) -> dict[str, dict[str, Any]]:
    """What results.json says about each model (and each "model + reranker")."""
    paths = {candidate.name: candidate.path for candidate in candidates}
    summaries = {name: scores.summary(paths[name]) for name, scores in scored.items()}
    return {**summaries, **(reranked.models if reranked else {})}


def write_outputs(
    output_dir: Path,
    scored: dict[str, ModelScores],
    reranked: RerankResults | None,
    candidates: list[ModelCandidate],
    specs: list[DatasetSpec],
    loading: ModelLoadingArguments,
    args: EvaluateArguments,
    start: float,
) -> None:
    """results.json / .csv / .md and the storage report, from every model scored so far."""
    storage = all_storage_rows(scored)
    notes = [note for scores in scored.values() for note in scores.notes]
    metadata = {
        "models": model_summaries(scored, reranked, candidates),
        "datasets": [vars(spec) for spec in specs],
        "settings": {"loading": vars(loading), "evaluation": vars(args)},
        "versions": library_versions(),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "storage": storage,
        "notes": notes,
    }
    write_results(output_dir, all_records(scored, reranked), metadata)
    write_storage_report(output_dir, storage, notes)  # appended to results.md


def cli(argv: list[str] | None = None) -> None:
    """The command line: parse, run, and turn a user's mistake into one message and an exit code."""
    argv = sys.argv if argv is None else argv
    run_cli(lambda: main(*make_parser().parse(argv[1:])))


if __name__ == "__main__":
    configure_logging()
    cli()
