"""Score embedding checkpoints side by side on visual document retrieval, at every Matryoshka dimension.

Each model encodes each dataset's queries and pages once, at full dimension; every dimension is scored by
truncating those embeddings. Pages are resized once per run (in worker threads, ahead of the encoder) and
embeddings are cached on disk, so re-running or adding a model computes only what is new.

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

    # Every checkpoint of a training run
    python evaluate_vdr.py --model models/Qwen3-VL-Embedding-2B-vdr --all_checkpoints true --dataset ...

Outputs in --output_dir: results.json, results.csv, results.md, ndcg_by_dim.png, ndcg_by_model.png (several
models) and training_<run>.png (base vs finetuned, for training output folders).
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vdr.cache import default_cache_dir
from vdr.config import ConfigParser, EvaluateArguments, ModelLoadingArguments
from vdr.data import DatasetSpec, load_retrieval_data
from vdr.embedding_cache import EmbeddingCache, model_fingerprint
from vdr.errors import VdrError, run_cli
from vdr.evaluation import evaluation_dims, expand_models, load_for_evaluation, read_training_metrics, score_model
from vdr.model import resolve_model_path
from vdr.preprocessing import PagePreprocessor
from vdr.provenance import library_versions
from vdr.reporting import markdown_table, plot_ndcg_by_dim, plot_ndcg_by_model, plot_training_metrics, write_results
from vdr.reranking import RememberingCache, RerankArguments, first_stage_scores, rerank_models

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
    output_dir = Path(args.output_dir)

    # 1. Datasets: each loaded (and checked) once, shared by every model
    specs = [DatasetSpec.parse(spec) for spec in args.dataset]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise VdrError(f"Two --dataset entries share a name ({', '.join(names)}); give each a distinct name=...")
    datasets = {}
    for spec in specs:
        datasets[spec.name] = load_retrieval_data(spec, args)
        logger.info(
            "Dataset %s: %d queries, %d pages",
            spec.name,
            len(datasets[spec.name].queries),
            len(datasets[spec.name].corpus),
        )

    # 2. Models: training output folders give their final model (and, on request, every checkpoint)
    candidates = expand_models(args.model, args.all_checkpoints)

    # 3. Score each model: one encoding per dataset, every dimension from it; a failing model does not stop the rest
    preprocessor = PagePreprocessor(args.preprocess_workers, args.preprocess_cache_mb << 20)
    cache = EmbeddingCache(None if args.no_cache else Path(args.cache_dir or default_cache_dir() / "embeddings"))
    cache = RememberingCache(cache.folder) if rerank.reranker else cache  # rerankers start from these embeddings
    first_stages = {}
    records: list[dict] = []
    models: dict[str, dict] = {}
    errors: list[str] = []
    for candidate in candidates:
        model = None
        try:
            model = load_for_evaluation(candidate, loading)
            dims = evaluation_dims(model, candidate, args.truncate_dims)
            # Hashing every model file takes seconds for a 2B model: only the cache needs it.
            fingerprint = (
                model_fingerprint(resolve_model_path(candidate.path), loading.revision) if cache.folder else None
            )
            cache_key = {"model": fingerprint, "loading": vars(loading)}
            model_records, stats = score_model(
                model, candidate, datasets, dims, args.batch_size, preprocessor, cache, cache_key
            )
            if rerank.reranker:
                first_stages[candidate.name] = first_stage_scores(
                    model, datasets, dims, args.batch_size, preprocessor, cache, cache_key
                )
        except (VdrError, torch.OutOfMemoryError) as error:
            hint = " Lower --batch_size or --max_pixels." if isinstance(error, torch.OutOfMemoryError) else ""
            logger.error("Skipping model '%s': %s%s", candidate.name, error, hint)
            errors.append(f"{candidate.name}: {error}{hint}")
            continue
        finally:
            del model  # free it before the next model loads
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        records += model_records
        models[candidate.name] = {
            "path": candidate.path,
            "dims": dims,
            "fingerprint": fingerprint,
            "stats": stats,
        }
        write_outputs(output_dir, records, models, specs, loading, args, start)  # results so far are never lost

    # 3b. Retrieve-then-rerank: each reranker reorders every model's top K pages ("model + reranker" records)
    if rerank.reranker and first_stages:
        reranked = rerank_models(rerank, loading, datasets, first_stages, preprocessor, cache.folder)
        records, errors = records + reranked.records, errors + reranked.errors
        models.update(reranked.models)
        if records:
            write_outputs(output_dir, records, models, specs, loading, args, start)

    # 4. Plots and the summary table
    if records:
        plot_ndcg_by_dim(records, output_dir / "ndcg_by_dim.png")
        if len(models) > 1:
            plot_ndcg_by_model(records, output_dir / "ndcg_by_model.png")
        print(markdown_table(records))
    one_per_run = {candidate.training_run: candidate for candidate in candidates if candidate.training_run}
    for candidate in one_per_run.values():
        metrics = read_training_metrics(candidate)
        if metrics and metrics.get("final"):
            plot_training_metrics(metrics, output_dir / f"training_{candidate.training_run.resolve().name}.png")
    if errors:
        raise VdrError(
            f"{len(errors)} of {len(candidates)} model(s) could not be scored ({'; '.join(errors)}). Results of the "
            f"others are in {output_dir}."
        )
    return {"records": records, "models": models}


def write_outputs(
    output_dir: Path,
    records: list[dict],
    models: dict[str, dict],
    specs: list[DatasetSpec],
    loading: ModelLoadingArguments,
    args: EvaluateArguments,
    start: float,
) -> None:
    metadata = {
        "models": models,
        "datasets": [vars(spec) for spec in specs],
        "settings": {"loading": vars(loading), "evaluation": vars(args)},
        "versions": library_versions(),
        "wall_seconds": round(time.perf_counter() - start, 2),
    }
    write_results(output_dir, records, metadata)


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_cli(lambda: main(*make_parser().parse(sys.argv[1:])))
