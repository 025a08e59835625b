"""Benchmark: the training data path, from dataset to collated batch, with the recipe's settings and with ours.

On realistic pages (generated pages upscaled to A4 at 150 DPI, 1240 x 1754, saved as PNG and JPEG files whose
paths sit in a JSON-lines file, loaded exactly as train_vdr.py loads them), it prints:

- the data path alone (the trainer's own DataLoader: sampler, workers, collator) in rows/s and pages/s, with 0,
  1 and 2 dataloader workers, for each change: the recipe's settings (``datasets.Image`` columns,
  ``no_duplicates``), the hashed sampler, pages kept as paths until the collator, pages presized (ours); the
  one-core rate (0 workers, one torch thread) lets a many-core figure be projected;
- page decodes per page per epoch (counted in-process, with 0 workers), the sampler's cost for one epoch and
  the model card's dataset statistics at trainer start;
- one training step split into data wait, no-grad forward, forward + backward, optimizer (the
  CachedMultipleNegativesRankingLoss inside MatryoshkaLoss, as in the recipe);
- the speed-up against the recipe's settings on the same data.

Usage (CPU, offline):
    python benchmarks/bench_train.py                      # 64 rows of PNG pages, the tiny model (a few minutes)
    python benchmarks/bench_train.py --smoke              # seconds: checks that everything runs
    python benchmarks/bench_train.py --format jpeg --num_rows 128
    python benchmarks/bench_train.py --end_to_end         # also train_vdr.py before/after, end to end
    python benchmarks/bench_train.py --model path/to/Qwen3-VL-2B-folder --torch_dtype bfloat16   # on a GPU
    python benchmarks/random_qwen3_vl.py --size 2b --output_dir models/random-qwen3-vl-2b   # such a folder, offline
    python benchmarks/bench_train.py --model models/random-qwen3-vl-2b --torch_dtype bfloat16 --batch_size 32 \
        --mini_batch_size 1 8 32 --step_workers 4 --skip_data_path --end_to_end --e2e_workers 4

Speed does not depend on the weights: a randomly initialised model measures the same work as a trained one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # runnable as `python benchmarks/bench_train.py` from a fresh clone

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from datasets import Image as DatasetImage  # noqa: E402
from PIL import Image, ImageFile  # noqa: E402
from sentence_transformers import (  # noqa: E402
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler  # noqa: E402

from vdr.data.page_images import image_columns, presize_page_columns, replace_column  # noqa: E402
from vdr.data.sources import load_training_data  # noqa: E402
from vdr.models.embedder import build_model, embedding_dimension  # noqa: E402
from vdr.models.loading import ModelLoadingArguments  # noqa: E402
from vdr.offline.generated_pages import generate_rows  # noqa: E402
from vdr.offline.tiny_model import TINY_MODEL_ID  # noqa: E402
from vdr.training.arguments import DEFAULT_MATRYOSHKA_DIMS, DataArguments, LossArguments  # noqa: E402
from vdr.training.losses import build_loss  # noqa: E402

A4_150_DPI = (1240, 1754)
RECIPE_MAX_PIXELS = 600 * 600
RECIPE_MIN_PIXELS = 28 * 28


# --------------------------------------------------------------------------------------------- pages on disk
def write_page_files(folder: Path, num_rows: int, image_format: str, seed: int = 0) -> Path:
    """Rows of (query, page, hard negative) with A4 150-DPI page files; returns the JSON-lines file."""
    suffix = "png" if image_format == "png" else "jpg"
    (folder / "pages").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(generate_rows(num_rows, seed=seed, num_negatives=1)):
        record = {"query": row["query"]}
        for column in ("image", "negative_0"):
            name = f"pages/{i}-{column}.{suffix}"
            page = row[column].resize(A4_150_DPI, Image.BICUBIC)
            page.save(folder / name, quality=90) if suffix == "jpg" else page.save(folder / name)
            record[column] = name
        lines.append(json.dumps(record))
    jsonl = folder / "train.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    return jsonl


def as_path_columns(dataset: Dataset) -> Dataset:
    """The same rows with pages as file-path strings: undecoded until the collator, still at full size."""
    order = dataset.column_names
    for column in image_columns(dataset):
        encoded = dataset.select_columns([column]).cast_column(column, DatasetImage(decode=False))
        paths = [item["path"] for item in encoded[column]]
        dataset = replace_column(dataset, column, paths)
    return dataset.select_columns(order)


# ------------------------------------------------------------------------------------------------- counting
@dataclass
class Decodes:
    """Full image decodes in this process: PIL (datasets.Image, PIL inputs) and torchvision (path inputs)."""

    count: int = 0

    @contextmanager
    def counting(self) -> Iterator[Decodes]:
        import torchvision.io

        original_load, original_decode = ImageFile.ImageFile.load, torchvision.io.decode_image

        def load(image, *args, **kwargs):
            if getattr(image, "tile", None):  # pixels not read yet: this call decodes
                self.count += 1
            return original_load(image, *args, **kwargs)

        def decode_image(*args, **kwargs):
            self.count += 1
            return original_decode(*args, **kwargs)

        ImageFile.ImageFile.load, torchvision.io.decode_image = load, decode_image
        try:
            yield self
        finally:
            ImageFile.ImageFile.load, torchvision.io.decode_image = original_load, original_decode


def seconds(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


# ---------------------------------------------------------------------------------------------------- trainer
@dataclass
class Setup:
    model: object
    loss: object
    batch_size: int
    output_dir: str


def make_trainer(setup: Setup, dataset: Dataset, sampler: str, workers: int) -> SentenceTransformerTrainer:
    args = SentenceTransformerTrainingArguments(
        output_dir=setup.output_dir,
        per_device_train_batch_size=setup.batch_size,
        batch_sampler=sampler,
        dataloader_num_workers=workers,
        dataloader_prefetch_factor=1 if workers else None,
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to="none",
        seed=42,
        use_cpu=not torch.cuda.is_available(),
        bf16=bool(torch.cuda.is_available() and setup.model.dtype == torch.bfloat16),
    )
    return SentenceTransformerTrainer(model=setup.model, args=args, train_dataset=dataset, loss=setup.loss)


def data_path_rate(setup: Setup, dataset: Dataset, sampler: str, workers: int) -> tuple[float, int]:
    """Seconds for one epoch of collated batches from the trainer's DataLoader, and the batches' page count."""
    trainer = make_trainer(setup, dataset, sampler, workers)
    pages = 0
    start = time.perf_counter()
    for batch in trainer.get_train_dataloader():
        pages += sum(len(value) for key, value in batch.items() if key.endswith("image_grid_thw"))
    return time.perf_counter() - start, pages


def sampler_seconds(dataset: Dataset, batch_size: int, hashed: bool) -> float:
    """One epoch of the no-duplicates sampler alone (it runs in the main process, whatever the workers)."""
    generator = torch.Generator()
    sampler = NoDuplicatesBatchSampler(
        dataset, batch_size, drop_last=False, generator=generator, seed=42, precompute_hashes=hashed
    )
    return seconds(lambda: list(iter(sampler)))[0]


def model_card_seconds(setup: Setup, dataset: Dataset) -> float:
    """What the model-card callback computes at trainer start: column statistics and widget examples."""
    card = setup.model.model_card_data

    def compute() -> None:
        card.compute_dataset_metrics(dataset, {}, setup.loss)
        card.set_widget_examples(dataset)

    return seconds(compute)[0]


# ------------------------------------------------------------------------------------------------- step split
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class StepSplit:
    data_wait: float = 0.0
    no_grad_forward: float = 0.0
    forward_backward: float = 0.0
    optimizer: float = 0.0
    steps: int = 0

    def per_step(self) -> dict[str, float]:
        parts = {k: v / max(self.steps, 1) for k, v in vars(self).items() if k != "steps"}
        return {**parts, "total": sum(parts.values())}


def step_split(setup: Setup, dataset: Dataset, sampler: str, workers: int, max_steps: int) -> StepSplit:
    """Training steps as the trainer runs them; CachedMNRL's forward is its no-grad pass over every mini-batch
    (the embedding cache), its backward re-runs each mini-batch with gradients."""
    trainer = make_trainer(setup, dataset, sampler, workers)
    optimizer = torch.optim.AdamW(setup.model.parameters(), lr=1e-5)
    split = StepSplit()
    batches = iter(trainer.get_train_dataloader())
    setup.model.train()
    for step in range(max_steps + 1):  # step 0 warms up (first-call allocations, kernel selection): not counted
        if step == 1:
            split = StepSplit()
        start = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            break
        inputs = trainer._prepare_inputs(batch)
        features, labels = trainer.collect_features(inputs)
        sync()
        loaded = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=trainer.args.bf16):
            loss = setup.loss(features, labels)
        sync()
        forwarded = time.perf_counter()
        loss.backward()
        sync()
        backwarded = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        sync()
        split.data_wait += loaded - start
        split.no_grad_forward += forwarded - loaded
        split.forward_backward += backwarded - forwarded
        split.optimizer += time.perf_counter() - backwarded
        split.steps += 1
    return split


# ---------------------------------------------------------------------------------------------------- report
def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def build_setup(args: argparse.Namespace, output_dir: str) -> Setup:
    loading = ModelLoadingArguments(
        torch_dtype=args.torch_dtype, min_pixels=RECIPE_MIN_PIXELS, max_pixels=args.max_pixels
    )
    model = build_model(args.model, loading)
    if torch.cuda.is_available():
        model.to("cuda")
    return Setup(model, recipe_loss(model, args.mini_batch_size[0]), args.batch_size, output_dir)


def matryoshka_dims(dimension: int) -> list[int]:
    """The recipe's dims that the model can produce (all of them for a 2B model; its full dim for the tiny one)."""
    return [dim for dim in DEFAULT_MATRYOSHKA_DIMS if dim <= dimension] or [dimension]


