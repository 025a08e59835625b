"""Issue 12, choosing what to deploy: quantized storage, MaxSim, BM25, the storage report, multi-vector training and
one evaluate_vdr.py run with every kind of model."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from datasets import Dataset, Image
from sentence_transformers import MultiVectorEncoder
from transformers import set_seed

import train_vdr
import vdr.bm25
from evaluate_vdr import main, make_parser
from vdr.bm25 import bm25_index, bm25_scores, score_bm25
from vdr.config import ModelArguments, ModelLoadingArguments, load_yaml
from vdr.data import (
    DatasetSpec,
    RetrievalData,
    load_retrieval_data,
    negative_columns_of,
    retrieval_from_rows,
    write_beir,
)
from vdr.deployment import STORAGE_HEADING, pareto_front
from vdr.errors import VdrError
from vdr.evaluation import retrieval_scores
from vdr.model import build_model
from vdr.multi_vector import (
    TokenEmbeddings,
    build_multi_vector_model,
    is_multi_vector_model,
    keep_only_image_tokens,
    maxsim_scores,
    multi_vector_records,
)
from vdr.pages import GENERATED_PAGES_ID, generate_rows
from vdr.quantization import bytes_per_page, quantized_scores
from vdr.scoring import metrics_from_scores

from .conftest import REPO_ROOT

MAX_PIXELS = 36864


def tiny_data(
    num_queries: int, num_pages: int, relevant: list[int], texts: list[str] | None = None, queries: list[str] = ()
) -> RetrievalData:
    qrels = {q: {page: 1.0} for q, page in enumerate(relevant)}
    corpus = {page: f"page {page}" for page in range(num_pages)}
    page_texts = dict(enumerate(texts)) if texts else None
    query_texts = dict(enumerate(queries)) if queries else {q: f"query {q}" for q in range(num_queries)}
    return RetrievalData(query_texts, corpus, qrels, page_texts)


def test_metrics_from_a_score_matrix_match_a_hand_computation():
    # query 0 ranks its page first; query 1 ranks its page third
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.9, 0.5, 0.1]])
    values = metrics_from_scores(scores, tiny_data(2, 3, relevant=[1, 2]))
    assert values["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 2)
    assert values["mrr@10"] == pytest.approx((1 + 1 / 3) / 2)
    assert values["recall@1"] == pytest.approx(0.5)


def test_score_matrix_metrics_are_the_evaluators_and_shuffled_ties_do_not_favour_positives():
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=1)
    pages = torch.nn.functional.normalize(torch.randn(18, 8, generator=generator), dim=1)
    data = tiny_data(6, 18, relevant=[0, 1, 2, 3, 4, 5])
    from_embeddings = retrieval_scores(queries, pages, data, [8], lambda q, p: q @ p.T, "dot")[8]
    assert metrics_from_scores(queries @ pages.T, data) == pytest.approx(from_embeddings)
    # every page tied: the evaluator's order (smaller id first) ranks each positive (ids 0..5) near the top
    tied = torch.zeros(6, 18)
    assert metrics_from_scores(tied, data)["ndcg@10"] > metrics_from_scores(tied, data, shuffle_ties=True)["ndcg@10"]


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

    records = multi_vector_records("mv", "tiny", tiny_data(2, 2, relevant=[0, 0]), TokenEmbeddings(queries, pages))
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

    records, skipped, _ = score_bm25({"tiny": tiny_data(2, 3, relevant=[0, 2], texts=texts, queries=queries)})
    assert skipped == [] and records[0]["metrics"]["ndcg@10"] == pytest.approx(1.0)
    assert records[0]["kind"] == "text" and records[0]["dim"] is None and records[0]["bytes_per_page"] > 0

    monkeypatch.setattr(vdr.bm25, "ocr_reader", lambda: None)  # as without the optional OCR package
    with caplog.at_level(logging.WARNING):
        records, skipped, _ = score_bm25({"no-text": tiny_data(2, 3, relevant=[0, 2])})
    assert (records, skipped) == ([], ["no-text"])
    assert "no page text column" in caplog.text and "pip install rapidocr-onnxruntime" in caplog.text


def test_pareto_front():
    points = [(8, 0.5), (64, 0.4), (256, 0.7), (256, 0.6), (1000, 0.7)]
    assert pareto_front(points) == [True, False, True, False, False]


def test_generated_pages_carry_their_text():
    row = generate_rows(1, seed=3)[0]
    organisation, title = row["image_text"].splitlines()[:2]
    assert organisation in row["query"] and title.startswith(organisation)
    assert {f"negative_{k}_text" for k in range(4)} <= set(row)
    assert all(row[f"negative_{k}_text"] != row["image_text"] for k in range(4))


def test_image_tokens_only_drops_the_template_tokens(tiny_model_dir):
    model = build_multi_vector_model(ModelLoadingArguments(max_pixels=MAX_PIXELS), str(tiny_model_dir))
    page = generate_rows(1, seed=3)[0]["image"]
    all_tokens = model.encode_document([page])[0]
    keep_only_image_tokens(model)
    image_tokens = model.encode_document([page])[0]
    processor = model[0].processor
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    expected = int((model.preprocess([page], task="document")["input_ids"] == image_token_id).sum())
    assert len(image_tokens) == expected < len(all_tokens)


@pytest.fixture(scope="module")
def quickstart_like_outputs(tmp_path_factory, vdr_cache):
    """A single-vector model saved with its Matryoshka dims and a multi-vector training output folder (untrained:
    the figures do not matter here, the rows do)."""
    folder = tmp_path_factory.mktemp("outputs")
    single = build_model(ModelArguments(model_name_or_path="generated:tiny-qwen3-vl", max_pixels=MAX_PIXELS))
    single.save_pretrained(str(folder / "single"))
    (folder / "single" / "vdr_training.json").write_text(json.dumps({"matryoshka_dims": [64, 32, 16]}))
    multi = build_multi_vector_model(ModelLoadingArguments(max_pixels=MAX_PIXELS), "generated:tiny-qwen3-vl")
    multi.save_pretrained(str(folder / "multi-run" / "final"))
    return folder


def test_evaluate_prints_every_dim_and_precision_multi_vector_and_bm25(tmp_path, quickstart_like_outputs, capsys):
    out = tmp_path / "out"
    argv = [
        "--model", str(quickstart_like_outputs / "single"), "--model", str(quickstart_like_outputs / "multi-run"),
        "--model", "bm25", "--dataset", GENERATED_PAGES_ID, "--num_generated_rows", "8",
        "--max_pixels", str(MAX_PIXELS), "--output_dir", str(out), "--no_cache", "true",
    ]  # fmt: skip
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


MULTI_VECTOR_QUICKSTART = str(REPO_ROOT / "configs" / "quickstart-multivector.yaml")


def train_multi_vector_quickstart(output_dir, *overrides: str) -> dict:
    argv = ["--config", MULTI_VECTOR_QUICKSTART, "--output_dir", str(output_dir), *overrides]
    return train_vdr.main(*train_vdr.make_parser().parse(argv))


def test_multi_vector_training_runs_with_its_own_loss_learning_rates_and_evaluation(tmp_path, vdr_cache):
    small = ["--num_generated_rows", "24", "--eval_split_size", "8", "--per_device_train_batch_size", "8",
             "--mini_batch_size", "8", "--num_train_epochs", "1"]  # fmt: skip
    metrics = train_multi_vector_quickstart(tmp_path / "run", *small)
    assert set(metrics["final"]) == set(metrics["base"]) == {"128"}  # keyed by the token dimension
    final = tmp_path / "run" / "final"
    assert is_multi_vector_model(str(final))
    resolved = json.loads((tmp_path / "run" / "run_config.json").read_text())["resolved"]
    projection_learning_rate = float(load_yaml(MULTI_VECTOR_QUICKSTART)["projection_learning_rate"])
    assert resolved["learning_rate_mapping"] == {r"^(model\.)?1\.linear": projection_learning_rate}
    # the projection trained: compare with the same seeded initialisation
    set_seed(42)
    initial = build_multi_vector_model(ModelLoadingArguments(max_pixels=MAX_PIXELS), "generated:tiny-qwen3-vl")
    trained = MultiVectorEncoder(str(final))
    assert not torch.allclose(initial[1].linear.weight, trained[1].linear.weight)


def test_multi_vector_arguments_are_checked_before_anything_loads(tmp_path):
    with pytest.raises(VdrError, match="does not apply to model_type multi_vector"):
        train_multi_vector_quickstart(tmp_path / "a", "--truncate_dim", "64", "--matryoshka_dims", "64")
    with pytest.raises(VdrError, match="invalid choice: 'multivector'"):
        train_multi_vector_quickstart(tmp_path / "b", "--model_type", "multivector")
    config = tmp_path / "typo.yaml"
    config.write_text("model_type: multivector\n")
    with pytest.raises(VdrError, match="model_type must be 'single_vector' or 'multi_vector'"):
        train_vdr.make_parser().parse(["--config", str(config)])
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_multi_vector_quickstart_improves(tmp_path, vdr_cache):
    metrics = train_multi_vector_quickstart(tmp_path / "run")
    assert metrics["final_ndcg@10"] - metrics["base_ndcg@10"] >= 0.1


def test_page_texts_follow_their_pages_in_both_layouts(tmp_path, generated_rows):
    rows = Dataset.from_list(generated_rows[:3]).cast_column("image", Image())
    negatives = [f"negative_{k}" for k in range(4)]
    data = retrieval_from_rows(rows, "query", "image", negatives, "rows")
    assert data.texts[1] == generated_rows[1]["image_text"]
    assert data.texts[3 * 3 + 2] == generated_rows[2]["negative_2_text"]  # page id n * (k + 1) + i
    assert negative_columns_of(rows, None) == negatives  # a negative's text column is not a page column
    beir = load_retrieval_data(DatasetSpec.parse(str(write_beir(rows, tmp_path / "beir"))))
    assert beir.texts["page-2-neg2"] == generated_rows[2]["negative_2_text"]
