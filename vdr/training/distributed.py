"""Several processes (torchrun / accelerate launch): work done once on the main process, and the trained model
gathered whole for the final save when FSDP shards it. The training itself is the Trainer's (DDP or FSDP)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist
from sentence_transformers import SentenceTransformer

T = TypeVar("T")


def on_main_process(args: Any, work: Callable[[], T]) -> T | None:
    """Run ``work`` on the main process only (None elsewhere); the other processes wait at a barrier until it is
    done instead of repeating it. The barrier is reached even if ``work`` fails, so the others are released to
    stop with it rather than hang until the collective timeout."""
    try:
        return work() if args.process_index == 0 else None
    finally:
        if args.world_size > 1 and dist.is_initialized():
            dist.barrier()


def whole_trained_model(
    trainer: Any, model: SentenceTransformer, rebuild: Callable[[], SentenceTransformer]
) -> SentenceTransformer | None:
    """The trained model, whole, on the main process (None on the others).

    With DDP (or one process) every process holds the whole model already. FSDP leaves each one a shard of the
    weights: accelerate gathers them (every process must take part) into a CPU state dict on the main process,
    which loads it into a freshly built, unsharded copy (``rebuild``) for the final save and evaluation.
    """
    if not getattr(trainer, "is_fsdp_enabled", False):
        return model if trainer.is_world_process_zero() else None
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if not trainer.is_world_process_zero():
        return None
    whole = rebuild()
    whole.load_state_dict(state_dict)
    return whole
