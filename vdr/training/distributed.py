"""Several processes (torchrun / accelerate launch): work done once on the main process, and the trained model
gathered whole for the final save when FSDP shards it. The training itself is the Trainer's (DDP or FSDP)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch.distributed as dist
from sentence_transformers import SentenceTransformer


@contextmanager
def main_process_only(args: Any) -> Iterator[bool]:
    """For work done once, on the main process: yields whether this is the main process, which does the work while
    the others wait at a barrier after the block instead of repeating it. The barrier is reached even if the work
    fails, so the others are released to stop with it rather than hang until the collective timeout.

        with main_process_only(training_args) as is_main:
            if is_main:
                ...
    """
    try:
        yield args.process_index == 0
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
