"""What is kept in ``$VDR_CACHE``: builds made once and rebuilt when damaged, and the on-disk tensor cache."""

from __future__ import annotations

import logging

import torch

from vdr.cache import TensorCache
from vdr.data.sources import ensure_generated_pages
from vdr.evaluation.retrieve_then_rerank import _is_pair_table, _pair_scores, _pair_table
from vdr.offline.tiny_model import ensure_tiny_qwen3_vl


def test_damaged_caches_are_rebuilt_not_fatal(tmp_path):
    model_dir = ensure_tiny_qwen3_vl(tmp_path)
    (model_dir / "model.safetensors").write_bytes(b"truncated")
    assert ensure_tiny_qwen3_vl(tmp_path) == model_dir
    assert (model_dir / "model.safetensors").stat().st_size > 1000
    pages = ensure_generated_pages(4, seed=9, cache_dir=tmp_path)
    next(pages.glob("*.arrow")).unlink()
    assert ensure_generated_pages(4, seed=9, cache_dir=tmp_path) == pages
    from datasets import load_from_disk

    assert len(load_from_disk(str(pages))) == 4


def test_tensor_cache_round_trip_and_damage(tmp_path, caplog):
    cache = TensorCache(tmp_path)
    key = {"reranker": "abc", "dataset": "xyz"}
    scores = {(0, 5): 1.5, (3, 1): -0.25}
    cache.save(key, _pair_table(scores))
    assert _pair_scores(cache.load(key, is_valid=_is_pair_table)) == scores
    assert cache.load({**key, "dataset": "other"}) is None
    matrices = {"values": torch.arange(10.0).reshape(5, 2), "lengths": torch.tensor([2, 3])}
    cache.save({"token matrices": 1}, matrices)
    loaded = cache.load({"token matrices": 1})
    assert torch.equal(loaded["values"], matrices["values"]) and torch.equal(loaded["lengths"], matrices["lengths"])
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, renamed into place
    cache.path(key).write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="vdr.cache"):
        assert cache.load(key) is None  # a damaged entry is computed again, not an error
        assert cache.load({"token matrices": 1}, is_valid=lambda value: False) is None  # refused by the caller
    assert caplog.text.count("Ignoring the damaged cache entry") == 2
    assert TensorCache(None).load(key) is None and TensorCache(None).path(key) is None
