"""Every kind of model scored: quantized storage against a direct computation, MaxSim against a hand-worked case,
BM25 on a hand-made corpus, and one evaluate_vdr.py run with every kind of model side by side."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

import vdr.evaluation.bm25
from evaluate_vdr import main, make_parser
from tests.helpers import tiny_data
from vdr.evaluation.bm25 import bm25_index, bm25_scores, score_bm25
from vdr.evaluation.encoding import Embeddings
from vdr.evaluation.maxsim import maxsim_scores, multi_vector_records
from vdr.evaluation.quantization import bytes_per_page, quantized_scores
from vdr.evaluation.storage_report import STORAGE_HEADING
from vdr.models.embedder import build_model
from vdr.models.loading import ModelLoadingArguments
from vdr.models.multi_vector import build_multi_vector_model, is_multi_vector_model
from vdr.offline.generated_pages import GENERATED_PAGES_ID

MAX_PIXELS = 36864


def test_quantized_scores_match_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    dim = 20  # not a multiple of 8: packed binary codes carry padding bits
    queries = torch.nn.functional.normalize(torch.randn(5, dim, generator=generator), dim=1)
    pages = torch.nn.functional.normalize(torch.randn(30, dim, generator=generator), dim=1)

    assert torch.allclose(quantized_scores(queries, pages, "float32"), queries @ pages.T)

    # int8: codes from the corpus' per-dim min / max (255 steps), shifted to -128..127; scores are integer dots
    low, high = pages.min(dim=0).values.numpy(), pages.max(dim=0).values.numpy()
    step = (high - low) / 255

    def codes(x: torch.Tensor) -> np.ndarray:
        return (np.clip(np.floor((x.numpy() - low) / step), 0, 255) - 128).astype(np.int64)

    assert torch.equal(quantized_scores(queries, pages, "int8"), torch.from_numpy(codes(queries) @ codes(pages).T))

    # binary: minus the number of dims whose signs differ
    hamming = ((queries > 0)[:, None, :] != (pages > 0)[None, :, :]).sum(dim=2)
    assert torch.equal(quantized_scores(queries, pages, "binary"), -hamming)

    # rescored: the 6 Hamming-nearest pages (ties: the earlier page) first, ordered by float query . page bits
    rescored = quantized_scores(queries, pages, "binary_rescored", rescore_candidates=6)
    bits = (pages > 0).float()
    for query in range(len(queries)):
        candidates = sorted(range(len(pages)), key=lambda page: (int(hamming[query, page]), page))[:6]
        expected = sorted(candidates, key=lambda page: -float(queries[query] @ bits[page]))
        assert rescored[query].argsort(descending=True)[:6].tolist() == expected

    assert [bytes_per_page(dim, p) for p in ("float32", "int8", "binary", "binary_rescored")] == [80, 20, 3, 3]


def test_maxsim_against_a_hand_worked_case():
    queries = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.6, 0.8]])]
    pages = [torch.tensor([[1.0, 0.0], [0.6, 0.8]]), torch.tensor([[0.0, 1.0]])]
    # query 0 / page 0: token (1,0) best matches (1,0): 1; token (0,1) best matches (0.6,0.8): 0.8 -> 1.8
    # query 0 / page 1: 0 + 1 = 1;  query 1 / page 0: max(0.6, 1.0) = 1;  query 1 / page 1: 0.8
    expected = torch.tensor([[1.8, 1.0], [1.0, 0.8]])
    assert torch.allclose(maxsim_scores(queries, pages), expected)

    records = multi_vector_records("mv", "tiny", tiny_data(2, 2, relevant=[0, 0]), Embeddings(queries, pages))
    assert [(r["precision"], r["bytes_per_page"]) for r in records] == [("float32", 12.0), ("float16", 6.0)]
    assert records[0]["dim"] == 2 and records[0]["metrics"]["ndcg@10"] == pytest.approx(1.0)


def test_bm25_on_a_tiny_hand_made_corpus(caplog, monkeypatch):
    texts = ["Contoso revenue 2019 table", "Contoso revenue 2020", "Northwind headcount 2019 report"]
    queries = ["Contoso revenue 2019", "Northwind headcount"]
    scores = bm25_scores(bm25_index(texts), queries)
    assert scores.argmax(dim=1).tolist() == [0, 2]
    # Lucene's BM25 (k1 1.5, b 0.75; since Lucene 8 without the constant (k1 + 1) factor) for "northwind" in page 2:
    # tf 1, df 1 of 3 pages, 4 words against 11/3 on average
    idf = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    tf_part = 1 / (1 + 1.5 * (1 - 0.75 + 0.75 * 4 / (11 / 3)))
    headcount = scores[1, 2] / 2  # "northwind" and "headcount" have the same counts
    assert float(headcount) == pytest.approx(idf * tf_part, rel=1e-5)

    scored = score_bm25({"tiny": tiny_data(2, 3, relevant=[0, 2], texts=texts, queries=queries)})
    records = scored.records
    assert scored.notes == [] and records[0]["metrics"]["ndcg@10"] == pytest.approx(1.0)
    assert records[0]["kind"] == "text" and records[0]["dim"] is None and records[0]["bytes_per_page"] > 0
    assert scored.storage == records  # BM25's one precision: its records are its storage rows

    monkeypatch.setattr(vdr.evaluation.bm25, "ocr_reader", lambda: None)  # as without the optional OCR package
    with caplog.at_level(logging.WARNING):
        scored = score_bm25({"no-text": tiny_data(2, 3, relevant=[0, 2])})
    assert scored.records == [] and scored.notes == [
        "BM25 skipped on 'no-text': no page text and no OCR package (see the log)."
    ]
    assert "no page text column" in caplog.text and "pip install rapidocr-onnxruntime" in caplog.text


@pytest.fixture(scope="module")
def quickstart_like_outputs(tmp_path_factory, vdr_cache):
    """A single-vector model saved with its Matryoshka dims and a multi-vector training output folder (untrained:
    the figures do not matter here, the rows do)."""
    folder = tmp_path_factory.mktemp("outputs")
    single = build_model("generated:tiny-qwen3-vl", ModelLoadingArguments(max_pixels=MAX_PIXELS))
    single.save_pretrained(str(folder / "single"))
    (folder / "single" / "vdr_training.json").write_text(json.dumps({"matryoshka_dims": [64, 32, 16]}))
    multi = build_multi_vector_model("generated:tiny-qwen3-vl", ModelLoadingArguments(max_pixels=MAX_PIXELS))
    multi.save_pretrained(str(folder / "multi-run" / "final"))
    return folder


def test_evaluate_prints_every_dim_and_precision_multi_vector_and_bm25(tmp_path, quickstart_like_outputs, capsys):
    out = tmp_path / "out"
    argv = [
        "--model",
        str(quickstart_like_outputs / "single"),
        "--model",
        str(quickstart_like_outputs / "multi-run"),
        "--model",
        "bm25",
        "--dataset",
        GENERATED_PAGES_ID,
        "--num_generated_rows",
        "8",
        "--max_pixels",
        str(MAX_PIXELS),
        "--output_dir",
        str(out),
        "--no_cache",
        "true",
    ]
    assert is_multi_vector_model(str(quickstart_like_outputs / "multi-run" / "final"))
    result = main(*make_parser().parse(argv))
    printed = capsys.readouterr().out

    for dim in (64, 32, 16):
        for precision in ("float32", "int8", "binary", "binary_rescored"):
            row = f"| pages | single | single_vector | {dim} | {precision} | {bytes_per_page(dim, precision):,} |"
            assert row in printed, row
    assert "| pages | multi-run | multi_vector | 128 | float32 |" in printed
    assert "| pages | multi-run | multi_vector | 128 | float16 |" in printed
    assert "| pages | bm25 | text | - | bm25 |" in printed
    assert {r["model"] for r in result["records"]} == {"single", "multi-run", "bm25"}

    # the float32 storage rows are the main results' numbers
    saved = json.loads((out / "results.json").read_text())
    main_ndcg = {(r["model"], r["dim"]): r["metrics"]["ndcg@10"] for r in saved["results"]}
    for row in saved["metadata"]["storage"]:
        if row["precision"] == "float32":
            assert row["metrics"]["ndcg@10"] == pytest.approx(main_ndcg[(row["model"], row["dim"])], abs=1e-9)
    assert STORAGE_HEADING in (out / "results.md").read_text()
    for name in ("storage.csv", "ndcg_vs_bytes.png", "ndcg_by_dim.png", "ndcg_by_model.png"):
        assert (out / name).stat().st_size > 0, name
