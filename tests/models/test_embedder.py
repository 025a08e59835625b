"""The embedding model: pooling, normalisation, prompts kept on save/reload, loading paths and errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

from vdr.cli import UnusedLmHeadReportFilter
from vdr.errors import VdrError
from vdr.models.embedder import build_model
from vdr.models.loading import ModelLoadingArguments, model_kwargs


def test_bare_vlm_gets_last_token_pooling_and_normalisation(tiny_model_copy, generated_rows):
    model = build_model(str(tiny_model_copy), ModelLoadingArguments())
    assert [type(module) for module in model][1:] == [Pooling, Normalize]
    assert model[1].pooling_mode == "lasttoken"
    embeddings = model.encode([generated_rows[0]["query"], generated_rows[0]["image"]], convert_to_tensor=True)
    assert embeddings.shape == (2, 64)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))


def test_last_token_pooling_reads_the_final_position(tiny_model_copy):
    # The pooled vector must equal the final token's hidden state (normalised), not a mean over tokens.
    model = build_model(str(tiny_model_copy), ModelLoadingArguments())
    features = model[0].preprocess(["What was the revenue of Contoso Energy in Q3 2019?"])
    with torch.no_grad():
        tokens = model[0](dict(features))["token_embeddings"][0]
        pooled = model.encode(["What was the revenue of Contoso Energy in Q3 2019?"], convert_to_tensor=True)[0]
    torch.testing.assert_close(pooled, torch.nn.functional.normalize(tokens[-1], dim=0), atol=1e-5, rtol=1e-5)


def test_prompts_and_truncate_dim_survive_save_and_reload(tiny_model_copy, tmp_path):
    loading = ModelLoadingArguments(query_prompt="Query: ", document_prompt="Page: ")
    model = build_model(str(tiny_model_copy), loading)
    model.truncate_dim = 32
    model.save_pretrained(str(tmp_path / "saved"))
    reloaded = SentenceTransformer(str(tmp_path / "saved"))
    assert reloaded.prompts["query"] == "Query: " and reloaded.prompts["document"] == "Page: "
    assert reloaded.truncate_dim == 32
    query = "headcount of Litware Labs"
    np.testing.assert_allclose(reloaded.encode_query([query]), model.encode_query([query]), atol=1e-6)
    # The prompt is really applied: encoding with it differs from encoding without it.
    assert not np.allclose(model.encode_query([query]), model.encode([query]))


def test_sentence_transformers_checkpoint_loads_as_it_is(tiny_model_copy, tmp_path):
    model = build_model(str(tiny_model_copy), ModelLoadingArguments())
    model[1].pooling_mode = "mean"  # something the bare-VLM path would not build
    model.save_pretrained(str(tmp_path / "st"))
    loaded = build_model(str(tmp_path / "st"), ModelLoadingArguments())
    assert loaded[1].pooling_mode == "mean"


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(VdrError, match=r"Model path '.*no-such-model' does not exist"):
        build_model(str(tmp_path / "no-such-model"), ModelLoadingArguments())


def test_folder_without_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VdrError, match=r"Could not load model '.*empty'"):
        build_model(str(tmp_path / "empty"), ModelLoadingArguments())


def test_flash_attention_falls_back_to_sdpa_with_one_warning(caplog, monkeypatch):
    monkeypatch.setattr("vdr.models.loading._flash_attention_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="vdr.models.loading"):
        kwargs = model_kwargs(ModelLoadingArguments(attn_implementation="flash_attention_2", torch_dtype="bfloat16"))
    assert kwargs == {"attn_implementation": "sdpa", "dtype": "bfloat16"}
    assert len(caplog.records) == 1 and "pip install flash-attn" in caplog.records[0].getMessage()


def test_flash_attention_is_kept_when_available(monkeypatch):
    monkeypatch.setattr("vdr.models.loading._flash_attention_available", lambda: True)
    assert model_kwargs(ModelLoadingArguments(attn_implementation="flash_attention_2"))["attn_implementation"] == (
        "flash_attention_2"
    )


def test_only_the_unused_lm_head_load_report_is_silenced():
    def report(*rows: str) -> logging.LogRecord:
        table = "Key            | Status     |  | \n---------------+------------+--+-\n" + "\n".join(rows)
        message = f"\x1b[1mQwen3VLModel LOAD REPORT\x1b[0m from: x\n{table}\n\nNotes:\n- UNEXPECTED: can be ignored"
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0, message, None, None)

    keep = UnusedLmHeadReportFilter().filter
    assert not keep(report("lm_head.weight | \x1b[33mUNEXPECTED\x1b[0m |  | "))
    assert keep(report("lm_head.weight | UNEXPECTED |  | ", "model.norm.weight | MISSING |  | "))
    assert keep(report("visual.blocks.0.weight | UNEXPECTED |  | "))
    assert keep(logging.LogRecord("transformers", logging.WARNING, "", 0, "something else", None, None))