def recipe_loss(model: SentenceTransformer, mini_batch_size: int) -> torch.nn.Module:
    dims = matryoshka_dims(embedding_dimension(model))
    return build_loss(model, LossArguments(matryoshka_dims=dims, mini_batch_size=mini_batch_size))


def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    if args.fresh_cache:
        os.environ["VDR_CACHE"] = str(work / "cache")
    if args.only_end_to_end:
        return end_to_end(args, work)
    page_cache = work / "page-cache"
    print(
        f"Machine: {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.2f}; "
        f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}"
    )
    jsonl = write_page_files(work / "data", args.num_rows, args.format)
    print(
        f"{args.num_rows} rows x 2 pages, A4 at 150 DPI {args.format.upper()}, max_pixels {args.max_pixels}, "
        f"batch {args.batch_size}, mini-batch {args.mini_batch_size}, model {args.model}"
    )
    plain, _ = load_training_data(DataArguments(train_dataset=str(jsonl), negative_columns=["negative_0"]), seed=42)
    setup = build_setup(args, str(work / "out"))

    presize_cold, fast = seconds(presize_page_columns, setup.model, plain, page_cache)
    presize_warm, fast = seconds(presize_page_columns, setup.model, plain, page_cache)
    variants = {
        "recipe (datasets.Image, no_duplicates)": (plain, "no_duplicates"),
        "+ hashed sampler (no_duplicates_hashed)": (plain, "no_duplicates_hashed"),
        "pages as paths until the collator": (as_path_columns(plain), "no_duplicates"),
        "ours: presized pages (paths)": (fast, "no_duplicates"),
    }
    if not args.skip_data_path:
        report_data_path(args, setup, variants, presize_cold, presize_warm)

    torch.set_num_threads(args.torch_threads)
    split_rows = []
    runs = [("recipe (datasets.Image, no_duplicates)", args.mini_batch_size[0])]
    runs += [("ours: presized pages (paths)", size) for size in args.mini_batch_size]
    for name, mini_batch_size in runs:
        dataset, sampler = variants[name]
        setup.loss = recipe_loss(setup.model, mini_batch_size)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        split = step_split(setup, dataset, sampler, args.step_workers, args.steps).per_step()
        rows_per_second = args.batch_size / split["total"]
        split_rows.append([name, mini_batch_size] + [f"{split[k]:.2f} s" for k in split] + [f"{rows_per_second:.1f}"])
        if torch.cuda.is_available():
            split_rows[-1].append(f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"\nOne training step ({args.batch_size} rows, {args.step_workers} workers, mean of {args.steps} steps):")
    header = ["data path", "mini-batch", "data wait", "no-grad forward", "forward+backward", "optimizer", "total"]
    print(table(header + ["rows/s"] + (["peak GPU memory"] if torch.cuda.is_available() else []), split_rows))

    if args.end_to_end:
        end_to_end(args, work)


