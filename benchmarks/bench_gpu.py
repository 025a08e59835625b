"""Benchmark: the recipe's training and evaluation at the GPU's speed, in steady state, against the compute floor.

One prepared command for a GPU machine (6 to 8 minutes on one H100 or H200, start-up included):

    python benchmarks/bench_gpu.py --output_json outputs/bench_gpu.json

It writes a random model of Qwen3-VL-Embedding-2B's size (speed does not depend on the weights, and no Hub is
needed: benchmarks/random_qwen3_vl.py), presizes a few hundred A4 pages once, then, for each setting, trains in
steady state (warm-up steps first, then at least 10 measured steps) with the recipe's loss
(MatryoshkaLoss over CachedMultipleNegativesRankingLoss, batch 64, bf16) and reports rows/s, the ratio to the
compute floor (MFU, from the batches' real token counts), peak GPU memory and a split of one step (data wait,
vision tower, language model, loss, optimizer); then the evaluation's page encoding of the recipe's 1,500-page eval
set at batch 16, 32 and 64. Each setting is printed as it ends (a run cut short keeps what it measured); at the end
one table is printed and everything is written to JSON.

Settings (``--settings``; each changes one thing from the recipe, whose objective it keeps):
    recipe        batch 64, mini_batch_size 1, the fused AdamW kernel (transformers 5's default optim), as train_vdr.py
                  trains with configs/qwen3-vl-embedding-2b-vdr.yaml
    mb4 ... mb64  mini_batch_size 4, 8, 16, 32, 64 (gradient caching: the same loss and gradients)
    unfused       the plain (foreach) AdamW, optim adamw_torch, for comparison, at --base_mini_batch
    tf32          TF32 matmuls for what is not already bf16, at --base_mini_batch
    compile       torch.compile of the backbone, at --base_mini_batch
    workers8      8 dataloader workers instead of the recipe config's 4, at --base_mini_batch

The compute floor: gradient caching runs a no-grad forward, then a forward and a backward, about
8 x parameters x tokens FLOP a row (a query of ~30 tokens and two pages of ~380 visual tokens at 600*600);
--peak_tflops (790: dense bf16 that an H100 / H200 sustains) turns that into rows/s.

Usage:
    python benchmarks/bench_gpu.py                                  # on a GPU: every setting, about 7 minutes
    python benchmarks/bench_gpu.py --settings recipe mb16 fused     # some settings
    python benchmarks/bench_gpu.py --smoke                          # on a CPU: the tiny model, about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # runnable as `python benchmarks/bench_gpu.py` from a fresh clone
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_train import RECIPE_MIN_PIXELS, Setup, make_trainer, recipe_loss, sync, table, write_page_files  # noqa: E402
from datasets import concatenate_datasets  # noqa: E402

from vdr.data.page_images import presize_page_columns  # noqa: E402
from vdr.data.sources import load_training_data  # noqa: E402
from vdr.evaluation.encoding import EncodingStats, ResizedPageCache, encode_pages  # noqa: E402
from vdr.models.embedder import build_model  # noqa: E402
from vdr.models.loading import ModelLoadingArguments  # noqa: E402
from vdr.offline.tiny_model import TINY_MODEL_ID  # noqa: E402
from vdr.training.arguments import DataArguments  # noqa: E402

SETTINGS = ("recipe", "mb4", "mb8", "mb16", "mb32", "mb64", "unfused", "tf32", "compile", "workers8")
#: Gradient caching: a no-grad forward (2 FLOP a parameter a token), then a forward (2) and a backward (4).
FLOP_PER_PARAMETER_TOKEN = 8


@dataclass
class Setting:
    name: str
    mini_batch_size: int
    fused_adamw: bool = True  # transformers 5's default optim, adamw_torch_fused
    tf32: bool = False
    compile: bool = False
    workers: int = 4  # the recipe config's dataloader_num_workers


def setting(name: str, base_mini_batch: int, workers: int) -> Setting:
    if name == "recipe":
        return Setting(name, 1, workers=workers)
    if name.startswith("mb"):
        return Setting(name, int(name[2:]), workers=workers)
    options = {"unfused": {"fused_adamw": False}, "tf32": {"tf32": True}, "compile": {"compile": True}}
    options["workers8"] = {"workers": 8}
    return Setting(name, base_mini_batch, **{"workers": workers, **options[name]})


@dataclass
class Result:
    """One setting's steady state: per-step means over the measured steps."""

    setting: Setting
    rows_per_second: float = 0.0
    seconds_per_step: float = 0.0
    tokens_per_row: float = 0.0
    floor_rows_per_second: float = 0.0
    mfu: float = 0.0
    peak_memory_gib: float | None = None
    split_seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def row(self) -> list[str]:
        if self.error:
            return [self.setting.name, str(self.setting.mini_batch_size), self.error, "", "", "", "", ""]
        split = " / ".join(f"{part} {seconds:.2f}" for part, seconds in self.split_seconds.items())
        memory = "-" if self.peak_memory_gib is None else f"{self.peak_memory_gib:.1f} GiB"
        ratio = self.floor_rows_per_second / self.rows_per_second if self.rows_per_second else float("inf")
        return [
            self.setting.name,
            str(self.setting.mini_batch_size),
            f"{self.rows_per_second:.1f}",
            f"{self.mfu:.1%}",
            f"{ratio:.1f}x",
            memory,
            f"{self.tokens_per_row:.0f}",
            split,
        ]


