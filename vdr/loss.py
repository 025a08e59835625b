"""The loss: MatryoshkaLoss over CachedMultipleNegativesRankingLoss, as in the reference recipe."""

from __future__ import annotations

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss, MatryoshkaLoss

from vdr.config import LossArguments
from vdr.errors import VdrError
from vdr.model import embedding_dimension


def matryoshka_dims_for(model: SentenceTransformer, dims: list[int]) -> list[int]:
    """Check the Matryoshka dims against the model: none may exceed its embedding dimension."""
    full = embedding_dimension(model)
    too_large = [dim for dim in dims if dim > full]
    if too_large:
        raise VdrError(
            f"matryoshka_dims {too_large} exceed the model's embedding dimension {full}. Set --matryoshka_dims to "
            f"values of at most {full}, e.g. --matryoshka_dims {' '.join(str(d) for d in dims if d <= full) or full}."
        )
    return list(dims)


def build_loss(model: SentenceTransformer, args: LossArguments) -> MatryoshkaLoss:
    """In-batch negatives with gradient caching (memory independent of batch size), trained at every dim.

    ``mini_batch_size`` only trades memory for speed; the loss and gradients equal the uncached loss's.
    """
    dims = matryoshka_dims_for(model, args.matryoshka_dims)
    inner = CachedMultipleNegativesRankingLoss(
        model, mini_batch_size=args.mini_batch_size, gather_across_devices=args.gather_across_devices
    )
    return MatryoshkaLoss(model, inner, matryoshka_dims=dims)
