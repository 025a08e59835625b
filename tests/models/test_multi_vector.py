"""The multi-vector model: image-token-only indexing drops the chat template's tokens."""

from __future__ import annotations

from vdr.models.loading import ModelLoadingArguments
from vdr.models.multi_vector import build_multi_vector_model, keep_only_image_tokens
from vdr.offline.generated_pages import generate_rows

MAX_PIXELS = 36864


def test_image_tokens_only_drops_the_template_tokens(tiny_model_dir):
    model = build_multi_vector_model(str(tiny_model_dir), ModelLoadingArguments(max_pixels=MAX_PIXELS))
    page = generate_rows(1, seed=3)[0]["image"]
    all_tokens = model.encode_document([page])[0]
    keep_only_image_tokens(model)
    image_tokens = model.encode_document([page])[0]
    processor = model[0].processor
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    expected = int((model.preprocess([page], task="document")["input_ids"] == image_token_id).sum())
    assert len(image_tokens) == expected < len(all_tokens)