HEADER = ["setting", "mini-batch", "rows/s", "MFU", "floor / achieved", "peak memory", "tokens/row", "split (s)"]


# ---------------------------------------------------------------------------------------------- the training step
class ModuleTimer:
    """Seconds spent in a module's forward passes (CUDA-synchronised hooks: used on one step only, whose own rate is
    not reported, since synchronising costs a little). Backward passes are timed as a whole, not by module: the
    Hugging Face modules return output objects, which full-backward hooks cannot see."""

    def __init__(self, module: torch.nn.Module):
        self.seconds = 0.0
        self._started: list[float] = []
        self.handles = [
            module.register_forward_pre_hook(lambda *_: self._start()),
            module.register_forward_hook(lambda *_: self._stop()),
        ]

    def _start(self) -> None:
        sync()
        self._started.append(time.perf_counter())

    def _stop(self) -> None:
        sync()
        if self._started:
            self.seconds += time.perf_counter() - self._started.pop()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def backbone_parts(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The Qwen3-VL backbone's vision tower and language model."""
    backbone = model[0].model
    backbone = getattr(backbone, "model", backbone)  # a *ForConditionalGeneration wraps the Qwen3VLModel
    return {"vision tower": backbone.visual, "language model": backbone.language_model}


def train_steps(setup: Setup, dataset, current: Setting, steps: int, timed: bool = False) -> dict[str, float]:
    """Run ``steps`` training steps as the trainer runs them; return summed seconds by part and the tokens seen."""
    trainer = make_trainer(setup, dataset, "no_duplicates", current.workers)
    parameters = [parameter for parameter in setup.model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=2e-5, fused=current.fused_adamw, foreach=not current.fused_adamw)
    timers = {name: ModuleTimer(module) for name, module in backbone_parts(setup.model).items()} if timed else {}
    totals = {"data wait": 0.0, "compute": 0.0, "backward": 0.0, "optimizer": 0.0, "tokens": 0.0, "rows": 0.0}
    batches = iter(trainer.get_train_dataloader())
    try:
        for _ in range(steps):
            start = time.perf_counter()
            features, labels = trainer.collect_features(trainer._prepare_inputs(next(batches)))
            sync()
            loaded = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=trainer.args.bf16):
                loss = setup.loss(features, labels)  # the gradient cache's no-grad pass over every mini-batch
            sync()
            forwards_before = sum(timer.seconds for timer in timers.values())
            backward_start = time.perf_counter()
            loss.backward()  # re-runs each mini-batch with gradients (forward again), then its backward
            sync()
            computed = time.perf_counter()
            forwards_in_backward = sum(timer.seconds for timer in timers.values()) - forwards_before
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            totals["data wait"] += loaded - start
            totals["compute"] += computed - loaded
            totals["backward"] += computed - backward_start - forwards_in_backward
            totals["optimizer"] += time.perf_counter() - computed
            totals["tokens"] += sum(float(feature["attention_mask"].sum()) for feature in features)
            totals["rows"] += len(features[0]["attention_mask"])
    finally:
        for name, timer in timers.items():
            timer.remove()
            totals[name] = timer.seconds
    return totals


