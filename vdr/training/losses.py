"""The training scripts' losses: MatryoshkaLoss over CachedMultipleNegativesRankingLoss (the recipe), its multi-vector
counterpart scored with MaxSim, and the reranker's cross-encoder losses with the rows each one reads."""

from __future__ import annotations

import torch
from datasets import Dataset, Image, List, concatenate_datasets
from sentence_transformers import MultiVectorEncoder, SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder
from sentence_transformers.cross_encoder import losses as cross_encoder_losses
from sentence_transformers.multi_vector_encoder.losses import CachedMultiVectorMultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss, MatryoshkaLoss
from torch import nn

from vdr.models.embedder import check_dims
from vdr.training.arguments import LossArguments, RerankerLossArguments


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


def build_multi_vector_loss(
    model: MultiVectorEncoder, args: LossArguments
) -> CachedMultiVectorMultipleNegativesRankingLoss:
    """In-batch negatives scored with MaxSim, with gradient caching (memory of ``mini_batch_size`` rows)."""
    return CachedMultiVectorMultipleNegativesRankingLoss(
        model, mini_batch_size=args.mini_batch_size, gather_across_devices=args.gather_across_devices
    )


def build_reranker_loss(model: CrossEncoder, args: RerankerLossArguments, num_negatives: int) -> nn.Module:
    """The cross-encoder's own losses: ``bce`` on (query, page, label) pairs (positives weighted by ``pos_weight``,
    default the number of negative columns), ``lambda`` on ranking lists, or ``cmnrl`` on n-tuples plus in-batch
    negatives."""
    if args.loss == "bce":
        pos_weight = args.pos_weight if args.pos_weight is not None else float(max(num_negatives, 1))
        return cross_encoder_losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(pos_weight))
    if args.loss == "lambda":
        return cross_encoder_losses.LambdaLoss(model, mini_batch_size=args.mini_batch_size)
    return cross_encoder_losses.CachedMultipleNegativesRankingLoss(
        model, num_negatives=args.num_in_batch_negatives, mini_batch_size=args.mini_batch_size
    )


def rows_for_loss(rows: Dataset, loss: str, query: str, positive: str, negatives: list[str]) -> Dataset:
    """(query, positive, negatives...) rows in the shape ``loss`` reads.

    - ``bce``: one (query, document, label) pair per page: 1 for the positive, 0 for each negative;
    - ``lambda``: (query, documents, labels): the positive and the negatives as one list, labels [1, 0, ...];
    - ``cmnrl``: the rows as they are, (query, positive, negative_...) n-tuples.
    """
    if loss == "cmnrl":
        return rows.select_columns([query, positive, *negatives])
    if loss == "bce":
        parts = [
            rows.select_columns([query, column])
            .rename_column(column, "document")
            .add_column("label", [float(column == positive)] * len(rows))
            for column in [positive, *negatives]
        ]
        return concatenate_datasets(parts)  # the trainer's sampler shuffles
    pages = [positive, *negatives]
    undecoded = _undecoded(rows, pages)
    lists = undecoded.map(
        lambda row: {"documents": [row[column] for column in pages], "labels": [1.0] + [0.0] * len(negatives)},
        remove_columns=pages,
        desc="Building ranking lists",
    )
    return lists.cast_column("documents", List(Image())).select_columns([query, "documents", "labels"])


def _undecoded(rows: Dataset, columns: list[str]) -> Dataset:
    """The rows with ``columns`` read as encoded bytes / paths: pages are decoded only where their pixels are used."""
    for column in columns:
        rows = rows.cast_column(column, Image(decode=False))
    return rows
