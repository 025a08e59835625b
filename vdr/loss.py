"""The loss: MatryoshkaLoss over CachedMultipleNegativesRankingLoss, as in the reference recipe."""

from __future__ import annotations

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss, MatryoshkaLoss

from vdr.config import LossArguments
from vdr.model import check_dims


def build_loss(model: SentenceTransformer, args: LossArguments) -> MatryoshkaLoss:
    """In-batch negatives with gradient caching (memory independent of batch size), trained at every dim.

    ``mini_batch_size`` only trades memory for speed; the loss and gradients equal the uncached loss's.
    """
    # largest first, as configured; check_dims also validates them against the model
    dims = check_dims(args.matryoshka_dims, model, "matryoshka_dims")
    inner = CachedMultipleNegativesRankingLoss(
        model, mini_batch_size=args.mini_batch_size, gather_across_devices=args.gather_across_devices
    )
    return MatryoshkaLoss(model, inner, matryoshka_dims=dims)
