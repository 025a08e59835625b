"""The reranker model: a LogitScore CrossEncoder from a VLM or an embedding model, its answer tokens, save and
reload."""

from __future__ import annotations

import shutil

import pytest
import torch
from sentence_transformers.cross_encoder import CrossEncoder
from sentence_transformers.cross_encoder.modules import LogitScore

from vdr.errors import VdrError
from vdr.models.embedder import build_model
from vdr.models.loading import ModelLoadingArguments
from vdr.models.reranker import RerankerModelArguments, build_reranker

TINY = "generated:tiny-qwen3-vl"


MAX_PIXELS = 36864


@pytest.fixture(scope="module")
def reranker(vdr_cache) -> CrossEncoder:
    return build_reranker(RerankerModelArguments(model_name_or_path=TINY, max_pixels=MAX_PIXELS, torch_dtype="float32"))


def test_a_vision_language_model_becomes_a_logit_score_reranker(reranker, generated_rows):
    assert [type(module).__name__ for module in reranker] == ["Transformer", "LogitScore"]
    assert reranker[0].transformer_task == "any-to-any"
    tokenizer = reranker[0].tokenizer
    # The tiny tokenizer has no single "yes" / "no" tokens: the head falls back to "1" / "0"
    assert (reranker[1].true_token_id, reranker[1].false_token_id) == tuple(tokenizer.convert_tokens_to_ids(["1", "0"]))
    row = generated_rows[0]
    features = reranker.preprocess([(row["query"], row["image"])])
    prompt = tokenizer.decode(features["input_ids"][0]).replace("<|image_pad|>", "")
    assert prompt.startswith("<|im_start|>system\nJudge whether the Document meets the requirements")
    assert '"1" or "0"' in prompt
    instruction = "Given a search query, retrieve relevant candidates that answer the query."
    assert f"<Instruct>: {instruction}<Query>:{row['query']}\n<Document>:" in prompt
    assert prompt.endswith("\n<Document>:<|vision_start|><|vision_end|><|im_end|>\n<|im_start|>assistant\n")
    # A Sentence Transformers prompt (a system message) replaces the instruction
    features = reranker.preprocess([(row["query"], row["image"])], prompt="Find the report page.")
    assert "<Instruct>: Find the report page.<Query>:" in tokenizer.decode(features["input_ids"][0])


def test_an_embedding_model_becomes_a_reranker_on_its_backbone(vdr_cache, tmp_path):
    # The quickstart's warm start: train_vdr.py's output (a SentenceTransformer, no language-model head) as the
    # reranker's --model_name_or_path. Every backbone weight is the embedding model's; only the LM head is new.
    embedder = build_model(TINY, ModelLoadingArguments(torch_dtype="float32"))
    with torch.no_grad():
        for parameter in embedder.parameters():
            parameter.add_(0.01)  # weights the tiny model's own checkpoint does not have
    embedder.save_pretrained(str(tmp_path / "embedder"))
    reranker = build_reranker(RerankerModelArguments(model_name_or_path=str(tmp_path / "embedder")))
    assert [type(module).__name__ for module in reranker] == ["Transformer", "LogitScore"]
    backbone = embedder[0].model.state_dict()
    weights = reranker[0].model.state_dict()
    assert set(weights) - {f"model.{name}" for name in backbone} == {"lm_head.weight"}
    for name, value in backbone.items():
        torch.testing.assert_close(weights[f"model.{name}"], value, rtol=0, atol=0)


def test_a_missing_warm_start_says_which_run_makes_it(tmp_path):
    # The reranker quickstart run before the embedding quickstart: say what to run, before anything loads
    with pytest.raises(VdrError, match=r"does not exist.*python train_vdr.py --config configs/quickstart.yaml"):
        build_reranker(RerankerModelArguments(model_name_or_path=str(tmp_path / "outputs" / "quickstart" / "final")))


def test_answer_tokens_must_be_single_tokens(vdr_cache):
    with pytest.raises(VdrError, match="no single-token answer pair among yes / no.*--answer_tokens"):
        build_reranker(RerankerModelArguments(model_name_or_path=TINY, answer_tokens=["yes", "no"]))


def test_saved_reranker_reloads_as_is_and_a_broken_published_head_is_rebuilt(reranker, generated_rows, tmp_path):
    row = generated_rows[1]
    pairs = [(row["query"], row["image"]), (row["query"], row["negative_0"])]
    expected = reranker.predict(pairs, convert_to_tensor=True)
    reranker.save_pretrained(str(tmp_path / "saved"))
    again = build_reranker(RerankerModelArguments(model_name_or_path=str(tmp_path / "saved")))
    torch.testing.assert_close(again.predict(pairs, convert_to_tensor=True), expected)
    # As the published Qwen3-VL rerankers: modules.json names a LogitScore whose saved config is missing. A plain
    # CrossEncoder(path) fails on it; build_reranker builds the head and the template itself, with the same scores.
    shutil.rmtree(tmp_path / "saved" / "1_LogitScore")
    with pytest.raises(TypeError, match="true_token_id"):
        CrossEncoder(str(tmp_path / "saved"))
    rebuilt = build_reranker(RerankerModelArguments(model_name_or_path=str(tmp_path / "saved")))
    assert isinstance(rebuilt[1], LogitScore)
    torch.testing.assert_close(rebuilt.predict(pairs, convert_to_tensor=True), expected)