def measure(setup: Setup, dataset, current: Setting, args: argparse.Namespace, parameters: int) -> Result:
    """Warm-up, then the measured steps (rows/s, MFU, memory), then one timed step for the split."""
    torch.backends.cuda.matmul.allow_tf32 = current.tf32
    setup.loss = recipe_loss(setup.model, current.mini_batch_size)
    backbone = setup.model[0].model
    if current.compile:
        backbone.compile(dynamic=True)
    result = Result(current)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        train_steps(setup, dataset, current, args.warmup_steps)
        measured = train_steps(setup, dataset, current, args.steps)
    finally:
        backbone._compiled_call_impl = None  # the next setting runs the plain model again
    seconds = measured["data wait"] + measured["compute"] + measured["optimizer"]
    result.seconds_per_step = seconds / args.steps
    result.rows_per_second = measured["rows"] / seconds
    result.tokens_per_row = measured["tokens"] / measured["rows"]
    flop_per_row = FLOP_PER_PARAMETER_TOKEN * parameters * result.tokens_per_row
    result.floor_rows_per_second = args.peak_tflops * 1e12 / flop_per_row
    result.mfu = result.rows_per_second / result.floor_rows_per_second
    if torch.cuda.is_available():
        result.peak_memory_gib = torch.cuda.max_memory_allocated() / 2**30
    timed = train_steps(setup, dataset, current, 1, timed=True)
    accounted = timed["vision tower"] + timed["language model"] + timed["backward"]
    result.split_seconds = {
        "data wait": timed["data wait"],
        "vision forward": timed["vision tower"],
        "LM forward": timed["language model"],
        "backward": timed["backward"],
        "loss": max(timed["compute"] - accounted, 0.0),  # similarity, Matryoshka and gradient-cache work around them
        "optimizer": timed["optimizer"],
    }
    return result


# ------------------------------------------------------------------------------------------------ the evaluation
def encoding_rates(model: torch.nn.Module, pages: list, batch_sizes: list[int]) -> dict[int, float]:
    """Pages/s encoding the (presized) eval pages, as evaluate_vdr.py and the training evaluator do."""
    rates = {}
    model.eval()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.cuda.is_available()):
        for batch_size in batch_sizes:
            encode_pages(model, pages[: batch_size * 2], batch_size, ResizedPageCache(0), "warmup", EncodingStats())
            sync()
            start = time.perf_counter()
            encode_pages(model, pages, batch_size, ResizedPageCache(0), "eval", EncodingStats(), False)
            sync()
            rates[batch_size] = len(pages) / (time.perf_counter() - start)
    model.train()
    return rates