def report_data_path(
    args: argparse.Namespace, setup: Setup, variants: dict, presize_cold: float, presize_warm: float
) -> None:
    """The data path alone: decodes, sampler and model-card costs, then rows/s and pages/s by workers."""
    rows_per_epoch = len(variants["recipe (datasets.Image, no_duplicates)"][0])
    pages_per_epoch = 2 * rows_per_epoch
    # Costs outside the DataLoader: sampler epoch, model card statistics, decodes per page (0 workers, in-process)
    costs, rates = [], {}
    for name, (dataset, sampler) in variants.items():
        torch.set_num_threads(1)  # the one-core rate
        with Decodes().counting() as card_decodes:
            card = model_card_seconds(setup, dataset)
        sample = sampler_seconds(dataset, args.batch_size, hashed=sampler.endswith("hashed"))
        with Decodes().counting() as epoch_decodes:  # the sampler's own decodes included
            elapsed, pages = data_path_rate(setup, dataset, sampler, 0)
        costs.append(
            [
                name,
                f"{sample:.2f} s",
                f"{card:.2f} s",
                card_decodes.count,
                f"{epoch_decodes.count / pages_per_epoch:.1f}",
            ]
        )
        rates[name] = {0: (elapsed, pages)}
        torch.set_num_threads(args.torch_threads)
        for workers in args.workers:
            if workers:
                rates[name][workers] = data_path_rate(setup, dataset, sampler, workers)

    print(
        f"\nPresizing {pages_per_epoch} pages: {presize_cold:.1f} s the first time "
        f"({pages_per_epoch / presize_cold:.1f} pages/s), {presize_warm:.2f} s when cached"
    )
    print("\nOutside the data loader (0 workers, one thread; decodes counted in-process):")
    print(
        table(
            [
                "data path",
                "sampler, one epoch",
                "model-card statistics",
                "decodes at trainer start",
                "decodes per page per epoch",
            ],
            costs,
        )
    )

    base = rates["recipe (datasets.Image, no_duplicates)"]
    rate_rows = []
    for name, by_workers in rates.items():
        for workers, (elapsed, pages) in sorted(by_workers.items()):
            speedup = (base[workers][0] / elapsed) if workers in base else float("nan")
            rate_rows.append(
                [name, workers, f"{rows_per_epoch / elapsed:.1f}", f"{pages / elapsed:.1f}", f"**{speedup:.1f}x**"]
            )
    print(
        f"\nData path alone, dataset -> collated batch, one epoch ({rows_per_epoch} rows, {pages_per_epoch} pages); "
        "0 workers = one core, one torch thread:"
    )
    print(table(["data path", "workers", "rows/s", "pages/s", "vs recipe"], rate_rows))


