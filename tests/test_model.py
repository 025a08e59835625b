"""The model builder: pooling, normalisation, prompts kept on save/reload, loading paths and errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

from vdr.config import ModelArguments
from vdr.errors import VdrError
from vdr.model import build_model, model_kwargs


def test_bare_vlm_gets_last_token_pooling_and_normalisation(tiny_model_copy, generated_rows):
    model = build_model(ModelArguments(model_name_or_path=str(tiny_model_copy)))
    assert [type(module) for module in model][1:] == [Pooling, Normalize]
    assert model[1].pooling_mode == "lasttoken"
    embeddings = model.encode([generated_rows[0]["query"], generated_rows[0]["image"]], convert_to_tensor=True)
    assert embeddings.shape == (2, 64)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))


def test_last_token_pooling_reads_the_final_position(tiny_model_copy):
    # The pooled vector must equal the final token's hidden state (normalised), not a mean over tokens.
    model = build_model(ModelArguments(model_name_or_path=str(tiny_model_copy)))
    features = model[0].preprocess(["What was the revenue of Contoso Energy in Q3 2019?"])
    with torch.no_grad():
        tokens = model[0](dict(features))["token_embeddings"][0]
        pooled = model.encode(["What was the revenue of Contoso Energy in Q3 2019?"], convert_to_tensor=True)[0]
    torch.testing.assert_close(pooled, torch.nn.functional.normalize(tokens[-1], dim=0), atol=1e-5, rtol=1e-5)


def test_prompts_and_truncate_dim_survive_save_and_reload(tiny_model_copy, tmp_path):
    args = ModelArguments(model_name_or_path=str(tiny_model_copy), query_prompt="Query: ", document_prompt="Page: ")
    model = build_model(args)
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
    model = build_model(ModelArguments(model_name_or_path=str(tiny_model_copy)))
    model[1].pooling_mode = "mean"  # something the bare-VLM path would not build
    model.save_pretrained(str(tmp_path / "st"))
    loaded = build_model(ModelArguments(model_name_or_path=str(tmp_path / "st")))
    assert loaded[1].pooling_mode == "mean"


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(VdrError, match=r"Model path '.*no-such-model' does not exist"):
        build_model(ModelArguments(model_name_or_path=str(tmp_path / "no-such-model")))


def test_folder_without_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VdrError, match=r"Could not load model '.*empty'"):
        build_model(ModelArguments(model_name_or_path=str(tmp_path / "empty")))


def test_flash_attention_falls_back_to_sdpa_with_one_warning(caplog, monkeypatch):
    monkeypatch.setattr("vdr.model._flash_attention_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="vdr.model"):
        kwargs = model_kwargs(ModelArguments(attn_implementation="flash_attention_2", torch_dtype="bfloat16"))
    assert kwargs == {"attn_implementation": "sdpa", "dtype": "bfloat16"}
    assert len(caplog.records) == 1 and "pip install flash-attn" in caplog.records[0].getMessage()


def test_flash_attention_is_kept_when_available(monkeypatch):
    monkeypatch.setattr("vdr.model._flash_attention_available", lambda: True)
    assert model_kwargs(ModelArguments(attn_implementation="flash_attention_2"))["attn_implementation"] == (
        "flash_attention_2"
    )
