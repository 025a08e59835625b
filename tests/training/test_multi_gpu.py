"""Several processes on the CPU (gloo), standing in for several GPUs: in-batch negatives gathered across processes
give the single-process loss and gradients; a two-process torchrun run trains, evaluates once and saves one model;
the FSDP config for the 8B model resolves on the same architecture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import REPO_ROOT
from vdr.models.embedder import build_model
from vdr.models.loading import ModelLoadingArguments
from vdr.training.arguments import LossArguments
from vdr.training.losses import build_loss

ROWS_PER_PROCESS = 3
COLUMNS = ("query", "image", "negative_0")


def loss_and_gradients(model_dir: str, rows: list[dict], gather: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """The recipe's loss (Matryoshka over cached MNRL) on ``rows`` and the gradients it gives every weight."""
    torch.manual_seed(0)
    model = build_model(model_dir, ModelLoadingArguments(torch_dtype="float32", max_pixels=36864))
    loss_args = LossArguments(matryoshka_dims=[64, 32, 16], mini_batch_size=2, gather_across_devices=gather)
    loss = build_loss(model, loss_args)
    features = [model.preprocess([row[column] for row in rows]) for column in COLUMNS]
    value = loss(features, labels=None)
    value.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return value.item(), gradients


def one_process(rank: int, world_size: int, init_file: str, model_dir: str, rows: list[dict], out_dir: str) -> None:
    """One of the processes: its share of the rows, negatives gathered from the others."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        share = rows[rank * ROWS_PER_PROCESS : (rank + 1) * ROWS_PER_PROCESS]
        torch.save(loss_and_gradients(model_dir, share, gather=True), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_negatives_give_the_single_process_loss_and_gradients(tiny_model_dir, generated_rows, tmp_path):
    rows = generated_rows[: 2 * ROWS_PER_PROCESS]
    mp.spawn(one_process, args=(2, str(tmp_path / "init"), str(tiny_model_dir), rows, str(tmp_path)), nprocs=2)
    per_process = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    single_loss, single_gradients = loss_and_gradients(str(tiny_model_dir), rows, gather=False)

    # Each process's loss is the mean over its own queries against all 2B pages (2 x (1 + 1 negative) candidates a
    # row); DDP averages the processes' gradients, so both averages must equal the single process's on 2B rows.
    assert sum(loss for loss, _ in per_process) / 2 == pytest.approx(single_loss, abs=1e-5)
    assert single_gradients.keys() == per_process[0][1].keys()
    for name, expected in single_gradients.items():
        averaged = (per_process[0][1][name] + per_process[1][1][name]) / 2
        torch.testing.assert_close(averaged, expected, atol=1e-5, rtol=1e-4, msg=name)
    # Without gathering the processes would see only their own rows: a different (smaller-batch) loss
    assert abs(per_process[0][0] - loss_and_gradients(str(tiny_model_dir), rows[:ROWS_PER_PROCESS], False)[0]) > 1e-3


def test_a_two_process_torchrun_run_trains_evaluates_once_and_saves_one_model(tmp_path, vdr_cache):
    output_dir = tmp_path / "run"
    command = [
        sys.executable,
        *(
            "-m torch.distributed.run --standalone --nproc_per_node 2 train_vdr.py "
            "--config configs/quickstart.yaml --use_cpu true --output_dir"
        ).split(),
        str(output_dir),
        *(
            "--gather_across_devices true --num_generated_rows 24 --eval_split_size 4 "
            "--eval_strategy no --per_device_train_batch_size 4 --max_steps 2 --save_steps 2"
        ).split(),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]

    assert log.count("Base model:") == 1 and log.count("Before and after training:") == 1  # the main process only
    assert log.count("Saved the final model") == 1
    assert [p.name for p in output_dir.glob("checkpoint-*")] == ["checkpoint-2"]
    assert (output_dir / "final" / "model.safetensors").is_file()
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["train_batch_size"] == 4
    # a step takes 2 processes x 4 rows: the 20 training rows make 2 whole steps, an epoch (one process: 5 steps)
    assert state["epoch"] == pytest.approx(1.0)
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["base_ndcg@10"] is not None and metrics["final_ndcg@10"] is not None


def test_the_8b_fsdp_config_shards_every_layer_of_the_architecture(tiny_model_dir):
    """The FSDP config parses into accelerate's plugin, and its layer classes exist in Qwen3-VL (the tiny model is
    the 8B model's architecture): accelerate's auto-wrap policy then picks each text layer and vision block."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from train_vdr import make_parser

    arguments = [
        *(
            "--config configs/qwen3-vl-embedding-8b-vdr-fsdp.yaml --use_cpu true "
            "--fsdp --fsdp_config configs/fsdp/qwen3-vl-embedding-8b.json"
        ).split()
    ]
    training = make_parser().parse([str(REPO_ROOT / a) if a.startswith("configs/") else a for a in arguments])[4]
    plugin = FullyShardedDataParallelPlugin(**training.fsdp_plugin_args)
    assert plugin.fsdp_version == 2 and "SHARDED_STATE_DICT" in str(plugin.state_dict_type)

    model = build_model(str(tiny_model_dir), ModelLoadingArguments(torch_dtype="float32"))
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [type(module).__name__ for module in model.modules() if policy(module)]
    backbone = model.transformers_model
    assert wrapped.count("Qwen3VLTextDecoderLayer") == len(backbone.language_model.layers)
    assert wrapped.count("Qwen3VLVisionBlock") == len(backbone.visual.blocks)