# ------------------------------------------------------------------------------------------------ end to end
def end_to_end(args: argparse.Namespace, work: Path) -> None:
    """train_vdr.py on the same page files, recipe data settings, before (no presizing) and after (cold, warm)."""
    jsonl = write_page_files(work / "e2e", args.e2e_rows, args.format, seed=1)
    cache = work / "e2e-cache"
    on_gpu = torch.cuda.is_available()
    dims = [str(d) for d in matryoshka_dims(hidden_size(args.model))]
    common = [
        sys.executable,
        str(REPO_ROOT / "train_vdr.py"),
        "--model_name_or_path",
        args.model,
        "--torch_dtype",
        args.torch_dtype or "float32",
        "--bf16",
        str(on_gpu and args.torch_dtype == "bfloat16").lower(),
        "--min_pixels",
        str(RECIPE_MIN_PIXELS),
        "--max_pixels",
        str(args.max_pixels),
        "--train_dataset",
        str(jsonl),
        "--negative_columns",
        "negative_0",
        "--matryoshka_dims",
        *dims,
        "--mini_batch_size",
        str(args.mini_batch_size[-1]),
        "--per_device_train_batch_size",
        str(args.batch_size),
        *(
            "--batch_sampler no_duplicates --num_train_epochs 1 --learning_rate 1e-4 "
            "--eval_strategy no --save_strategy no --report_to none --dataloader_pin_memory"
        ).split(),
        str(on_gpu).lower(),
        "--seed",
        "42",
    ]
    runs = [
        ("before: recipe data path (no presizing, 0 workers)", ["--presize_pages", "false"], 0),
        ("after, first run (presizing included, 0 workers)", ["--presize_pages", "true"], 0),
        ("after, pages cached (0 workers)", ["--presize_pages", "true"], 0),
        (f"after, pages cached ({args.e2e_workers} workers)", ["--presize_pages", "true"], args.e2e_workers),
    ]
    env = {**os.environ, "VDR_CACHE": str(cache)}
    if args.model == TINY_MODEL_ID:  # build the tiny model once, outside the timings
        warmup = [*common, "--presize_pages", "false", "--max_steps", "1", "--output_dir", str(work / "warmup")]
        subprocess.run(warmup, env=env, check=True, capture_output=True)
    results = []
    for number, (name, flags, workers) in enumerate(runs):
        output = [*flags, "--dataloader_num_workers", str(workers), "--output_dir", str(work / f"e2e-{number}")]
        elapsed, done = seconds(subprocess.run, [*common, *output], env=env, check=True, capture_output=True, text=True)
        loop = training_loop_seconds(done.stdout + done.stderr)
        results.append(
            [name, f"{elapsed:.1f} s", f"{args.e2e_rows / elapsed:.2f}", f"{loop:.1f} s", f"{args.e2e_rows / loop:.2f}"]
        )
        print(f"  {' | '.join(results[-1])}", flush=True)  # as it ends: a run cut short keeps the others' figures
    before_wall, before_loop = (float(results[0][column].split()[0]) for column in (1, 3))
    for row in results:
        wall, loop = float(row[1].split()[0]), float(row[3].split()[0])
        row += [f"**{before_wall / wall:.1f}x**", f"**{before_loop / loop:.1f}x**"]
    settings = (
        f"{args.e2e_rows} rows, batch {args.batch_size}, mini-batch {args.mini_batch_size[-1]}, one epoch, "
        f"model {args.model}{', bf16 on ' + torch.cuda.get_device_name() if on_gpu else ', CPU'}"
    )
    print(f"\ntrain_vdr.py end to end ({settings}; load {os.getloadavg()[0]:.2f}):")
    print(
        table(
            ["run", "wall (command)", "rows/s", "training loop", "rows/s", "wall vs before", "loop vs before"], results
        )
    )