# ------------------------------------------------------------------------------------------------------- the run
def prepare(args: argparse.Namespace, work: Path) -> tuple[Setup, object, list]:
    """The model (written once, offline), and the training rows and eval pages presized once."""
    model_path = args.model
    if model_path is None:
        from random_qwen3_vl import main as write_random_model
        from random_qwen3_vl import parse_args as random_model_args

        model_path = str(write_random_model(random_model_args(["--size", "2b", "--output_dir", str(work / "model")])))
    loading = ModelLoadingArguments(
        torch_dtype=args.torch_dtype, min_pixels=RECIPE_MIN_PIXELS, max_pixels=args.max_pixels
    )
    model = build_model(model_path, loading)
    if torch.cuda.is_available():
        model.to("cuda")
    jsonl = write_page_files(work / "data", args.num_rows, "png")
    rows, _ = load_training_data(DataArguments(train_dataset=str(jsonl), negative_columns=["negative_0"]), seed=42)
    rows = presize_page_columns(model, rows, work / "pages")
    repeats = -(-(args.warmup_steps + args.steps + 1) * args.batch_size // len(rows))
    dataset = concatenate_datasets([rows] * max(repeats, 1))  # enough steps; no_duplicates keeps each batch unique
    pages = [*rows["image"], *rows["negative_0"]]
    eval_pages = (pages * -(-args.eval_pages // len(pages)))[: args.eval_pages]
    setup = Setup(model, None, args.batch_size, str(work / "out"))
    return setup, dataset, eval_pages


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-gpu-"))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    setup, dataset, eval_pages = prepare(args, work)
    parameters = sum(parameter.numel() for parameter in setup.model[0].model.parameters())
    report = {
        "device": device,
        "cpu_cores": os.cpu_count(),
        "software": software(setup.model),
        "settings": vars(args),
        "parameters": parameters,
        "results": [],
        "encoding_pages_per_second": {},
    }
    prepared = time.perf_counter() - started
    print(f"{device}; {parameters / 1e9:.2f}B parameters; {report['software']}; prepared in {prepared:.0f} s")
    results = []
    for name in args.settings:
        if time.perf_counter() - started > args.time_budget_s:
            print(f"{name}: skipped, the time budget ({args.time_budget_s} s) is spent")
            continue
        current = setting(name, args.base_mini_batch, args.workers)
        try:
            result = measure(setup, dataset, current, args, parameters)
        except Exception as error:  # out of memory at a large mini-batch, a compile failure: keep the other figures
            result = Result(current, error=f"failed: {type(error).__name__}: {str(error)[:120]}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        results.append(result)
        report["results"].append({**asdict(result), "setting": asdict(current)})
        print(" | ".join(result.row()), flush=True)
        write_json(report, args.output_json)
    if time.perf_counter() - started <= args.time_budget_s:
        rates = encoding_rates(setup.model, eval_pages, args.eval_batch_sizes)
        report["encoding_pages_per_second"] = rates
        rate_text = ", ".join(f"batch {size}: {rate:.0f} pages/s" for size, rate in rates.items())
        print(f"Eval encoding, {len(eval_pages)} presized pages: {rate_text}")
    report["wall_seconds"] = time.perf_counter() - started
    write_json(report, args.output_json)
    print(
        f"\nSteady-state training ({args.batch_size} rows a step, {args.steps} measured steps after "
        f"{args.warmup_steps} warm-up; floor at {args.peak_tflops:g} TFLOP/s):"
    )
    print(table(HEADER, [result.row() for result in results]))
    return report


def software(model: torch.nn.Module) -> str:
    import sentence_transformers
    import transformers

    attention = getattr(model[0].model.config, "_attn_implementation", "?")
    return (
        f"torch {torch.__version__}, transformers {transformers.__version__}, sentence-transformers "
        f"{sentence_transformers.__version__}, attention {attention}"
    )


def write_json(report: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2, default=str))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--model", default=None, help="A model folder; default: write a random 2B-size model.")
    parser.add_argument("--torch_dtype", default="bfloat16")
    parser.add_argument("--max_pixels", type=int, default=600 * 600)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--base_mini_batch", type=int, default=16, help="Mini-batch of the unfused/tf32/... settings.")
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="Measured steps per setting (after the warm-up).")
    parser.add_argument("--workers", type=int, default=4, help="Dataloader workers (the recipe config's 4).")
    parser.add_argument("--num_rows", type=int, default=192, help="Distinct rows (2 A4 pages each) presized once.")
    parser.add_argument("--eval_pages", type=int, default=1500)
    parser.add_argument("--eval_batch_sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--peak_tflops", type=float, default=790.0, help="Dense bf16 TFLOP/s of the GPU.")
    parser.add_argument("--time_budget_s", type=float, default=420.0, help="No new setting starts after this.")
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--output_json", default=None)
    parser.add_argument("--smoke", action="store_true", help="CPU check on the tiny model (about a minute).")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.torch_dtype, args.max_pixels = TINY_MODEL_ID, "float32", 128 * 128
        args.batch_size, args.warmup_steps, args.steps, args.num_rows, args.workers = 8, 1, 2, 16, 0
        args.eval_pages, args.eval_batch_sizes = 32, [8, 16]
        args.settings = [name for name in args.settings if name not in ("tf32", "compile", "workers8")]
        args.settings = [name for name in args.settings if not name.startswith("mb") or int(name[2:]) <= 8]
    return args


if __name__ == "__main__":
    run(parse_args())
