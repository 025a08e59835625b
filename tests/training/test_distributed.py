"""Work done once on the main process: the other processes wait for it, and are released when it fails."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from types import SimpleNamespace

import torch.distributed as dist
import torch.multiprocessing as mp

from vdr.training.distributed import main_process_only


def _run_one_process(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A short collective timeout, so that a broken release fails the test instead of hanging it for 30 minutes.
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=20))
    args = SimpleNamespace(process_index=rank, world_size=2)
    try:
        with main_process_only(args) as is_main:
            if is_main:
                time.sleep(1.0)  # the other process must be waiting for this, not past it
                results["main work done"] = time.monotonic()
                raise RuntimeError("the main process's work failed")
        results[rank] = ("passed the block", time.monotonic())
    except RuntimeError as error:
        results[rank] = (str(error).splitlines()[0], time.monotonic())
    finally:
        dist.destroy_process_group()


def test_the_other_process_waits_for_the_main_one_and_is_released_when_it_fails(tmp_path):
    port = 29500 + os.getpid() % 1000
    with mp.Manager() as manager:
        results = manager.dict()
        # fork: the children reuse this process's imports (spawn would import torch twice more, ~10 s)
        mp.start_processes(_run_one_process, args=(port, results), nprocs=2, start_method="fork")
        results = dict(results)
    assert results[0][0] == "the main process's work failed"
    assert results[1][0] == "passed the block"
    assert results[1][1] >= results["main work done"]  # it waited for the main process's work