def hidden_size(model: str) -> int:
    """The model's hidden size (its embedding dimension) from its config, without loading its weights."""
    from transformers import AutoConfig

    from vdr.offline.tiny_model import ensure_tiny_qwen3_vl

    config = AutoConfig.from_pretrained(str(ensure_tiny_qwen3_vl()) if model == TINY_MODEL_ID else model)
    return getattr(config, "text_config", config).hidden_size


def training_loop_seconds(output: str) -> float:
    """The trainer's own train_runtime (training loop only: no start-up, model load or saving)."""
    match = re.search(r"'train_runtime': '?([0-9.]+)", output)
    if not match:
        raise RuntimeError(f"No train_runtime in train_vdr.py's output:\n{output[-2000:]}")
    return float(match.group(1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=TINY_MODEL_ID, help="Model folder or id (default: the tiny model).")
    parser.add_argument("--torch_dtype", default=None, help="e.g. bfloat16 for a full-size model on a GPU.")
    parser.add_argument("--num_rows", type=int, default=64)
    parser.add_argument("--format", choices=("png", "jpeg"), default="png")
    parser.add_argument("--max_pixels", type=int, default=RECIPE_MAX_PIXELS)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument(
        "--mini_batch_size",
        type=int,
        nargs="+",
        default=[1],
        help="Gradient-cache mini-batches (recipe: 1); the step split times each.",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--step_workers", type=int, default=2, help="Dataloader workers for the step split.")
    parser.add_argument("--steps", type=int, default=3, help="Training steps timed for the step split.")
    parser.add_argument("--torch_threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip_data_path", action="store_true", help="Only the step split (and --end_to_end).")
    parser.add_argument("--end_to_end", action="store_true", help="Also time train_vdr.py before and after.")
    parser.add_argument("--only_end_to_end", action="store_true", help="Only time train_vdr.py before and after.")
    parser.add_argument("--e2e_rows", type=int, default=96)
    parser.add_argument("--e2e_workers", type=int, default=2, help="Dataloader workers of the last end-to-end run.")
    parser.add_argument("--fresh_cache", action="store_true", help="Build the tiny model in a temporary cache.")
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes: checks that the benchmark runs.")
    args = parser.parse_args(argv)
    if args.num_rows < 2 * args.batch_size and not (args.smoke or args.only_end_to_end):  # step 0 only warms up
        parser.error(
            f"--num_rows {args.num_rows} gives fewer than 2 batches of {args.batch_size}: the step split "
            "needs at least 2 (the first one warms up)"
        )
    if args.smoke:
        args.num_rows, args.batch_size, args.max_pixels, args.steps = 4, 2, 64 * 64, 1
        args.workers, args.step_workers, args.e2e_rows = [0], 0, 4
    return args


if __name__ == "__main__":
    run(parse_args())
